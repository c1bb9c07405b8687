/** The Kubernetes source against a local server speaking the list/watch protocol. */
import pino from 'pino';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { KubernetesSource } from '../src/sources/kubernetes.js';
import { KubernetesWriters } from '../src/outputs/kubernetes.js';
import { compile } from '../src/compile/compile.js';
import type { MeshState } from '../src/model/mesh.js';
import { FakeKube, PATHS } from './helpers/fake-kube.js';
import { eventually } from './helpers/grpc-xds.js';

let kube: FakeKube;
let source: KubernetesSource;
let states: MeshState[];

const retry = (numRetries: number, name = 'retry') => ({
  apiVersion: 'policy.flomesh.io/v1alpha1',
  kind: 'Retry',
  metadata: { name, namespace: 'curl', creationTimestamp: '2026-01-01T00:00:00Z', uid: `uid-${name}` },
  spec: {
    source: { kind: 'ServiceAccount', name: 'curl', namespace: 'curl' },
    destinations: [{ kind: 'Service', name: 'httpbin', namespace: 'httpbin' }],
    retryPolicy: { retryOn: '5xx', numRetries },
  },
});

function seed(k: FakeKube): void {
  for (const ns of ['curl', 'httpbin']) k.apply(PATHS.namespaces, { metadata: { name: ns, labels: { 'flomesh.io/monitored-by': 'mesh-xds' } } });
  k.apply(PATHS.serviceAccounts, { metadata: { name: 'curl', namespace: 'curl' } });
  k.apply(PATHS.services, { metadata: { name: 'httpbin', namespace: 'httpbin' }, spec: { clusterIP: '10.96.0.1', ports: [{ name: 'http', port: 14001, targetPort: 14001 }] } });
  k.apply(PATHS.endpointSlices, {
    metadata: { name: 'httpbin-1', namespace: 'httpbin', labels: { 'kubernetes.io/service-name': 'httpbin' } },
    ports: [{ name: 'http', port: 14001 }],
    endpoints: [{ addresses: ['10.1.0.5'], conditions: { ready: true } }],
  });
  k.apply(PATHS.meshConfigs('mesh-xds'), { metadata: { name: 'fsm-mesh-config', namespace: 'mesh-xds' }, spec: { featureFlags: { enableRetryPolicy: true } } });
  k.apply(PATHS.retries, retry(5));
}

function makeSource(): KubernetesSource {
  return new KubernetesSource({
    meshName: 'mesh-xds',
    namespace: 'mesh-xds',
    kubeConfig: kube.kubeConfig(),
    log: pino({ level: process.env.LOG_LEVEL ?? 'silent' }),
    onChange: (s) => states.push(s),
    debounceMs: 20,
    backoff: { initialMs: 20, maxMs: 100 },
  });
}

const numRetries = (s: MeshState): unknown => (s.retries[0]?.spec as any)?.retryPolicy?.numRetries;
const latest = (): MeshState => states[states.length - 1];

beforeEach(async () => {
  kube = new FakeKube();
  await kube.start();
  seed(kube);
  states = [];
});

/** What a test started beside the source, stopped after it. */
let stops: (() => Promise<void>)[] = [];

afterEach(async () => {
  source?.stop();
  for (const stop of stops) await stop();
  stops = [];
  await kube.close();
});

describe('Kubernetes source', () => {
  it('publishes nothing until every resource has listed, retrying failed lists with backoff', async () => {
    kube.failLists(PATHS.retries, 3);
    source = makeSource();
    let first: MeshState | undefined;
    void source.start().then((s) => (first = s));
    await new Promise((r) => setTimeout(r, 40));
    expect(first).toBeUndefined();
    expect(source.synced).toBe(false);
    await eventually(() => first !== undefined, 5000, 'the first mesh');
    expect(kube.lists.get(PATHS.retries)).toBe(4);
    expect(first!.services.map((s) => s.name)).toEqual(['httpbin']);
    expect(first!.meshConfig.enableRetryPolicy).toBe(true);
    expect(numRetries(first!)).toBe(5);
    expect(states).toEqual([]);
  });

  it('follows watch events, re-watches after a dropped connection, relists after 410 Gone', async () => {
    source = makeSource();
    await source.start();
    kube.apply(PATHS.retries, retry(2));
    await eventually(() => states.length > 0 && numRetries(latest()) === 2, 5000, 'the watch event');

    kube.dropWatches();
    await new Promise((r) => setTimeout(r, 50));
    kube.apply(PATHS.retries, retry(3));
    await eventually(() => numRetries(latest()) === 3, 5000, 'an event after the dropped watch');
    const listsBefore = kube.lists.get(PATHS.retries)!;
    kube.bookmark();

    // History compacted while the watch is down: the next watch gets 410 and the source relists.
    kube.compact();
    kube.dropWatches();
    kube.remove(PATHS.retries, 'curl', 'retry');
    kube.apply(PATHS.retries, retry(4, 'second'));
    kube.compact();
    await eventually(() => (kube.lists.get(PATHS.retries) ?? 0) > listsBefore, 5000, 'a relist');
    await eventually(() => latest().retries.map((r) => r.name).join() === 'second', 5000, 'the relisted state');
    expect(numRetries(latest())).toBe(4);
  });

  it('writes Retry status (conditions, observedGeneration) only when it changes', async () => {
    source = makeSource();
    // The writers (outputs/) read the source's caches and write what the pipeline computed.
    const writers = new KubernetesWriters({ kc: source.kc, namespace: 'mesh-xds', log: pino({ level: 'silent' }), source });
    stops.push(() => writers.stop());
    writers.start();
    const first = await source.start();
    // Only the holder of the Lease writes statuses: a single replica gets it at once.
    await eventually(() => writers.elector.leader, 5000, 'the lease');
    expect(kube.leases.get('mesh-xds/mesh-xds-status-writer')?.spec.holderIdentity).toBe(writers.elector.identity);
    await writers.policies(compile(first));
    expect(kube.patches).toHaveLength(1);
    expect(kube.patches[0].path).toBe('/apis/policy.flomesh.io/v1alpha1/namespaces/curl/retries/retry/status');
    const status = kube.get(PATHS.retries, 'curl', 'retry').status;
    expect(status).toMatchObject({ observedGeneration: 1, conditions: [{ type: 'Accepted', status: 'True', reason: 'Accepted', observedGeneration: 1 }] });
    expect(status.conditions[0].lastTransitionTime).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$/);

    // The status write comes back as a watch event; translating again writes nothing.
    await eventually(() => states.length > 0, 5000, 'the status event');
    await writers.policies(compile(latest()));
    expect(kube.patches).toHaveLength(1);

    // An invalid spec: a new status saying why.
    kube.apply(PATHS.retries, { ...retry(5), metadata: { ...retry(5).metadata, generation: 2 }, spec: { ...retry(5).spec, retryPolicy: { retryOn: '5xxx' } } });
    await eventually(() => (latest().retries[0].spec as any).retryPolicy.retryOn === '5xxx', 5000, 'the bad spec');
    await writers.policies(compile(latest()));
    expect(kube.patches).toHaveLength(2);
    expect(kube.patches[1].body.status).toMatchObject({
      observedGeneration: 2,
      conditions: [{ type: 'Accepted', status: 'False', reason: 'Invalid', message: expect.stringContaining('unknown retryOn condition "5xxx"') }],
    });
  });
});
