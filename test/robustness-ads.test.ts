/**
 * What a client could once do to the server (issue 9): crash it through CSDS, stall it with a regular
 * expression, grow its memory with names, flood it, stop reading, or log megabytes. Each ends only that
 * stream or request, with a status naming the bound, counted in /metrics; the server and other streams go on.
 */
import { Writable } from 'node:stream';
import * as grpc from '@grpc/grpc-js';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Limiter } from '../src/debug/http.js';
import { CSDS_SERVICE } from '../src/xds/protocol/csds.js';
import { LIMITS } from '../src/xds/protocol/limits.js';
import { resourceFromObject, buildSnapshot } from '../src/xds/resources/snapshot.js';
import { CLUSTER } from '../src/xds/resources/types.js';
import { RawAdsClient, node, type AdsTestStream } from './helpers/ads-client.js';
import { startDemo, type DemoServer } from './helpers/demo.js';
import { eventually } from './helpers/grpc-xds.js';
import { startAds } from './helpers/server.js';

const EDS = 'type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment';
const RDS = 'type.googleapis.com/envoy.config.route.v3.RouteConfiguration';
const LDS = 'type.googleapis.com/envoy.config.listener.v3.Listener';
const CDS = 'type.googleapis.com/envoy.config.cluster.v3.Cluster';

let demo: DemoServer;
let ads: RawAdsClient;
const logLines: string[] = [];
const Csds = grpc.makeGenericClientConstructor(CSDS_SERVICE, 'CSDS');

beforeAll(async () => {
  const sink = new Writable({
    write(chunk, _enc, cb) {
      logLines.push(...String(chunk).split('\n').filter(Boolean));
      cb();
    },
  });
  demo = await startDemo(undefined, pino({ level: 'info' }, sink));
  ads = new RawAdsClient(demo.ads);
});

afterAll(async () => {
  ads?.close();
  await demo?.close();
});

/** Resolves with the status a stream ended with. */
function ended(s: AdsTestStream, ms = 5000): Promise<grpc.ServiceError> {
  return eventually(() => s.error !== undefined, ms, 'the stream to end').then(() => s.error!);
}

async function refusedCount(reason: string): Promise<number> {
  const text = await fetch(`${demo.debug}/metrics`).then((r) => r.text());
  const m = new RegExp(`^mesh_xds_streams_refused_total\\{reason="${reason}"\\} (\\d+)`, 'm').exec(text);
  return m ? Number(m[1]) : 0;
}

async function healthy(): Promise<void> {
  expect(await fetch(`${demo.debug}/healthz`).then((r) => r.status)).toBe(200);
}

function fetchStatus(c: any, request: object): Promise<{ err?: grpc.ServiceError; res?: any }> {
  return new Promise((resolve) => c.FetchClientStatus(request, (err: grpc.ServiceError | null, res: any) => resolve(err ? { err } : { res })));
}

describe('CSDS', () => {
  it('a stream whose safe_regex does not compile ends with INVALID_ARGUMENT; the fetch says the same; ADS goes on', async () => {
    const proxy = ads.sotw();
    proxy.send({ node: node({ id: 'curl-csds' }), type_url: CDS });
    await proxy.next();
    const c = new Csds(demo.ads, grpc.credentials.createInsecure()) as any;
    const call = c.StreamClientStatus();
    const status = new Promise<grpc.ServiceError>((resolve) => call.on('error', resolve));
    call.on('data', () => {});
    call.write({ node_matchers: [{ node_id: { safe_regex: { regex: '(' } } }] });
    const err = await status;
    expect(err.code).toBe(grpc.status.INVALID_ARGUMENT);
    expect(err.details).toContain('node_matchers[0].node_id.safe_regex.regex');
    const fetched = await fetchStatus(c, { node_matchers: [{ node_id: { safe_regex: { regex: '(' } } }] });
    expect(fetched.err?.code).toBe(grpc.status.INVALID_ARGUMENT);
    c.close();
    await healthy();
    expect(proxy.error).toBeUndefined();
    // The proxy's stream still answers: a new subscription gets a response.
    proxy.send({ type_url: EDS, resource_names: ['httpbin/httpbin|14001'] });
    expect((await proxy.next()).type_url).toBe(EDS);
    proxy.close();
    expect(await refusedCount('csds_invalid_request')).toBe(2);
  });

  it('regexes are RE2 and run in linear time: (a+)+$ against a 1,024-character node id answers, lookaheads are refused', async () => {
    const id = `${'a'.repeat(LIMITS.nodeIdLength - 1)}!`;
    const proxy = ads.sotw();
    proxy.send({ node: node({ id }), type_url: CDS });
    await proxy.next();
    const c = new Csds(demo.ads, grpc.credentials.createInsecure()) as any;
    // On a backtracking engine this takes longer than the test may run.
    const none = await fetchStatus(c, { node_matchers: [{ node_id: { safe_regex: { regex: '(a+)+$' } } }] });
    expect(none.res.config ?? []).toEqual([]);
    const one = await fetchStatus(c, { node_matchers: [{ node_id: { safe_regex: { regex: '(a+)+!' } } }] });
    expect(one.res.config.map((x: any) => x.node.id)).toEqual([id]);
    const look = await fetchStatus(c, { node_matchers: [{ node_id: { safe_regex: { regex: '(?=a)a*!' } } }] });
    expect(look.err?.code).toBe(grpc.status.INVALID_ARGUMENT);
    const meta = await fetchStatus(c, { node_matchers: [{ node_metadatas: [{ path: [{ key: 'namespace' }], value: { string_match: { exact: 'curl' } } }] }] });
    expect(meta.err?.details).toContain('node_metadatas is not supported');
    c.close();
    proxy.close();
  });
});

describe('ADS bounds', () => {
  it('a node id of a megabyte is refused with INVALID_ARGUMENT, and no log line carries it whole', async () => {
    const s = ads.sotw();
    s.send({ node: node({ id: 'x'.repeat(1 << 20) }), type_url: CDS });
    const err = await ended(s);
    expect(err.code).toBe(grpc.status.INVALID_ARGUMENT);
    expect(err.details).toContain(`node.id is ${1 << 20} characters; at most ${LIMITS.nodeIdLength}`);
    expect(Math.max(...logLines.map((l) => l.length))).toBeLessThan(4096);
    expect(await refusedCount('bad_node')).toBeGreaterThanOrEqual(1);
  });

  it('a SotW stream whose subscriptions hold more than the bound of name characters ends with RESOURCE_EXHAUSTED', async () => {
    const s = ads.sotw();
    s.send({ node: node({ id: 'curl-names' }), type_url: CDS });
    await s.next();
    // Three requests of 3 MiB of names each: each fits in a request, together they cross 8 MiB.
    const names = (p: string) => Array.from({ length: 3000 }, (_, i) => `${p}${i}`.padEnd(1000, 'x'));
    for (const [type, p] of [[EDS, 'e'], [RDS, 'r'], [LDS, 'l']]) s.send({ type_url: type, resource_names: names(p) });
    const err = await ended(s);
    expect(err.code).toBe(grpc.status.RESOURCE_EXHAUSTED);
    expect(err.details).toContain(`at most ${LIMITS.namesPerStream} names and ${LIMITS.nameBytesPerStream} characters per stream`);
    await healthy();
  });

  it('a delta stream subscribing to ever more names ends at the bound; a name over the length bound is refused', async () => {
    const s = ads.delta();
    s.send({ node: node({ id: 'curl-delta-names' }), type_url: EDS, resource_names_subscribe: [] });
    for (let i = 0; i <= LIMITS.namesPerStream / 1000 && !s.error; i++) {
      s.send({ type_url: EDS, resource_names_subscribe: Array.from({ length: 1000 }, (_, j) => `n${i}-${j}`) });
      await new Promise((r) => setImmediate(r));
    }
    const err = await ended(s);
    expect(err.code).toBe(grpc.status.RESOURCE_EXHAUSTED);
    expect(err.details).toContain(`at most ${LIMITS.namesPerStream} names`);

    const t = ads.delta();
    t.send({ node: node({ id: 'curl-long-name' }), type_url: EDS, resource_names_subscribe: ['y'.repeat(LIMITS.nameLength + 1)] });
    expect((await ended(t)).code).toBe(grpc.status.INVALID_ARGUMENT);
    expect(await refusedCount('too_many_names')).toBeGreaterThanOrEqual(2);
    expect(await refusedCount('name_too_long')).toBe(1);
  });

  it('a stream that floods requests ends with RESOURCE_EXHAUSTED; a new stream of the same proxy is served', async () => {
    const s = ads.sotw();
    s.send({ node: node({ id: 'curl-flood' }), type_url: CDS });
    // Three times the burst: the bucket refills at requestsPerSecond while the server works through them, so a loaded
    // machine that takes longer than (burst / rate) to get there still sees the bound crossed.
    for (let i = 0; i < LIMITS.requestBurst * 3; i++) s.send({ type_url: EDS, resource_names: [`n${i % 2}`] });
    const err = await ended(s, 15_000);
    expect(err.code).toBe(grpc.status.RESOURCE_EXHAUSTED);
    expect(err.details).toContain('requests at once');
    const again = ads.sotw();
    again.send({ node: node({ id: 'curl-flood' }), type_url: CDS });
    expect((await again.next()).type_url).toBe(CDS);
    again.close();
    expect(await refusedCount('too_many_requests')).toBe(1);
  });
});

describe('a client that stops reading', () => {
  it('is ended once a response has waited longer than the bound, and counted', async () => {
    const { cache, registry, server, address } = await startAds({ unreadSeconds: 1 });
    const refused: string[] = [];
    registry.observe({ refused: (r) => refused.push(r) });
    // A new CDS version of about 50 KB at a time.
    const snapshot = (v: number) => buildSnapshot(Array.from({ length: 50 }, (_, i) => resourceFromObject(CLUSTER, { name: `c${i}-${v}`.padEnd(1000, 'x'), type: 'STATIC', connect_timeout: { seconds: 1 } })));
    cache.set('sidecar:curl/curl', snapshot(0));
    cache.markReady();
    const client = new RawAdsClient(address);
    const s = client.sotw();
    s.send({ node: node({ id: 'curl-slow' }), type_url: CDS });
    await s.next(10_000);
    // The client stops reading; the server goes on pushing new versions, more than the client's buffer (16
    // messages), its HTTP/2 windows and the socket buffers hold.
    s.call.pause();
    for (let v = 1; v <= 300; v++) cache.set('sidecar:curl/curl', snapshot(v));
    await eventually(() => refused.length > 0, 10_000, 'the slow stream to be ended');
    expect(refused).toEqual(['not_reading']);
    expect(registry.connections.size).toBe(0);
    client.close();
    await server.close(0);
  });
});

describe('debug server', () => {
  it('a Limiter serves two at once, queues sixteen, refuses the next, and hands a slot to the next in line', async () => {
    const l = new Limiter(2, 16);
    expect(await Promise.all([l.acquire(), l.acquire()])).toEqual([true, true]);
    const waiting = Array.from({ length: 16 }, () => l.acquire());
    expect(await l.acquire()).toBe(false);
    l.release();
    expect(await waiting[0]).toBe(true);
  });

  it('answers a burst of config dumps a few at a time, 429 beyond; /healthz is answered in between', async () => {
    const limiter = demo.running.debug.limiter;
    let held = 0;
    try {
      // Both slots held, as by two dumps still being answered: of a burst of 40, 16 wait their turn and 24 are
      // refused, however the burst's requests spread over the event loop's turns.
      for (; held < 2; held++) expect(await limiter.acquire()).toBe(true);
      const order: string[] = [];
      const statuses = Array.from({ length: 40 }, () =>
        fetch(`${demo.debug}/debug/config_dump?namespace=curl&serviceAccount=curl`).then((r) => {
          order.push(`dump ${r.status}`);
          return r.status;
        }),
      );
      await eventually(() => order.length === 24, 30_000, 'the requests past the queue refused');
      expect(order).toEqual(Array(24).fill('dump 429'));
      // The 16 queued wait for a slot; /healthz does not.
      expect(await fetch(`${demo.debug}/healthz`).then((r) => r.status)).toBe(200);
      expect(order).toHaveLength(24);
      for (; held > 0; held--) limiter.release();
      expect((await Promise.all(statuses)).filter((s) => s === 200)).toHaveLength(16);
    } finally {
      for (; held > 0; held--) limiter.release();
    }
  });
});

describe('a stream that never asks', () => {
  it('is ended once its first request is overdue (it only held a slot), and counted; a stream that asks is kept', async () => {
    const { registry, server, address } = await startAds({ firstRequestSeconds: 1 });
    const refused: string[] = [];
    registry.observe({ refused: (r) => refused.push(r) });
    const client = new RawAdsClient(address);
    try {
      const idle = client.sotw();
      const asking = client.sotw();
      asking.send({ node: node({ id: 'curl-asks' }), type_url: CDS });
      const err = await ended(idle, 10_000);
      expect(err.code).toBe(grpc.status.DEADLINE_EXCEEDED);
      expect(err.details).toBe("no request within 1 s of the stream's start: a stream holds a slot of the server only while it asks for config");
      expect(refused).toEqual(['no_request']);
      // The one that asked is still open (this server has no config for it: it waits).
      expect(asking.error).toBeUndefined();
    } finally {
      client.close();
      await server.close(100);
    }
  });
});
