/**
 * Retry amplification along call paths (pure, over the IR). A call edge is a Retry in force: identity A ->
 * service S with k = 1 + numRetries attempts; the identities whose pods back S continue the path with their own
 * Retries. A path's worst case at its last service is the product of its hops' attempts; its worst-case time is
 * what attempts, per-try timeouts and Envoy's backoff add up to: at hop i, W_i = k_i * min(perTry_i, W_(i+1)) +
 * the backoffs (before retry n, at most min(base * 2^(n-1), 10 * base); base 25 ms when unset, as Envoy). A path
 * that comes back to an identity already on it is cut there and marked as a cycle.
 *
 * Only edges that Retry policies declare are known: a call with no Retry is not an edge (it amplifies nothing,
 * but the analysis cannot see past it either). The work is bounded: at most MAX_STEPS steps of the walk, then the
 * report says it is truncated.
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
  /** The walk stopped at its bound: some paths are missing. */
  readonly truncated?: boolean;
}

/** Steps of the walk over the call graph before it stops (a dense graph has exponentially many paths). */
export const MAX_STEPS = 200_000;

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

/** The most the backoffs of `retries` retries can add (each uniform in [0, I_n), I doubling from base, capped at 10x). */
function backoffMs(retry: AppliedRetry, retries: number): number {
  const base = ms(retry.spec.backoffBaseInterval) ?? DEFAULT_BASE_MS;
  let total = 0;
  for (let n = 1; n <= retries; n++) total += Math.min(base * 2 ** (n - 1), 10 * base);
  return total;
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

/** Every maximal path of Retries in force, worst first (attempts, then more hops, then by name). */
export function amplification(ir: MeshIR, maxSteps = MAX_STEPS): AmplificationReport {
  const edges = edgesOf(ir);
  const paths: AmplificationPath[] = [];
  let steps = 0;
  let truncated = false;
  const walk = (identity: string, onPath: readonly string[], hops: { from: string; edge: Edge }[]): void => {
    for (const edge of edges.get(identity) ?? []) {
      if (++steps > maxSteps) {
        truncated = true;
        return;
      }
      const path = [...hops, { from: identity, edge }];
      const onward = edge.next.filter((b) => edges.has(b));
      const cycle = edge.next.some((b) => onPath.includes(b));
      const open = onward.filter((b) => !onPath.includes(b));
      if (open.length === 0 || cycle) record(path, cycle);
      for (const b of open) walk(b, [...onPath, b], path);
      if (truncated) return;
    }
  };
  const record = (hops: { from: string; edge: Edge }[], cycle: boolean): void => {
    paths.push({
      attempts: hops.reduce((n, h) => n * h.edge.attempts, 1),
      latency: formatMs(latencyMs(hops, 0)),
      cycle,
      hops: hops.map((h) => ({ from: h.from, to: h.edge.to, retry: h.edge.retry.policy, attempts: h.edge.attempts })),
    });
  };
  for (const identity of edges.keys()) {
    if (truncated) break;
    walk(identity, [identity], []);
  }
  const key = (p: AmplificationPath): string => p.hops.map((h) => `${h.from}>${h.to}`).join(' ');
  paths.sort((a, b) => b.attempts - a.attempts || b.hops.length - a.hops.length || (key(a) < key(b) ? -1 : key(a) > key(b) ? 1 : 0));
  return { paths, ...(truncated ? { truncated: true } : {}) };
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
