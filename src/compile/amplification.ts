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
 * a call with no Retry is not an edge (it amplifies nothing, but the analysis cannot see past it either).
 *
 * Bounded for any graph (issue 33: 200 identities retrying to each other once took 3.5 s and 859 MB, and printed
 * 1.9e208 attempts). The paths are found worst first, best-first over partial paths: each is ranked by the most
 * attempts any path through it can reach (over the call graph's strongly connected components: exact where the
 * graph has no cycle, the product of every identity's largest attempts within a cycle), so the paths listed are
 * always the worst, in order, even when the search stops early; what is missing is only the tail. Attempts
 * saturate at MAX_ATTEMPTS (the path says `saturated`); a path past it is followed one way to its end (it lies on
 * a path over any bound, and its Retries are named), not every way. The search takes at most MAX_STEPS steps
 * (partial paths made, kept in its queue, or walked between) and keeps MAX_PATHS paths; past either, the report
 * says it is truncated. The debug endpoint's answer is bounded apart (amplificationResponse).
 */
import type { Duration } from '../policy/duration.js';
import type { MeshIR } from './ir.js';
import { retryEdges, type RetryEdge } from './features.js';

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
  /** Worst-case attempts at the path's last service for one request at its first; at most MAX_ATTEMPTS. */
  readonly attempts: number;
  /** The path makes MAX_ATTEMPTS attempts or more (`attempts` says MAX_ATTEMPTS). */
  readonly saturated?: true;
  /** Worst-case time the first caller may wait ("1.5s"), or "unbounded" (a hop with no perTryTimeout). */
  readonly latency: string;
  readonly cycle: boolean;
  readonly hops: readonly AmplificationHop[];
}

export interface AmplificationReport {
  /** The maximal paths, worst first. */
  readonly paths: readonly AmplificationPath[];
  /** The search stopped at its bound, or more than MAX_PATHS paths were found (the worst are kept): some are missing. */
  readonly truncated?: boolean;
}

/** A report as /debug/amplification answers it: the worst paths that fit in its size bound. */
export interface AmplificationResponse extends AmplificationReport {
  /** Paths of the report left out of this answer to keep it within MAX_RESPONSE_BYTES (the least bad ones). */
  readonly omitted?: number;
}

/** The attempts of a path for people: `24`, or `>=1000000` for a saturated path. */
export function attemptsOf(p: AmplificationPath): string {
  return `${p.saturated ? '>=' : ''}${p.attempts}`;
}

/** A path for people: `a/a -> b/b (x4) -> c/c (x3)`. */
export function describePath(p: AmplificationPath): string {
  return [p.hops[0]!.from, ...p.hops.map((h) => `${h.to} (x${h.attempts})`)].join(' -> ');
}

/**
 * Worst-case attempts are counted up to this: a million attempts at one service for one request is past any bound
 * a mesh sets (the default is 10), and past it the number says nothing more (200 identities make 1.9e208).
 */
export const MAX_ATTEMPTS = 1_000_000;
/** Steps of the search before it stops: partial paths made, queued, or walked between (each a few dozen bytes). */
export const MAX_STEPS = 100_000;
/** Paths kept, the worst ones. */
export const MAX_PATHS = 1_000;
/** The most /debug/amplification answers (its worst paths; the rest are counted in `omitted`). */
export const MAX_RESPONSE_BYTES = 1 << 20;

/** Envoy's default backoff base when a Retry sets none. */
const DEFAULT_BASE_MS = 25;

interface Edge {
  readonly to: string;
  readonly retry: RetryEdge;
  readonly attempts: number;
  /** Identities whose pods back the service called. */
  readonly next: readonly string[];
  /** Those of them that call on with Retries of their own (a path can go on through them). */
  readonly onward: readonly string[];
  /** The hop, as paths list it (one object, shared by every path through this edge). */
  readonly hop: AmplificationHop;
  /** The most attempts a path from this edge on can make (shapeOf), at most MAX_ATTEMPTS. */
  bound: number;
  /** The most a path can make after this edge where it leaves its caller's component (1: it does not). */
  after: number;
  /** It goes on inside its caller's component (to an identity on a cycle with the caller). */
  inside: boolean;
}

/** Milliseconds of a Go-style duration (as the Retry spec holds it). */
const ms = (d: Duration | undefined): number | undefined => (d === undefined ? undefined : d.seconds * 1e3 + d.nanos / 1e6);

/**
 * The most the backoffs of `retries` retries can add (each uniform in [0, I_n), I doubling from base, capped at
 * 10x): 1, 2, 4 and 8 times base, then 10 times base each. In closed form: numRetries may be 2^32-1.
 */
export function backoffMs(retry: RetryEdge, retries: number): number {
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
  // Every kind's retries (an FSM Retry, a mesh route's retry): compile/features.ts decides which is in force.
  for (const [identity, byService] of retryEdges(ir)) {
    const out: Edge[] = [];
    for (const [service, retry] of byService) {
      // Envoy's num_retries defaults to 1.
      const attempts = 1 + (retry.spec.numRetries ?? 1);
      if (attempts <= 1) continue;
      const next = backers.get(service) ?? [];
      out.push({ to: service, retry, attempts, next, onward: [], hop: { from: identity, to: service, retry: retry.policy, attempts }, bound: MAX_ATTEMPTS, after: 1, inside: false });
    }
    if (out.length) edges.set(identity, out);
  }
  // One list of backers, and of those that go on, per service (shared by its callers' edges).
  for (const list of backers.values()) list.sort();
  const onward = new Map<readonly string[], readonly string[]>();
  for (const list of edges.values()) {
    for (const e of list) {
      let o = onward.get(e.next);
      if (!o) onward.set(e.next, (o = e.next.filter((b) => edges.has(b))));
      (e as { onward: readonly string[] }).onward = o;
    }
  }
  return edges;
}

/** a * b, at most MAX_ATTEMPTS. */
const cap = (a: number, b: number): number => Math.min(MAX_ATTEMPTS, a * b);

/** A strongly connected component of the call graph (identity -> identity that goes on from a service it calls). */
interface Component {
  /** Its identities, largest attempts first. */
  readonly members: readonly string[];
  /** A path can come back within it: its identities are on a cycle. */
  readonly cyclic: boolean;
  /** The most a path that leaves it can make after it (1: none leaves). */
  readonly leaving: number;
  /** The most a path from any of its identities can make (exact where it is not cyclic). */
  readonly best: number;
}

/** What the search knows of the graph before it starts: each identity's component and largest attempts. */
interface Shape {
  readonly componentOf: Map<string, Component>;
  readonly largest: Map<string, number>;
}

/**
 * The components of the call graph (Tarjan's, without recursion: a chain may be thousands long), and each edge's
 * bound: the most attempts a path that takes it can make from there on. Tarjan's gives each component after every
 * one it reaches, so what lies downstream is known first. Where there is no cycle an edge's bound is exact (its
 * attempts times the best identity after it); within a cycle a path visits each identity once, so the product of
 * every identity's largest attempts there, times the best way out, bounds it (the search narrows it to the
 * identities not yet on a path).
 */
function shapeOf(edges: Map<string, Edge[]>): Shape {
  const index = new Map<string, number>();
  const low = new Map<string, number>();
  const onStack = new Set<string>();
  const stack: string[] = [];
  const components: string[][] = [];
  let counter = 0;
  for (const root of edges.keys()) {
    if (index.has(root)) continue;
    const work: { id: string; next: number; succ: string[] }[] = [];
    const open = (id: string): void => {
      index.set(id, counter);
      low.set(id, counter++);
      stack.push(id);
      onStack.add(id);
      const succ = new Set<string>();
      for (const e of edges.get(id)!) for (const b of e.onward) succ.add(b);
      work.push({ id, next: 0, succ: [...succ] });
    };
    open(root);
    while (work.length) {
      const top = work[work.length - 1]!;
      if (top.next < top.succ.length) {
        const w = top.succ[top.next++]!;
        if (!index.has(w)) open(w);
        else if (onStack.has(w)) low.set(top.id, Math.min(low.get(top.id)!, index.get(w)!));
        continue;
      }
      work.pop();
      const up = work[work.length - 1];
      if (up) low.set(up.id, Math.min(low.get(up.id)!, low.get(top.id)!));
      if (low.get(top.id) === index.get(top.id)) {
        const component: string[] = [];
        let w: string;
        do {
          w = stack.pop()!;
          onStack.delete(w);
          component.push(w);
        } while (w !== top.id);
        components.push(component);
      }
    }
  }
  const componentOf = new Map<string, Component>();
  const largest = new Map<string, number>();
  for (const ids of components) {
    const members = new Set(ids);
    let cyclic = ids.length > 1;
    let within = 1;
    let leaving = 1;
    for (const id of ids) {
      let most = 1;
      for (const e of edges.get(id)!) {
        most = Math.max(most, e.attempts);
        // The best an identity after this component can make (an edge leaving it goes on there).
        for (const b of e.onward) {
          if (members.has(b)) {
            e.inside = true;
            if (b === id) cyclic = true;
          } else e.after = Math.max(e.after, componentOf.get(b)!.best);
        }
        leaving = Math.max(leaving, e.after);
      }
      largest.set(id, most);
      within = cap(within, most);
    }
    let best = cap(within, leaving);
    if (!cyclic) {
      best = 1;
      for (const e of edges.get(ids[0]!)!) best = Math.max(best, (e.bound = cap(e.attempts, e.after)));
    } else for (const id of ids) for (const e of edges.get(id)!) e.bound = Math.min(best, cap(e.attempts, e.inside ? best : e.after));
    const component: Component = { members: ids.sort((a, b) => largest.get(b)! - largest.get(a)! || (a < b ? -1 : 1)), cyclic, leaving, best };
    for (const id of ids) componentOf.set(id, component);
  }
  return { componentOf, largest };
}

/** A partial path: its last hop, the one before, and the attempts so far. */
interface Step {
  readonly parent: Step | undefined;
  readonly edge: Edge;
  readonly product: number;
  readonly depth: number;
}

/** In the search's queue: a path found (`found.step` ends it), or a candidate: `edge` taken after `parent`. */
interface Item {
  /** The most attempts a path from here can make, at most MAX_ATTEMPTS (exact for a path found). */
  readonly bound: number;
  /** Attempts so far (a candidate's: once its edge is taken). */
  readonly product: number;
  readonly depth: number;
  readonly seq: number;
  readonly found?: { step: Step; cycle: boolean };
  readonly parent?: Step;
  readonly edge?: Edge;
}

/** Which item the search takes first: the higher bound; a path found before a candidate; then more attempts, deeper, older. */
function before(a: Item, b: Item): boolean {
  if (a.bound !== b.bound) return a.bound > b.bound;
  if (!a.found !== !b.found) return Boolean(a.found);
  if (a.product !== b.product) return a.product > b.product;
  if (a.depth !== b.depth) return a.depth > b.depth;
  return a.seq < b.seq;
}

/** A binary heap of items, first as `before` says. */
class Queue {
  private readonly items: Item[] = [];
  get size(): number {
    return this.items.length;
  }
  peek(): Item | undefined {
    return this.items[0];
  }
  push(item: Item): void {
    const h = this.items;
    h.push(item);
    for (let i = h.length - 1; i > 0; ) {
      const p = (i - 1) >> 1;
      if (!before(h[i]!, h[p]!)) break;
      [h[i], h[p]] = [h[p]!, h[i]!];
      i = p;
    }
  }
  pop(): Item | undefined {
    const h = this.items;
    const top = h[0];
    const last = h.pop();
    if (h.length && last) {
      h[0] = last;
      for (let i = 0; ; ) {
        const l = 2 * i + 1;
        const r = l + 1;
        let m = i;
        if (l < h.length && before(h[l]!, h[m]!)) m = l;
        if (r < h.length && before(h[r]!, h[m]!)) m = r;
        if (m === i) break;
        [h[i], h[m]] = [h[m]!, h[i]!];
        i = m;
      }
    }
    return top;
  }
}

/** Worst-case time of a path's hops (see the module's comment), from its last hop back. */
function latencyMs(hops: readonly Edge[]): number {
  let inner = Infinity;
  for (let i = hops.length - 1; i >= 0; i--) {
    const edge = hops[i]!;
    inner = edge.attempts * Math.min(ms(edge.retry.spec.perTryTimeout) ?? Infinity, inner) + backoffMs(edge.retry, edge.attempts - 1);
  }
  return inner;
}

/** The call paths of Retries in force from their first callers, worst first (attempts, then more hops, then by name). */
export function amplification(ir: MeshIR, maxSteps = MAX_STEPS): AmplificationReport {
  const edges = edgesOf(ir);
  const { componentOf, largest } = shapeOf(edges);
  const queue = new Queue();
  let steps = 0;
  let seq = 0;
  const found: { path: AmplificationPath; product: number; key?: string }[] = [];

  // The identities on the partial path last extended (`at`), kept as the search moves from one to another.
  const onPath = new Set<string>();
  let at: Step | undefined;
  const moveTo = (target: Step): void => {
    let a = at;
    let b: Step | undefined = target;
    const entering: string[] = [];
    while (a !== b) {
      if (a && (!b || a.depth >= b.depth)) {
        onPath.delete(a.edge.hop.from);
        a = a.parent;
      } else {
        entering.push(b!.edge.hop.from);
        b = b!.parent;
      }
      steps++;
    }
    for (const id of entering) onPath.add(id);
    at = target;
  };

  /**
   * Queues the edges of `identity` after `parent` (whose identities are those on the path now), each with the most
   * a path through it can make: exact outside cycles; inside one, what the identities of its component not yet on
   * the path can add at most, then the best way out.
   */
  const candidates = (parent: Step | undefined, identity: string, only?: Edge): void => {
    const so = parent?.product ?? 1;
    const component = componentOf.get(identity)!;
    let rest = 1;
    if (component.cyclic && so < MAX_ATTEMPTS) {
      for (const u of component.members) {
        if (rest >= MAX_ATTEMPTS) break;
        if (u !== identity && !onPath.has(u)) rest = cap(rest, largest.get(u)!);
      }
      rest = cap(rest, component.leaving);
    }
    for (const edge of only ? [only] : edges.get(identity)!) {
      const bound = !component.cyclic ? cap(so, edge.bound) : cap(so, cap(edge.attempts, edge.inside ? Math.max(rest, edge.after) : edge.after));
      steps++;
      queue.push({ bound, product: so * edge.attempts, depth: (parent?.depth ?? 0) + 1, seq: seq++, parent, edge });
    }
  };

  /** A partial path is made: it ends here (nowhere to go on, or back on itself), goes on, or both. */
  const extend = (step: Step): void => {
    moveTo(step);
    const { edge } = step;
    const cycle = edge.next.some((b) => onPath.has(b));
    const open = edge.onward.filter((b) => !onPath.has(b));
    if (open.length === 0 || cycle) {
      steps++;
      queue.push({ bound: Math.min(MAX_ATTEMPTS, step.product), product: step.product, depth: step.depth, seq: seq++, found: { step, cycle } });
    }
    if (step.product < MAX_ATTEMPTS) for (const b of open) candidates(step, b);
    else if (!cycle && open.length) {
      // Saturated: any way on makes as many; one, the most promising, is followed to the path's end.
      const b = open.reduce((x, y) => (componentOf.get(y)!.best > componentOf.get(x)!.best ? y : x));
      candidates(step, b, edges.get(b)!.reduce((x, y) => (y.bound > x.bound ? y : x)));
    }
  };

  const record = ({ step, cycle }: { step: Step; cycle: boolean }): void => {
    const hops: Edge[] = new Array(step.depth);
    for (let s: Step | undefined = step; s; s = s.parent) hops[s.depth - 1] = s.edge;
    const saturated = step.product >= MAX_ATTEMPTS;
    const path: AmplificationPath = {
      attempts: saturated ? MAX_ATTEMPTS : step.product,
      ...(saturated ? { saturated: true as const } : {}),
      latency: formatMs(latencyMs(hops)),
      cycle,
      hops: hops.map((e) => e.hop),
    };
    found.push({ path, product: step.product });
  };

  // Searches start at the callers no Retry path reaches (a path from further down is part of one from them, with
  // fewer attempts), then at the first identity of each group left unreached (identities only on cycles).
  const reached = new Set<string>();
  for (const list of edges.values()) for (const e of list) for (const b of e.onward) reached.add(b);
  const covered = new Set<string>();
  const cover = (id: string): void => {
    const todo = [id];
    covered.add(id);
    while (todo.length) {
      for (const e of edges.get(todo.pop()!)!) {
        for (const b of e.onward) {
          if (covered.has(b)) continue;
          covered.add(b);
          todo.push(b);
        }
      }
    }
  };
  const starts = [...edges.keys()].filter((id) => !reached.has(id));
  for (const id of starts) cover(id);
  for (const id of edges.keys()) {
    if (covered.has(id)) continue;
    starts.push(id);
    cover(id);
  }
  for (const id of starts) candidates(undefined, id);

  while (queue.size && found.length < MAX_PATHS) {
    const item = queue.peek()!;
    // Out of steps, the paths found that still rank first are listed; no partial path is taken further.
    if (steps > maxSteps && !item.found) break;
    queue.pop();
    if (item.found) record(item.found);
    else {
      steps++;
      extend({ parent: item.parent, edge: item.edge!, product: item.product, depth: item.depth });
    }
  }
  const truncated = queue.size > 0;
  // Ties of attempts and length go by name (made only for them: a path may be thousands of hops long).
  const key = (p: (typeof found)[number]): string => (p.key ??= p.path.hops.map((h) => `${h.from}>${h.to}`).join(' '));
  found.sort((a, b) => b.product - a.product || b.path.hops.length - a.path.hops.length || (key(a) < key(b) ? -1 : key(a) > key(b) ? 1 : 0));
  return { paths: found.map((p) => p.path), ...(truncated ? { truncated: true } : {}) };
}

const responses = new WeakMap<AmplificationReport, AmplificationResponse>();

/**
 * A report within `maxBytes` of JSON as /debug/amplification writes it (indented): its worst paths, in order, while
 * they fit; how many were left out. A report that fits is answered as it is.
 */
export function amplificationResponse(report: AmplificationReport, maxBytes = MAX_RESPONSE_BYTES): AmplificationResponse {
  const cached = maxBytes === MAX_RESPONSE_BYTES ? responses.get(report) : undefined;
  if (cached) return cached;
  // Measured as the debug server writes it (indented by 2): what surrounds the paths, then each path, indented
  // 4 more on each of its lines, and a comma.
  let size = 128;
  let kept = 0;
  for (const p of report.paths) {
    const text = JSON.stringify(p, null, 2);
    let lines = 1;
    for (let i = text.indexOf('\n'); i >= 0; i = text.indexOf('\n', i + 1)) lines++;
    const more = text.length + 4 * lines + 2;
    if (size + more > maxBytes) break;
    size += more;
    kept++;
  }
  const out: AmplificationResponse = kept === report.paths.length ? report : { paths: report.paths.slice(0, kept), truncated: true, omitted: report.paths.length - kept };
  if (maxBytes === MAX_RESPONSE_BYTES) responses.set(report, out);
  return out;
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
