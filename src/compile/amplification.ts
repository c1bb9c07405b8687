/**
 * Retry amplification along call paths (pure, over the IR). A call edge is a Retry in force: identity A ->
 * service S with k = 1 + numRetries attempts; the identities whose pods back S continue the path with their own
 * Retries. A path's worst case at its last service is the product of its hops' attempts; its worst-case time is
 * what attempts, per-try timeouts and Envoy's backoff add up to: at hop i, W_i = k_i * min(perTry_i, W_(i+1)) +
 * the backoffs (before retry n, at most min(base * 2^(n-1), 10 * base); base 25 ms when unset, as Envoy). A path
 * that comes back to an identity already on it is cut there and marked as a cycle.
 *
 * Paths start at callers that no Retry path reaches (a path starting further down is part of one of theirs, with
 * fewer attempts), and at identities left over (only on cycles). Only edges that Retry policies declare are known:
 * a call with no Retry is not an edge (it amplifies nothing, but the analysis cannot see past it either). The work
 * is bounded: at most MAX_STEPS steps of the walk and the MAX_PATHS worst paths kept; past either, the report says
 * it is truncated.
 */
import type { Duration } from '../policy/duration.js';
import type { AppliedRetry, MeshIR } from './ir.js';

export interface AmplificationHop {
  /** `namespace/serviceAccount` of the caller. */
  readonly from: string;
  /** `namespace/service` called. */
  readonly to: string;
  /** `namespace/name` of the Retry in force. */
  readonly retry: string;
  readonly attempts: number;
}

export interface AmplificationPath {
  /** Worst-case attempts at the path's last service for one request at its first. */
  readonly attempts: number;
  /** Worst-case time the first caller may wait ("1.5s"), or "unbounded" (a hop with no perTryTimeout). */
  readonly latency: string;
  readonly cycle: boolean;
  readonly hops: readonly AmplificationHop[];
}

export interface AmplificationReport {
  /** Every maximal path, worst first. */
  readonly paths: readonly AmplificationPath[];
  /** The walk stopped at its bound, or more than MAX_PATHS paths were found (the worst are kept): some are missing. */
  readonly truncated?: boolean;
}

/** A path for people: `a/a -> b/b (x4) -> c/c (x3)`. */
export function describePath(p: AmplificationPath): string {
  return [p.hops[0]!.from, ...p.hops.map((h) => `${h.to} (x${h.attempts})`)].join(' -> ');
}

/** Steps of the walk over the call graph before it stops (a dense graph has exponentially many paths). */
export const MAX_STEPS = 50_000;
/** Paths kept, the worst ones. */
export const MAX_PATHS = 1_000;

/** Envoy's default backoff base when a Retry sets none. */
const DEFAULT_BASE_MS = 25;

interface Edge {
  readonly to: string;
  readonly retry: AppliedRetry;
  readonly attempts: number;
  /** Identities whose pods back the service called. */
  readonly next: readonly string[];
}

/** Milliseconds of a Go-style duration (as the Retry spec holds it). */
const ms = (d: Duration | undefined): number | undefined => (d === undefined ? undefined : d.seconds * 1e3 + d.nanos / 1e6);

/**
 * The most the backoffs of `retries` retries can add (each uniform in [0, I_n), I doubling from base, capped at
 * 10x): 1, 2, 4 and 8 times base, then 10 times base each. In closed form: numRetries may be 2^32-1.
 */
export function backoffMs(retry: AppliedRetry, retries: number): number {
  const base = ms(retry.spec.backoffBaseInterval) ?? DEFAULT_BASE_MS;
  return retries <= 4 ? base * (2 ** retries - 1) : base * (15 + (retries - 4) * 10);
}

function formatMs(v: number): string {
  if (!Number.isFinite(v)) return 'unbounded';
  return v >= 1000 ? `${Math.round(v) / 1000}s` : `${Math.round(v * 1000) / 1000}ms`;
}

/** The call graph of the Retries in force: identity -> its edges. */
function edgesOf(ir: MeshIR): Map<string, Edge[]> {
  const backers = new Map<string, string[]>();
  for (const [identity, ports] of Object.entries(ir.backing)) {
    for (const p of ports) {
      const list = backers.get(p.service) ?? [];
      if (!list.includes(identity)) list.push(identity);
      backers.set(p.service, list);
    }
  }
  const edges = new Map<string, Edge[]>();
  if (!ir.enableRetryPolicy) return edges;
  for (const [identity, byService] of Object.entries(ir.retries).sort(([a], [b]) => (a < b ? -1 : 1))) {
    const out: Edge[] = [];
    for (const [service, retry] of Object.entries(byService).sort(([a], [b]) => (a < b ? -1 : 1))) {
      // Envoy's num_retries defaults to 1.
      const attempts = 1 + (retry.spec.numRetries ?? 1);
      if (attempts <= 1) continue;
      out.push({ to: service, retry, attempts, next: (backers.get(service) ?? []).sort() });
    }
    if (out.length) edges.set(identity, out);
  }
  return edges;
}

/** Worst-case time of the hops from `i` on (see the module's comment). */
function latencyMs(hops: readonly { edge: Edge }[], i: number): number {
  const { edge } = hops[i]!;
  const perTry = ms(edge.retry.spec.perTryTimeout);
  const inner = i + 1 < hops.length ? latencyMs(hops, i + 1) : Infinity;
  const attempt = Math.min(perTry ?? Infinity, inner);
  return edge.attempts * attempt + backoffMs(edge.retry, edge.attempts - 1);
}

/** The call paths of Retries in force from their first callers, worst first (attempts, then more hops, then by name). */
export function amplification(ir: MeshIR, maxSteps = MAX_STEPS): AmplificationReport {
  const edges = edgesOf(ir);
  let paths: { path: AmplificationPath; key: string }[] = [];
  let steps = 0;
  let truncated = false;
  /** Once MAX_PATHS are kept, a path with fewer attempts than the least of them is not built at all. */
  let floor = 0;
  const worstFirst = (a: { path: AmplificationPath; key: string }, b: { path: AmplificationPath; key: string }): number =>
    b.path.attempts - a.path.attempts || b.path.hops.length - a.path.hops.length || (a.key < b.key ? -1 : a.key > b.key ? 1 : 0);
  // One path being walked (a stack), and the identities on it.
  const hops: { from: string; edge: Edge }[] = [];
  const onPath = new Set<string>();
  const record = (cycle: boolean): void => {
    const attempts = hops.reduce((n, h) => n * h.edge.attempts, 1);
    if (attempts < floor) {
      truncated = true;
      return;
    }
    const path = {
      attempts,
      latency: formatMs(latencyMs(hops, 0)),
      cycle,
      hops: hops.map((h) => ({ from: h.from, to: h.edge.to, retry: h.edge.retry.policy, attempts: h.edge.attempts })),
    };
    paths.push({ path, key: path.hops.map((h) => `${h.from}>${h.to}`).join(' ') });
    // Only the worst MAX_PATHS are kept: a dense graph has more paths than anyone reads.
    if (paths.length >= 2 * MAX_PATHS) {
      paths = paths.sort(worstFirst).slice(0, MAX_PATHS);
      floor = paths[paths.length - 1]!.path.attempts;
      truncated = true;
    }
  };
  const walk = (identity: string): void => {
    walked.add(identity);
    for (const edge of edges.get(identity) ?? []) {
      if (++steps > maxSteps) {
        truncated = true;
        return;
      }
      hops.push({ from: identity, edge });
      let cycle = false;
      const open: string[] = [];
      for (const b of edge.next) {
        if (onPath.has(b)) cycle = true;
        else if (edges.has(b)) open.push(b);
      }
      if (open.length === 0 || cycle) record(cycle);
      for (const b of open) {
        onPath.add(b);
        walk(b);
        onPath.delete(b);
        if (steps > maxSteps) break;
      }
      hops.pop();
      if (steps > maxSteps) return;
    }
  };
  // Walks start at the callers no Retry path reaches (a path from further down is part of one from them, with fewer
  // attempts), then at whatever is left unwalked (identities only on cycles): a chain of n Retries is n steps.
  const reached = new Set<string>();
  for (const list of edges.values()) for (const e of list) for (const b of e.next) if (edges.has(b)) reached.add(b);
  const walked = new Set<string>();
  const start = (identity: string): void => {
    onPath.add(identity);
    walk(identity);
    onPath.delete(identity);
  };
  for (const identity of edges.keys()) {
    if (steps > maxSteps) break;
    if (!reached.has(identity)) start(identity);
  }
  for (const identity of edges.keys()) {
    if (steps > maxSteps) break;
    if (!walked.has(identity)) start(identity);
  }
  paths.sort(worstFirst);
  if (paths.length > MAX_PATHS) {
    paths = paths.slice(0, MAX_PATHS);
    truncated = true;
  }
  return { paths: paths.map((p) => p.path), ...(truncated ? { truncated: true } : {}) };
}

/** The report of an IR, computed once per IR (IRs are immutable): for the debug endpoint and the metric. */
const reports = new WeakMap<MeshIR, AmplificationReport>();

/** Records the report of an IR made by compile (which computed it already). */
export function rememberAmplification(ir: MeshIR, report: AmplificationReport): void {
  reports.set(ir, report);
}

export function amplificationOf(ir: MeshIR): AmplificationReport {
  let r = reports.get(ir);
  if (!r) reports.set(ir, (r = amplification(ir)));
  return r;
}
