/**
 * Envoy's metrics service (`envoy.service.metrics.v3.MetricsService/StreamMetrics`) on the ADS port: each sidecar
 * streams its counters (`envoy.stat_sinks.metrics_service`, deltas, every stats flush) over the connection it holds
 * for ADS, and the per-cluster retry counters go to ObservedRetries. Nothing is answered until the stream ends.
 *
 * Who reports is read as ADS reads it: on an mTLS server the client certificate's identity (a node claiming another
 * is refused), else the node's metadata. A stream adds only to its own identity's numbers.
 *
 * Bounds (docs/security.md, "Doors and their bounds"): the transport's (streams and connections shared fairly by
 * client, bytes held, the message deadline); a message of at most METRICS_LIMITS.messageBytes; at most
 * `seriesPerMessage` series read of one; a byte rate per stream (`bytesPerSecond`, `burstBytes`: what is past it is
 * dropped and counted, never decoded); the first message within `firstMessageSeconds`, then one at least every
 * `idleSeconds` (Envoy reopens the stream at its next flush).
 */
import type { Logger } from 'pino';
import protobuf from 'protobufjs';
import { envoyRoot } from '../xds/resources/protos.js';
import { Code, type Handler, type ServerCall } from '../xds/transport/grpc.js';
import { IdentityError, IdentityMismatch, identityFromNode, type CertifiedIdentity, type XdsNode } from '../xds/protocol/node.js';
import { RateLimit, clip } from '../xds/protocol/limits.js';
import type { PeerCheckFn } from '../xds/protocol/stream.js';
import { COUNTERS, type DropReason, type ObservedRetries, type Reporter } from './retries.js';

export const METRICS_PATH = '/envoy.service.metrics.v3.MetricsService/StreamMetrics';

export const METRICS_LIMITS = {
  /** One flush of a sidecar calling a thousand services is ~0.7 MB with the bootstrap's stats matcher. */
  messageBytes: 1024 * 1024,
  seriesPerMessage: 20_000,
  /** Per stream: a flush a second of the largest message, with a burst of four. */
  bytesPerSecond: 1024 * 1024,
  burstBytes: 4 * 1024 * 1024,
  /**
   * Per client (the transport's: certificate identity at its address, else source address), all its streams together:
   * a pod's sidecar sends tens of kB a flush; 16 MiB/s is 2,000 sidecars' flushes (bench:stats, all from one address).
   */
  clientBytesPerSecond: 16 * 1024 * 1024,
  clientBurstBytes: 64 * 1024 * 1024,
  /** A refusal is logged once per this long per reason (with how many were not); the metric counts each. */
  warnEveryMs: 10_000,
  firstMessageSeconds: 10,
  /** The longest stats flush interval allowed is 60 s: a stream silent for five minutes is gone. */
  idleSeconds: 300,
} as const;

export type MetricsDrop = 'rate' | 'too_many_series' | 'not_a_counter' | DropReason;

export interface MetricsServiceEvents {
  /** A stream refused or ended by a bound, by reason. */
  refused(reason: string): void;
  /** Messages (rate, too_many_series) or series (the rest) not read, by reason. */
  dropped(reason: MetricsDrop, n: number): void;
  /** Counters added. */
  added(n: number): void;
}

const IDENTIFIER = envoyRoot().lookupType('envoy.service.metrics.v3.StreamMetricsMessage.Identifier');
const COUNTER = 0;


/** What one StreamMetricsMessage says that is read here. */
export interface MetricsRead {
  /** The identifier's node (the first message only). */
  readonly node?: XdsNode;
  /** `[cluster, counter, value]` of every per-cluster counter family. */
  readonly counters: [string, string, number][];
  /** Series of per-cluster families that are not counters (not read). */
  readonly notCounters: number;
  /** More per-cluster series than `maxSeries`: the rest was not read. */
  readonly cut: boolean;
}

const CLUSTER_PREFIX = Buffer.from('cluster.');
/** The counters summed, by the length of `.<counter>`: matched on the name's bytes, so no other family's name is decoded. */
const DOT = 0x2e;
const SUFFIXES = new Map<number, { readonly bytes: Buffer; readonly name: string }[]>();
let LONGEST = 0;
for (const name of COUNTERS) {
  const bytes = Buffer.from(`.${name}`);
  LONGEST = Math.max(LONGEST, bytes.length);
  SUFFIXES.set(bytes.length, [...(SUFFIXES.get(bytes.length) ?? []), { bytes, name }]);
}
/**
 * `cluster.<name>.<counter>` with a counter summed here -> [name, counter] (the counter as COUNTERS spells it), else
 * undefined; only the cluster's name is decoded (Latin-1, one byte a character: Envoy's stat names are ASCII).
 */
function summedCounter(buf: Buffer, from: number, to: number): [string, string] | undefined {
  if (!startsWith(buf, from, to, CLUSTER_PREFIX)) return undefined;
  // The last dot (a counter's name is short): its suffix's length picks the candidates, compared byte by byte.
  let dot = to - 1;
  const stop = Math.max(from + CLUSTER_PREFIX.length, to - LONGEST);
  while (dot > stop && buf[dot] !== DOT) dot--;
  if (buf[dot] !== DOT || dot <= from + CLUSTER_PREFIX.length) return undefined;
  const candidates = SUFFIXES.get(to - dot);
  if (!candidates) return undefined;
  next: for (const c of candidates) {
    for (let i = 1; i < c.bytes.length; i++) if (buf[dot + i] !== c.bytes[i]) continue next;
    return [buf.toString('latin1', from + CLUSTER_PREFIX.length, dot), c.name];
  }
  return undefined;
}
const startsWith = (buf: Uint8Array, from: number, to: number, prefix: Uint8Array): boolean => {
  if (to - from < prefix.length) return false;
  for (let i = 0; i < prefix.length; i++) if (buf[from + i] !== prefix[i]) return false;
  return true;
};

const want = (tag: number, wire: number): void => {
  if ((tag & 7) !== wire) throw new Error(`field ${tag >>> 3} has wire type ${tag & 7}, not ${wire}`);
};

/**
 * Reads a `envoy.service.metrics.v3.StreamMetricsMessage` at the wire level (protobufjs's Reader): only the families
 * named `cluster.<name>.<counter>` with a counter of COUNTERS are looked into; every other family is skipped by its
 * length, its name not even decoded unless it starts with `cluster.`, so a sidecar's other stats cost next to nothing. Read of a per-cluster family: its type and each metric's
 * `counter.value`; left out on purpose: labels (the sink sends none without `emit_tags_as_labels`), help, unit,
 * timestamps, exemplars, and every other metric kind. Throws on bytes that are not this message.
 */
export function readMetrics(buf: Uint8Array, maxSeries: number = METRICS_LIMITS.seriesPerMessage): MetricsRead {
  const r = protobuf.Reader.create(buf);
  const bytes = Buffer.isBuffer(buf) ? buf : Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength);
  let node: XdsNode | undefined;
  const counters: [string, string, number][] = [];
  let notCounters = 0;
  let series = 0;
  let cut = false;
  while (r.pos < r.len) {
    const tag = r.uint32();
    const field = tag >>> 3;
    if (field === 0) throw new Error('field number 0');
    if (field === 1) {
      want(tag, 2);
      node = (IDENTIFIER.decode(r, r.uint32()) as { node?: XdsNode }).node ?? undefined;
    } else if (field === 2) {
      want(tag, 2);
      const end = r.uint32() + r.pos;
      if (end > r.len) throw new Error('a metric family runs past the end of the message');
      let name: [number, number] | undefined;
      let type = COUNTER;
      const metrics: [number, number][] = [];
      while (r.pos < end) {
        const t = r.uint32();
        const f = t >>> 3;
        if (f === 0) throw new Error('field number 0 in a metric family');
        if (f === 1) {
          want(t, 2);
          const len = r.uint32();
          name = [r.pos, r.pos + len];
          r.skip(len);
        } else if (f === 3) {
          want(t, 0);
          type = r.int32();
        } else if (f === 4) {
          want(t, 2);
          const len = r.uint32();
          metrics.push([r.pos, r.pos + len]);
          r.skip(len);
        } else r.skipType(t & 7);
      }
      if (r.pos !== end) throw new Error('a metric family overruns its length');
      // Only a per-cluster counter read here is decoded: other families are passed over by their bytes.
      const parsed = !cut && name ? summedCounter(bytes, name[0], name[1]) : undefined;
      if (!parsed) continue;
      for (const [from, to] of metrics) {
        if (++series > maxSeries) {
          cut = true;
          break;
        }
        r.pos = from;
        let value: number | undefined;
        while (r.pos < to) {
          const t = r.uint32();
          if (t >>> 3 === 3) {
            want(t, 2);
            const cend = r.uint32() + r.pos;
            value = 0;
            while (r.pos < cend) {
              const ct = r.uint32();
              if (ct >>> 3 === 1) {
                want(ct, 1);
                value = r.double();
              } else r.skipType(ct & 7);
            }
          } else r.skipType(t & 7);
        }
        if (type !== COUNTER || value === undefined) notCounters++;
        else counters.push([parsed[0], parsed[1], value]);
      }
      r.pos = end;
    } else r.skipType(tag & 7);
  }
  return { node, counters, notCounters, cut };
}

export function metricsServiceHandler(opts: {
  observed: ObservedRetries;
  log: Logger;
  events: MetricsServiceEvents;
  /** With mTLS: what the client certificate proves. */
  peers?: PeerCheckFn;
  limits?: Partial<typeof METRICS_LIMITS>;
}): Record<string, Handler> {
  const limits = { ...METRICS_LIMITS, ...opts.limits };
  const { observed, log, events } = opts;
  /** Each client's byte rate over all its streams, held while it has one. */
  const clients = new Map<string, { readonly rate: RateLimit; streams: number }>();
  /** The last warning per reason, and the refusals since that were not logged. */
  const warned = new Map<string, { at: number; unlogged: number }>();
  const warn = (reason: string, fields: Record<string, unknown>): void => {
    const w = warned.get(reason);
    const now = Date.now();
    if (w && now - w.at < limits.warnEveryMs) {
      w.unlogged++;
      return;
    }
    log.warn({ ...fields, reason, ...(w?.unlogged ? { notLoggedSince: w.unlogged } : {}) }, 'metrics stream refused');
    warned.set(reason, { at: now, unlogged: 0 });
  };
  const handler: Handler = (call: ServerCall) => {
    const stream = {};
    let client = clients.get(call.client);
    if (!client) clients.set(call.client, (client = { rate: new RateLimit(limits.clientBurstBytes, limits.clientBytesPerSecond), streams: 0 }));
    client.streams++;
    const mine = client;
    let reporter: Reporter | undefined;
    let certified: CertifiedIdentity | undefined;
    let done = false;
    const rate = new RateLimit(limits.burstBytes, limits.bytesPerSecond);
    let timer: NodeJS.Timeout | undefined;
    const finish = (): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      observed.ended(stream);
      if (--mine.streams === 0) clients.delete(call.client);
    };
    const fail = (code: Code, details: string, reason: string): void => {
      if (done) return;
      finish();
      events.refused(reason);
      warn(reason, { code: Code[code], details, peer: call.getPeer(), node: clip(reporter?.nodeId ?? '') });
      call.end({ code, details });
    };
    const wait = (seconds: number, why: string, reason: string): void => {
      clearTimeout(timer);
      timer = setTimeout(() => fail(Code.DEADLINE_EXCEEDED, why, reason), seconds * 1000).unref();
    };
    call.on('cancelled', finish);
    call.on('close', finish);
    call.on('end', () => {
      if (done) return;
      finish();
      // The client ended its stream: the one (empty) StreamMetricsResponse a client stream has, then OK.
      call.write(new Uint8Array(0));
      call.end({ code: Code.OK, details: '' });
    });
    if (opts.peers) {
      const peer = opts.peers(call);
      if (!peer.ok) return fail(Code.UNAUTHENTICATED, peer.message, peer.reason);
      certified = { namespace: peer.id.namespace, serviceAccount: peer.id.serviceAccount, spiffe: peer.spiffe };
    }
    wait(limits.firstMessageSeconds, `no message within ${limits.firstMessageSeconds} s of the stream's start`, 'no_request');
    call.on('data', (buf: Buffer) => {
      if (done) return;
      if (buf.length > limits.messageBytes) return fail(Code.RESOURCE_EXHAUSTED, `a metrics message of ${buf.length} bytes; at most ${limits.messageBytes}`, 'metrics_too_large');
      // The stream's rate, then its client's over all its streams. A stream's first message (its identity) is always
      // read, and counts in its client's rate: dropping it would leave the stream with no identity for the next.
      if (reporter && (!rate.take(buf.length) || !mine.rate.take(buf.length))) return events.dropped('rate', 1);
      if (!reporter) mine.rate.take(Math.min(buf.length, limits.clientBurstBytes));
      let msg: MetricsRead;
      try {
        msg = readMetrics(buf, limits.seriesPerMessage);
      } catch (e) {
        return fail(Code.INVALID_ARGUMENT, `cannot decode the StreamMetricsMessage: ${clip((e as Error).message, 200)}`, 'bad_request');
      }
      if (!reporter) {
        try {
          const id = identityFromNode(msg.node, certified);
          reporter = { identity: `${id.namespace}/${id.serviceAccount}`, nodeId: id.nodeId };
        } catch (e) {
          if (e instanceof IdentityMismatch) return fail(Code.PERMISSION_DENIED, e.message, 'identity_mismatch');
          if (e instanceof IdentityError) return fail(Code.INVALID_ARGUMENT, `the first metrics message must identify its proxy: ${e.message}`, 'bad_node');
          throw e;
        }
        rate.take(buf.length);
      }
      wait(limits.idleSeconds, `no metrics message in ${limits.idleSeconds} s`, 'idle');
      // A message cut at the bound: its later series are not read.
      if (msg.cut) events.dropped('too_many_series', 1);
      if (msg.notCounters) events.dropped('not_a_counter', msg.notCounters);
      const counters = msg.counters;
      const outcome = observed.report(stream, reporter, counters);
      if (outcome.added) events.added(outcome.added);
      for (const [why, n] of Object.entries(outcome.dropped)) events.dropped(why as MetricsDrop, n);
    });
  };
  return { [METRICS_PATH]: handler };
}
