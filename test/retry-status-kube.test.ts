/**
 * The live part of a Retry's status against a real API server (kube-apiserver and etcd, as test/kube-api.test.ts):
 * `mesh-xds serve --kubernetes` as a process with the control plane's service account, a proxy of the Retry's
 * source identity on a real ADS stream that ACKs, and its counters on a real metrics stream; `kubectl get retry`
 * then shows the numbers summed by the control plane and `Programmed` True. Skipped without the local control plane
 * (failing under CI=true).
 */
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KubeCluster } from '../sandbox/kube.js';
import { until } from '../sandbox/sandbox.js';
import { METRICS_PATH } from '../src/observed/metrics-service.js';
import { envoyRoot } from '../src/xds/resources/protos.js';
import { ROUTE } from '../src/xds/resources/types.js';
import { RawAdsClient, node, type AdsTestStream } from './helpers/ads-client.js';
import { ROOT } from './helpers/cli.js';
import { kubeMissing, serveKubernetes, type Served, waitEstablished } from './helpers/kube.js';

const missing = await kubeMissing();
const deploy = (p: string): string => path.join(ROOT, 'deploy', p);
const HTTPBIN_ROUTE = 'httpbin.httpbin.svc.cluster.local:14001';
const HTTPBIN_CLUSTER = 'httpbin/httpbin|14001';

const MESSAGE = envoyRoot().lookupType('envoy.service.metrics.v3.StreamMetricsMessage');
/** A stats flush as a sidecar's metrics sink sends it (deltas), the node in the first message only. */
const flush = (counters: Record<string, number>, first?: object): Buffer =>
  Buffer.from(
    MESSAGE.encode(
      MESSAGE.fromObject({
        ...(first ? { identifier: { node: first } } : {}),
        envoy_metrics: Object.entries(counters).map(([c, value]) => ({ name: `cluster.${HTTPBIN_CLUSTER}.${c}`, type: 0, metric: [{ counter: { value } }] })),
      }),
    ).finish(),
  );
const numRetries = (routeConfig: any): number => routeConfig.virtual_hosts[0].routes[0].route.retry_policy.num_retries.value;
const MetricsClient = grpc.makeGenericClientConstructor(
  { StreamMetrics: { path: METRICS_PATH, requestStream: true, responseStream: false, requestSerialize: (b: Buffer) => b, requestDeserialize: (b: Buffer) => b, responseSerialize: (b: Buffer) => b, responseDeserialize: (b: Buffer) => b } },
  'Metrics',
);

describe.skipIf(missing.length > 0)("a Retry's observed numbers and Programmed in its status, against a real API server", () => {
  let kube: KubeCluster;
  let served: Served | undefined;
  let ads: RawAdsClient | undefined;
  let metrics: (grpc.Client & Record<string, any>) | undefined;
  let keepReporting: NodeJS.Timeout | undefined;
  const streams: AdsTestStream[] = [];

  beforeAll(async () => {
    kube = await KubeCluster.start();
  }, 120_000);

  afterAll(async () => {
    clearInterval(keepReporting);
    for (const s of streams) s.close();
    metrics?.close();
    ads?.close();
    await served?.stop();
    await kube?.stop();
  }, 60_000);

  const ok = async (args: string[]): Promise<string> => {
    const r = await kube.kubectl(args);
    expect(r.code, `kubectl ${args.join(' ')}\n${r.stderr}`).toBe(0);
    return r.stdout;
  };
  const retry = async (): Promise<any> => JSON.parse(await ok(['get', 'retry', 'retry', '-n', 'curl', '-o', 'json']));
  const condition = (r: any, type: string): any => (r.status?.conditions ?? []).find((c: any) => c.type === type);

  it('shows the numbers a sidecar reported and Programmed True once its proxy ACKed the policy', async () => {
    await ok(['apply', '-f', deploy('crds/')]);
    await waitEstablished(kube, ['crd/retries.policy.flomesh.io', 'crd/meshconfigs.config.flomesh.io']);
    await ok(['apply', '-f', deploy('control-plane/namespace.yaml')]);
    await ok(['apply', '-k', deploy('')]);
    await ok(['patch', 'meshconfig', 'fsm-mesh-config', '-n', 'mesh-xds', '--type', 'merge', '-p', '{"spec":{"featureFlags":{"enableRetryPolicy":true}}}']);
    for (const ns of ['httpbin', 'curl']) {
      await ok(['create', 'namespace', ns]);
      await ok(['label', 'namespace', ns, 'flomesh.io/monitored-by=mesh-xds']);
      await ok(['apply', '-f', deploy(`samples/guide/${ns}.yaml`), '-n', ns]);
    }
    await ok(['apply', '-f', deploy('samples/retry.yaml')]);
    served = await serveKubernetes(await kube.serviceAccountKubeconfig('mesh-xds', 'mesh-xds'));
    await until(async () => condition(await retry(), 'Accepted')?.status === 'True', 30_000, 'the Retry Accepted');

    // A proxy of curl/curl takes httpbin's route configuration (where the Retry lives) and ACKs it.
    ads = new RawAdsClient(served.ads);
    const s = ads.sotw();
    streams.push(s);
    s.send({ node: node({ id: 'curl-1.curl', namespace: 'curl', serviceAccount: 'curl' }), type_url: ROUTE, resource_names: [HTTPBIN_ROUTE] });
    const rds = await s.next(10_000);
    expect(rds.names).toEqual([HTTPBIN_ROUTE]);
    expect(numRetries(rds.resources[0])).toBe(5);
    s.send({ type_url: ROUTE, resource_names: [HTTPBIN_ROUTE], version_info: rds.version_info, response_nonce: rds.nonce });

    // Its counters, as the guide's 503 makes them: one request, five retries, out of retries once.
    metrics = new MetricsClient(served.ads, grpc.credentials.createInsecure()) as any;
    const call = metrics!.StreamMetrics(() => {});
    call.write(flush({ upstream_rq_total: 6, upstream_rq_retry: 5, upstream_rq_retry_limit_exceeded: 1, upstream_rq_5xx: 6 }, node({ id: 'curl-1.curl', namespace: 'curl', serviceAccount: 'curl' })));
    // Later flushes with nothing new, so that it keeps counting as reporting.
    keepReporting = setInterval(() => call.write(flush({ upstream_rq_total: 0 })), 2_000);

    // The leader writes no live part in its first 10 s, then at once (the first of it), within a pass (5 s).
    await until(async () => (await retry()).status?.observed?.retries === 5 && condition(await retry(), 'Programmed')?.status === 'True', 45_000, 'the observed numbers and Programmed True');
    const r = await retry();
    expect(r.status.observed).toMatchObject({ window: '5m', requests: 1, retries: 5, retriesSucceeded: 0, retriesExhausted: 1, retriesRefused: 0, retryRate: 5, attemptsPerRequest: 6, predictedAttemptsPerRequest: 6, proxiesReporting: 1 });
    expect(r.status.observed.since).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/);
    expect(condition(r, 'Programmed')).toMatchObject({ status: 'True', reason: 'Programmed', observedGeneration: 1, message: expect.stringMatching(/^1 of 1 proxies of curl\/curl connected to replica \S+ have ACKed a configuration holding this policy$/) });
    // The wide table shows both.
    const wide = (await ok(['get', 'retry', 'retry', '-n', 'curl', '-o', 'wide'])).split('\n');
    expect(wide[0]).toMatch(/\bPROGRAMMED\s+RETRIES-5M\s+AGE$/);
    expect(wide[1]).toMatch(/\bTrue\s+5\s+\S+$/);
    // The writer says what it wrote: the status on its own (Accepted), then with the live part (once, or twice if its
    // first pass after the leader's first 10 s came before the counters); not a write per flush.
    const writer = ((await served.get('/debug/mesh')) as any).statusWriter;
    expect(writer.leader).toBe(true);
    expect(writer.liveWrites).toBeGreaterThanOrEqual(1);
    expect(writer.writes).toBeLessThanOrEqual(3);
  }, 120_000);

  it("after an edit, Programmed goes False (Pending) for the new generation, naming the proxy that has not ACKed it, without waiting out the minute", async () => {
    await ok(['patch', 'retry', 'retry', '-n', 'curl', '--type', 'merge', '-p', '{"spec":{"retryPolicy":{"numRetries":2}}}']);
    const s = streams[0]!;
    const next = await s.next(10_000);
    expect(numRetries(next.resources[0])).toBe(2);
    // Not ACKed: once it has had its few seconds, the new generation's Programmed is written.
    await until(async () => condition(await retry(), 'Programmed')?.observedGeneration === 2, 30_000, 'Programmed of generation 2');
    expect(condition(await retry(), 'Programmed')).toMatchObject({ status: 'False', reason: 'Pending', message: expect.stringMatching(/^1 of 1 proxies of curl\/curl connected to replica \S+ do not have this policy: curl-1\.curl \(not ACKed\)$/) });
  }, 60_000);
});
