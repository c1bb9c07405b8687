/**
 * The live part of Retry statuses (the sidecars' numbers in `status.observed`), written rarely: a bounded rate per
 * policy, only on a material change, and every write of the writer through one token bucket. Against the local
 * server speaking the Kubernetes protocol (test/helpers/fake-kube.ts), on a clock of the test's own.
 */
import pino from 'pino';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { compile } from '../src/compile/compile.js';
import type { MeshIR } from '../src/compile/ir.js';
import type { MeshState } from '../src/model/mesh.js';
import { ObservedRetries } from '../src/observed/retries.js';
import { KubernetesWriters } from '../src/outputs/kubernetes.js';
import { RetryStatusWriter, observedMoved, type StatusBounds } from '../src/outputs/retry-status.js';
import { KubernetesSource } from '../src/sources/kubernetes.js';
import { FakeKube, PATHS } from './helpers/fake-kube.js';
import { eventually } from './helpers/grpc-xds.js';

const log = pino({ level: process.env.LOG_LEVEL ?? 'silent' });
const HTTPBIN = 'httpbin/httpbin|14001';

const retry = (name: string) => ({
  apiVersion: 'policy.flomesh.io/v1alpha1',
  kind: 'Retry',
  metadata: { name, namespace: 'curl', creationTimestamp: '2026-01-01T00:00:00Z', uid: `uid-${name}`, generation: 1 },
  spec: {
    source: { kind: 'ServiceAccount', name: 'curl', namespace: 'curl' },
    destinations: [{ kind: 'Service', name: name === 'retry' ? 'httpbin' : name, namespace: 'httpbin' }],
    retryPolicy: { retryOn: '5xx', numRetries: 5 },
  },
});

function seed(k: FakeKube, services: string[] = ['httpbin']): void {
  for (const ns of ['curl', 'httpbin']) k.apply(PATHS.namespaces, { metadata: { name: ns, labels: { 'flomesh.io/monitored-by': 'mesh-xds' } } });
  k.apply(PATHS.serviceAccounts, { metadata: { name: 'curl', namespace: 'curl' } });
  for (const [i, name] of services.entries()) {
    k.apply(PATHS.services, { metadata: { name, namespace: 'httpbin' }, spec: { clusterIP: `10.96.0.${i + 1}`, ports: [{ name: 'http', port: 14001, targetPort: 14001 }] } });
    k.apply(PATHS.retries, retry(name === 'httpbin' ? 'retry' : name));
  }
  k.apply(PATHS.meshConfigs('mesh-xds'), { metadata: { name: 'fsm-mesh-config', namespace: 'mesh-xds' }, spec: { featureFlags: { enableRetryPolicy: true } } });
}

let kube: FakeKube;
let source: KubernetesSource;
let stops: (() => Promise<void>)[] = [];

beforeEach(async () => {
  kube = new FakeKube();
  await kube.start();
});

afterEach(async () => {
  source?.stop();
  for (const stop of stops) await stop();
  stops = [];
  await kube.close();
});

async function startSource(): Promise<MeshState> {
  source = new KubernetesSource({ meshName: 'mesh-xds', namespace: 'mesh-xds', kubeConfig: kube.kubeConfig(), log, onChange: () => {}, debounceMs: 20, backoff: { initialMs: 20, maxMs: 100 } });
  return source.start();
}

/** The writers on the test's clock, with the sidecars' numbers from an ObservedRetries on the same clock. */
async function liveWriters(bounds: Partial<StatusBounds>): Promise<{ writers: KubernetesWriters; observed: ObservedRetries; ir: MeshIR; clock: { t: number } }> {
  seed(kube);
  const ir = compile(await startSource());
  const clock = { t: Date.parse('2026-12-01T00:00:00Z') };
  const observed = new ObservedRetries(() => ir, () => clock.t);
  const writers = new KubernetesWriters({
    kc: source.kc,
    namespace: 'mesh-xds',
    log,
    source,
    live: { observed: () => observed.view(), bounds: { graceMs: 0, ...bounds }, now: () => clock.t, tickMs: 3_600_000 },
  });
  stops.push(() => writers.stop());
  writers.start();
  await eventually(() => writers.elector.leader, 5000, 'the lease');
  return { writers, observed, ir, clock };
}

const statusPatches = (): any[] => kube.patches.filter((p) => p.path.endsWith('/retries/retry/status')).map((p) => p.body.status);

/**
 * 100 flushes 0.5 s apart, each a material change (the retries grow and a second sidecar comes and goes, so
 * proxiesReporting changes every time), a status pass after each; then one more flush past the minute.
 */
async function hundredFlushes(bounds: Partial<StatusBounds>): Promise<{ writes: number; last: any }> {
  const { writers, observed, ir, clock } = await liveWriters(bounds);
  await writers.policies(ir);
  const a = {};
  const b = {};
  const flush = (i: number): void => {
    observed.report(a, { identity: 'curl/curl', nodeId: 'curl-a' }, [
      [HTTPBIN, 'upstream_rq_total', 12],
      [HTTPBIN, 'upstream_rq_retry', 2],
      [HTTPBIN, 'upstream_rq_retry_limit_exceeded', 1],
    ]);
    // A second sidecar that reports nothing but counts as reporting, every other flush.
    if (i % 2) observed.report(b, { identity: 'curl/curl', nodeId: 'curl-b' }, [[HTTPBIN, 'upstream_rq_total', 0]]);
    else observed.ended(b);
  };
  for (let i = 0; i < 100; i++) {
    clock.t += 500;
    flush(i);
    await writers.pass();
  }
  clock.t += 11_000;
  flush(100);
  await writers.pass();
  return { writes: statusPatches().length, last: statusPatches().at(-1) };
}

describe('the live part of Retry statuses', () => {
  it('100 material changes within a minute are at most 3 writes: the first status, the first numbers, one a minute later', async () => {
    const { writes, last } = await hundredFlushes({});
    expect(writes).toBe(3);
    // What was written last is the sum over the last 5 minutes, as of then.
    expect(last.observed).toMatchObject({ window: '5m', requests: 1010, retries: 202, retriesSucceeded: 0, retriesExhausted: 101, retriesRefused: 0, retryRate: 0.2, attemptsPerRequest: 1.2, predictedAttemptsPerRequest: 6, proxiesReporting: 1 });
    expect(last.observed.since).toBe('2026-12-01T00:00:00Z');
    expect(last.observed.updated).toBe('2026-12-01T00:01:01Z');
    expect(kube.get(PATHS.retries, 'curl', 'retry').status.observed.retries).toBe(202);
  });

  it('without the bound (liveIntervalMs 0) the same flushes are a write each', async () => {
    const { writes } = await hundredFlushes({ liveIntervalMs: 0 });
    expect(writes).toBeGreaterThanOrEqual(100);
  });

  it('only a material change is written: a count moving by under 10% is not, even a minute later', async () => {
    const { writers, observed, ir, clock } = await liveWriters({});
    const s = {};
    const report = (total: number, retries: number): void => {
      observed.report(s, { identity: 'curl/curl', nodeId: 'curl-a' }, [
        [HTTPBIN, 'upstream_rq_total', total],
        [HTTPBIN, 'upstream_rq_retry', retries],
      ]);
    };
    report(110, 10);
    await writers.policies(ir);
    expect(statusPatches()).toHaveLength(1);
    expect(statusPatches()[0].observed).toMatchObject({ requests: 100, retries: 10, proxiesReporting: 1 });
    // 5% more requests, no more retries: not material, however long it waits.
    clock.t += 61_000;
    report(5, 0);
    await writers.pass();
    clock.t += 20_000;
    report(0, 0);
    await writers.pass();
    expect(statusPatches()).toHaveLength(1);
    // Retries from 10 to 11: material (10%), and the minute has passed.
    report(1, 1);
    await writers.pass();
    expect(statusPatches()).toHaveLength(2);
    expect(statusPatches()[1].observed).toMatchObject({ requests: 105, retries: 11, proxiesReporting: 1 });
    // The proxy stops reporting: proxiesReporting 1 -> 0 is material, written once the minute has passed.
    observed.ended(s);
    clock.t += 30_000;
    await writers.pass();
    expect(statusPatches()).toHaveLength(2);
    clock.t += 30_000;
    await writers.pass();
    expect(statusPatches()).toHaveLength(3);
    expect(statusPatches()[2].observed).toMatchObject({ requests: 105, retries: 11, proxiesReporting: 0 });
    expect(writers.info().statusWriter).toMatchObject({ writes: 3, liveWrites: 3 });
  });

  it('passes asked for while one runs are one more pass, however many (a burst of new meshes queues nothing)', async () => {
    const { writers, ir } = await liveWriters({});
    const write = vi.spyOn(RetryStatusWriter.prototype, 'write');
    try {
      const all = Array.from({ length: 100 }, () => writers.policies(ir));
      await Promise.all(all);
      // The first call's pass, and one for the 99 asked for meanwhile.
      expect(write.mock.calls.length).toBeLessThanOrEqual(2);
      await writers.pass();
      expect(write.mock.calls.length).toBeLessThanOrEqual(3);
      expect(statusPatches()).toHaveLength(1);
    } finally {
      write.mockRestore();
    }
  });

  it('says what is material', () => {
    const o = { window: '5m', requests: 100, retries: 10, retriesSucceeded: 0, retriesExhausted: 0, retriesRefused: 0, proxiesReporting: 2, predictedAttemptsPerRequest: 6, since: 'x', updated: 'a' };
    expect(observedMoved(o, { ...o, updated: 'b' })).toBe(false);
    expect(observedMoved(o, { ...o, requests: 109 })).toBe(false);
    expect(observedMoved(o, { ...o, requests: 110 })).toBe(true);
    expect(observedMoved(o, { ...o, requests: 90 })).toBe(true);
    expect(observedMoved(o, { ...o, retriesExhausted: 1 })).toBe(true);
    expect(observedMoved({ ...o, retriesSucceeded: 3 }, { ...o, retriesSucceeded: 0 })).toBe(true);
    expect(observedMoved(o, { ...o, proxiesReporting: 3 })).toBe(true);
    expect(observedMoved(o, { ...o, since: 'y' })).toBe(true);
    expect(observedMoved(undefined, o)).toBe(true);
    expect(observedMoved(o, undefined)).toBe(true);
  });

  it('a new leader writes no numbers in its first seconds, then the first at once', async () => {
    const { writers, observed, ir, clock } = await liveWriters({ graceMs: 10_000 });
    observed.report({}, { identity: 'curl/curl', nodeId: 'curl-a' }, [[HTTPBIN, 'upstream_rq_total', 3]]);
    await writers.policies(ir);
    expect(statusPatches()).toHaveLength(1);
    expect(statusPatches()[0].observed).toBeUndefined();
    clock.t += 10_000;
    await writers.pass();
    expect(statusPatches()).toHaveLength(2);
    expect(statusPatches()[1].observed).toMatchObject({ requests: 3, proxiesReporting: 1 });
  });

  it('every write of the writer goes through one token bucket (5 a second, a burst of 10)', async () => {
    const names = Array.from({ length: 30 }, (_, i) => (i === 0 ? 'httpbin' : `svc-${i}`));
    const run = async (bounds: Partial<StatusBounds>): Promise<{ writes: number; slept: number }> => {
      seed(kube, names);
      const ir = compile(await startSource());
      expect(ir.policies.filter((p) => p.state === 'Accepted')).toHaveLength(30);
      const clock = { t: 0 };
      let slept = 0;
      const writer = new RetryStatusWriter(source.kc, log, (ns, n) => source.retry(ns, n), {
        bounds,
        now: () => clock.t,
        sleep: async (ms) => {
          slept += ms;
          clock.t += ms;
        },
      });
      const before = kube.patches.length;
      await writer.write(ir);
      source.stop();
      return { writes: kube.patches.length - before, slept };
    };
    const bounded = await run({});
    expect(bounded.writes).toBe(30);
    // 10 at once, the 20 others at 5 a second.
    expect(bounded.slept).toBeGreaterThanOrEqual(4000);
    // The bucket is what made it wait.
    await kube.close();
    kube = new FakeKube();
    await kube.start();
    const unbounded = await run({ writesPerSecond: 1e9, burst: 1e9 });
    expect(unbounded).toEqual({ writes: 30, slept: 0 });
  });
});
