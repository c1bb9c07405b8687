/**
 * Route statuses against a real API server (kube-apiserver and etcd, as test/retry-status-kube.test.ts) with the
 * Gateway API v1.7.0 CRDs of deploy/crds: `mesh-xds serve --kubernetes` as a process with the control plane's service
 * account writes `status.parents[]` of HTTPRoutes and GRPCRoutes whose parent is a Service, and the API server's
 * own validation of the CRD's status schema takes each write (a refused one, 422, is a warning in the log: the test
 * fails on it). Another controller's entry is kept, an edit moves observedGeneration, nothing is written again
 * when nothing changed, and a replica that does not hold the Lease writes nothing. Skipped without the local control
 * plane (failing under CI=true).
 */
import path from 'node:path';
import * as k8s from '@kubernetes/client-node';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KubeCluster } from '../sandbox/kube.js';
import { until } from '../sandbox/sandbox.js';
import type { MeshIR } from '../src/compile/ir.js';
import { TokenBucket } from '../src/outputs/retry-status.js';
import { RouteStatusWriter } from '../src/outputs/route-status.js';
import { ROOT } from './helpers/cli.js';
import { kubeMissing, kubectlOk, serveKubernetes, type Served, waitEstablished } from './helpers/kube.js';

const missing = await kubeMissing();
const deploy = (p: string): string => path.join(ROOT, 'deploy', p);
const CONTROLLER = 'flomesh.io/mesh-xds';
const SERVICE_PARENT = { group: '', kind: 'Service', name: 'httpbin', port: 14001 };
const GATEWAY_PARENT = { group: 'gateway.networking.k8s.io', kind: 'Gateway', namespace: 'httpbin', name: 'edge' };

/** An HTTPRoute of httpbin (a producer route) with one rule; `rule` is YAML flow for what it holds besides matches. */
const httpRoute = (name: string, rule: string, extraParents = '') => `apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: { name: ${name}, namespace: httpbin }
spec:
  parentRefs: [{ group: "", kind: Service, name: httpbin, port: 14001 }${extraParents}]
  rules: [${rule}]
`;
const OK_RULE = '{ backendRefs: [{ name: httpbin, port: 14001 }] }';
const GRPC_ROUTE = `apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: { name: echo, namespace: httpbin }
spec:
  parentRefs: [{ group: "", kind: Service, name: httpbin }]
  rules: [{ backendRefs: [{ name: httpbin, port: 14001 }] }]
`;
/** Another controller's entry, as a gateway implementation would have written it. */
const OTHERS = {
  parentRef: GATEWAY_PARENT,
  controllerName: 'example.com/gateway',
  conditions: [{ type: 'Accepted', status: 'True', reason: 'Accepted', message: 'by the gateway', observedGeneration: 1, lastTransitionTime: '2026-01-01T00:00:00Z' }],
};

describe.skipIf(missing.length > 0)('route statuses against a real API server', () => {
  let kube: KubeCluster;
  let served: Served | undefined;
  let follower: Served | undefined;
  const ok = (args: string[], input?: string) => kubectlOk(kube, args, { input });
  const get = async (kind: string, name: string): Promise<any> => JSON.parse(await ok(['get', kind, name, '-n', 'httpbin', '-o', 'json']));
  const ours = (r: any): any[] => (r.status?.parents ?? []).filter((p: any) => p.controllerName === CONTROLLER);
  const condition = (parent: any, type: string): any => (parent?.conditions ?? []).find((c: any) => c.type === type);
  const routeWrites = async (s: Served): Promise<{ leader: boolean; routeWrites: number }> => ((await s.get('/debug/mesh')) as any).statusWriter;
  /** Status writes the API server refused (a 422 of the CRD's validation is one), as the writer logs them (at warn; a 409 is at debug, not shown at LOG_LEVEL info). */
  const refused = (s: Served | undefined): string[] => (s?.proc.lines() ?? []).filter((l) => /cannot write route status|status writes failed/.test(l));

  beforeAll(async () => {
    kube = await KubeCluster.start();
  }, 120_000);

  afterAll(async () => {
    await follower?.stop();
    await served?.stop();
    await kube?.stop();
  }, 60_000);

  it("writes each Service parent's Accepted and ResolvedRefs, valid to the CRD, keeping another controller's entry", async () => {
    await ok(['apply', '-f', deploy('crds/')]);
    await waitEstablished(kube, ['crd/httproutes.gateway.networking.k8s.io', 'crd/grpcroutes.gateway.networking.k8s.io', 'crd/meshconfigs.config.flomesh.io']);
    await ok(['apply', '-f', deploy('control-plane/namespace.yaml')]);
    await ok(['apply', '-k', deploy('')]);
    await ok(['create', 'namespace', 'httpbin']);
    await ok(['label', 'namespace', 'httpbin', 'flomesh.io/monitored-by=mesh-xds']);
    await ok(['apply', '-f', deploy('samples/guide/httpbin.yaml'), '-n', 'httpbin']);
    await ok(['apply', '-f', '-'], httpRoute('accepted', OK_RULE, `, { name: ${GATEWAY_PARENT.name} }`));
    await ok(['apply', '-f', '-'], httpRoute('missing-backend', '{ backendRefs: [{ name: nothere, port: 80 }] }'));
    await ok(['apply', '-f', '-'], httpRoute('mirror', `{ filters: [{ type: RequestMirror, requestMirror: { backendRef: { name: httpbin, port: 14001 } } }], backendRefs: [{ name: httpbin, port: 14001 }] }`));
    await ok(['apply', '-f', '-'], GRPC_ROUTE);
    // The gateway's entry, there before mesh-xds starts (through the status subresource, as a controller writes it).
    await ok(['patch', 'httproute', 'accepted', '-n', 'httpbin', '--subresource=status', '--type=merge', '-p', JSON.stringify({ status: { parents: [OTHERS] } })]);

    served = await serveKubernetes(await kube.serviceAccountKubeconfig('mesh-xds', 'mesh-xds'));
    const names = [['httproute', 'accepted'], ['httproute', 'missing-backend'], ['httproute', 'mirror'], ['grpcroute', 'echo']] as const;
    for (const [kind, name] of names) await until(async () => ours(await get(kind, name)).length === 1, 30_000, `the status of ${kind} ${name}`);

    // The accepted producer route: its parentRef as written, both conditions True, the generation they are about.
    const accepted = await get('httproute', 'accepted');
    expect(ours(accepted)).toEqual([
      {
        parentRef: SERVICE_PARENT,
        controllerName: CONTROLLER,
        conditions: [
          { type: 'Accepted', status: 'True', reason: 'Accepted', message: 'accepted', observedGeneration: 1, lastTransitionTime: expect.stringMatching(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/) },
          { type: 'ResolvedRefs', status: 'True', reason: 'ResolvedRefs', message: 'resolved', observedGeneration: 1, lastTransitionTime: expect.any(String) },
        ],
      },
    ]);
    // The Gateway parent is not ours: the gateway's entry is kept as it was, and none is added for it.
    expect(accepted.status.parents).toHaveLength(2);
    expect(accepted.status.parents.find((p: any) => p.controllerName === 'example.com/gateway')).toEqual(OTHERS);

    const missingBackend = ours(await get('httproute', 'missing-backend'))[0];
    expect(condition(missingBackend, 'Accepted')).toMatchObject({ status: 'True', reason: 'Accepted' });
    expect(condition(missingBackend, 'ResolvedRefs')).toMatchObject({ status: 'False', reason: 'BackendNotFound', message: expect.stringContaining('Service httpbin/nothere is not in the mesh') });

    const mirror = ours(await get('httproute', 'mirror'))[0];
    expect(condition(mirror, 'Accepted')).toMatchObject({ status: 'False', reason: 'UnsupportedValue', message: expect.stringContaining('RequestMirror') });

    const echo = ours(await get('grpcroute', 'echo'))[0];
    expect(echo.parentRef).toEqual({ group: '', kind: 'Service', name: 'httpbin' });
    expect(condition(echo, 'Accepted')).toMatchObject({ status: 'True', reason: 'Accepted', observedGeneration: 1 });
    expect(condition(echo, 'ResolvedRefs')).toMatchObject({ status: 'True', reason: 'ResolvedRefs', observedGeneration: 1 });

    expect((await routeWrites(served)).routeWrites).toBe(4);
    expect(refused(served), served.proc.tail()).toEqual([]);
    // The status subresource is checked against the CRD's schema: what does not fit is refused (422), so the writes
    // above fit it.
    const bad = { ...OTHERS, conditions: [{ ...OTHERS.conditions[0], reason: 'not a reason' }] };
    const r = await kube.kubectl(['patch', 'httproute', 'mirror', '-n', 'httpbin', '--subresource=status', '--type=merge', '-p', JSON.stringify({ status: { parents: [bad] } })]);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/is invalid: status\.parents\[0\]\.conditions\[0\]\.reason/);
    // And a write of the writer's that does not fit is the warning `refused` looks for: a report with such a reason.
    const kc = new k8s.KubeConfig();
    kc.loadFromFile(kube.adminKubeconfig);
    const lines: string[] = [];
    const mirrorNow = await get('httproute', 'mirror');
    const writer = new RouteStatusWriter(kc, pino({ level: 'info' }, { write: (l: string) => void lines.push(l) }), () => mirrorNow, new TokenBucket(5, 10, Date.now, (ms) => new Promise((res) => setTimeout(res, ms))));
    const report = { kind: 'HTTPRoute', namespace: 'httpbin', name: 'mirror', generation: 1, problems: [], attached: [], parents: [{ parentRef: SERVICE_PARENT, conditions: [{ type: 'Accepted', status: 'False', reason: 'not a reason', message: 'x' }] }] };
    await writer.write({ routeReports: [report] } as unknown as MeshIR, () => true);
    expect(writer.writes).toBe(0);
    expect(lines.filter((l) => /cannot write route status/.test(l))).toEqual([expect.stringMatching(/"level":40.*is invalid/)]);
  }, 120_000);

  it('an edit moves observedGeneration; nothing else is written again, and a replica without the Lease writes nothing', async () => {
    const rv = async (kind: string, name: string): Promise<string> => (await get(kind, name)).metadata.resourceVersion;
    const before = { missing: await rv('httproute', 'missing-backend'), mirror: await rv('httproute', 'mirror'), echo: await rv('grpcroute', 'echo') };
    const accepted = await get('httproute', 'accepted');
    const since = condition(ours(accepted)[0], 'Accepted').lastTransitionTime;
    const writes = (await routeWrites(served!)).routeWrites;

    // A second replica: the Lease is held, so it only reads.
    follower = await serveKubernetes(await kube.serviceAccountKubeconfig('mesh-xds', 'mesh-xds'));
    expect(await routeWrites(follower)).toMatchObject({ leader: false, routeWrites: 0 });

    await ok(['apply', '-f', '-'], httpRoute('accepted', `{ matches: [{ path: { type: PathPrefix, value: /v2 } }], backendRefs: [{ name: httpbin, port: 14001 }] }`, `, { name: ${GATEWAY_PARENT.name} }`));
    await until(async () => condition(ours(await get('httproute', 'accepted'))[0], 'Accepted')?.observedGeneration === 2, 30_000, 'observedGeneration 2');
    const edited = await get('httproute', 'accepted');
    expect(edited.metadata.generation).toBe(2);
    for (const type of ['Accepted', 'ResolvedRefs']) expect(condition(ours(edited)[0], type)).toMatchObject({ status: 'True', observedGeneration: 2 });
    // Still True: the transition time stays.
    expect(condition(ours(edited)[0], 'Accepted').lastTransitionTime).toBe(since);
    expect(edited.status.parents.find((p: any) => p.controllerName === 'example.com/gateway')).toEqual(OTHERS);

    // Two more status passes (one every 5 s) after that write: the unchanged routes keep their resourceVersion, the
    // edited one is written once.
    await new Promise((r) => setTimeout(r, 11_000));
    expect({ missing: await rv('httproute', 'missing-backend'), mirror: await rv('httproute', 'mirror'), echo: await rv('grpcroute', 'echo') }).toEqual(before);
    expect(await rv('httproute', 'accepted')).toBe(edited.metadata.resourceVersion);
    expect((await routeWrites(served!)).routeWrites).toBe(writes + 1);
    expect(await routeWrites(follower)).toMatchObject({ leader: false, routeWrites: 0 });
    expect(refused(served), served!.proc.tail()).toEqual([]);
    expect(refused(follower)).toEqual([]);
  }, 90_000);
});
