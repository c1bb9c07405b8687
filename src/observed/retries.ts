/**
 * What the retries did: the sidecars' own counters (sent as deltas over the metrics service, metrics-service.ts),
 * summed per source identity and destination cluster, and read per Retry policy (or per path without one).
 *
 * Attribution: a sidecar of identity S counting for the cluster of service D is the Retry in force from S to D when
 * it counted (or none). Each (S, cluster) pair keeps a ring of 30-second buckets (the last 5 minutes) and a sum since
 * the pair began under its current policy; when the policy in force on the pair changes (another Retry, none, a new
 * spec), the pair starts again, so that numbers never describe a policy that did not cause them.
 *
 * Counters arrive as deltas (Envoy's `report_counters_as_deltas`): a restarted Envoy's first flush is what it counted
 * since its start, so nothing is doubled or lost; a value that is negative, not finite or absurd is dropped.
 *
 * Bounds (docs/security.md): pairs are held only for identities and clusters of the mesh, at most
 * OBSERVED_BOUNDS.pairs in all and `pairsPerIdentity` each, shared fairly by identity (when full, the identity
 * holding the most gives up its oldest pair); a pair nobody reported for in 10 minutes is forgotten.
 */
import type { AppliedRetry, MeshIR } from '../compile/ir.js';
import { FairShare } from '../doors/shares.js';

/** The counters read, per destination cluster (`cluster.<name>.<counter>`); the bootstrap's stats matcher keeps these. */
export const COUNTERS = [
  'upstream_rq_total',
  'upstream_rq_retry',
  'upstream_rq_retry_success',
  'upstream_rq_retry_limit_exceeded',
  'upstream_rq_retry_overflow',
  'upstream_rq_retry_backoff_exponential',
  'upstream_rq_retry_backoff_ratelimited',
  'upstream_rq_5xx',
  'upstream_rq_timeout',
  'upstream_rq_per_try_timeout',
  'upstream_cx_connect_fail',
] as const;
export type CounterName = (typeof COUNTERS)[number];
const INDEX = new Map<string, number>(COUNTERS.map((c, i) => [c, i]));
/** A destination cluster's name (`ns/name|port`); the sidecar's own (`mesh-xds`, `...|local`) are not reported on. */
const DESTINATION = /^[^/|]+\/[^/|]+\|\d+$/;
const K = COUNTERS.length;
const [TOTAL, RETRY, SUCCESS, LIMIT, OVERFLOW] = [0, 1, 2, 3, 4];

export const OBSERVED_BOUNDS = {
  /** (identity, cluster) pairs held in all, and by one identity. */
  pairs: 100_000,
  pairsPerIdentity: 4_096,
  /** A pair nobody reported for in this long is forgotten. */
  forgetMs: 10 * 60_000,
  /** Width of a bucket, and how many make the longest window (5 minutes). */
  bucketMs: 30_000,
  buckets: 10,
  /** A delta above this (a billion requests in one flush) is not a sidecar's: dropped. */
  maxDelta: 1e9,
} as const;

/** The windows shown, in buckets: the last minute and the last five (the current bucket and full ones before it: to a bucket's width), and since the pair began. */
export const WINDOWS = { '1m': 2, '5m': 10 } as const;
export type WindowName = keyof typeof WINDOWS | 'total';
const WINDOW_LIST = Object.entries(WINDOWS) as [keyof typeof WINDOWS, number][];

/** What a view shows besides the policies: every path, only those with a Retry, or none (default); at most `maxPaths`. */
export interface ViewOptions {
  readonly paths?: 'all' | 'retries' | 'none';
  readonly maxPaths?: number;
  /** Only paths whose source identity is in this namespace. */
  readonly sourceNamespace?: string;
}

/** Who sent a report: the stream's proxy (its identity proved by its certificate on an mTLS server). */
export interface Reporter {
  /** `ns/sa` */
  readonly identity: string;
  readonly nodeId: string;
}

/** What one report did: counters added, and those dropped by why. */
export interface ReportOutcome {
  added: number;
  dropped: Partial<Record<DropReason, number>>;
}
export type DropReason = 'unknown_identity' | 'unknown_cluster' | 'unknown_counter' | 'bad_value' | 'pairs_full';

interface Pair {
  readonly identity: string;
  readonly cluster: string;
  readonly service: string;
  /** The policy in force when the pair began (`ns/name`, or null: no Retry), and its spec's fingerprint. */
  readonly policy: string | null;
  readonly specKey: string;
  readonly since: number;
  last: number;
  readonly total: Float64Array;
  /** BUCKETS+1 rings of K counters (the current bucket and the full ones before it), and each slot's bucket number. */
  readonly ring: Uint32Array;
  readonly epochs: Int32Array;
}

/** The sums of one window. */
export interface ObservedNumbers {
  /** Requests (first tries): upstream attempts less retries. */
  readonly requests: number;
  readonly attempts: number;
  readonly retries: number;
  /** Retries whose attempt then succeeded. */
  readonly retriesSucceeded: number;
  /** Requests that ran out of retries (numRetries reached, or the per-try budget of time). */
  readonly retriesExhausted: number;
  /** Retries refused by the retry budget or circuit breaker. */
  readonly retriesRefused: number;
  readonly responses5xx: number;
  readonly timeouts: number;
  readonly perTryTimeouts: number;
  readonly connectFailures: number;
  /** Retries per request (null: no requests). */
  readonly retryRate: number | null;
  /** Share of retries that succeeded (null: no retries). */
  readonly retrySuccessRate: number | null;
  /** Attempts per request (null: no requests). */
  readonly attemptsPerRequest: number | null;
}

export interface ObservedPath {
  readonly source: string;
  /** `ns/name` of the destination service. */
  readonly destination: string;
  readonly policy: string | null;
  /** Since when these numbers run (the pair's start under this policy, the oldest of the service's ports). */
  readonly since: string;
  readonly windows: Readonly<Record<WindowName, ObservedNumbers>>;
}

export interface ObservedPolicy {
  /** `ns/name` */
  readonly policy: string;
  readonly source: string;
  readonly destinations: readonly string[];
  /** Proxies of the source identity reporting now, and connected (reporting or not) is for the caller to add. */
  readonly proxiesReporting: number;
  /** The worst attempts per request the policy allows on one hop (1 + numRetries). */
  readonly predictedAttemptsPerRequest: number;
  readonly since: string | null;
  readonly windows: Readonly<Record<WindowName, ObservedNumbers>>;
}

export interface ObservedView {
  readonly at: string;
  readonly bucketSeconds: number;
  readonly policies: readonly ObservedPolicy[];
  /** The paths asked for (ViewOptions.paths): source -> destination with numbers, with or without a Retry, by name. */
  readonly paths: readonly ObservedPath[];
  /** Paths asked for beyond `maxPaths`. */
  readonly pathsOmitted?: number;
  readonly proxiesReporting: number;
  readonly pairs: number;
  readonly dropped: Readonly<Record<string, number>>;
}

/** The cluster -> service map of a mesh, computed once per IR. */
const clustersOf = new WeakMap<MeshIR, Map<string, string>>();
function clusterMap(ir: MeshIR): Map<string, string> {
  let m = clustersOf.get(ir);
  if (!m) {
    m = new Map();
    for (const s of ir.services) for (const p of s.ports) m.set(p.cluster, `${s.namespace}/${s.name}`);
    clustersOf.set(ir, m);
  }
  return m;
}
const identitiesOf = new WeakMap<MeshIR, Set<string>>();
function identitySet(ir: MeshIR): Set<string> {
  let s = identitiesOf.get(ir);
  if (!s) identitiesOf.set(ir, (s = new Set(ir.identities)));
  return s;
}

/** A Retry spec's fingerprint, once per spec object (the IR's are immutable). */
const specKeys = new WeakMap<object, string>();
const specKeyOf = (a: AppliedRetry | undefined): string => {
  if (!a) return '';
  let k = specKeys.get(a.spec);
  if (k === undefined) specKeys.set(a.spec, (k = JSON.stringify(a.spec)));
  return k;
};

function numbers(c: ArrayLike<number>): ObservedNumbers {
  // Envoy counts an attempt in upstream_rq_total once it has an upstream stream; an attempt whose connection failed
  // (refused, reset, TLS failed: the destination is down) is not there but in upstream_cx_connect_fail. Checked with
  // Envoy 1.40 (test/envoy-observed-retries.test.ts): the guide's 503 counts total 6, retry 5; with httpbin's sidecar
  // down, total 0, retry 5, connect_fail 6. One connection per failed attempt holds for HTTP/1.1; on HTTP/2 one failed
  // connection may fail several attempts, and attempts are then a lower bound.
  const attempts = c[TOTAL]! + c[10]!;
  const retries = c[RETRY]!;
  const requests = Math.max(0, attempts - retries);
  const round = (x: number): number => Math.round(x * 1000) / 1000;
  return {
    requests,
    attempts,
    retries,
    retriesSucceeded: c[SUCCESS]!,
    retriesExhausted: c[LIMIT]!,
    retriesRefused: c[OVERFLOW]!,
    responses5xx: c[7]!,
    timeouts: c[8]!,
    perTryTimeouts: c[9]!,
    connectFailures: c[10]!,
    retryRate: requests ? round(retries / requests) : null,
    retrySuccessRate: retries ? round(c[SUCCESS]! / retries) : null,
    attemptsPerRequest: requests ? round(attempts / requests) : null,
  };
}

export class ObservedRetries {
  private readonly pairs = new Map<string, Pair>();
  private readonly share: FairShare<Pair>;
  /** Streams reporting: stream -> its reporter and last report. */
  private readonly reporters = new Map<object, { reporter: Reporter; last: number }>();
  private readonly droppedTotal: Record<string, number> = {};
  private readonly B = OBSERVED_BOUNDS.buckets + 1;

  constructor(
    /** The mesh as last translated: who may report, for which clusters, under which policy. */
    private readonly ir: () => MeshIR | undefined,
    private readonly now: () => number = Date.now,
    private readonly bounds: { readonly pairs: number; readonly pairsPerIdentity: number; readonly forgetMs: number } = OBSERVED_BOUNDS,
    /** A proxy whose last report is older than this no longer counts as reporting. */
    private readonly staleMs: () => number = () => 30_000,
  ) {
    this.share = new FairShare<Pair>({ total: bounds.pairs, perClient: bounds.pairsPerIdentity }, (victim) => this.pairs.delete(keyOf(victim.identity, victim.cluster)));
  }

  /** Counters a proxy's stream reported: `[cluster, counter, delta]`. */
  report(stream: object, reporter: Reporter, counters: Iterable<readonly [string, string, number]>): ReportOutcome {
    const now = this.now();
    const out: ReportOutcome = { added: 0, dropped: {} };
    const drop = (why: DropReason): void => {
      out.dropped[why] = (out.dropped[why] ?? 0) + 1;
      this.droppedTotal[why] = (this.droppedTotal[why] ?? 0) + 1;
    };
    this.reporters.set(stream, { reporter, last: now });
    const ir = this.ir();
    const epoch = Math.floor(now / OBSERVED_BOUNDS.bucketMs);
    const known = ir && identitySet(ir).has(reporter.identity);
    // A flush names each of its clusters a dozen times: each one's pair is found once.
    const found = new Map<string, Pair | DropReason | 'own'>();
    for (const [cluster, counter, value] of counters) {
      const i = INDEX.get(counter);
      if (i === undefined) {
        drop('unknown_counter');
        continue;
      }
      if (!(value >= 0 && value <= OBSERVED_BOUNDS.maxDelta)) {
        drop('bad_value');
        continue;
      }
      if (!ir || !known) {
        drop('unknown_identity');
        continue;
      }
      let entry = found.get(cluster);
      if (entry === undefined) {
        const service = clusterMap(ir).get(cluster);
        // The sidecar's own clusters (the control plane's, the local app's) are not destinations: not counted as dropped.
        entry = service ? (this.pair(ir, reporter.identity, cluster, service, now) ?? 'pairs_full') : DESTINATION.test(cluster) ? 'unknown_cluster' : 'own';
        found.set(cluster, entry);
      }
      if (typeof entry === 'string') {
        if (entry !== 'own') drop(entry);
        continue;
      }
      const pair = entry;
      if (value === 0) continue;
      pair.last = now;
      pair.total[i] += value;
      const slot = epoch % this.B;
      if (pair.epochs[slot] !== epoch) {
        pair.ring.fill(0, slot * K, slot * K + K);
        pair.epochs[slot] = epoch;
      }
      pair.ring[slot * K + i] = Math.min(0xffffffff, pair.ring[slot * K + i]! + value);
      out.added++;
    }
    return out;
  }

  /** The stream ended: its proxy no longer reports. */
  ended(stream: object): void {
    this.reporters.delete(stream);
  }

  private pair(ir: MeshIR, identity: string, cluster: string, service: string, now: number): Pair | undefined {
    const key = keyOf(identity, cluster);
    const applied = ir.retries[identity]?.[service];
    const policy = applied?.policy ?? null;
    const specKey = specKeyOf(applied);
    let p = this.pairs.get(key);
    if (p && (p.policy !== policy || p.specKey !== specKey)) {
      this.share.release(p);
      this.pairs.delete(key);
      p = undefined;
    }
    if (p) return p;
    p = { identity, cluster, service, policy, specKey, since: now, last: now, total: new Float64Array(K), ring: new Uint32Array(this.B * K), epochs: new Int32Array(this.B).fill(-1) };
    if (!this.share.admit(p, identity)) return undefined;
    this.pairs.set(key, p);
    return p;
  }

  /** Forgets pairs nobody reported for in `forgetMs`, and reporters gone stale. */
  sweep(): void {
    const now = this.now();
    for (const [key, p] of this.pairs) {
      if (now - p.last > this.bounds.forgetMs) {
        this.share.release(p);
        this.pairs.delete(key);
      }
    }
  }

  /** Proxies reporting now, by identity. */
  reporting(): Map<string, number> {
    const now = this.now();
    const stale = this.staleMs();
    const by = new Map<string, number>();
    const nodes = new Set<string>();
    for (const { reporter, last } of this.reporters.values()) {
      if (now - last > stale) continue;
      // A node with two streams (a reconnect not yet noticed) is one proxy.
      const id = `${reporter.identity}\u0000${reporter.nodeId}`;
      if (nodes.has(id)) continue;
      nodes.add(id);
      by.set(reporter.identity, (by.get(reporter.identity) ?? 0) + 1);
    }
    return by;
  }

  /** Pairs held now. */
  get size(): number {
    return this.pairs.size;
  }

  /**
   * The sums as of now, per policy in force and (as `opts.paths` asks) per path; only pairs under the policy now in
   * force count. A pair's windows are added up only where they are shown: for the policies (the pairs under a Retry,
   * as many as the Retries' destinations have callers) and for at most `maxPaths` paths, chosen by name before any is
   * added up, so a table of 100,000 pairs costs one pass over it and no more.
   */
  view(opts: ViewOptions = {}): ObservedView {
    const now = this.now();
    const ir = this.ir();
    const which = opts.paths ?? 'none';
    const maxPaths = opts.maxPaths ?? Infinity;
    const epoch = Math.floor(now / OBSERVED_BOUNDS.bucketMs);
    /** The pairs of each path (identity, service) under the policy in force, and the paths of each policy. */
    const groups = new Map<string, Pair[]>();
    const byPolicy = new Map<string, string[]>();
    for (const p of this.pairs.values()) {
      const applied = ir?.retries[p.identity]?.[p.service];
      // A pair whose policy is no longer the one in force describes nothing now (it starts again at its next report).
      if ((applied?.policy ?? null) !== p.policy || specKeyOf(applied) !== p.specKey) continue;
      const key = `${p.identity}\u0000${p.service}`;
      let g = groups.get(key);
      if (!g) {
        groups.set(key, (g = []));
        if (p.policy !== null) {
          let keys = byPolicy.get(p.policy);
          if (!keys) byPolicy.set(p.policy, (keys = []));
          keys.push(key);
        }
      }
      g.push(p);
    }
    const sumOf = (pairs: readonly Pair[], into = { '1m': new Float64Array(K), '5m': new Float64Array(K), total: new Float64Array(K) }): Record<WindowName, Float64Array> => {
      for (const p of pairs) {
        for (let i = 0; i < K; i++) into.total[i] += p.total[i]!;
        for (let slot = 0; slot < this.B; slot++) {
          const age = epoch - p.epochs[slot]!;
          if (p.epochs[slot]! < 0 || age < 0) continue;
          for (const [name, n] of WINDOW_LIST) {
            if (age >= n) continue;
            const w = into[name];
            for (let i = 0; i < K; i++) w[i] += p.ring[slot * K + i]!;
          }
        }
      }
      return into;
    };
    const sinceOf = (pairs: readonly Pair[]): number => pairs.reduce((m, p) => Math.min(m, p.since), Infinity);
    const iso = (t: number): string => new Date(t).toISOString();
    const windows = (w: Record<WindowName, Float64Array>): Record<WindowName, ObservedNumbers> => ({ '1m': numbers(w['1m']), '5m': numbers(w['5m']), total: numbers(w.total) });
    let chosen: string[] = [];
    if (which !== 'none') {
      const prefix = opts.sourceNamespace === undefined ? undefined : `${opts.sourceNamespace}/`;
      for (const [key, g] of groups) {
        if (which === 'retries' && g[0]!.policy === null) continue;
        if (prefix && !key.startsWith(prefix)) continue;
        chosen.push(key);
      }
    }
    const pathsOmitted = Math.max(0, chosen.length - maxPaths);
    chosen = chosen.sort().slice(0, maxPaths);
    const paths = chosen.map((key): ObservedPath => {
      const g = groups.get(key)!;
      return { source: g[0]!.identity, destination: g[0]!.service, policy: g[0]!.policy, since: iso(sinceOf(g)), windows: windows(sumOf(g)) };
    });
    const reporting = this.reporting();
    const policies: ObservedPolicy[] = [];
    for (const report of ir?.policies ?? []) {
      if (report.state !== 'Accepted' || !report.source) continue;
      const name = `${report.namespace}/${report.name}`;
      const mine = Object.entries(ir!.retries[report.source] ?? {}).filter(([, a]) => a.policy === name);
      const pairs = (byPolicy.get(name) ?? []).flatMap((key) => groups.get(key)!);
      policies.push({
        policy: name,
        source: report.source,
        destinations: mine.map(([d]) => d).sort(),
        proxiesReporting: reporting.get(report.source) ?? 0,
        predictedAttemptsPerRequest: 1 + (mine[0]?.[1].spec.numRetries ?? 1),
        since: pairs.length ? iso(sinceOf(pairs)) : null,
        windows: windows(sumOf(pairs)),
      });
    }
    policies.sort((a, b) => cmp(a.policy, b.policy));
    return {
      at: iso(now),
      bucketSeconds: OBSERVED_BOUNDS.bucketMs / 1000,
      policies,
      paths,
      ...(pathsOmitted ? { pathsOmitted } : {}),
      proxiesReporting: [...reporting.values()].reduce((a, b) => a + b, 0),
      pairs: this.pairs.size,
      dropped: { ...this.droppedTotal },
    };
  }
}

const keyOf = (identity: string, cluster: string): string => `${identity}\u0000${cluster}`;
const cmp = (a: string, b: string): number => (a < b ? -1 : a > b ? 1 : 0);
