/**
 * Whether each accepted Retry is in its proxies' config: the Gateway API's `Programmed`, as the Retry status
 * (retry-status.ts) writes it. Read from what the proxies said back (ProxyRegistry: the same data as /debug/proxies)
 * and what the cache holds; plain data, no I/O.
 *
 * The rule. A Retry's routes live in the route configurations (RDS) of its source identity's proxies. Versions are
 * content hashes (what a SotW response holds; a delta stream's system version is its snapshot's set), so a proxy
 * has the policy when the RDS version it has ACKed is one known to hold the policy as it is now:
 *  - the RDS version a proxy of that identity would be at with the snapshot its key has in the cache now (the
 *    pipeline builds every key from the mesh in force, so that snapshot holds the policy), except a snapshot that
 *    was kept because its rebuild failed its checks (it predates the mesh in force);
 *  - or one recorded so since the policy last changed (its destinations or spec): a proxy that ACKed the policy and
 *    is being sent an unrelated change still has it. At most VERSIONS_KEPT per policy; a change of the policy
 *    forgets them all.
 * A proxy whose ACKed version holds the policy counts as programmed, whatever it did with a later version.
 *
 * Which proxies: every connection of the source identity (sidecars and proxyless clients), one per node id (the
 * newest). One just sent a new RDS version (within `settleMs`, not yet answered) or connected within `settleMs`
 * without one is not counted yet, either way: ACKs take milliseconds, a status written in between would only say
 * "pending" for nothing.
 *
 * The answer: True (every counted proxy has it; how many in the message), False naming (clipped, at most
 * NAMED_PROXIES) those that NACKed (reason Rejected, with the error clipped) or have not ACKed it (Pending), Unknown
 * (NoProxies) when no proxy of the identity is connected; undefined while every connected proxy is still settling.
 *
 * A replica knows the proxies connected to it only: with several replicas (deploy/ runs two) the writer's answer is
 * about its own share, and its messages say so when `replica` is set (its name in the Lease).
 */
import type { MeshIR } from '../compile/ir.js';
import type { SnapshotCache } from '../xds/resources/cache.js';
import { versionOf, type Snapshot, type TypeSet } from '../xds/resources/snapshot.js';
import { ROUTE } from '../xds/resources/types.js';
import type { ProxyConnection, ProxyRegistry } from '../xds/protocol/status.js';

export const PROGRAMMED_BOUNDS = {
  /** RDS versions remembered per policy as holding it. */
  versionsKept: 32,
  /** Proxies named in a False condition's message. */
  namedProxies: 5,
  /** A proxy's name and a NACK's error in the message are clipped to these. */
  nameChars: 63,
  errorChars: 120,
  /** A proxy sent a new RDS version this recently (or connected this recently) is not counted yet. */
  settleMs: 5_000,
} as const;

export interface ProgrammedState {
  readonly status: 'True' | 'False' | 'Unknown';
  readonly reason: 'Programmed' | 'Pending' | 'Rejected' | 'NoProxies';
  readonly message: string;
  /** Proxies counted, and of them those that do not have the policy. */
  readonly proxies: number;
  readonly lacking: number;
}

export interface ProgrammedOptions {
  registry: ProxyRegistry;
  cache: SnapshotCache;
  /** Keys whose last build failed its checks (the pipeline's last report). */
  failedKeys?: () => Iterable<string>;
  now?: () => number;
  settleMs?: number;
}

const byName = (a: string, b: string): number => (a < b ? -1 : a > b ? 1 : 0);
const clipText = (s: string, n: number): string => (s.length > n ? `${s.slice(0, n - 1)}…` : s);

export class ProgrammedTracker {
  /** Policy `ns/name` -> what it is now (its destinations and spec) and the RDS versions known to hold it. */
  private readonly held = new Map<string, { fingerprint: string; versions: Set<string> }>();
  /** Keys whose snapshot was kept after a failed rebuild: that snapshot, while the cache still holds it. */
  private readonly suspect = new Map<string, Snapshot>();
  /** SotW subsets: the version of the named resources of a set (a stream subscribed to part of it). */
  private readonly subsets = new WeakMap<TypeSet, Map<string, string>>();
  private readonly now: () => number;
  private readonly settleMs: number;
  /** This replica's name, said in the messages (the proxies counted are those connected to it). */
  replica?: string;

  constructor(private readonly o: ProgrammedOptions) {
    this.now = o.now ?? Date.now;
    this.settleMs = o.settleMs ?? PROGRAMMED_BOUNDS.settleMs;
  }

  /** Calls `l` when a proxy connects, leaves, or answers an RDS response (a Programmed may have changed). */
  changes(l: () => void): void {
    this.o.registry.observe({
      connected: l,
      disconnected: l,
      acked: (_c, typeUrl) => typeUrl === ROUTE && l(),
      nacked: (_c, typeUrl) => typeUrl === ROUTE && l(),
    });
  }

  /** A mesh was built: keys whose rebuild failed keep an older snapshot, which does not count as holding anything new. */
  built(): void {
    for (const key of this.o.failedKeys?.() ?? []) {
      const s = this.o.cache.peek(key);
      if (s) this.suspect.set(key, s);
    }
    for (const [key, s] of this.suspect) if (this.o.cache.peek(key) !== s) this.suspect.delete(key);
  }

  /** The RDS version a connection would be at with its key's current snapshot (undefined: none known to be current). */
  private currentVersion(c: ProxyConnection): string | undefined {
    const snapshot = this.o.cache.peek(c.key);
    if (!snapshot || this.suspect.get(c.key) === snapshot) return undefined;
    const set = snapshot.get(ROUTE);
    if (!set) return undefined;
    const names = c.types.get(ROUTE)?.names;
    // Delta: the system version is the set's; SotW: the set's when the stream takes all of it (a sidecar), else the
    // hash of the part it takes (sotw.ts).
    if (c.stream === 'delta' || !names || names.size === 0 || names.size >= set.resources.size) return set.version;
    const list = [...names].sort(byName);
    const key = list.join('\u0000');
    let memo = this.subsets.get(set);
    if (!memo) this.subsets.set(set, (memo = new Map()));
    let v = memo.get(key);
    if (v === undefined) {
      const resources = list.map((n) => set.resources.get(n)).filter((r) => r !== undefined);
      v = resources.length === set.resources.size ? set.version : versionOf(ROUTE, resources);
      if (memo.size < 256) memo.set(key, v);
    }
    return v;
  }

  /** Programmed for every accepted policy of `ir` (the mesh in force), by `ns/name`; absent while it is undecided. */
  evaluate(ir: MeshIR): Map<string, ProgrammedState> {
    const to = this.replica ? ` to replica ${this.replica}` : '';
    const out = new Map<string, ProgrammedState>();
    for (const [policy, t] of this.tallies(ir)) {
      const state = programmedState(t, to);
      if (state) out.set(policy, state);
    }
    return out;
  }

  /** What Programmed is made of, for every accepted policy of `ir`: the counts, which add across replicas. */
  tallies(ir: MeshIR): Map<string, ProgrammedTally> {
    const now = this.now();
    const bySource = new Map<string, Map<string, ProxyConnection>>();
    for (const c of this.o.registry.connections) {
      const id = `${c.identity.namespace}/${c.identity.serviceAccount}`;
      let nodes = bySource.get(id);
      if (!nodes) bySource.set(id, (nodes = new Map()));
      const other = nodes.get(c.identity.nodeId);
      if (!other || c.id > other.id) nodes.set(c.identity.nodeId, c);
    }
    const out = new Map<string, ProgrammedTally>();
    const live = new Set<string>();
    for (const report of ir.policies) {
      if (report.state !== 'Accepted' || !report.source) continue;
      const policy = `${report.namespace}/${report.name}`;
      live.add(policy);
      const mine = Object.entries(ir.retries[report.source] ?? {})
        .filter(([, a]) => a.policy === policy)
        .sort(([a], [b]) => byName(a, b));
      const fingerprint = JSON.stringify(mine.map(([d, a]) => [d, a.spec]));
      let h = this.held.get(policy);
      if (!h || h.fingerprint !== fingerprint) this.held.set(policy, (h = { fingerprint, versions: new Set() }));
      const proxies = [...(bySource.get(report.source)?.values() ?? [])];
      for (const c of proxies) {
        const v = this.currentVersion(c);
        if (v === undefined || h.versions.has(v)) continue;
        h.versions.add(v);
        if (h.versions.size > PROGRAMMED_BOUNDS.versionsKept) h.versions.delete(h.versions.values().next().value!);
      }
      out.set(policy, this.tally(report.source, proxies, h.versions, now));
    }
    for (const policy of this.held.keys()) if (!live.has(policy)) this.held.delete(policy);
    return out;
  }

  private tally(source: string, proxies: readonly ProxyConnection[], holding: ReadonlySet<string>, now: number): ProgrammedTally {
    let ok = 0;
    let settling = 0;
    const lacking: LackingProxy[] = [];
    for (const c of proxies) {
      const rds = c.types.get(ROUTE);
      if (rds?.ackedVersion !== undefined && holding.has(rds.ackedVersion)) {
        ok++;
        continue;
      }
      const nack = rds?.lastNack && rds.lastNack.version === rds.sentVersion ? rds.lastNack : undefined;
      const since = rds?.sentAt?.getTime() ?? c.connectedAt.getTime();
      if (!nack && (rds === undefined || rds.awaiting) && now - since < this.settleMs) {
        settling++;
        continue;
      }
      const name = clipText(c.identity.podName ?? c.identity.nodeId, PROGRAMMED_BOUNDS.nameChars);
      lacking.push(nack ? { name, why: `NACKed: ${clipText(nack.error.replace(/\s+/g, ' '), PROGRAMMED_BOUNDS.errorChars)}`, nacked: true } : { name, why: 'not ACKed', nacked: false });
    }
    return { source, ok, settling, lacking: lacking.length, named: namedFirst(lacking) };
  }
}

/** A proxy that does not have a policy, as a message names it. */
export interface LackingProxy {
  readonly name: string;
  readonly why: string;
  readonly nacked: boolean;
}

/**
 * What Programmed is made of for one policy: the source identity's proxies that have it (`ok`), that were just sent
 * it (`settling`: not counted either way), that do not (`lacking`), and the first PROGRAMMED_BOUNDS.namedProxies of
 * those (NACKs first, then by name). Tallies of several replicas add (addTallies).
 */
export interface ProgrammedTally {
  readonly source: string;
  readonly ok: number;
  readonly settling: number;
  readonly lacking: number;
  readonly named: readonly LackingProxy[];
}

/** The proxies a message names: NACKs first, then by name, at most PROGRAMMED_BOUNDS.namedProxies. */
function namedFirst(lacking: LackingProxy[]): LackingProxy[] {
  return [...lacking].sort((a, b) => Number(b.nacked) - Number(a.nacked) || byName(a.name, b.name)).slice(0, PROGRAMMED_BOUNDS.namedProxies);
}

/** Two tallies of one policy (two replicas' proxies) as one. */
export function addTallies(a: ProgrammedTally, b: ProgrammedTally): ProgrammedTally {
  return { source: a.source, ok: a.ok + b.ok, settling: a.settling + b.settling, lacking: a.lacking + b.lacking, named: namedFirst([...a.named, ...b.named]) };
}

/**
 * The condition a tally makes (undefined: undecided, every proxy just sent it); `to` says whose proxies these are
 * (` to replica X`, ` to 2 of 2 replicas`).
 */
export function programmedState(t: ProgrammedTally, to: string): ProgrammedState | undefined {
  const counted = t.ok + t.lacking;
  if (counted === 0) return t.settling ? undefined : { status: 'Unknown', reason: 'NoProxies', message: `no proxy of ${t.source} is connected${to}`, proxies: 0, lacking: 0 };
  const more = t.settling ? `; ${t.settling} more just sent it` : '';
  if (!t.lacking) {
    return { status: 'True', reason: 'Programmed', message: `${t.ok} of ${counted} proxies of ${t.source} connected${to} have ACKed a configuration holding this policy${more}`, proxies: counted, lacking: 0 };
  }
  const named = t.named.map((l) => `${l.name} (${l.why})`);
  const rest = t.lacking - named.length;
  return {
    status: 'False',
    reason: t.named.some((l) => l.nacked) ? 'Rejected' : 'Pending',
    message: `${t.lacking} of ${counted} proxies of ${t.source} connected${to} do not have this policy: ${named.join(', ')}${rest ? ` and ${rest} more` : ''}${more}`,
    proxies: counted,
    lacking: t.lacking,
  };
}
