/**
 * Gateway API mesh routes (GAMMA) with real traffic: the sandbox's pods (sandbox/sandbox.ts: network namespaces, the
 * samples' injected Envoy sidecars, httpbin under gunicorn, `mesh-xds serve --manifests`) call httpbin through their
 * sidecars, with an HTTPRoute of httpbin's namespace (the producer route: every caller), one of the shop namespace (a
 * consumer route: shop's callers only) and an FSM Retry naming one caller beside them. What each request did is read
 * from the caller's sidecar (its admin's counters for the destination cluster), from the answer (httpbin echoes the
 * request's headers) and from the backends themselves (each gunicorn's access log, one line per request it served).
 */
import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Sandbox, guideWorkloads, sampleWorkload, until, type Workload } from '../sandbox/sandbox.js';
import { sandboxMissing } from './helpers/sandbox.js';

const PORT = 14001;
const HTTPBIN = `httpbin.httpbin.svc.cluster.local:${PORT}`;
const CLUSTER = `httpbin/httpbin|${PORT}`;
const V2_CLUSTER = `httpbin/httpbin-v2|${PORT}`;
/** How long a manifest edit may take to reach the sidecars: a deadline to poll to, not a bound the test measures. */
const EDIT_MS = 20_000;

/**
 * The producer route: /status retries a 503 (only) twice, 100 ms apart; `x-version: v2` goes to httpbin-v2, which
 * says so in a response header; `x-canary: yes` to httpbin-v2 by weight (httpbin's is 0); a redirect, two rewrites, a
 * request timeout; everything else to httpbin.
 */
const PRODUCER = `
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: { name: httpbin, namespace: httpbin }
spec:
  parentRefs: [{ group: "", kind: Service, name: httpbin, port: ${PORT} }]
  rules:
    - matches: [{ path: { type: PathPrefix, value: /status } }]
      backendRefs: [{ name: httpbin, port: ${PORT} }]
      retry: { codes: [503], attempts: 2, backoff: 100ms }
    - matches: [{ headers: [{ name: x-version, value: v2 }] }]
      filters: [{ type: ResponseHeaderModifier, responseHeaderModifier: { set: [{ name: X-Backend, value: v2 }] } }]
      backendRefs: [{ name: httpbin-v2, port: ${PORT} }]
    - matches: [{ headers: [{ name: x-canary, value: "yes" }] }]
      backendRefs: [{ name: httpbin, port: ${PORT}, weight: 0 }, { name: httpbin-v2, port: ${PORT}, weight: 1 }]
    - matches: [{ path: { type: PathPrefix, value: /old-site } }]
      filters: [{ type: RequestRedirect, requestRedirect: { scheme: https, hostname: example.com, statusCode: 301, path: { type: ReplaceFullPath, replaceFullPath: /new-site } } }]
    - matches: [{ path: { type: PathPrefix, value: /strip } }]
      filters: [{ type: URLRewrite, urlRewrite: { path: { type: ReplacePrefixMatch, replacePrefixMatch: / } } }]
      backendRefs: [{ name: httpbin, port: ${PORT} }]
    - matches: [{ path: { type: PathPrefix, value: /anything/old/ } }]
      filters: [{ type: URLRewrite, urlRewrite: { hostname: httpbin.internal, path: { type: ReplacePrefixMatch, replacePrefixMatch: /anything/new } } }]
      backendRefs: [{ name: httpbin, port: ${PORT} }]
    - matches: [{ path: { type: PathPrefix, value: /delay } }]
      backendRefs: [{ name: httpbin, port: ${PORT} }]
      timeouts: { request: 500ms }
    - backendRefs: [{ name: httpbin, port: ${PORT} }]
`;

/** The consumer route: shop's calls to httpbin carry X-Consumer (VALUE), with no retry and no v2. */
const consumer = (value: string): string => `
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: { name: httpbin-from-shop, namespace: shop }
spec:
  parentRefs: [{ group: "", kind: Service, name: httpbin, namespace: httpbin }]
  rules:
    - filters: [{ type: RequestHeaderModifier, requestHeaderModifier: { set: [{ name: X-Consumer, value: "${value}" }] } }]
      backendRefs: [{ name: httpbin, namespace: httpbin, port: ${PORT} }]
`;

/** An FSM Retry for curl/curl only: 4 retries of any 5xx (a short backoff, so that the test is quick). */
const RETRY = `
kind: Retry
apiVersion: policy.flomesh.io/v1alpha1
metadata: { name: retry, namespace: curl }
spec:
  source: { kind: ServiceAccount, name: curl, namespace: curl }
  destinations: [{ kind: Service, name: httpbin, namespace: httpbin }]
  retryPolicy: { retryOn: 5xx, numRetries: 4, retryBackoffBaseInterval: 10ms }
`;

interface Answer {
  status: number;
  headers: Record<string, string>;
  body: string;
}

describe.skipIf(sandboxMissing.length > 0)('Gateway API mesh routes with real Envoy sidecars and real traffic', () => {
  let sb: Sandbox;
  /** curl/curl: the FSM Retry names it. */
  let curl: Workload;
  /** curl/other: the producer route alone. */
  let other: Workload;
  /** shop/shop: the consumer route. */
  let shop: Workload;

  beforeAll(async () => {
    sb = await Sandbox.start({
      workloads: [
        ...guideWorkloads(),
        // A second httpbin (Service httpbin-v2, its own pod and gunicorn) in httpbin's namespace.
        sampleWorkload('httpbin.yaml', { name: 'httpbin-v2' }),
        sampleWorkload('curl.yaml', { name: 'curl-other', serviceAccount: 'other', ports: undefined }),
        sampleWorkload('curl.yaml', { name: 'shop', namespace: 'shop', serviceAccount: 'shop', ports: undefined }),
      ],
      manifests: { 'producer.yaml': PRODUCER, 'consumer.yaml': consumer('yes'), 'retry.yaml': RETRY },
    });
    [curl, other, shop] = ['curl', 'curl-other', 'shop'].map((n) => sb.workload(n));
  }, 120_000);

  afterAll(async () => {
    // Every route configuration we published was accepted by every sidecar.
    if (sb) for (const w of sb.workloads.values()) expect(await w.sidecar.rejected(), w.podName).toEqual({});
    await sb?.close();
  }, 60_000);

  /** METHOD httpbin PATH from a pod, through its sidecar: the status, the response headers (lower case), the body. */
  async function call(from: Workload, path: string, headers: Record<string, string> = {}): Promise<Answer> {
    const args = ['-s', '-i', ...Object.entries(headers).flatMap(([k, v]) => ['-H', `${k}: ${v}`]), `${HTTPBIN}${path}`];
    const r = await from.pod.exec('curl', args, { timeoutMs: 30_000 });
    expect(r.code, r.stderr).toBe(0);
    const at = r.stdout.indexOf('\r\n\r\n');
    const [status, ...lines] = r.stdout.slice(0, at).split('\r\n');
    return {
      status: Number(status.split(' ')[1]),
      headers: Object.fromEntries(lines.map((l) => [l.slice(0, l.indexOf(':')).toLowerCase(), l.slice(l.indexOf(':') + 1).trim()])),
      body: r.stdout.slice(at + 4),
    };
  }

  /** A caller sidecar's counter of a destination cluster (0 before its first request there). */
  async function counter(w: Workload, cluster: string, name: string): Promise<number> {
    const key = `cluster.${cluster}.${name}`;
    return (await w.sidecar.stats(`^${key.replace(/[.|]/g, '\\$&')}$`)).get(key) ?? 0;
  }

  /** What a request did at the caller's sidecar: its attempts and retries on httpbin's cluster. */
  async function attempts(w: Workload, run: () => Promise<void>): Promise<{ total: number; retries: number }> {
    const [t0, r0] = [await counter(w, CLUSTER, 'upstream_rq_total'), await counter(w, CLUSTER, 'upstream_rq_retry')];
    await run();
    return { total: (await counter(w, CLUSTER, 'upstream_rq_total')) - t0, retries: (await counter(w, CLUSTER, 'upstream_rq_retry')) - r0 };
  }

  /** How many requests carrying `tag` a backend's gunicorn served (its access log: one line per request). */
  const served = (backend: string, tag: string): number => sb.workload(backend).app!.lines().filter((l) => l.includes(tag)).length;

  /** Waits until each backend's access log shows `want[backend]` lines with `tag` (the log line may lag the answer). */
  async function servedExactly(tag: string, want: Record<string, number>): Promise<void> {
    const now = (): Record<string, number> => Object.fromEntries(Object.keys(want).map((b) => [b, served(b, tag)]));
    await until(() => JSON.stringify(now()) === JSON.stringify(want), 5_000, `access logs with ${tag}: ${JSON.stringify(want)}`).catch(() => {});
    expect(now(), `requests with ${tag} each backend served`).toEqual(want);
  }

  const tag = (): string => `t${randomUUID().slice(0, 8)}`;

  it("the producer route's retry: a 503 is retried exactly twice (httpbin serves 3 requests), a 500 not at all", async () => {
    const t503 = tag();
    expect(await attempts(other, async () => expect((await call(other, `/status/503?${t503}`)).status).toBe(503))).toEqual({ total: 3, retries: 2 });
    await servedExactly(t503, { httpbin: 3, 'httpbin-v2': 0 });
    // Out of retries: the 503 the request ended with.
    expect(await counter(other, CLUSTER, 'upstream_rq_retry_limit_exceeded')).toBe(1);

    const t500 = tag();
    expect(await attempts(other, async () => expect((await call(other, `/status/500?${t500}`)).status).toBe(500))).toEqual({ total: 1, retries: 0 });
    await servedExactly(t500, { httpbin: 1, 'httpbin-v2': 0 });
  }, 60_000);

  it('the consumer route changes only its namespace: shop gets X-Consumer and no retry, curl/other gets neither', async () => {
    const fromShop = await call(shop, '/headers');
    expect(fromShop.status).toBe(200);
    expect(JSON.parse(fromShop.body).headers['X-Consumer']).toBe('yes');
    const fromOther = await call(other, '/headers');
    expect(fromOther.status).toBe(200);
    expect(JSON.parse(fromOther.body).headers).not.toHaveProperty('X-Consumer');
    // The consumer route replaces the producer's for shop: no retry on its 503, no v2 for its x-version.
    const t = tag();
    expect(await attempts(shop, async () => expect((await call(shop, `/status/503?${t}`)).status).toBe(503))).toEqual({ total: 1, retries: 0 });
    const v = tag();
    const shopV2 = await call(shop, `/anything/${v}`, { 'x-version': 'v2' });
    expect([shopV2.status, shopV2.headers['x-backend']]).toEqual([200, undefined]);
    await servedExactly(t, { httpbin: 1, 'httpbin-v2': 0 });
    await servedExactly(v, { httpbin: 1, 'httpbin-v2': 0 });
  }, 60_000);

  it('a header match sends the request to the second backend (httpbin-v2 serves it and the rule says so); without it, httpbin', async () => {
    const v2Before = await counter(other, V2_CLUSTER, 'upstream_rq_total');
    const [withHeader, without] = [tag(), tag()];
    const a = await call(other, `/anything/${withHeader}`, { 'x-version': 'v2' });
    expect([a.status, a.headers['x-backend']]).toEqual([200, 'v2']);
    expect(JSON.parse(a.body).url).toContain(withHeader);
    const b = await call(other, `/anything/${without}`);
    expect([b.status, b.headers['x-backend']]).toEqual([200, undefined]);
    await servedExactly(withHeader, { httpbin: 0, 'httpbin-v2': 1 });
    await servedExactly(without, { httpbin: 1, 'httpbin-v2': 0 });
    expect((await counter(other, V2_CLUSTER, 'upstream_rq_total')) - v2Before).toBe(1);
  }, 60_000);

  it('a backend of weight 0 gets nothing; a redirect, path and host rewrites and a request timeout do what the route says', async () => {
    const canary = tag();
    for (let i = 0; i < 3; i++) expect((await call(other, `/anything/${canary}`, { 'x-canary': 'yes' })).status).toBe(200);
    await servedExactly(canary, { httpbin: 0, 'httpbin-v2': 3 });
    const moved = await call(other, '/old-site/page?q=1');
    expect([moved.status, moved.headers.location]).toEqual([301, 'https://example.com/new-site?q=1']);
    const url = async (path: string): Promise<[number, string, string]> => {
      const a = await call(other, path);
      const echo = JSON.parse(a.body);
      return [a.status, echo.url, echo.headers.Host];
    };
    expect(await url('/strip/anything/x?q=1')).toEqual([200, `http://${HTTPBIN}/anything/x?q=1`, HTTPBIN]);
    expect(await url('/anything/old/x')).toEqual([200, 'http://httpbin.internal/anything/new/x', 'httpbin.internal']);
    // A prefix matches whole segments: /anything/oldx is not under /anything/old/.
    expect(await url('/anything/oldx')).toEqual([200, `http://${HTTPBIN}/anything/oldx`, HTTPBIN]);
    // httpbin answers /delay/1 after a second: the route's 500 ms are up first (Envoy's 504). Last: httpbin's one
    // worker is busy with it for a second more.
    const late = await call(other, '/delay/1');
    expect([late.status, late.body]).toEqual([504, 'upstream request timeout']);
    expect(await counter(other, CLUSTER, 'upstream_rq_timeout')).toBe(1);
  }, 60_000);

  it("an FSM Retry naming the caller wins over the route's retry (4 retries of any 5xx, not 2 of a 503); the route's matches stay", async () => {
    const t503 = tag();
    expect(await attempts(curl, async () => expect((await call(curl, `/status/503?${t503}`)).status).toBe(503))).toEqual({ total: 5, retries: 4 });
    const t500 = tag();
    expect(await attempts(curl, async () => expect((await call(curl, `/status/500?${t500}`)).status).toBe(500))).toEqual({ total: 5, retries: 4 });
    await servedExactly(t503, { httpbin: 5, 'httpbin-v2': 0 });
    await servedExactly(t500, { httpbin: 5, 'httpbin-v2': 0 });
    const v = tag();
    const a = await call(curl, `/anything/${v}`, { 'x-version': 'v2' });
    expect([a.status, a.headers['x-backend']]).toEqual([200, 'v2']);
    await servedExactly(v, { httpbin: 0, 'httpbin-v2': 1 });
  }, 60_000);

  it("an edit of the folder reaches the sidecars: the consumer route's new header value, then (route deleted) shop gets the producer route", async () => {
    const consumerHeader = async (): Promise<string | undefined> => JSON.parse((await call(shop, '/headers')).body).headers['X-Consumer'];
    let t0 = Date.now();
    sb.writeManifest('consumer.yaml', consumer('edited'));
    await until(async () => (await consumerHeader()) === 'edited', EDIT_MS, "shop's requests to carry X-Consumer: edited");
    console.log(`consumer route edited: in shop's traffic ${Date.now() - t0} ms after the write`);
    // The other namespace's callers never had it.
    expect(JSON.parse((await call(other, '/headers')).body).headers).not.toHaveProperty('X-Consumer');

    t0 = Date.now();
    sb.removeManifest('consumer.yaml');
    await until(async () => (await consumerHeader()) === undefined, EDIT_MS, "shop's requests to lose X-Consumer");
    console.log(`consumer route deleted: out of shop's traffic ${Date.now() - t0} ms after the removal`);
    // Now the producer route: its retry of a 503, its v2 rule.
    expect(await attempts(shop, async () => expect((await call(shop, '/status/503')).status).toBe(503))).toEqual({ total: 3, retries: 2 });
    const v = tag();
    expect((await call(shop, `/anything/${v}`, { 'x-version': 'v2' })).headers['x-backend']).toBe('v2');
    await servedExactly(v, { httpbin: 0, 'httpbin-v2': 1 });
  }, 60_000);
});
