/**
 * What the retries did (issue 34): the wire-level reader against the real protos, the store's sums, attribution,
 * windows and bounds, and the metrics service over real gRPC on loopback with its hostile cases.
 */
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { execFile } from 'node:child_process';
import http2 from 'node:http2';
import { Writable } from 'node:stream';
import { promisify } from 'node:util';
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { MeshIR } from '../src/compile/ir.js';
import { COUNTERS, OBSERVED_BOUNDS, ObservedRetries } from '../src/observed/retries.js';
import pino from 'pino';
import { AdsServer } from '../src/xds/protocol/server.js';
import { ProxyRegistry } from '../src/xds/protocol/status.js';
import { SnapshotCache } from '../src/xds/resources/cache.js';
import { METRICS_LIMITS, METRICS_PATH, metricsServiceHandler, readMetrics } from '../src/observed/metrics-service.js';
import { envoyRoot } from '../src/xds/resources/protos.js';
import { startDemo, type DemoServer } from './helpers/demo.js';

/** Retries `check` (expect-style: it throws until it holds) for up to 10 s. */
async function eventually(check: () => Promise<void>): Promise<void> {
  const until = Date.now() + 10_000;
  for (;;) {
    try {
      return await check();
    } catch (e) {
      if (Date.now() > until) throw e;
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}

const MESSAGE = envoyRoot().lookupType('envoy.service.metrics.v3.StreamMetricsMessage');
const CLUSTER = 'httpbin/httpbin|14001';

const node = (ns: string, sa: string, id = `${sa}-1.${ns}`) => ({ id, user_agent_name: 'envoy', metadata: { fields: { namespace: { stringValue: ns }, serviceAccount: { stringValue: sa } } } });
const counter = (name: string, value: number) => ({ name, type: 0, metric: [{ counter: { value } }] });
/** A flush as a sidecar sends it: cluster counters among its server's own stats. */
function flush(counters: Record<string, number>, first?: object, cluster = CLUSTER): Buffer {
  return Buffer.from(
    MESSAGE.encode(
      MESSAGE.fromObject({
        ...(first ? { identifier: { node: first } } : {}),
        envoy_metrics: [
          counter('server.uptime', 12),
          { name: 'server.memory_allocated', type: 1, metric: [{ gauge: { value: 1e6 } }] },
          ...Object.entries(counters).map(([c, v]) => counter(`cluster.${cluster}.${c}`, v)),
          counter('http.outbound_14001.downstream_rq_total', 9),
        ],
      }),
    ).finish(),
  );
}

describe('the vendored Prometheus client model proto', () => {
  it('is the Go module client_model v0.6.1 file, unchanged', () => {
    const file = readFileSync(path.join(import.meta.dirname, '../protos/io/prometheus/client/metrics.proto'));
    expect(createHash('sha256').update(file).digest('hex')).toBe('5d0c331fb3ec69ec36138a3b3968c042b96e0023774bb06b97a7a17cf1c5266e');
  });
});

describe('readMetrics (wire level) against the real protos', () => {
  it('reads the node and every per-cluster counter summed here, and nothing else', () => {
    const r = readMetrics(flush({ upstream_rq_total: 6, upstream_cx_http1_total: 2, upstream_rq_retry: 5 }, node('curl', 'curl')));
    expect(r.node?.id).toBe('curl-1.curl');
    expect(r.counters).toEqual([
      [CLUSTER, 'upstream_rq_total', 6],
      [CLUSTER, 'upstream_rq_retry', 5],
    ]);
    expect(r.cut).toBe(false);
  });

  it('counts per-cluster series that are not counters, sums nothing of them', () => {
    const buf = Buffer.from(MESSAGE.encode(MESSAGE.fromObject({ envoy_metrics: [{ name: `cluster.${CLUSTER}.upstream_rq_total`, type: 1, metric: [{ gauge: { value: 3 } }] }] })).finish());
    expect(readMetrics(buf)).toMatchObject({ counters: [], notCounters: 1 });
  });

  it('cuts a message at the series bound', () => {
    const r = readMetrics(flush(Object.fromEntries(COUNTERS.map((c) => [c, 1]))), 4);
    expect(r.counters).toHaveLength(4);
    expect(r.cut).toBe(true);
  });

  it('throws on bytes that are not the message (a length past the end, a wrong wire type)', () => {
    expect(() => readMetrics(Buffer.from([0x12, 0x7f, 0x0a]))).toThrow();
    expect(() => readMetrics(Buffer.from([0x10, 0x01]))).toThrow(/wire type/);
    expect(() => readMetrics(Buffer.from([0x00, 0x01]))).toThrow(/field number 0/);
  });
});

/** A mesh of two identities calling httpbin, curl's under the guide's Retry. */
function mesh(policy: string | null = 'curl/retry', numRetries = 5): MeshIR {
  return {
    meshName: 'm',
    enableRetryPolicy: true,
    retryBudget: null,
    services: [{ namespace: 'httpbin', name: 'httpbin', host: 'httpbin.httpbin.svc.cluster.local', headless: false, ports: [{ port: 14001, dialPort: 14001, targetPort: 14001, protocol: 'http', http2: false, cluster: CLUSTER, endpoints: [] }] }],
    identities: ['curl/curl', 'other/other'],
    retries: policy ? { 'curl/curl': { 'httpbin/httpbin': { policy, spec: { source: { namespace: 'curl', name: 'curl' }, destinations: [], skipped: [], retryOn: ['5xx'], retriableStatusCodes: [], numRetries } } } } : {},
    routes: {},
    backing: {},
    routeReports: [],
    policies: policy ? [{ namespace: 'curl', name: policy.split('/')[1]!, state: 'Accepted', reason: '', messages: [], problems: [], declared: { destinations: [] }, source: 'curl/curl', appliesTo: ['httpbin/httpbin'] }] : [],
    diagnostics: [],
  };
}

describe('ObservedRetries', () => {
  const curl = { identity: 'curl/curl', nodeId: 'curl-1.curl' };
  const guide = (): [string, string, number][] => [
    [CLUSTER, 'upstream_rq_total', 6],
    [CLUSTER, 'upstream_rq_retry', 5],
    [CLUSTER, 'upstream_rq_retry_limit_exceeded', 1],
    [CLUSTER, 'upstream_rq_5xx', 6],
  ];

  it("sums the guide's 503 under its Retry: 1 request, 5 retries, 1 out of retries, predicted 6 attempts", () => {
    let now = 1_000_000;
    const o = new ObservedRetries(() => mesh(), () => now);
    o.report({}, curl, guide());
    const p = o.view().policies[0]!;
    expect(p).toMatchObject({ policy: 'curl/retry', source: 'curl/curl', destinations: ['httpbin/httpbin'], proxiesReporting: 1, predictedAttemptsPerRequest: 6 });
    for (const w of ['1m', '5m', 'total'] as const) expect(p.windows[w]).toMatchObject({ requests: 1, retries: 5, retriesSucceeded: 0, retriesExhausted: 1, retryRate: 5, attemptsPerRequest: 6 });
    // Two sidecars of curl add up; a restarted one's first delta is only what it counted since.
    o.report({}, { ...curl, nodeId: 'curl-2.curl' }, guide());
    now += 1_000;
    expect(o.view().policies[0]!.windows.total).toMatchObject({ requests: 2, retries: 10, retriesExhausted: 2 });
    expect(o.view().policies[0]!.proxiesReporting).toBe(2);
  });

  it('the 1 and 5 minute windows slide; the total stays', () => {
    let now = 30_000 * 1_000;
    const o = new ObservedRetries(() => mesh(), () => now);
    o.report({}, curl, guide());
    now += 90_000;
    let w = o.view().policies[0]!.windows;
    expect([w['1m'].retries, w['5m'].retries, w.total.retries]).toEqual([0, 5, 5]);
    now += 300_000;
    w = o.view().policies[0]!.windows;
    expect([w['1m'].retries, w['5m'].retries, w.total.retries]).toEqual([0, 0, 5]);
  });

  it('another identity adds only to its own path (policy null), never to the Retry', () => {
    const o = new ObservedRetries(() => mesh());
    o.report({}, curl, guide());
    o.report({}, { identity: 'other/other', nodeId: 'o-1.other' }, guide());
    const v = o.view({ paths: 'all' });
    expect(v.policies[0]!.windows.total.retries).toBe(5);
    expect(v.paths.map((p) => [p.source, p.policy, p.windows.total.retries])).toEqual([
      ['curl/curl', 'curl/retry', 5],
      ['other/other', null, 5],
    ]);
    // Paths are added up only as asked: those under a Retry, at most maxPaths by name, one namespace's sources.
    expect(o.view().paths).toEqual([]);
    expect(o.view({ paths: 'retries' }).paths.map((p) => p.source)).toEqual(['curl/curl']);
    expect(o.view({ paths: 'all', maxPaths: 1 })).toMatchObject({ paths: [{ source: 'curl/curl' }], pathsOmitted: 1 });
    expect(o.view({ paths: 'all', sourceNamespace: 'other' }).paths.map((p) => p.source)).toEqual(['other/other']);
  });

  it('drops and counts identities and clusters not in the mesh, unknown counters and bad values', () => {
    const o = new ObservedRetries(() => mesh());
    const out = o.report({}, { identity: 'ghost/ghost', nodeId: 'g' }, guide());
    expect(out.dropped.unknown_identity).toBe(4);
    const out2 = o.report({}, curl, [
      // The sidecar's own clusters are no destinations: passed over, not counted as dropped.
      ['mesh-xds', 'upstream_rq_total', 1],
      [`${CLUSTER}|local`, 'upstream_rq_total', 1],
      ['nowhere/nothing|80', 'upstream_rq_retry', 1],
      [CLUSTER, 'upstream_cx_total', 1],
      [CLUSTER, 'upstream_rq_retry', -3],
      [CLUSTER, 'upstream_rq_retry', Number.NaN],
      [CLUSTER, 'upstream_rq_retry', 1e12],
    ]);
    expect(out2).toEqual({ added: 0, dropped: { unknown_cluster: 1, unknown_counter: 1, bad_value: 3 } });
    expect(o.view({ paths: 'all' }).paths.every((p) => p.windows.total.retries === 0)).toBe(true);
  });

  it('a changed policy starts its numbers again: they never describe a Retry that did not cause them', () => {
    let ir = mesh('curl/retry', 5);
    const o = new ObservedRetries(() => ir);
    o.report({}, curl, guide());
    ir = mesh('curl/retry', 2);
    expect(o.view().policies[0]!.windows.total.retries).toBe(0);
    o.report({}, curl, [[CLUSTER, 'upstream_rq_retry', 2]]);
    expect(o.view().policies[0]!.windows.total.retries).toBe(2);
  });

  it('holds at most pairsPerIdentity pairs for one identity, and a full store makes the heaviest identity give way', () => {
    const clusters = Array.from({ length: 20 }, (_, i) => `ns/s${i}|80`);
    const ir = { ...mesh(), identities: ['a/a', 'b/b'], services: clusters.map((c, i) => ({ namespace: 'ns', name: `s${i}`, host: '', headless: false, ports: [{ port: 80, dialPort: 80, targetPort: 80, protocol: 'http', http2: false, cluster: c, endpoints: [] }] })) } as MeshIR;
    const o = new ObservedRetries(() => ir, Date.now, { pairs: 12, pairsPerIdentity: 10, forgetMs: 60_000 });
    const a = o.report({}, { identity: 'a/a', nodeId: 'a' }, clusters.map((c) => [c, 'upstream_rq_total', 1] as const));
    expect(a).toMatchObject({ added: 10, dropped: { pairs_full: 10 } });
    const b = o.report({}, { identity: 'b/b', nodeId: 'b' }, clusters.slice(0, 5).map((c) => [c, 'upstream_rq_total', 1] as const));
    expect(b.added).toBe(5);
    expect(o.size).toBe(12);
    expect(o.view({ paths: 'all' }).paths.filter((p) => p.source === 'a/a')).toHaveLength(7);
  });

  it('forgets pairs nobody reported for, and proxies that stopped reporting', () => {
    let now = 5_000_000;
    const o = new ObservedRetries(() => mesh(), () => now);
    const stream = {};
    o.report(stream, curl, guide());
    now += 31_000;
    expect(o.view().proxiesReporting).toBe(0);
    now += OBSERVED_BOUNDS.forgetMs;
    o.sweep();
    expect(o.size).toBe(0);
  });
});

describe('the metrics service on the ADS port (real gRPC, the demo mesh)', () => {
  let demo: DemoServer;
  const Client = grpc.makeGenericClientConstructor(
    { StreamMetrics: { path: METRICS_PATH, requestStream: true, responseStream: false, requestSerialize: (b: Buffer) => b, requestDeserialize: (b: Buffer) => b, responseSerialize: (b: Buffer) => b, responseDeserialize: (b: Buffer) => b } },
    'Metrics',
  );
  const clients: grpc.Client[] = [];
  /** A metrics stream: write flushes, then end; resolves with its status. */
  const open = () => {
    const c = new Client(demo.ads, grpc.credentials.createInsecure()) as any;
    clients.push(c);
    let settle!: (s: { code: number; details: string }) => void;
    const status = new Promise<{ code: number; details: string }>((r) => (settle = r));
    const call = c.StreamMetrics((err: grpc.ServiceError | null) => settle(err ? { code: err.code, details: err.details } : { code: 0, details: '' }));
    return { call, status };
  };
  const retries = async () => ((await (await fetch(`${demo.debug}/debug/retries?paths=1`)).json()) as any);
  const metric = async (name: string): Promise<number> => {
    const m = new RegExp(`^${name.replace(/[{}"|]/g, '\\$&')} (\\S+)$`, 'm').exec(await (await fetch(`${demo.debug}/metrics`)).text());
    return m ? Number(m[1]) : 0;
  };

  beforeAll(async () => {
    demo = await startDemo();
  }, 30_000);
  afterAll(async () => {
    for (const c of clients) c.close();
    await demo?.close();
  });

  it("a sidecar's flushes reach /debug/retries, /metrics and `policy stats`", async () => {
    const s = open();
    s.call.write(flush({ upstream_rq_total: 6, upstream_rq_retry: 5, upstream_rq_retry_limit_exceeded: 1 }, node('curl', 'curl')));
    await eventually(async () => expect((await retries()).policies[0]?.windows.total.retries).toBe(5));
    s.call.write(flush({ upstream_rq_total: 1 }));
    await eventually(async () => expect((await retries()).policies[0]?.windows.total).toMatchObject({ requests: 2, retries: 5, retriesExhausted: 1 }));
    expect(await metric('mesh_xds_observed_retries_total{policy="curl/retry",source="curl/curl",destination="httpbin/httpbin"}')).toBe(5);
    expect(await metric('mesh_xds_observed_proxies_reporting')).toBe(1);
    // Asynchronously: the server answering the CLI runs in this process.
    const cli = await promisify(execFile)(process.execPath, [path.join(import.meta.dirname, '../bin/mesh-xds.js'), 'policy', 'stats', 'retry', '-n', 'curl', '--window', 'total', '--debug-url', demo.debug], { encoding: 'utf8' });
    const row = cli.stdout.split('\n').find((l) => l.startsWith('curl/retry'))!;
    expect(row.split(/\s{2,}/)).toEqual(['curl/retry', 'curl/curl', 'httpbin/httpbin', '1', '2', '5', '250%', '0', '1', '0', '3.5', '6']);
    s.call.end();
    expect((await s.status).code).toBe(0);
  });

  it('a client that drops its connection while its streams send does not take the server down (outside attack, 7 December)', async () => {
    // The handler answers a client's end of stream; a stream whose connection went is closed a moment before it is
    // destroyed, and writing to it threw out of the handler's turn: the process exited at the first or second round.
    const body = flush(Object.fromEntries(Array.from({ length: 3_000 }, (_, i) => [`x${i}`, 1])));
    const framed = (m: Buffer) => Buffer.concat([Buffer.from([0, (m.length >>> 24) & 255, (m.length >>> 16) & 255, (m.length >>> 8) & 255, m.length & 255]), m]);
    for (let round = 0; round < 3; round++) {
      const session = http2.connect(`http://${demo.ads}`);
      session.on('error', () => {});
      const until = Date.now() + 800;
      for (let i = 0; i < 10; i++) {
        const s = session.request({ ':method': 'POST', ':path': METRICS_PATH, 'content-type': 'application/grpc', te: 'trailers' });
        s.on('error', () => {});
        s.resume();
        void (async () => {
          s.write(framed(flush({ upstream_rq_total: 1 }, node('nobody', 'nobody', `drop-${round}-${i}`))));
          while (Date.now() < until && !s.closed) {
            if (!s.write(framed(body))) await new Promise((r) => (s.once('drain', r), s.once('close', r)));
            else await new Promise((r) => setImmediate(r));
          }
        })();
      }
      await new Promise((r) => setTimeout(r, 800));
      session.destroy();
      await new Promise((r) => setTimeout(r, 300));
    }
    expect((await fetch(`${demo.debug}/healthz`)).status).toBe(200);
  });

  it('refuses a first message without an identity, and a message over the size bound', async () => {
    const a = open();
    a.call.write(flush({ upstream_rq_total: 1 }));
    expect(await a.status).toMatchObject({ code: grpc.status.INVALID_ARGUMENT, details: expect.stringMatching(/first metrics message must identify its proxy/) });
    const b = open();
    b.call.write(Buffer.alloc(METRICS_LIMITS.messageBytes + 1));
    expect(await b.status).toMatchObject({ code: grpc.status.RESOURCE_EXHAUSTED, details: expect.stringMatching(/at most 1048576/) });
  });

  /** The metrics handler on a port of its own with the limits given (small rates: how fast this machine reads cannot decide a test). */
  async function standalone(limits: Partial<typeof METRICS_LIMITS>, lines: any[] = []) {
    const observed = new ObservedRetries(() => demo.running.pipeline.ir);
    const dropped: Record<string, number> = {};
    const log = pino({ level: 'info' }, new Writable({ write: (c, _e, done) => (lines.push(JSON.parse(String(c))), done()) }));
    const server = new AdsServer({
      cache: new SnapshotCache(),
      registry: new ProxyRegistry(),
      log,
      handlers: metricsServiceHandler({ observed, log, limits, events: { refused: () => {}, added: () => {}, dropped: (why, n) => void (dropped[why] = (dropped[why] ?? 0) + n) } }),
    });
    const port = await server.listen('127.0.0.1:0');
    const stream = () => {
      const c = new Client(`127.0.0.1:${port}`, grpc.credentials.createInsecure()) as any;
      clients.push(c);
      return c.StreamMetrics(() => {});
    };
    const attempts = () => observed.view({ paths: 'all' }).paths.reduce((n, p) => n + p.windows.total.attempts, 0);
    return { observed, dropped, stream, attempts, close: () => server.close(0) };
  }
  /** A flush of about 1 kB: one request on httpbin's cluster among counters not summed. */
  const small = (first?: object) => flush({ upstream_rq_total: 1, ...Object.fromEntries(Array.from({ length: 12 }, (_, i) => [`x${i}`, 1])) }, first);

  it('a stream sending faster than its byte rate has the rest dropped and counted, not summed', async () => {
    const s = await standalone({ bytesPerSecond: 1_000, burstBytes: 3_000 });
    try {
      expect(small().length).toBeGreaterThan(800);
      const call = s.stream();
      call.write(small(node('httpbin', 'httpbin')));
      for (let i = 0; i < 19; i++) call.write(small());
      await eventually(async () => expect((s.dropped.rate ?? 0) + s.attempts()).toBe(20));
      expect(s.attempts()).toBeGreaterThan(0);
      expect(s.attempts()).toBeLessThan(8);
      call.end();
    } finally {
      await s.close();
    }
  });

  it("one client's streams share its byte rate: many streams within their own rates cannot add up past it", async () => {
    const s = await standalone({ bytesPerSecond: 1_000_000, burstBytes: 1_000_000, clientBytesPerSecond: 1_000, clientBurstBytes: 3_000 });
    try {
      const streams = Array.from({ length: 10 }, () => s.stream());
      streams.forEach((call, i) => {
        call.write(small(node('httpbin', 'httpbin', `many-${i}`)));
        call.write(small());
        call.write(small());
      });
      // Each stream's first message is read (its identity); of the 20 after them, the client's rate lets few through.
      await eventually(async () => expect((s.dropped.rate ?? 0) + s.attempts()).toBe(30));
      expect(s.attempts()).toBeLessThan(14);
      for (const call of streams) call.end();
    } finally {
      await s.close();
    }
  });

  it('logs a refusal once per 10 s per reason, saying how many were not logged; the metric counts each', async () => {
    const lines: any[] = [];
    const s = await standalone({}, lines);
    try {
      const ends = Array.from({ length: 20 }, () => {
        const call = s.stream();
        call.write(small());
        return new Promise((r) => call.on('status', r));
      });
      await Promise.all(ends);
      const warnings = lines.filter((l) => l.msg === 'metrics stream refused' && l.reason === 'bad_node');
      expect(warnings).toHaveLength(1);
    } finally {
      await s.close();
    }
  });
});
