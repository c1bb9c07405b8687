/**
 * Gateway API routes against a real API server (kube-apiserver and etcd, as test/kube-api.test.ts): the Kubernetes
 * source serves the mesh on a cluster without the Gateway API CRDs (404), then follows HTTPRoutes and GRPCRoutes
 * once `kubectl apply -f deploy/crds/` installs them (client-side: the vendored CRDs fit its annotation), and drops
 * them when a CRD goes; the RBAC of deploy/ reads routes and writes only their status; `mesh-xds install` upgrades an
 * older Standard-channel CRD, leaves a newer one alone, and `uninstall --purge` keeps both. Skipped without the
 * local control plane (failing under CI=true).
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import * as k8s from '@kubernetes/client-node';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { KubeCluster } from '../sandbox/kube.js';
import { until } from '../sandbox/sandbox.js';
import { installCommand } from '../src/cli/install.js';
import type { MeshState } from '../src/model/mesh.js';
import { KubernetesSource } from '../src/sources/kubernetes.js';
import { ROOT } from './helpers/cli.js';
import { kubeMissing, kubectlOk, waitEstablished } from './helpers/kube.js';

const missing = await kubeMissing();
const deploy = (p: string): string => path.join(ROOT, 'deploy', p);
const HTTPROUTES = 'httproutes.gateway.networking.k8s.io';
const GRPCROUTES = 'grpcroutes.gateway.networking.k8s.io';

const httpRoute = (attempts: number) => `apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: { name: httpbin-retry, namespace: httpbin }
spec:
  parentRefs: [{ group: "", kind: Service, name: httpbin, port: 14001 }]
  rules:
    - backendRefs: [{ name: httpbin, port: 14001 }]
      retry: { codes: [503], attempts: ${attempts} }
`;
const GRPC_ROUTE = `apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: { name: echo, namespace: httpbin }
spec:
  parentRefs: [{ group: "", kind: Service, name: httpbin }]
  rules: [{ backendRefs: [{ name: httpbin, port: 14001 }] }]
`;

describe.skipIf(missing.length > 0)('Gateway API routes against a real API server', () => {
  let kube: KubeCluster;
  let source: KubernetesSource | undefined;
  const states: MeshState[] = [];
  const logs: { msg: string; resource?: string }[] = [];
  const ok = (args: string[], input?: string) => kubectlOk(kube, args, { input });
  const latest = (): MeshState => states.at(-1)!;
  const routes = (s: MeshState): string[] => s.routes.map((r) => `${r.kind} ${r.namespace}/${r.name} ${r.generation}`).sort();

  beforeAll(async () => {
    kube = await KubeCluster.start();
    // The mesh's own CRDs only: no Gateway API.
    await ok(['apply', '-f', deploy('crds/retries.policy.flomesh.io.yaml'), '-f', deploy('crds/meshconfigs.config.flomesh.io.yaml')]);
    await waitEstablished(kube, ['crd/retries.policy.flomesh.io', 'crd/meshconfigs.config.flomesh.io']);
    await ok(['create', 'namespace', 'httpbin']);
    await ok(['label', 'namespace', 'httpbin', 'flomesh.io/monitored-by=mesh-xds']);
    await ok(['create', 'service', 'clusterip', 'httpbin', '-n', 'httpbin', '--tcp=14001:14001']);
  }, 120_000);

  afterAll(async () => {
    source?.stop();
    await kube?.stop();
  }, 60_000);

  it('without the Gateway API CRDs (404) the mesh is served; routes are picked up once the CRDs are applied, followed, and dropped with their CRD', async () => {
    const kc = new k8s.KubeConfig();
    kc.loadFromFile(kube.adminKubeconfig);
    const log = pino({ level: 'info' }, { write: (line: string) => void logs.push(JSON.parse(line)) });
    source = new KubernetesSource({ meshName: 'mesh-xds', namespace: 'mesh-xds', kubeConfig: kc, log, onChange: (s) => states.push(s), debounceMs: 20, backoff: { initialMs: 50, maxMs: 400 } });
    const first = await source.start();
    expect(first.services.map((s) => `${s.namespace}/${s.name}`)).toContain('httpbin/httpbin');
    expect(first.routes).toEqual([]);
    expect(source.errors).toBe(0);
    expect((source.info().resources as any).HTTPRoute).toMatchObject({ synced: true, objects: 0, notInstalled: `CRD ${HTTPROUTES}` });

    await ok(['apply', '-f', deploy('crds/')]);
    await waitEstablished(kube, [`crd/${HTTPROUTES}`, `crd/${GRPCROUTES}`]);
    await ok(['apply', '-f', '-'], httpRoute(2));
    await ok(['apply', '-f', '-'], GRPC_ROUTE);
    await until(() => routes(latest()).length === 2, 20_000, 'the routes in the mesh');
    expect(routes(latest())).toEqual(['GRPCRoute httpbin/echo 1', 'HTTPRoute httpbin/httpbin-retry 1']);
    const route = latest().routes.find((r) => r.kind === 'HTTPRoute')!;
    // The API server kept the v1.7.0 Standard field rules[].retry (an older CRD would have pruned it).
    expect(route.spec).toMatchObject({ parentRefs: [{ kind: 'Service', name: 'httpbin', port: 14001 }], rules: [{ retry: { codes: [503], attempts: 2 } }] });
    expect(route.uid).toMatch(/^[0-9a-f-]{36}$/);
    expect(source.route('HTTPRoute', 'httpbin', 'httpbin-retry')?.metadata?.generation).toBe(1);
    expect(source.route('GRPCRoute', 'httpbin', 'httpbin-retry')).toBeUndefined();
    expect((source.info().resources as any).HTTPRoute).toEqual({ synced: true, objects: 1, lists: expect.any(Number) });
    // Said once at info each way, never as a warning.
    for (const kind of ['HTTPRoute', 'GRPCRoute']) {
      expect(logs.filter((l) => l.resource === kind && l.msg.includes('is not installed')).map((l) => l.msg)).toEqual([
        `the CRD ${kind.toLowerCase()}s.gateway.networking.k8s.io is not installed (or does not serve gateway.networking.k8s.io/v1): the mesh is served without ${kind}s, which are picked up once it is`,
      ]);
      expect(logs.filter((l) => l.resource === kind && l.msg.includes('installed now'))).toHaveLength(1);
    }

    // An edit comes as a watch event: the new generation.
    await ok(['apply', '-f', '-'], httpRoute(3));
    await until(() => routes(latest()).includes('HTTPRoute httpbin/httpbin-retry 2'), 20_000, 'the edited route');
    expect(source.route('HTTPRoute', 'httpbin', 'httpbin-retry')?.metadata?.generation).toBe(2);

    // A CRD deleted takes its routes along; the others stay.
    await ok(['delete', 'crd', GRPCROUTES, '--wait=true']);
    await until(() => routes(latest()).join() === 'HTTPRoute httpbin/httpbin-retry 2', 30_000, 'the GRPCRoute to go with its CRD');
    expect(source.errors).toBe(0);
    source.stop();
  }, 120_000);

  it('the RBAC of deploy/ reads routes and writes only their status', async () => {
    await ok(['apply', '-f', deploy(`crds/gateway.networking.k8s.io_grpcroutes.yaml`)]);
    await waitEstablished(kube, [`crd/${GRPCROUTES}`]);
    await ok(['apply', '-f', deploy('control-plane/namespace.yaml'), '-f', deploy('control-plane/rbac.yaml')]);
    const sa = await kube.serviceAccountKubeconfig('mesh-xds', 'mesh-xds');
    const can = async (...args: string[]) => (await kube.kubectl(['auth', 'can-i', ...args], { kubeconfig: sa })).stdout.trim();
    for (const r of [HTTPROUTES, GRPCROUTES]) {
      for (const verb of ['list', 'watch']) expect(await can(verb, r, '--all-namespaces'), `${verb} ${r}`).toBe('yes');
      for (const verb of ['patch', 'update']) expect(await can(verb, r, '-n', 'httpbin', '--subresource=status'), `${verb} ${r}/status`).toBe('yes');
      for (const verb of ['create', 'update', 'patch', 'delete']) expect(await can(verb, r, '-n', 'httpbin'), `${verb} ${r}`).toBe('no');
    }
  }, 60_000);

  it('install upgrades an older Standard-channel CRD, leaves a newer one alone, and uninstall --purge keeps both', async () => {
    // The cluster's own: grpcroutes of v1.5.0 (as if installed by a gateway), httproutes annotated v1.8.0.
    const older = readFileSync(deploy('crds/gateway.networking.k8s.io_grpcroutes.yaml'), 'utf8').replace('bundle-version: v1.7.0', 'bundle-version: v1.5.0');
    await ok(['apply', '-f', '-'], older);
    await ok(['annotate', '--overwrite', 'crd', HTTPROUTES, 'gateway.networking.k8s.io/bundle-version=v1.8.0']);
    const bundle = async (crd: string) => ok(['get', 'crd', crd, '-o', 'jsonpath={.metadata.annotations.gateway\\.networking\\.k8s\\.io/bundle-version}']);

    const run = async (args: string[], uninstall = false): Promise<{ out: string; error?: string }> => {
      let out = '';
      const spy = vi.spyOn(process.stdout, 'write').mockImplementation((chunk: string | Uint8Array) => ((out += String(chunk)), true));
      try {
        await installCommand(['--kubeconfig', kube.adminKubeconfig, ...args], uninstall);
        return { out };
      } catch (e) {
        return { out, error: (e as Error).message };
      } finally {
        spy.mockRestore();
      }
    };
    // No kubelet here: the control plane never gets ready, so install stops at its wait, after applying everything.
    const install = await run(['--timeout', '1']);
    expect(install.error).toMatch(/timed out after 1 s waiting for the control plane to be ready/);
    expect(install.out).toContain(`customresourcedefinition ${HTTPROUTES} kept: Gateway API v1.8.0 (standard) is installed, newer than v1.7.0 that mesh-xds ships: left as it is (never downgraded)`);
    expect(install.out).toContain(`customresourcedefinition ${GRPCROUTES} configured (upgraded from v1.5.0 to v1.7.0)`);
    expect(install.out).toContain('deployment mesh-xds/mesh-xds created');
    expect(await bundle(HTTPROUTES)).toBe('v1.8.0');
    expect(await bundle(GRPCROUTES)).toBe('v1.7.0');

    const uninstall = await run(['--purge'], true);
    expect(uninstall.error).toBeUndefined();
    expect(uninstall.out).toContain('customresourcedefinition retries.policy.flomesh.io deleted');
    expect(uninstall.out).toContain(`kept: the Gateway API CRDs ${HTTPROUTES} and ${GRPCROUTES} (every HTTPRoute and GRPCRoute stays`);
    expect(uninstall.out).not.toMatch(/gateway\.networking\.k8s\.io (deleted|not found)/);
    expect(await bundle(HTTPROUTES)).toBe('v1.8.0');
    expect(await bundle(GRPCROUTES)).toBe('v1.7.0');
    // The user's route is still there.
    expect(await ok(['get', 'httproute', 'httpbin-retry', '-n', 'httpbin', '-o', 'name'])).toContain('httpbin-retry');
  }, 120_000);
});
