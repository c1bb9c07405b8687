/**
 * The HTTP/1.1 race of keep-alive at the inbound sidecar, with real Envoy sidecars (curl calling httpbin's port,
 * no Retry policy anywhere) and, as httpbin's app, a Node.js server that closes its keep-alive connections early:
 * a connection the app closes as Envoy sends the next request on it would be a 503 for the caller, for a request
 * the app never read (`upstream_cx_destroy_remote_with_active_rq` on the local cluster). The inbound routes retry
 * what is safe to retry there and the local cluster closes idle connections before common apps do
 * (src/envoy/routes.ts, clusters.ts); the app counts each request it processed, so that a repeat shows.
 */
import { mkdtempSync, rmSync, writeFileSync, chmodSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Sandbox, sampleWorkload, type Workload } from '../sandbox/sandbox.js';
import { sandboxMissing } from './helpers/sandbox.js';

const PORT = 14001;
/** The app's keep-alive on /idle-closes: longer than the local cluster's idle timeout (1 s), as gunicorn's 2 s. */
const APP_KEEPALIVE_MS = 1500;

/**
 * httpbin's app. Each path is one way of closing a keep-alive connection, without `Connection: close`:
 * - /fresh-only: the app closes a connection (RST) when a request arrives on it after the first: as if its idle
 *   timer had fired just as Envoy reused the connection. Every reused connection is the race.
 * - /idle-closes: likewise, but only on a connection idle for APP_KEEPALIVE_MS or more.
 * - /closes-after?ms=N: the app closes the connection N ms after each response (a keep-alive of N ms).
 * - /always-resets: the app closes every connection a request arrives on.
 * A request the app closed the connection on is not processed; each processed one is a line `processed METHOD ID`.
 */
const APP = `
const http = require('node:http');
const conns = new WeakMap();
const server = http.createServer((req, res) => {
  const sock = req.socket;
  const c = conns.get(sock) ?? { served: 0, idleSince: 0 };
  conns.set(sock, c);
  const url = new URL(req.url, 'http://app');
  const refuse =
    url.pathname === '/always-resets' ||
    (url.pathname === '/fresh-only' && c.served > 0) ||
    (url.pathname === '/idle-closes' && c.served > 0 && Date.now() - c.idleSince >= ${APP_KEEPALIVE_MS});
  if (refuse) return sock.resetAndDestroy();
  const body = [];
  req.on('data', (d) => body.push(d));
  req.on('end', () => {
    console.log('processed ' + req.method + ' ' + url.searchParams.get('id') + ' ' + Buffer.concat(body).length);
    res.end('ok');
  });
  res.on('finish', () => {
    c.served++;
    c.idleSince = Date.now();
    const ms = url.pathname === '/closes-after' ? Number(url.searchParams.get('ms')) : -1;
    if (ms >= 0) setTimeout(() => sock.destroy(), ms);
  });
});
server.keepAliveTimeout = 600000;
server.listen(${PORT}, '0.0.0.0', () => console.log('app listening'));
`;

/**
 * The caller, run in curl's pod (its requests go through curl's sidecar): requests one after the other on one
 * keep-alive connection, `gapMs` apart; prints the status of each (or the error code).
 */
const CLIENT = `
const http = require('node:http');
const { url, method, ids, gapMs, headers, body } = JSON.parse(process.argv[2]);
const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
(async () => {
  const statuses = [];
  for (const id of ids) {
    statuses.push(await new Promise((resolve) => {
      const req = http.request(url + (url.includes('?') ? '&' : '?') + 'id=' + id, { method, agent, headers: headers ?? {} }, (res) => {
        res.resume();
        res.on('end', () => resolve(res.statusCode));
      });
      req.on('error', (e) => resolve(e.code));
      req.end(body);
    }));
    if (gapMs) await new Promise((r) => setTimeout(r, gapMs));
  }
  console.log(JSON.stringify(statuses));
})();
`;

const LOCAL = `cluster.httpbin/httpbin|${PORT}|local`;
const COUNTERS = ['upstream_rq_retry', 'upstream_cx_destroy_remote_with_active_rq', 'upstream_cx_idle_timeout', 'upstream_rq_total'] as const;
type Counters = Record<(typeof COUNTERS)[number], number>;

describe.skipIf(sandboxMissing.length > 0)('the inbound sidecar and an app that closes keep-alive connections early (real Envoy)', () => {
  let sb: Sandbox;
  let curl: Workload;
  let httpbin: Workload;
  let dir: string;
  let nextId = 0;

  beforeAll(async () => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'mesh-xds-inbound-reset-'));
    chmodSync(dir, 0o755);
    writeFileSync(path.join(dir, 'app.cjs'), APP);
    writeFileSync(path.join(dir, 'client.cjs'), CLIENT);
    sb = await Sandbox.start({
      workloads: [
        sampleWorkload('httpbin.yaml', { app: { command: [process.execPath, path.join(dir, 'app.cjs')], ready: /app listening/ } }),
        sampleWorkload('curl.yaml'),
      ],
      // No Retry: curl's sidecar retries nothing, so what the caller gets is what httpbin's sidecar answered.
      manifests: {},
    });
    curl = sb.workload('curl');
    httpbin = sb.workload('httpbin');
  }, 120_000);
  afterAll(async () => {
    await sb?.close();
    if (dir) rmSync(dir, { recursive: true, force: true });
  }, 60_000);

  const counters = async (): Promise<Counters> => {
    const stats = await httpbin.sidecar.stats(`^${LOCAL.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}\\.`);
    return Object.fromEntries(COUNTERS.map((c) => [c, stats.get(`${LOCAL}.${c}`) ?? 0])) as Counters;
  };

  /** `n` requests from curl's pod; their statuses, what the app processed of them (id -> times), and the counters' growth. */
  const call = async (o: { path: string; method: string; n: number; gapMs?: number; headers?: Record<string, string>; body?: string }) => {
    const ids = Array.from({ length: o.n }, () => `r${nextId++}`);
    const before = await counters();
    const r = await curl.pod.exec(process.execPath, [path.join(dir, 'client.cjs'), JSON.stringify({ url: `http://httpbin.httpbin:${PORT}${o.path}`, method: o.method, ids, gapMs: o.gapMs ?? 0, headers: o.headers, body: o.body })], { timeoutMs: 120_000 });
    expect(r.code, r.stderr).toBe(0);
    const statuses: (number | string)[] = JSON.parse(r.stdout);
    const after = await counters();
    const grew = Object.fromEntries(COUNTERS.map((c) => [c, after[c] - before[c]])) as Counters;
    const processed = new Map<string, number>();
    const wanted = new Set(ids);
    for (const line of httpbin.app!.lines()) {
      const m = /^processed (\S+) (\S+)/.exec(line);
      if (m && m[1] === o.method && wanted.has(m[2])) processed.set(m[2], (processed.get(m[2]) ?? 0) + 1);
    }
    return { statuses, processed, grew, ids };
  };
  const tally = (statuses: (number | string)[]) => statuses.reduce<Record<string, number>>((t, s) => ({ ...t, [s]: (t[s] ?? 0) + 1 }), {});

  for (const [method, body] of [['GET', undefined], ['PUT', 'a body the retry sends again']] as const) {
    it(`${method}s on connections the app closes as Envoy reuses them are retried once, on a new connection: no 503, none processed twice`, async () => {
      const { statuses, processed, grew, ids } = await call({ path: '/fresh-only', method, n: 30, body });
      expect(tally(statuses)).toEqual({ 200: 30 });
      // The race was there (each request after the first on a reused connection) and each was retried.
      expect(grew.upstream_cx_destroy_remote_with_active_rq).toBeGreaterThanOrEqual(29);
      expect(grew.upstream_rq_retry).toBe(grew.upstream_cx_destroy_remote_with_active_rq);
      expect(ids.filter((id) => processed.get(id) !== 1)).toEqual([]);
    }, 120_000);
  }

  it('POSTs are never repeated: one the app may have read is answered 503, not retried (reset-before-request does not cover the race)', async () => {
    const { statuses, processed, grew, ids } = await call({ path: '/fresh-only', method: 'POST', n: 10, body: 'x' });
    // Every other one: after a reset the next POST goes to a new connection.
    expect(grew.upstream_cx_destroy_remote_with_active_rq).toBeGreaterThanOrEqual(4);
    expect(grew.upstream_rq_retry).toBe(0);
    expect([...processed.values()].every((n) => n === 1)).toBe(true);
    // Answered exactly those the app processed; the others are the resets, each a 503.
    expect(ids.filter((id, i) => (statuses[i] === 200) !== processed.has(id))).toEqual([]);
    expect(tally(statuses.filter((s) => s !== 200))).toEqual({ 503: grew.upstream_cx_destroy_remote_with_active_rq });
  }, 120_000);

  it(`the local cluster closes a connection idle for 1 s, before an app with a ${APP_KEEPALIVE_MS} ms keep-alive does: POSTs after 2 s of quiet are all answered`, async () => {
    const { statuses, processed, grew, ids } = await call({ path: '/idle-closes', method: 'POST', n: 4, gapMs: 2000, body: 'x' });
    expect(statuses).toEqual([200, 200, 200, 200]);
    expect(grew.upstream_cx_idle_timeout).toBeGreaterThanOrEqual(3);
    expect(grew.upstream_cx_destroy_remote_with_active_rq).toBe(0);
    expect(ids.filter((id) => processed.get(id) !== 1)).toEqual([]);
  }, 120_000);

  it('an app that closes each connection 0-3 ms after its response: bursts of GETs spaced 0-3 ms apart get no 503', async () => {
    let raced = 0;
    for (const ms of [0, 1, 3]) {
      for (const gapMs of [0, 1, 3]) {
        const { statuses, processed, grew, ids } = await call({ path: `/closes-after?ms=${ms}`, method: 'GET', n: 60, gapMs });
        expect(tally(statuses), `app closes after ${ms} ms, requests ${gapMs} ms apart`).toEqual({ 200: 60 });
        expect(ids.filter((id) => processed.get(id) !== 1)).toEqual([]);
        raced += grew.upstream_cx_destroy_remote_with_active_rq;
        expect(grew.upstream_rq_retry).toBe(grew.upstream_cx_destroy_remote_with_active_rq);
      }
    }
    console.log(`inbound-reset: the race happened ${raced} times in 540 GETs; each was retried`);
  }, 300_000);

  it("a caller's x-envoy-max-retries and x-envoy-retry-on do not raise the inbound retries: an app that resets every request sees 2 attempts", async () => {
    const headers = { 'x-envoy-max-retries': '10', 'x-envoy-retry-on': '5xx,reset,connect-failure' };
    const { statuses, grew } = await call({ path: '/always-resets', method: 'GET', n: 3, headers });
    expect(statuses).toEqual([503, 503, 503]);
    // 1 attempt and 1 retry each, at the local cluster (the app processes none of them: it resets them unread).
    expect(grew.upstream_rq_total).toBe(6);
    expect(grew.upstream_rq_retry).toBe(3);
  }, 120_000);
});
