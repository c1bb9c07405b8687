/**
 * The simulated sidecars of `bench:stats` (a child process of bench/stats.ts, so that the server's CPU is measured
 * alone): each holds one connection to the ADS port carrying one SotW ADS stream (CDS, EDS, LDS, RDS, every response
 * ACKed) and, once told, one metrics stream (`envoy.service.metrics.v3.MetricsService/StreamMetrics`) on which it
 * sends what Envoy's `envoy.stat_sinks.metrics_service` sends every flush interval, with the injected bootstrap's
 * stats matcher and sink settings (report_counters_as_deltas, batch_size 1000; src/inject/template.ts):
 *
 * - per destination cluster, the counters the matcher keeps that a sidecar calling it has used: the 11 of
 *   src/observed/retries.ts COUNTERS (as deltas) and upstream_rq_2xx, upstream_rq_4xx, upstream_cx_total and
 *   upstream_cx_idle_timeout (which the server passes over);
 * - the rest of what the matcher keeps (`others`, built by the driver): server.*, cluster_manager.*,
 *   listener_manager.*, control_plane.*, http.* (the HTTP managers' stats and each RDS subscription's), the two
 *   capture listeners' and the xDS cluster's stats; counters, gauges and histograms (each as a SUMMARY and a
 *   HISTOGRAM family, Envoy's default emit mode), in Envoy's order: counters, gauges, histograms.
 *
 * Every family is encoded with the real protos (StreamMetricsMessage); per flush only the delta of each
 * per-cluster counter is written into a copy of the sidecar's encoded batch. The identifier (the node) goes in the
 * first message of a stream only, as Envoy sends it. The sums of every delta sent are kept per identity and
 * cluster, for the driver to compare with /debug/retries.
 */
import * as grpc from '@grpc/grpc-js';
import { envoyRoot } from '../src/xds/resources/protos.js';
import { ADS_SERVICE } from '../src/xds/protocol/server.js';
import { METRICS_PATH } from '../src/observed/metrics-service.js';
import { COUNTERS } from '../src/observed/retries.js';
import { CLUSTER, ENDPOINT, LISTENER, ROUTE } from '../src/xds/resources/types.js';

/** A metric family the driver describes (the non-per-cluster part of a flush). */
export interface FamilySpec {
  readonly name: string;
  readonly kind: 'counter' | 'gauge' | 'histogram';
}

export interface IdentitySpec {
  /** `ns/sa` */
  readonly id: string;
  /** Destination clusters called, and whether a Retry is in force on each. */
  readonly destinations: readonly string[];
  readonly retried: readonly boolean[];
}

export interface ClientsConfig {
  readonly address: string;
  readonly sidecars: readonly { nodeId: string; pod: string; identity: number }[];
  readonly identities: readonly IdentitySpec[];
  readonly edsNames: readonly string[];
  readonly rdsNames: readonly string[];
  readonly others: readonly FamilySpec[];
  readonly flushMs: number;
  readonly batchSize: number;
}

/** The per-cluster counters the matcher keeps besides COUNTERS, which a calling sidecar uses. */
export const EXTRA_CLUSTER_COUNTERS = ['upstream_rq_2xx', 'upstream_rq_4xx', 'upstream_cx_total', 'upstream_cx_idle_timeout'] as const;
const PER_CLUSTER = [...COUNTERS, ...EXTRA_CLUSTER_COUNTERS];
const K = COUNTERS.length;

const Msg = envoyRoot().lookupType('envoy.service.metrics.v3.StreamMetricsMessage');
const Req = envoyRoot().lookupType('envoy.service.discovery.v3.DiscoveryRequest');
const COUNTER = 0;
const GAUGE = 1;
const SUMMARY = 2;
const HISTOGRAM = 4;
const QUANTILES = [0, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 1];
const BUCKETS = [0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000, 600000, 1800000, 3600000];

/** One family as a field-2 entry of StreamMetricsMessage (what repeated entries of a message are made of). */
function encodeFamily(family: object): Buffer {
  return Buffer.from(Msg.encode(Msg.fromObject({ envoy_metrics: [family] })).finish());
}

function familiesOf(spec: FamilySpec, ts: number): object[] {
  if (spec.kind === 'counter') return [{ name: spec.name, type: COUNTER, metric: [{ counter: { value: 3 }, timestamp_ms: ts }] }];
  if (spec.kind === 'gauge') return [{ name: spec.name, type: GAUGE, metric: [{ gauge: { value: 1234567 }, timestamp_ms: ts }] }];
  return [
    { name: spec.name, type: SUMMARY, metric: [{ summary: { sample_count: 12, sample_sum: 345.5, quantile: QUANTILES.map((q) => ({ quantile: q, value: 10 + q * 90 })) }, timestamp_ms: ts }] },
    { name: spec.name, type: HISTOGRAM, metric: [{ histogram: { sample_count: 12, sample_sum: 345.5, bucket: BUCKETS.map((b, i) => ({ upper_bound: b, cumulative_count: Math.min(12, i) })) }, timestamp_ms: ts }] },
  ];
}

/** Where the double of a counter family's value sits in its encoding (found by encoding two values). */
function valueOffset(name: string, ts: number): number {
  const a = encodeFamily({ name, type: COUNTER, metric: [{ counter: { value: 1 }, timestamp_ms: ts }] });
  const b = encodeFamily({ name, type: COUNTER, metric: [{ counter: { value: 2 }, timestamp_ms: ts }] });
  if (a.length !== b.length) throw new Error('a counter family changed length with its value');
  let at = -1;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) at = at < 0 ? i : at;
  // The first differing byte is inside the 8-byte little-endian double; find the double's start.
  for (let s = Math.max(0, at - 7); s <= at; s++) if (a.readDoubleLE(s) === 1 && b.readDoubleLE(s) === 2) return s;
  throw new Error('could not find the counter value in its encoding');
}

/** A small deterministic PRNG (mulberry32). */
function prng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

interface IdentityTemplate {
  /** The batches of one flush: the first holds the per-cluster counters (patched per flush). */
  readonly batches: Buffer[];
  /** Offsets of the values in batch 0, per destination, per PER_CLUSTER counter. */
  readonly offsets: Int32Array;
  readonly families: number;
}

let config: ClientsConfig;
let templates: IdentityTemplate[] = [];
/** Per identity: K sums per destination, as sent. */
let sums: Float64Array[] = [];
let nonZeroSent = 0;
let messagesSent = 0;
let bytesSent = 0;
let flushes = 0;
let lateFlushes = 0;
let pendingWrites = 0;
const streamErrors: string[] = [];

function build(cfg: ClientsConfig): void {
  const ts = Date.now();
  // The rest of the flush, in Envoy's order (counters, gauges, histograms), after the per-cluster counters.
  const others = [...cfg.others.filter((f) => f.kind === 'counter'), ...cfg.others.filter((f) => f.kind === 'gauge'), ...cfg.others.filter((f) => f.kind === 'histogram')];
  const otherEntries = others.flatMap((f) => familiesOf(f, ts).map((fam) => encodeFamily(fam)));
  templates = cfg.identities.map((idn) => {
    const entries: Buffer[] = [];
    const offsets = new Int32Array(idn.destinations.length * PER_CLUSTER.length);
    let at = 0;
    for (const [d, cluster] of idn.destinations.entries()) {
      for (const [c, counter] of PER_CLUSTER.entries()) {
        const name = `cluster.${cluster}.${counter}`;
        const e = encodeFamily({ name, type: COUNTER, metric: [{ counter: { value: 1 }, timestamp_ms: ts }] });
        offsets[d * PER_CLUSTER.length + c] = at + valueOffset(name, ts);
        entries.push(e);
        at += e.length;
      }
    }
    const all = [...entries, ...otherEntries];
    const batches: Buffer[] = [];
    for (let i = 0; i < all.length; i += cfg.batchSize) batches.push(Buffer.concat(all.slice(i, i + cfg.batchSize)));
    if (entries.length > cfg.batchSize) throw new Error('the per-cluster counters must fit in the first batch');
    return { batches, offsets, families: all.length };
  });
  sums = cfg.identities.map((idn) => new Float64Array(idn.destinations.length * K));
  // The patching is right: every per-cluster family of a patched batch decodes to the value written.
  const t = templates[0]!;
  const batch = Buffer.from(t.batches[0]!);
  for (let i = 0; i < t.offsets.length; i++) batch.writeDoubleLE(i + 0.5, t.offsets[i]!);
  const decoded = (Msg.decode(batch) as any).envoy_metrics as { name: string; metric: { counter: { value: number } }[] }[];
  for (let i = 0; i < t.offsets.length; i++) {
    const d = Math.floor(i / PER_CLUSTER.length);
    const want = `cluster.${cfg.identities[0]!.destinations[d]}.${PER_CLUSTER[i % PER_CLUSTER.length]}`;
    if (decoded[i]!.name !== want || decoded[i]!.metric[0]!.counter.value !== i + 0.5) throw new Error(`family ${i} decodes to ${decoded[i]!.name} ${decoded[i]!.metric[0]!.counter.value}`);
  }
}

/** This flush's deltas of one destination, in PER_CLUSTER order. */
function deltas(rand: () => number, retried: boolean): number[] {
  const attempts = 20 + Math.floor(rand() * 180);
  const retries = retried ? Math.floor(attempts * rand() * 0.15) : 0;
  const succeeded = Math.floor(retries * rand());
  const exhausted = retried ? Math.floor(retries * 0.2 * rand()) : 0;
  const refused = retried && rand() < 0.1 ? 1 + Math.floor(rand() * 3) : 0;
  const r5xx = Math.floor(attempts * 0.08 * rand());
  const timeouts = rand() < 0.1 ? 1 : 0;
  const perTry = retried && rand() < 0.1 ? 1 : 0;
  const connectFail = rand() < 0.05 ? 1 : 0;
  const r2xx = attempts - r5xx;
  return [attempts, retries, succeeded, exhausted, refused, retries, 0, r5xx, timeouts, perTry, connectFail, r2xx, 0, rand() < 0.2 ? 1 : 0, rand() < 0.1 ? 1 : 0];
}

class Sidecar {
  private readonly client: grpc.Client;
  private metrics?: grpc.ClientWritableStream<Buffer>;
  private timer?: NodeJS.Timeout;
  private readonly rand: () => number;
  private next = 0;
  typesSeen = new Set<string>();

  constructor(
    index: number,
    private readonly nodeId: string,
    private readonly pod: string,
    private readonly identity: number,
    Client: grpc.ServiceClientConstructor,
  ) {
    this.client = new Client(config.address, grpc.credentials.createInsecure(), { 'grpc.use_local_subchannel_pool': 1 });
    this.rand = prng(index + 1);
  }

  private node(): object {
    const [namespace, serviceAccount] = config.identities[this.identity]!.id.split('/');
    return {
      id: this.nodeId,
      cluster: serviceAccount,
      user_agent_name: 'envoy',
      metadata: { fields: { namespace: { stringValue: namespace }, serviceAccount: { stringValue: serviceAccount }, podName: { stringValue: this.pod } } },
    };
  }

  ads(onSynced: () => void): void {
    const call = (this.client as any).StreamAggregatedResources() as grpc.ClientDuplexStream<Buffer, Buffer>;
    call.on('error', (e: Error) => streamErrors.length < 20 && streamErrors.push(`ads ${this.nodeId}: ${e.message}`));
    const names: Record<string, readonly string[]> = { [CLUSTER]: [], [LISTENER]: [], [ENDPOINT]: config.edsNames, [ROUTE]: config.rdsNames };
    call.on('data', (buf: Buffer) => {
      const r = peek(buf);
      call.write(encodeReq({ type_url: r.typeUrl, resource_names: names[r.typeUrl], version_info: r.version, response_nonce: r.nonce }));
      if (!this.typesSeen.has(r.typeUrl)) {
        this.typesSeen.add(r.typeUrl);
        if (this.typesSeen.size === 4) onSynced();
      }
    });
    call.write(encodeReq({ node: this.node(), type_url: CLUSTER }));
    for (const t of [ENDPOINT, LISTENER, ROUTE]) call.write(encodeReq({ type_url: t, resource_names: names[t] }));
  }

  /** Flushes every flushMs from a phase in [0, flushMs), as Envoys started at different times do. */
  start(phase: number): void {
    this.next = performance.now() + phase;
    const tick = (): void => {
      const late = performance.now() - this.next;
      if (late > config.flushMs / 2) lateFlushes++;
      this.flush();
      this.next += config.flushMs;
      this.timer = setTimeout(tick, Math.max(0, this.next - performance.now()));
    };
    this.timer = setTimeout(tick, phase);
  }

  stop(): void {
    clearTimeout(this.timer);
  }

  private flush(): void {
    const idn = config.identities[this.identity]!;
    const t = templates[this.identity]!;
    const sum = sums[this.identity]!;
    const first = Buffer.from(t.batches[0]!);
    for (let d = 0; d < idn.destinations.length; d++) {
      const v = deltas(this.rand, idn.retried[d]!);
      for (let c = 0; c < PER_CLUSTER.length; c++) {
        first.writeDoubleLE(v[c]!, t.offsets[d * PER_CLUSTER.length + c]!);
        if (c < K) {
          sum[d * K + c] += v[c]!;
          if (v[c]) nonZeroSent++;
        }
      }
    }
    let batches = [first, ...t.batches.slice(1)];
    if (!this.metrics) {
      this.metrics = (this.client as any).StreamMetrics((err: grpc.ServiceError | null) => {
        if (err && streamErrors.length < 20) streamErrors.push(`metrics ${this.nodeId}: ${err.message}`);
        this.metrics = undefined;
      }) as grpc.ClientWritableStream<Buffer>;
      this.metrics.on('error', () => {});
      batches = [Buffer.concat([Buffer.from(Msg.encode(Msg.fromObject({ identifier: { node: this.node() } })).finish()), first]), ...t.batches.slice(1)];
    }
    for (const b of batches) {
      pendingWrites++;
      messagesSent++;
      bytesSent += b.length;
      this.metrics.write(b, () => pendingWrites--);
    }
    flushes++;
  }

  close(): void {
    this.stop();
    this.metrics?.end();
    this.client.close();
  }
}

const encodeReq = (o: object): Buffer => Buffer.from(Req.encode(Req.fromObject(o)).finish());

/** The top-level string fields 1 (version_info), 4 (type_url) and 5 (nonce) of a DiscoveryResponse. */
function peek(buf: Buffer): { version: string; typeUrl: string; nonce: string } {
  const out = { version: '', typeUrl: '', nonce: '' };
  let i = 0;
  const varint = (): number => {
    let r = 0;
    let s = 1;
    for (;;) {
      const b = buf[i++]!;
      r += (b & 0x7f) * s;
      if (b < 0x80) return r;
      s *= 128;
    }
  };
  while (i < buf.length) {
    const tag = varint();
    const len = varint();
    if ((tag & 7) !== 2) throw new Error('unexpected wire type');
    const f = tag >>> 3;
    if (f === 1) out.version = buf.toString('utf8', i, i + len);
    else if (f === 4) out.typeUrl = buf.toString('utf8', i, i + len);
    else if (f === 5) out.nonce = buf.toString('utf8', i, i + len);
    i += len;
  }
  return out;
}

const send = (m: object): void => void process.send!(m);
const bytes = (b: Buffer): Buffer => b;
let sidecars: Sidecar[] = [];

process.on('message', async (m: any) => {
  if (m.cmd === 'start') {
    config = m.config;
    build(config);
    const Client = grpc.makeGenericClientConstructor(
      { ...ADS_SERVICE, StreamMetrics: { path: METRICS_PATH, requestStream: true, responseStream: false, requestSerialize: bytes, requestDeserialize: bytes, responseSerialize: bytes, responseDeserialize: bytes } },
      'Sidecar',
    );
    const t0 = performance.now();
    let synced = 0;
    for (const [i, s] of config.sidecars.entries()) {
      const car = new Sidecar(i, s.nodeId, s.pod, s.identity, Client);
      sidecars.push(car);
      car.ads(() => {
        if (++synced === config.sidecars.length) send({ ev: 'synced', ms: performance.now() - t0 });
      });
      if (i % 200 === 199) await new Promise((r) => setImmediate(r));
    }
    const t = templates[0]!;
    send({ ev: 'started', families: t.families, batches: t.batches.length, flushBytes: t.batches.reduce((a, b) => a + b.length, 0) });
  } else if (m.cmd === 'metrics') {
    for (const [i, car] of sidecars.entries()) car.start((i * config.flushMs) / sidecars.length);
    send({ ev: 'flushing' });
  } else if (m.cmd === 'progress') {
    send({ ev: 'progress', flushes, messagesSent, bytesSent, lateFlushes, streamErrors: streamErrors.length });
  } else if (m.cmd === 'pause') {
    for (const car of sidecars) car.stop();
    const until = Date.now() + 30_000;
    while (pendingWrites > 0 && Date.now() < until) await new Promise((r) => setTimeout(r, 50));
    send({
      ev: 'paused',
      pendingWrites,
      flushes,
      messagesSent,
      bytesSent,
      lateFlushes,
      nonZeroSent,
      streamErrors,
      sums: config.identities.map((idn, i) => ({ id: idn.id, destinations: idn.destinations, sums: [...sums[i]!] })),
    });
  } else if (m.cmd === 'stop') {
    for (const car of sidecars) car.close();
    sidecars = [];
    setTimeout(() => process.exit(0), 500).unref();
  }
});
send({ ev: 'ready' });
