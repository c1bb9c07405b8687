/**
 * Retry statuses, written back through the status subresource (as Contour's status updater: the pipeline
 * computes each policy's report, this writes it), only where it differs from what the object has or from what was
 * last written.
 *
 * Two kinds of parts. What the spec decides (`Accepted`, `RetryAmplification`, `Pitfall`, `observedGeneration`) is
 * written as soon as it changes: a person applied something. What the proxies do (the live part: `status.observed`,
 * the sidecars' numbers, and the condition `Programmed`, programmed.ts) is written rarely, so that an API server is
 * not loaded by stats:
 *  - only by the leader (the Lease, lease.ts), and not in its first STATUS_BOUNDS.graceMs as leader (the proxies
 *    reconnect and report again after a restart; until then it would write "no proxy" for nothing);
 *  - only on a material change from what the object holds: a count (requests, retries, retriesSucceeded,
 *    retriesExhausted, retriesRefused) moved from or to zero or by at least `materialShare` (10%) of its written
 *    value, proxiesReporting, since, window, replicas or the predicted attempts changed; Programmed's status, reason,
 *    observedGeneration or proxy counts changed. `updated` alone never is;
 *  - at most once per policy per `liveIntervalMs` (60 s), except three firsts that go at once: the first live
 *    write of a policy (none on the object), the first numbers of a policy (no `since` yet: the traffic after an
 *    apply), and the first Programmed of a new generation (an edit: bounded by the edits);
 *  - and every write of the writer, of either kind, through one token bucket (`writesPerSecond`, `burst`: client-go's
 *    default QPS and burst), the spec's parts first.
 * A material change held back by the rate is written by a later pass (the writers tick every few seconds).
 *
 * `status.observed` (the CRD describes each field for `kubectl explain retry.status.observed`): over the last
 * `window` (5m), summed over every sidecar of the source identity for the destinations where this Retry is in force:
 * `requests` (first tries), `retries`, `retriesSucceeded` (retries whose attempt succeeded), `retriesExhausted`
 * (requests that ran out of retries), `retriesRefused` (retries the retry budget or circuit breaker refused),
 * `retryRate` (retries per request), `attemptsPerRequest` beside `predictedAttemptsPerRequest` (1 + numRetries, the
 * worst case on one hop), `proxiesReporting` (sidecars of the identity reporting now), `since` (when these numbers
 * began: the policy's spec as it is now), `updated` (when this was written), `replicas` (with several replicas: each
 * sidecar reports to one, so the leader sums every replica's share, replica-share.ts; "2/2" says whose numbers these are).
 */
import * as k8s from '@kubernetes/client-node';
import type { Logger } from 'pino';
import type { MeshIR, PolicyReport } from '../compile/ir.js';
import { explain } from '../sources/kubernetes.js';
import type { KubeObject } from '../sources/manifests.js';
import { asList, asMap, type Fields } from '../model/plain.js';
import type { ObservedPolicy, ObservedView } from '../observed/retries.js';
import type { ProgrammedState } from './programmed.js';
import type { Summed } from './replica-share.js';

/** A condition of a Retry's status, as the CRD has it. */
interface Condition {
  readonly type: string;
  readonly status: 'True' | 'False' | 'Unknown';
  readonly reason: string;
  readonly message: string;
  readonly observedGeneration?: number;
  readonly lastTransitionTime?: string;
}

/** A Retry's status subresource. */
export interface RetryStatus {
  readonly observedGeneration?: number;
  readonly conditions: readonly Condition[];
  readonly observed?: ObservedStatus;
}

/** `status.observed`: what the sidecars counted under this policy (see the top of this file). */
export interface ObservedStatus {
  readonly window: string;
  readonly requests: number;
  readonly retries: number;
  readonly retriesSucceeded: number;
  readonly retriesExhausted: number;
  readonly retriesRefused: number;
  /** Retries per request (absent: no requests). */
  readonly retryRate?: number;
  readonly attemptsPerRequest?: number;
  readonly predictedAttemptsPerRequest: number;
  readonly proxiesReporting: number;
  /** When these numbers began (absent: nothing counted yet). */
  readonly since?: string;
  readonly updated: string;
  /** Replicas of the control plane whose numbers these are, of those serving ("2/2"; replica-share.ts). */
  readonly replicas?: string;
}

export const STATUS_BOUNDS = {
  /** A policy's live part (observed numbers, Programmed) is written at most once per this long (see above). */
  liveIntervalMs: 60_000,
  /** A count moved by this share of its written value is a material change. */
  materialShare: 0.1,
  /** A new leader writes no live part for this long (the proxies reconnect and report again). */
  graceMs: 10_000,
  /** Every status write of the writer, through one token bucket. */
  writesPerSecond: 5,
  burst: 10,
};
export type StatusBounds = typeof STATUS_BOUNDS;

/** The window of `status.observed`. */
export const OBSERVED_WINDOW = '5m';

/** What the live part is read from: the sidecars' numbers per policy, and Programmed per policy. */
export interface LiveSources {
  observed?: () => ObservedView;
  programmed?: (ir: MeshIR) => ReadonlyMap<string, ProgrammedState>;
  /** Several replicas: both of the above, summed over every replica that answered (replica-share.ts); used instead. */
  summed?: (ir: MeshIR) => Promise<Summed>;
}

/**
 * The status a Retry should have for its report: the condition `Accepted`, `RetryAmplification` while the policy
 * lies on a call path over the mesh's bound, and `Pitfall` while a setting cannot do what it seems to (warnings:
 * it stays Accepted). Each condition keeps its
 * transition time while it stays the same.
 */
export function retryStatus(report: PolicyReport, generation: number | undefined, previous: unknown): RetryStatus {
  const observed = generation !== undefined ? { observedGeneration: generation } : {};
  const wanted: Condition[] = [
    {
      type: 'Accepted',
      status: report.state === 'Accepted' ? 'True' : 'False',
      reason: report.state,
      message: (report.messages.length ? report.messages.join('; ') : report.reason).slice(0, 32768),
      ...observed,
    },
    ...(['RetryAmplification', 'Pitfall'] as const).flatMap((type) => {
      const messages = (report.warnings ?? []).filter((w) => w.condition === type).map((w) => w.message);
      return messages.length ? [{ type, status: 'True' as const, reason: type === 'Pitfall' ? 'Pitfall' : 'OverBound', message: messages.join('; ').slice(0, 32768), ...observed }] : [];
    }),
  ];
  const before = asList(asMap(previous).conditions).map((c) => asMap(c) as Partial<Condition>);
  const now = new Date().toISOString().replace(/\.\d+Z$/, 'Z');
  return {
    ...observed,
    conditions: wanted.map((c) => {
      const prev = before.find((p) => p.type === c.type);
      const same = prev && prev.status === c.status && prev.reason === c.reason && prev.message === c.message && prev.observedGeneration === c.observedGeneration;
      return { ...c, lastTransitionTime: same && prev.lastTransitionTime ? prev.lastTransitionTime : now };
    }),
  };
}

/** Kubernetes time: RFC 3339 to the second. */
const timeOf = (ms: number): string => new Date(ms).toISOString().replace(/\.\d+Z$/, 'Z');

/** A policy's numbers as `status.observed` has them. */
export function observedStatus(p: ObservedPolicy, now: number, replicas?: string): ObservedStatus {
  const w = p.windows[OBSERVED_WINDOW];
  return {
    window: OBSERVED_WINDOW,
    requests: w.requests,
    retries: w.retries,
    retriesSucceeded: w.retriesSucceeded,
    retriesExhausted: w.retriesExhausted,
    retriesRefused: w.retriesRefused,
    ...(w.retryRate !== null ? { retryRate: w.retryRate } : {}),
    ...(w.attemptsPerRequest !== null ? { attemptsPerRequest: w.attemptsPerRequest } : {}),
    predictedAttemptsPerRequest: p.predictedAttemptsPerRequest,
    proxiesReporting: p.proxiesReporting,
    ...(p.since ? { since: timeOf(Date.parse(p.since)) } : {}),
    updated: timeOf(now),
    ...(replicas !== undefined ? { replicas } : {}),
  };
}

/** The condition `Programmed` for a state; its transition time kept while its status stays. */
export function programmedCondition(state: ProgrammedState, generation: number | undefined, previous: Fields | undefined, now: number): Condition {
  const c = { type: 'Programmed', status: state.status, reason: state.reason, message: state.message.slice(0, 32768), ...(generation !== undefined ? { observedGeneration: generation } : {}) };
  const kept = previous && previous.status === c.status && typeof previous.lastTransitionTime === 'string' ? previous.lastTransitionTime : undefined;
  return { ...c, lastTransitionTime: kept ?? timeOf(now) };
}

const COUNTS = ['requests', 'retries', 'retriesSucceeded', 'retriesExhausted', 'retriesRefused'] as const;

/** Whether the numbers moved materially from those written (see the top of this file). */
export function observedMoved(before: Fields | undefined, after: Fields | undefined, share: number = STATUS_BOUNDS.materialShare): boolean {
  if (!before || !after) return before !== after;
  for (const k of COUNTS) {
    const a = before[k];
    const b = after[k];
    if (typeof a !== 'number' || typeof b !== 'number') return true;
    if (a === 0 ? b !== 0 : b === 0 || Math.abs(b - a) >= share * a) return true;
  }
  return (['proxiesReporting', 'predictedAttemptsPerRequest', 'since', 'window', 'replicas'] as const).some((k) => before[k] !== after[k]);
}

/** What of a Programmed condition is material: status, reason, generation, and the proxy counts of its message. */
function programmedGist(c: Fields | undefined): string | undefined {
  if (!c) return undefined;
  const counts = /^(\d+) of (\d+) /.exec(typeof c.message === 'string' ? c.message : '');
  return JSON.stringify([c.status, c.reason, c.observedGeneration, counts?.[1], counts?.[2]]);
}

/** The live part of a status. */
interface Live {
  readonly observed?: Fields;
  readonly programmed?: Fields;
}

function liveOf(status: unknown): Live {
  const s = asMap(status);
  const programmed = asList(s.conditions).map(asMap).find((c) => c.type === 'Programmed');
  return { ...(s.observed !== undefined && s.observed !== null ? { observed: asMap(s.observed) } : {}), ...(programmed ? { programmed } : {}) };
}

/** A status without its transition times: what is compared and remembered. */
function signature(status: unknown): string {
  const s = asMap(status);
  return JSON.stringify({ ...s, observed: s.observed ?? undefined, conditions: asList(s.conditions).map((c) => ({ ...asMap(c), lastTransitionTime: undefined })) });
}

/**
 * A kind's status writer (Retry, HTTPRoute/GRPCRoute): what the writers of outputs/kubernetes.ts run on every pass,
 * one after another, through one token bucket. A new policy kind adds one.
 */
export interface StatusWriter {
  /** Writes the statuses of this kind that differ; `leader` is asked before each write. */
  write(ir: MeshIR, leader: () => boolean): Promise<void>;
  /** Leadership changed: what was remembered as written may not be what the objects hold. */
  leadership(): void;
  /** Status writes that succeeded. */
  readonly writes: number;
}

/** A token bucket of `rate` a second holding at most `burst`; `take` waits for a token. One taker at a time. */
export class TokenBucket {
  private tokens: number;
  private at: number;
  constructor(
    private readonly rate: number,
    private readonly burst: number,
    private readonly now: () => number,
    private readonly sleep: (ms: number) => Promise<void>,
  ) {
    this.tokens = burst;
    this.at = now();
  }

  async take(): Promise<void> {
    for (;;) {
      const t = this.now();
      this.tokens = Math.min(this.burst, this.tokens + ((t - this.at) * this.rate) / 1000);
      this.at = t;
      if (this.tokens >= 1) {
        this.tokens -= 1;
        return;
      }
      await this.sleep(Math.ceil(((1 - this.tokens) * 1000) / this.rate));
    }
  }
}

export interface RetryStatusWriterOptions {
  /** The live part's sources (none: only the spec's parts are written). */
  live?: LiveSources;
  bounds?: Partial<StatusBounds>;
  now?: () => number;
  sleep?: (ms: number) => Promise<void>;
}

export class RetryStatusWriter implements StatusWriter {
  private readonly written = new Map<string, string>();
  /** Per policy: the live part this replica last wrote while leader, and when. */
  private readonly lastLive = new Map<string, { live: Live; at: number }>();
  private readonly bounds: StatusBounds;
  private readonly now: () => number;
  /** Every status write of every kind's writer goes through it (`STATUS_BOUNDS.writesPerSecond`, `burst`). */
  readonly bucket: TokenBucket;
  private leaderSince: number;
  /** Status writes (patches that succeeded), of them those that carried a new live part, and live changes held back by the rate. */
  writes = 0;
  liveWrites = 0;
  deferred = 0;

  constructor(
    private readonly kc: k8s.KubeConfig,
    private readonly log: Logger,
    /** The Retry as the source last saw it. */
    private readonly current: (namespace: string, name: string) => KubeObject | undefined,
    private readonly o: RetryStatusWriterOptions = {},
  ) {
    this.bounds = { ...STATUS_BOUNDS, ...o.bounds };
    this.now = o.now ?? Date.now;
    this.bucket = new TokenBucket(this.bounds.writesPerSecond, this.bounds.burst, this.now, o.sleep ?? ((ms) => new Promise((r) => setTimeout(r, ms).unref())));
    this.leaderSince = this.now();
  }

  /** This replica became the leader (or stopped being it): what it remembers writing may not be what the objects hold. */
  leadership(): void {
    this.written.clear();
    this.lastLive.clear();
    this.leaderSince = this.now();
  }

  /** The live part a policy should have now: undefined where a source says nothing (kept as it is). */
  private wanted(report: PolicyReport, generation: number | undefined, have: Live, observed: ReadonlyMap<string, ObservedPolicy> | undefined, programmed: ReadonlyMap<string, ProgrammedState> | undefined, now: number, replicas: string | undefined): Live {
    if (report.state !== 'Accepted') return {};
    const key = `${report.namespace}/${report.name}`;
    const o = observed ? observed.get(key) : undefined;
    const p = programmed?.get(key);
    return {
      ...(observed ? (o ? { observed: observedStatus(o, now, replicas) as unknown as Fields } : {}) : have.observed ? { observed: have.observed } : {}),
      // Undecided (every proxy still settling) or no source: as it is.
      ...(p ? { programmed: programmedCondition(p, generation, have.programmed, now) as unknown as Fields } : have.programmed ? { programmed: have.programmed } : {}),
    };
  }

  /**
   * Writes each Retry's status where it differs from what the object has (or what was last written): the spec's
   * parts as they change, the live part by the rules above. `leader` is asked before each write.
   */
  async write(ir: MeshIR, leader: () => boolean = () => true): Promise<void> {
    const api = this.kc.makeApiClient(k8s.CustomObjectsApi);
    const now = this.now();
    const live = this.o.live;
    const settled = now - this.leaderSince >= this.bounds.graceMs;
    let observed: ReadonlyMap<string, ObservedPolicy> | undefined;
    let programmed: ReadonlyMap<string, ProgrammedState> | undefined;
    let replicas: string | undefined;
    if (live?.summed && settled) {
      // Every replica's share, each asked once (replica-share.ts).
      ({ observed, programmed, replicas } = await live.summed(ir));
    } else {
      observed = live?.observed && settled ? new Map(live.observed().policies.map((p) => [p.policy, p])) : undefined;
      programmed = live?.programmed && settled ? live.programmed(ir) : undefined;
    }
    const plans: { key: string; report: PolicyReport; status: Fields; sig: string; liveAt?: { live: Live; at: number } }[] = [];
    const keys = new Set<string>();
    for (const report of ir.policies) {
      const key = `${report.namespace}/${report.name}`;
      keys.add(key);
      const obj = this.current(report.namespace, report.name);
      if (!obj) continue;
      const current = obj.status;
      const generation = obj.metadata?.generation;
      const base = retryStatus(report, generation, current);
      const remembered = this.lastLive.get(key);
      const have = remembered?.live ?? liveOf(current);
      let chosen = have;
      let liveAt: { live: Live; at: number } | undefined;
      if (live) {
        const want = this.wanted(report, generation, have, observed, programmed, now, replicas);
        const moved = observedMoved(have.observed, want.observed, this.bounds.materialShare) || programmedGist(have.programmed) !== programmedGist(want.programmed);
        if (moved) {
          const updated = typeof have.observed?.updated === 'string' ? Date.parse(have.observed.updated) : NaN;
          const last = remembered?.at ?? (Number.isFinite(updated) ? updated : undefined);
          const firsts =
            last === undefined ||
            (!have.observed?.since && want.observed?.since !== undefined) ||
            (want.programmed !== undefined && want.programmed.observedGeneration !== have.programmed?.observedGeneration);
          if (report.state !== 'Accepted' || firsts || now - last >= this.bounds.liveIntervalMs) {
            chosen = want;
            liveAt = { live: want, at: now };
          } else this.deferred++;
        }
      }
      const status: RetryStatus = {
        ...base,
        conditions: [...base.conditions, ...(chosen.programmed ? [chosen.programmed as unknown as Condition] : [])],
        ...(chosen.observed ? { observed: chosen.observed as unknown as ObservedStatus } : {}),
      };
      const sig = signature(status);
      if (signature(current) === sig || this.written.get(key) === sig) {
        if (liveAt) this.lastLive.set(key, liveAt);
        continue;
      }
      // A merge patch: a field gone is written as null.
      const patch: Fields = asMap(current).observed != null && !status.observed ? { ...status, observed: null } : { ...status };
      plans.push({ key, report, status: patch, sig, liveAt });
    }
    for (const key of this.written.keys()) if (!keys.has(key)) this.written.delete(key);
    for (const key of this.lastLive.keys()) if (!keys.has(key)) this.lastLive.delete(key);
    // What a person applied first, then the numbers.
    plans.sort((a, b) => Number(a.liveAt !== undefined) - Number(b.liveAt !== undefined));
    for (const { key, report, status, sig, liveAt } of plans) {
      await this.bucket.take();
      if (!leader()) return;
      try {
        await api.patchNamespacedCustomObjectStatus(
          { group: 'policy.flomesh.io', version: 'v1alpha1', namespace: report.namespace, plural: 'retries', name: report.name, body: { status } },
          k8s.setHeaderOptions('Content-Type', k8s.PatchStrategy.MergePatch),
        );
        this.written.set(key, sig);
        this.writes++;
        if (liveAt) {
          this.lastLive.set(key, liveAt);
          this.liveWrites++;
        }
      } catch (err) {
        const e = err as { code?: number; body?: { message?: string }; message: string };
        this.log.warn({ retry: key, err: explain(e.code, e.body?.message ?? e.message, `patch retries/status ${key}`) }, 'cannot write Retry status');
      }
    }
  }
}
