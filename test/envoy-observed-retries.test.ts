/**
 * What the retries did, as the control plane sees it (issue 34), with real Envoy sidecars over both ADS flavours: the
 * sandbox's pods (sandbox/sandbox.ts: network namespaces, the samples' injected bootstrap, httpbin, curl, `mesh-xds
 * serve --manifests`) stream their counters over Envoy's metrics service on the ADS port every 5 s (the bootstrap's
 * default), and `/debug/retries` sums them per Retry. Every number the server shows is checked against the sidecars'
 * own counters (their admin), which also shows how Envoy counts: an attempt is in a cluster's `upstream_rq_total` once
 * it has an upstream stream, in `upstream_cx_connect_fail` when its connection failed; a retry the budget refused is in
 * `upstream_rq_retry_overflow` only; `upstream_rq_5xx` counts the answer a request ended with, not each attempt.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Sandbox, guideWorkloads, sampleWorkload, until, type AdsFlavour, type Workload } from '../sandbox/sandbox.js';
import { sandboxMissing } from './helpers/sandbox.js';
import { COUNTERS, type CounterName, type ObservedNumbers, type ObservedPath, type ObservedPolicy, type ObservedView } from '../src/observed/retries.js';

const HTTPBIN = 'httpbin.httpbin.svc.cluster.local:14001';
const CLUSTER = 'httpbin/httpbin|14001';
/** The guide's Retry (deploy/samples/retry.yaml: curl -> httpbin, 5xx, numRetries 5), which the sandbox serves. */
const POLICY = 'curl/retry';
/** The sandbox's sidecars flush every 5 s (the injected bootstrap's default: SANDBOX_TEMPLATE sets no other). */
const FLUSH_MS = 5_000;
/** How long a number may take to show: a generous deadline to poll to, not a bound the test measures. */
const VISIBLE_MS = 4 * FLUSH_MS;

type Counts = Record<CounterName, number>;
const zero = (): Counts => Object.fromEntries(COUNTERS.map((c) => [c, 0])) as Counts;
const add = (...all: Counts[]): Counts => Object.fromEntries(COUNTERS.map((c) => [c, all.reduce((s, x) => s + x[c], 0)])) as Counts;
const minus = (a: Counts, b: Counts): Counts => Object.fromEntries(COUNTERS.map((c) => [c, a[c] - b[c]])) as Counts;

/** What the server must show for a sidecar's counters of one destination cluster. */
function expected(c: Counts): Partial<ObservedNumbers> {
  const attempts = c.upstream_rq_total + c.upstream_cx_connect_fail;
  return {
    requests: attempts - c.upstream_rq_retry,
    attempts,
    retries: c.upstream_rq_retry,
    retriesSucceeded: c.upstream_rq_retry_success,
    retriesExhausted: c.upstream_rq_retry_limit_exceeded,
    retriesRefused: c.upstream_rq_retry_overflow,
    responses5xx: c.upstream_rq_5xx,
    timeouts: c.upstream_rq_timeout,
    perTryTimeouts: c.upstream_rq_per_try_timeout,
    connectFailures: c.upstream_cx_connect_fail,
  };
}
const plus = (a: Partial<ObservedNumbers>, b: Partial<ObservedNumbers>): Partial<ObservedNumbers> =>
  Object.fromEntries(Object.entries(b).map(([k, v]) => [k, (a[k as keyof ObservedNumbers] as number) + (v as number)]));

function observedRetriesSuite(flavour: AdsFlavour): void {
  describe.skipIf(sandboxMissing.length > 0)(`what the retries did, summed by the control plane from real Envoy sidecars (ADS ${flavour})`, () => {
    let sb: Sandbox;
    let curl: Workload;
    let curl2: Workload;
    let other: Workload;

    beforeAll(async () => {
      sb = await Sandbox.start({
        workloads: [
          ...guideWorkloads(flavour),
          // A second pod of the curl Deployment: the same identity, a sidecar of its own.
          sampleWorkload('curl.yaml', { name: 'curl-2', ports: undefined, flavour }),
          // A pod of another service account in the curl namespace: the guide's Retry is not its.
          sampleWorkload('curl.yaml', { name: 'curl-other', serviceAccount: 'other', ports: undefined, flavour }),
        ],
      });
      [curl, curl2, other] = ['curl', 'curl-2', 'curl-other'].map((n) => sb.workload(n));
    }, 120_000);

    afterAll(async () => {
      // Nothing we published (the tight budget included) was refused by any sidecar.
      if (sb) for (const w of sb.workloads.values()) expect(await w.sidecar.rejected(), w.podName).toEqual({});
      await sb?.close();
    }, 60_000);

    const view = async (query = ''): Promise<ObservedView> => sb.controlPlane.get(`/debug/retries${query}`);
    const guideRetry = async (): Promise<ObservedPolicy> => {
      const p = (await view()).policies.find((x) => x.policy === POLICY);
      if (!p) throw new Error(`/debug/retries shows no ${POLICY}`);
      return p;
    };
    const total = async (): Promise<ObservedNumbers> => (await guideRetry()).windows.total;
    const otherPath = async (): Promise<ObservedPath | undefined> => (await view('?paths=1')).paths.find((p) => p.source === 'curl/other' && p.destination === 'httpbin/httpbin');

    /** A sidecar's own counters for httpbin's cluster, from its admin (a response class exists once one came). */
    async function own(w: Workload): Promise<Counts> {
      const stats = await w.sidecar.stats(`^cluster\\.${CLUSTER.replace(/\|/g, '\\|')}\\.`);
      const out = zero();
      for (const c of COUNTERS) {
        const v = stats.get(`cluster.${CLUSTER}.${c}`);
        if (v === undefined && c !== 'upstream_rq_5xx') throw new Error(`${w.podName}: its sidecar keeps no cluster.${CLUSTER}.${c}`);
        out[c] = v ?? 0;
      }
      return out;
    }

    /** HEAD httpbin/status/CODE from a pod, through its sidecar: the status line. */
    async function request(from: Workload, code: number): Promise<string> {
      const r = await from.pod.exec('curl', ['-sI', `${HTTPBIN}/status/${code}`], { timeoutMs: 90_000 });
      expect(r.code, r.stderr).toBe(0);
      return r.stdout.split('\r\n')[0];
    }

    /**
     * Polls /debug/retries until the guide's Retry shows `want` (every field, since it applies) and logs how long after
     * the call that took: the flush-to-visible delay.
     */
    async function shows(want: Partial<ObservedNumbers>, what: string): Promise<ObservedPolicy> {
      const t0 = Date.now();
      const matches = (n: ObservedNumbers): boolean => Object.entries(want).every(([k, v]) => n[k as keyof ObservedNumbers] === v);
      try {
        await until(async () => matches(await total()), VISIBLE_MS, `/debug/retries to show ${POLICY} with ${JSON.stringify(want)} (${what})`);
      } catch (e) {
        // The difference, field by field.
        expect(await total(), (e as Error).message).toMatchObject(want);
        throw e;
      }
      console.log(`[${flavour}] ${what}: on /debug/retries ${Date.now() - t0} ms after the request ended (a flush every ${FLUSH_MS} ms)`);
      return guideRetry();
    }

    it("the guide's 503: the Retry shows 1 request, 5 retries, 1 out of retries, 0 succeeded, as the curl sidecar counted them", async () => {
      expect(await request(curl, 503)).toMatch(/^HTTP\/1\.1 503/);
      const mine = await own(curl);
      // How Envoy counts: the first try and each of the 5 retries are in upstream_rq_total; the 503 the request ended with is one 5xx.
      expect(mine).toMatchObject({ upstream_rq_total: 6, upstream_rq_retry: 5, upstream_rq_retry_limit_exceeded: 1, upstream_rq_retry_success: 0, upstream_rq_retry_overflow: 0, upstream_rq_5xx: 1 });
      const policy = await shows({ requests: 1, retries: 5, retriesExhausted: 1, retriesSucceeded: 0 }, "the guide's 503");
      expect(policy.windows.total).toMatchObject({ ...expected(mine), attempts: 6, retriesRefused: 0, retryRate: 5, retrySuccessRate: 0, attemptsPerRequest: 6 });
      // Seconds old: the last minute and the last five hold the same.
      expect(policy.windows['1m']).toEqual(policy.windows.total);
      expect(policy.windows['5m']).toEqual(policy.windows.total);
      expect(policy).toMatchObject({ source: 'curl/curl', destinations: ['httpbin/httpbin'], predictedAttemptsPerRequest: 6, proxiesReporting: 2 });
      // Nobody else called httpbin.
      expect(add(await own(curl2), await own(other)).upstream_rq_total).toBe(0);
    }, 90_000);

    it('two curl sidecars (two pods of one identity) add up: 2 requests, 10 retries, 2 out of retries, 2 proxies reporting', async () => {
      expect(await request(curl2, 503)).toMatch(/^HTTP\/1\.1 503/);
      expect(await own(curl2)).toMatchObject({ upstream_rq_total: 6, upstream_rq_retry: 5, upstream_rq_retry_limit_exceeded: 1 });
      const policy = await shows({ requests: 2, retries: 10, retriesExhausted: 2, retriesSucceeded: 0 }, 'a 503 from the second curl pod');
      expect(policy.windows.total).toMatchObject(expected(add(await own(curl), await own(curl2))));
      expect(policy.proxiesReporting).toBe(2);
      expect((await view()).proxiesReporting).toBe(sb.workloads.size);
    }, 90_000);

    it("another identity's sidecar cannot change the Retry's numbers: its calls to httpbin show on its own path, with no policy", async () => {
      const before = await total();
      for (const code of [503, 503, 200]) expect(await request(other, code)).toMatch(new RegExp(`^HTTP/1\\.1 ${code}`));
      const theirs = await own(other);
      expect(theirs).toMatchObject({ upstream_rq_total: 3, upstream_rq_retry: 0, upstream_rq_5xx: 2 });
      await until(async () => (await otherPath())?.windows.total.attempts === 3, VISIBLE_MS, "the other identity's path on /debug/retries?paths=1");
      const path = await otherPath();
      expect(path).toMatchObject({ policy: null, windows: { total: { ...expected(theirs), requests: 3, retries: 0, retryRate: 0 } } });
      // Its report has arrived: the Retry's numbers are what they were.
      expect(await total()).toEqual(before);
      const paths = (await view('?paths=1')).paths.filter((p) => p.destination === 'httpbin/httpbin');
      expect(paths.map((p) => [p.source, p.policy])).toEqual([
        ['curl/curl', POLICY],
        ['curl/other', null],
      ]);
    }, 60_000);

    it('an Envoy restart neither doubles nor loses the numbers: they stay, and a new request adds exactly its own', async () => {
      const reported = add(await own(curl), await own(curl2));
      const kept = await total();
      expect(kept).toMatchObject(expected(reported));
      const pid = curl.sidecar.proc.child.pid;
      const restarted = await sb.restartSidecar('curl');
      expect(restarted.proc.child.pid).not.toBe(pid);
      // Its counters start again from zero.
      expect((await own(curl)).upstream_rq_total).toBe(0);
      // A flush of the new Envoy later: nothing added, nothing lost.
      await new Promise((r) => setTimeout(r, FLUSH_MS + 1000));
      expect(await total()).toEqual(kept);
      expect(await request(curl, 503)).toMatch(/^HTTP\/1\.1 503/);
      const fresh = await own(curl);
      expect(fresh).toMatchObject({ upstream_rq_total: 6, upstream_rq_retry: 5, upstream_rq_retry_limit_exceeded: 1 });
      const policy = await shows({ requests: kept.requests + 1, retries: kept.retries + 5, retriesExhausted: kept.retriesExhausted + 1 }, 'a 503 after the restart');
      expect(policy.windows.total).toMatchObject(expected(add(reported, fresh)));
      // Still two proxies of the identity: the restarted one is the same node.
      expect(policy.proxiesReporting).toBe(2);
      // And a flush later, still exactly that.
      await new Promise((r) => setTimeout(r, FLUSH_MS + 1000));
      expect(await total()).toEqual(policy.windows.total);
    }, 90_000);

    it("the destination down (httpbin's sidecar stopped): each attempt whose connection failed counts, 1 request of 6 attempts", async () => {
      const kept = await total();
      const [mine, theirs] = [await own(curl), await own(other)];
      const theirPath = (await otherPath())!.windows.total;
      const httpbin = sb.workload('httpbin');
      await httpbin.sidecar.proc.stop();
      try {
        // With the Retry (curl) and without one (curl-other), at once.
        const [a, b] = await Promise.all([request(curl, 200), request(other, 200)]);
        expect([a, b]).toEqual(['HTTP/1.1 503 Service Unavailable', 'HTTP/1.1 503 Service Unavailable']);
      } finally {
        await sb.restartSidecar('httpbin');
      }
      const failed = minus(await own(curl), mine);
      // Not one attempt reached httpbin: none is in upstream_rq_total, each is a failed connection.
      expect(failed).toMatchObject({ upstream_rq_total: 0, upstream_cx_connect_fail: 6, upstream_rq_retry: 5, upstream_rq_retry_limit_exceeded: 1 });
      expect(minus(await own(other), theirs)).toMatchObject({ upstream_rq_total: 0, upstream_cx_connect_fail: 1, upstream_rq_retry: 0 });
      await shows(plus(kept, { requests: 1, attempts: 6, retries: 5, retriesExhausted: 1, connectFailures: 6 }), 'the 503 of a destination down');
      expect(await total()).toMatchObject(plus(kept, expected(failed)));
      await until(async () => (await otherPath())?.windows.total.connectFailures === theirPath.connectFailures + 1, VISIBLE_MS, "curl-other's failed connection on its path");
      expect((await otherPath())!.windows.total).toMatchObject(plus(theirPath, { requests: 1, attempts: 1, retries: 0, connectFailures: 1 }));
    }, 90_000);

    it('a burst against the retry budget: the retries it refused show, as the sidecar counted them', async () => {
      const kept = await total();
      const budgetOf = async (w: Workload): Promise<unknown> => {
        const dump = await w.sidecar.configDump('?resource=dynamic_active_clusters');
        return dump.configs.find((x: any) => x.cluster?.name === CLUSTER)?.cluster.circuit_breakers?.thresholds?.[0]?.retry_budget;
      };
      // A budget no burst of fewer than 100 requests at once leaves room in: 1% of the active requests, no floor.
      const mesh = sb.readManifest('mesh.yaml');
      const tight = mesh.replace('enablePermissiveTrafficPolicyMode: true', 'enablePermissiveTrafficPolicyMode: true\n    retryBudget: { budgetPercent: 1, minRetryConcurrency: 0 }');
      expect(tight).not.toBe(mesh);
      sb.writeManifest('mesh.yaml', tight);
      await until(async () => JSON.stringify(await budgetOf(curl)) === JSON.stringify({ budget_percent: { value: 1 }, min_retry_concurrency: 0 }), 15_000, 'the budget in the curl sidecar');
      const before = await own(curl);
      const N = 50;
      const urls = Array.from({ length: N }, () => `${HTTPBIN}/status/503`);
      const r = await curl.pod.exec('curl', ['-s', '--parallel', '--parallel-immediate', '--parallel-max', String(N), '-o', '/dev/null', '-w', '%{http_code}\\n', ...urls], { timeoutMs: 60_000 });
      expect(r.stdout.trim().split('\n')).toEqual(Array(N).fill('503'));
      const burst = minus(await own(curl), before);
      // Every request's first retry refused: counted as overflow, not as a retry, and no attempt made for it.
      expect(burst).toMatchObject({ upstream_rq_total: N, upstream_rq_retry: 0, upstream_rq_retry_overflow: N, upstream_rq_retry_limit_exceeded: 0, upstream_rq_5xx: N });
      const policy = await shows(plus(kept, { requests: N, attempts: N, retries: 0, retriesRefused: N }), `a burst of ${N} against the budget`);
      expect(policy.windows.total).toMatchObject(plus(kept, expected(burst)));
    }, 90_000);
  });
}

observedRetriesSuite('GRPC');
observedRetriesSuite('DELTA_GRPC');
