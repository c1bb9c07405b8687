/**
 * Two replicas of `serve --kubernetes --ca-dir` in one process (src/main.ts, the same mesh CA) against the local
 * server speaking the Kubernetes protocol (test/helpers/fake-kube.ts), found by each other through the EndpointSlices
 * of the control plane's Service: one sidecar of curl reports to replica a, another to replica b, each over its own
 * mTLS metrics stream; the Retry's status.observed holds both replicas' numbers, summed, with `replicas: 2/2`.
 * (Both replicas run in one process, so they share a Lease identity and both write; each writes the same sum.)
 */
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import pino from 'pino';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { parseServeArgs } from '../src/config.js';
import { serve, type Running } from '../src/main.js';
import { METRICS_PATH } from '../src/observed/metrics-service.js';
import { createCa, issue, writeCaDir, type KeyPair } from '../src/security/ca.js';
import { envoyRoot, loadEnvoyProtos } from '../src/xds/resources/protos.js';
import { FakeKube, PATHS } from './helpers/fake-kube.js';
import { eventually } from './helpers/grpc-xds.js';
import { tempDir } from './helpers/tmp.js';

const log = pino({ level: process.env.LOG_LEVEL ?? 'silent' });
const CLUSTER = 'httpbin/httpbin|14001';
const SLICES = '/apis/discovery.k8s.io/v1/namespaces/mesh-xds/endpointslices';
loadEnvoyProtos();
const MESSAGE = envoyRoot().lookupType('envoy.service.metrics.v3.StreamMetricsMessage');
const flush = (counters: Record<string, number>, first?: object): Buffer =>
  Buffer.from(
    MESSAGE.encode(
      MESSAGE.fromObject({
        ...(first ? { identifier: { node: first } } : {}),
        envoy_metrics: Object.entries(counters).map(([c, value]) => ({ name: `cluster.${CLUSTER}.${c}`, type: 0, metric: [{ counter: { value } }] })),
      }),
    ).finish(),
  );
const MetricsClient = grpc.makeGenericClientConstructor(
  { StreamMetrics: { path: METRICS_PATH, requestStream: true, responseStream: false, requestSerialize: (b: Buffer) => b, requestDeserialize: (b: Buffer) => b, responseSerialize: (b: Buffer) => b, responseDeserialize: (b: Buffer) => b } },
  'Metrics',
);

let kube: FakeKube;
let ca: KeyPair;
const replicas: Running[] = [];
const clients: grpc.Client[] = [];
const timers: NodeJS.Timeout[] = [];

beforeAll(async () => {
  const tmp = tempDir('mesh-xds-replicas-');
  ca = await createCa('cluster.local');
  writeCaDir(path.join(tmp, 'ca'), ca);
  kube = new FakeKube();
  await kube.start();
  for (const ns of ['curl', 'httpbin']) kube.apply(PATHS.namespaces, { metadata: { name: ns, labels: { 'flomesh.io/monitored-by': 'mesh-xds' } } });
  kube.apply(PATHS.serviceAccounts, { metadata: { name: 'curl', namespace: 'curl' } });
  kube.apply(PATHS.services, { metadata: { name: 'httpbin', namespace: 'httpbin' }, spec: { clusterIP: '10.96.0.1', ports: [{ name: 'http', port: 14001, targetPort: 14001 }] } });
  kube.apply(PATHS.retries, {
    apiVersion: 'policy.flomesh.io/v1alpha1',
    kind: 'Retry',
    metadata: { name: 'retry', namespace: 'curl', creationTimestamp: '2026-01-01T00:00:00Z', uid: 'uid-retry', generation: 1 },
    spec: { source: { kind: 'ServiceAccount', name: 'curl', namespace: 'curl' }, destinations: [{ kind: 'Service', name: 'httpbin', namespace: 'httpbin' }], retryPolicy: { retryOn: '5xx', numRetries: 5 } },
  });
  kube.apply(PATHS.meshConfigs('mesh-xds'), { metadata: { name: 'fsm-mesh-config', namespace: 'mesh-xds' }, spec: { featureFlags: { enableRetryPolicy: true } } });
  const kubeconfig = path.join(tmp, 'kubeconfig');
  writeFileSync(kubeconfig, kube.kubeConfig().exportConfig());
  const cfg = parseServeArgs(['--kubernetes', '--kubeconfig', kubeconfig, '--namespace', 'mesh-xds', '--ca-dir', path.join(tmp, 'ca'), '--ads-address', '127.0.0.1:0', '--debug-address', '127.0.0.1:0', '--webhook-address', 'off'], {});
  replicas.push(await serve(cfg, log), await serve(cfg, log));
  // The control plane's Service: an EndpointSlice per replica (the endpoints controller's part).
  for (const [i, r] of replicas.entries()) {
    kube.apply(SLICES, {
      metadata: { name: `mesh-xds-${i}`, namespace: 'mesh-xds', labels: { 'kubernetes.io/service-name': 'mesh-xds' } },
      addressType: 'IPv4',
      ports: [{ name: 'grpc-ads', port: r.adsPort, protocol: 'TCP' }],
      endpoints: [{ addresses: ['127.0.0.1'], conditions: { ready: true } }],
    });
  }
}, 60_000);

afterAll(async () => {
  for (const t of timers) clearInterval(t);
  for (const c of clients) c.close();
  await Promise.all(replicas.map((r) => r.close()));
  await kube?.close();
}, 30_000);

/** A sidecar of curl streaming its counters to a replica over mTLS, then empty flushes that keep it reporting. */
async function sidecar(r: Running, id: string, counters: Record<string, number>): Promise<void> {
  const pair = await issue(ca, { trustDomain: 'cluster.local', namespace: 'curl', serviceAccount: 'curl' });
  const client = new MetricsClient(`127.0.0.1:${r.adsPort}`, grpc.credentials.createSsl(Buffer.from(ca.cert), Buffer.from(pair.key), Buffer.from(pair.cert)), { 'grpc.ssl_target_name_override': 'localhost' }) as grpc.Client & Record<string, any>;
  clients.push(client);
  const call = client.StreamMetrics(() => {});
  call.write(flush(counters, { id, metadata: { fields: { namespace: { stringValue: 'curl' }, serviceAccount: { stringValue: 'curl' } } } }));
  timers.push(setInterval(() => call.write(flush({ upstream_rq_total: 0 })), 2_000));
}

it("the Retry's status sums the sidecars of both replicas, saying 2/2", async () => {
  // The guide's 503 once at replica a; twice at replica b.
  await sidecar(replicas[0]!, 'curl-1.curl', { upstream_rq_total: 6, upstream_rq_retry: 5, upstream_rq_retry_limit_exceeded: 1 });
  await sidecar(replicas[1]!, 'curl-2.curl', { upstream_rq_total: 12, upstream_rq_retry: 10, upstream_rq_retry_limit_exceeded: 2 });
  await eventually(() => replicas.every((r) => r.observed.view().policies[0]?.proxiesReporting === 1), 10_000, 'each replica has its sidecar');
  // Each replica alone knows its own sidecar's numbers only.
  expect(replicas.map((r) => r.observed.view().policies[0]!.windows['5m'].retries)).toEqual([5, 10]);
  // A new leader writes no live part in its first 10 s, then within a pass (5 s).
  const observed = () => kube.get(PATHS.retries, 'curl', 'retry')?.status?.observed;
  await eventually(() => observed()?.retries === 15, 40_000, 'the summed numbers in the status');
  expect(observed()).toMatchObject({ window: '5m', requests: 3, retries: 15, retriesExhausted: 3, retryRate: 5, attemptsPerRequest: 6, proxiesReporting: 2, replicas: '2/2' });
}, 60_000);
