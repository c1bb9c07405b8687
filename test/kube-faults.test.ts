/**
 * The Kubernetes source under the faults a real cluster has, against a real API server (kube-apiserver and etcd
 * built from the Go module proxy): two replicas sharing the status writes through a Lease, a kubeconfig on plain
 * http:// (kubectl proxy), the API server restarted, etcd compacted under a watch (410 Gone), and the control
 * plane's token revoked. Throughout, a real gRPC xDS client keeps retrying as the last good mesh says.
 */
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { Writable } from 'node:stream';
import * as grpc from '@grpc/grpc-js';
import * as k8s from '@kubernetes/client-node';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { MeshState } from '../src/model/mesh.js';
import { KubeCluster } from '../sandbox/kube.js';
import { Network, Proc } from '../sandbox/netns.js';
import { until } from '../sandbox/sandbox.js';
import { KubernetesSource } from '../src/sources/kubernetes.js';
import { XdsTestClient, startBackend, type Backend } from './helpers/grpc-xds.js';
import { GUIDE_RETRY, grpcRetry, installGuideMesh, kubeMissing, kubectlOk, serveKubernetes, type Served } from './helpers/kube.js';
import { sandboxMissing } from './helpers/sandbox.js';

const missing = [...(await kubeMissing()), ...sandboxMissing];

describe.skipIf(missing.length > 0)('the Kubernetes source under faults, against a real API server', () => {
  let kube: KubeCluster;
  let backend: Backend;
  let net: Network;
  let kubeconfig: string;
  const running: Served[] = [];
  const clients: XdsTestClient[] = [];
  const ok = (args: string[], opts: { kubeconfig?: string; input?: string } = {}) => kubectlOk(kube, args, opts);

  beforeAll(async () => {
    // Without the watch cache, a watch from a compacted resourceVersion reaches etcd and gets 410 Gone.
    kube = await KubeCluster.start({ watchCache: false });
    net = await Network.create();
    backend = await startBackend(grpc.status.UNAVAILABLE, net.gateway);
    await installGuideMesh(kube, { host: net.gateway, port: backend.port });
    kubeconfig = await kube.serviceAccountKubeconfig('mesh-xds', 'mesh-xds');
  }, 180_000);

  afterAll(async () => {
    for (const c of clients) c.close();
    for (const s of running) await s.stop().catch(() => undefined);
    await backend?.close();
    await net?.destroy();
    await kube?.stop();
  }, 60_000);

  const client = (ads: string, nodeId: string): XdsTestClient => {
    const c = new XdsTestClient('xds:///httpbin.httpbin.svc.cluster.local:14001', ads, { nodeId, namespace: 'curl', serviceAccount: 'curl' });
    clients.push(c);
    return c;
  };
  const attempts = async (c: XdsTestClient): Promise<number> => {
    const before = backend.attempts;
    expect(await c.call()).toBe(grpc.status.UNAVAILABLE);
    return backend.attempts - before;
  };
  const settles = (c: XdsTestClient, n: number, what: string) => until(async () => (await attempts(c)) === n, 20_000, what);
  const writer = async (s: Served) => (await s.get('/debug/mesh')).statusWriter as { identity: string; leader: boolean; writes: number };
  const serve = async (config = kubeconfig): Promise<Served> => {
    const s = await serveKubernetes(config);
    running.push(s);
    return s;
  };
  const stop = async (s: Served): Promise<void> => {
    running.splice(running.indexOf(s), 1);
    await s.stop();
  };

  it('two replicas both serve ADS; only the Lease holder writes Retry status, and the other takes over when it goes', async () => {
    const [a, b] = [await serve(), await serve()];
    await until(async () => (await writer(a)).leader !== (await writer(b)).leader, 30_000, 'one replica to hold the lease');
    const [leader, follower] = (await writer(a)).leader ? [a, b] : [b, a];
    expect(await ok(['get', 'lease', 'mesh-xds-status-writer', '-n', 'mesh-xds', '-o', 'jsonpath={.spec.holderIdentity}'])).toBe((await writer(leader)).identity);
    await settles(client(a.ads, 'curl-a'), 4, '1 + 3 attempts through replica a');
    await settles(client(b.ads, 'curl-b'), 4, '1 + 3 attempts through replica b');

    // A Retry that mesh-xds refuses: its status is written once, by the holder only.
    await ok(['apply', '-f', '-'], { input: GUIDE_RETRY.replace('name: retry\n', 'name: fine\n').replace('perTryTimeout: 1s', 'perTryTimeout: 1500us') });
    const reason = () => ok(['get', 'retry', 'fine', '-n', 'curl', '-o', 'jsonpath={.status.conditions[0].reason}']);
    await until(async () => (await reason()) === 'Invalid', 30_000, 'the status Invalid');
    const generation = await ok(['get', 'retry', 'fine', '-n', 'curl', '-o', 'jsonpath={.metadata.resourceVersion}']);
    await new Promise((r) => setTimeout(r, 1500));
    expect(await ok(['get', 'retry', 'fine', '-n', 'curl', '-o', 'jsonpath={.metadata.resourceVersion}']), 'no second write (no flapping)').toBe(generation);
    expect((await writer(leader)).writes).toBeGreaterThan(0);
    expect((await writer(follower)).writes).toBe(0);
    expect(await (await fetch(`${follower.debug}/metrics`)).text()).toMatch(/^mesh_xds_status_writer 0$/m);
    expect(await (await fetch(`${leader.debug}/metrics`)).text()).toMatch(/^mesh_xds_status_writer 1$/m);

    // The holder goes (a rollout): it gives the lease up, the other takes it and writes what changes next.
    await stop(leader);
    await until(async () => (await writer(follower)).leader, 15_000, 'the other replica to take the lease');
    await ok(['patch', 'retry', 'fine', '-n', 'curl', '--type', 'merge', '-p', '{"spec":{"retryPolicy":{"perTryTimeout":"2s"}}}']);
    // Now valid, it has the same source and destination as the guide's Retry, which was there first.
    await until(async () => (await reason()) === 'Conflicted', 30_000, 'the status Conflicted');
    expect((await writer(follower)).writes).toBeGreaterThan(0);
    await ok(['delete', 'retry', 'fine', '-n', 'curl']);
    await stop(follower);
  }, 120_000);

  it('a kubeconfig whose server is plain http:// (kubectl proxy) works, as it does for kubectl', async () => {
    const proxy = Proc.spawn('kubectl proxy', 'kubectl', ['proxy', '--port=0', '--address=127.0.0.1'], { env: { KUBECONFIG: kubeconfig } });
    try {
      const port = /Starting to serve on 127\.0\.0\.1:(\d+)/.exec(await proxy.waitFor(/Starting to serve on/, 20_000))![1];
      const file = path.join(kube.dir, 'proxy.kubeconfig');
      writeFileSync(file, `apiVersion: v1
kind: Config
clusters: [{name: proxy, cluster: {server: "http://127.0.0.1:${port}"}}]
users: [{name: none, user: {}}]
contexts: [{name: proxy, context: {cluster: proxy, user: none}}]
current-context: proxy
`);
      const s = await serve(file);
      const mesh = await s.get('/debug/mesh');
      expect(mesh.synced).toBe(true);
      expect(mesh.resources.Service.objects).toBeGreaterThanOrEqual(2);
      await settles(client(s.ads, 'curl-proxy'), 4, '1 + 3 attempts through a server on http://');
      // Watches work through the proxy too.
      await ok(['apply', '-f', '-'], { input: grpcRetry(2) });
      await settles(clients.at(-1)!, 3, '1 + 2 attempts after an edit seen through the proxy');
      await ok(['apply', '-f', '-'], { input: grpcRetry(3) });
      await stop(s);
    } finally {
      await proxy.stop(5_000);
    }
  }, 120_000);

  it('the API server restarted: the last good mesh is served meanwhile, then everything is relisted and edits apply again', async () => {
    const s = await serve();
    const c = client(s.ads, 'curl-restart');
    await settles(c, 4, '1 + 3 attempts');
    const before = (await s.get('/debug/mesh')).resources;
    const restarted = kube.restartApiServer(4_000);
    // While it is down (and while it comes back), the proxies keep their config and nothing partial is published.
    const seen = new Set<number>();
    const services = new Set<number>();
    while (!(await Promise.race([restarted.then(() => true), new Promise((r) => setTimeout(() => r(false), 200))]))) {
      seen.add(await attempts(c));
      services.add((await s.get('/debug/mesh')).services?.length ?? -1);
    }
    await restarted;
    expect([...seen]).toEqual([4]);
    expect(services.size).toBe(1);
    await until(async () => {
      const now = (await s.get('/debug/mesh')).resources;
      return Object.keys(before).every((k) => now[k].lists > before[k].lists && !now[k].error);
    }, 60_000, 'every resource relisted without error');
    await ok(['patch', 'retry', 'retry', '-n', 'curl', '--type', 'merge', '-p', '{"spec":{"retryPolicy":{"numRetries":1}}}']);
    await settles(c, 2, '1 + 1 attempts after an edit once the API server is back');
    await ok(['apply', '-f', '-'], { input: grpcRetry(3) });
    await settles(c, 4, '1 + 3 attempts again');
    await stop(s);
  }, 120_000);

  it('etcd compacted under a watch: the watch gets 410 Gone, the resource is relisted, and the mesh is whole', async () => {
    const lines: any[] = [];
    const log = pino({ level: 'info' }, new Writable({ write: (chunk, _e, done) => (lines.push(JSON.parse(String(chunk))), done()) }));
    const kc = new k8s.KubeConfig();
    kc.loadFromFile(kubeconfig);
    const states: MeshState[] = [];
    // Watches end every second and resume from the last resourceVersion they saw.
    const source = new KubernetesSource({ meshName: 'mesh-xds', namespace: 'mesh-xds', kubeConfig: kc, log, watchTimeoutSeconds: 1, debounceMs: 50, onChange: (st) => states.push(st) });
    try {
      const first = await source.start();
      const listsOf = () => (source.info().resources as Record<string, { lists: number }>).MeshConfig.lists;
      expect(listsOf()).toBe(1);
      // Writes that the MeshConfig watch does not see move etcd past its resourceVersion; then compact.
      for (let i = 0; i < 3; i++) await ok(['create', 'configmap', `bump-${i}`, '-n', 'mesh-xds']);
      await kube.compact();
      await until(() => lines.some((l) => l.msg === 'watch expired (410 Gone); relisting' && l.resource === 'MeshConfig') && listsOf() > 1, 30_000, 'a 410 Gone and a relist of the MeshConfig');
      expect(source.errors).toBe(0);
      // The relisted mesh is the same mesh, and later edits still arrive.
      const same = (st: MeshState) => JSON.stringify([st.services.length, st.retries.length, st.meshConfig]);
      expect(same(source.state())).toBe(same(first));
      await ok(['patch', 'meshconfig', 'fsm-mesh-config', '-n', 'mesh-xds', '--type', 'merge', '-p', '{"spec":{"featureFlags":{"enableRetryPolicy":false}}}']);
      await until(() => states.at(-1)?.meshConfig.enableRetryPolicy === false, 20_000, 'the flag change after the relist');
    } finally {
      await source.stop();
      await ok(['patch', 'meshconfig', 'fsm-mesh-config', '-n', 'mesh-xds', '--type', 'merge', '-p', '{"spec":{"featureFlags":{"enableRetryPolicy":true}}}']);
    }
  }, 120_000);

  it("the control plane's token revoked: a clear error in the log, /debug/mesh and the metrics, and the last good config kept", async () => {
    const s = await serve();
    const c = client(s.ads, 'curl-revoked');
    await settles(c, 4, '1 + 3 attempts');
    // Deleting the service account invalidates its bound token; the restart ends the watches, so every resource relists.
    await ok(['delete', 'serviceaccount', 'mesh-xds', '-n', 'mesh-xds']);
    await kube.restartApiServer();
    await until(async () => /the API server refused the control plane's credentials \(401 Unauthorized\) on list \/api\/v1\/namespaces: the token may be revoked or expired; serving the last good mesh/.test(s.proc.tail(200)), 30_000, 'the 401 explained in the log');
    const mesh = await s.get('/debug/mesh');
    expect(mesh.resources.Namespace.error).toMatch(/401 Unauthorized.*token may be revoked/);
    expect(mesh.statusWriter.leader).toBe(false);
    // At most one error a resource the source lists: 9 with the Gateway API's HTTPRoute and GRPCRoute.
    expect(await (await fetch(`${s.debug}/metrics`)).text()).toMatch(/^mesh_xds_source_errors [1-9]$/m);
    expect(await attempts(c)).toBe(4);
    expect((await fetch(`${s.debug}/readyz`)).status).toBe(200);
    await stop(s);
  });
});
