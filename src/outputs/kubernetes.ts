/**
 * What the control plane writes back to Kubernetes, fed by the pipeline and reading the source's caches: Retry
 * statuses and the identity Secrets, by the replica that holds the Lease `mesh-xds-status-writer` only.
 *
 * Status passes (retry-status.ts) run one at a time: on each new mesh, every `tickMs` (the live part: the sidecars'
 * numbers change without a new mesh) and shortly after a proxy connects, leaves or answers an RDS response
 * (`Programmed`). A pass asked for while one runs is one more pass after it, however many were asked for.
 */
import type { RouteKind } from '../model/mesh.js';
import type * as k8s from '@kubernetes/client-node';
import type { Logger } from 'pino';
import type { MeshIR } from '../compile/ir.js';
import type { KeyPair } from '../security/ca.js';
import type { MeshAccount } from '../sources/kubernetes.js';
import type { KubeObject } from '../sources/manifests.js';
import { IdentitySecrets, type IdentitySecretsOptions } from './identities.js';
import { LeaseElector } from './lease.js';
import { RetryStatusWriter, type StatusBounds, type StatusWriter } from './retry-status.js';
import { RouteStatusWriter } from './route-status.js';
import type { ObservedView } from '../observed/retries.js';
import type { ProgrammedTracker } from './programmed.js';
import type { ReplicaShares } from './replica-share.js';

export interface KubernetesWritersOptions {
  kc: k8s.KubeConfig;
  /** The control plane's namespace (where the Lease is). */
  namespace: string;
  log: Logger;
  /** What the source holds: each Retry as last seen, and the mesh's service accounts. */
  source: { retry(namespace: string, name: string): KubeObject | undefined; route(kind: RouteKind, namespace: string, name: string): KubeObject | undefined; accounts(): MeshAccount[] };
  lease?: { name?: string; identity?: string; leaseSeconds?: number; retryMs?: number };
  /** mTLS: keep an identity Secret for every ServiceAccount of an enrolled namespace (issued from this CA). */
  identities?: Omit<IdentitySecretsOptions, 'kc' | 'log' | 'controlPlaneNamespace'>;
  /** The live part of Retry statuses: the sidecars' numbers and whether the proxies hold each policy. */
  live?: {
    observed?: () => ObservedView;
    programmed?: ProgrammedTracker;
    /** Several replicas: the others' shares, asked for once a pass and summed with this one's (replica-share.ts). */
    replicas?: ReplicaShares;
    /** How often a pass looks at the live part (default 5 s), and how soon after a proxy's answer (default 1 s). */
    tickMs?: number;
    pokeMs?: number;
    bounds?: Partial<StatusBounds>;
    now?: () => number;
  };
}

export class KubernetesWriters {
  /** Leader election: only the holder of the Lease writes. */
  readonly elector: LeaseElector;
  readonly identities?: IdentitySecrets;
  private readonly statuses: RetryStatusWriter;
  /** Every kind's status writer, run in turn on each pass (the Retry's first). */
  private readonly writers: StatusWriter[];
  private lastIr?: MeshIR;
  /** Status passes run one after another, so two quick rebuilds never race to write the same object. */
  private running?: Promise<void>;
  private again = false;
  private tick?: NodeJS.Timeout;
  private poked?: NodeJS.Timeout;
  private stopped = false;

  constructor(private readonly o: KubernetesWritersOptions) {
    const live = o.live;
    const programmed = live?.programmed;
    this.statuses = new RetryStatusWriter(o.kc, o.log, (ns, name) => o.source.retry(ns, name), {
      live: live && {
        observed: live.observed,
        programmed: programmed && ((ir) => programmed.evaluate(ir)),
        ...(live.replicas ? { summed: (ir: MeshIR) => live.replicas!.sum(live.observed?.(), programmed?.tallies(ir)) } : {}),
      },
      bounds: live?.bounds,
      now: live?.now,
    });
    this.writers = [this.statuses, new RouteStatusWriter(o.kc, o.log, (kind, ns, name) => o.source.route(kind, ns, name), this.statuses.bucket, live?.now)];
    programmed?.changes(() => this.poke());
    this.elector = new LeaseElector({
      kc: o.kc,
      namespace: o.namespace,
      name: o.lease?.name ?? 'mesh-xds-status-writer',
      identity: o.lease?.identity,
      leaseSeconds: o.lease?.leaseSeconds,
      retryMs: o.lease?.retryMs,
      log: o.log,
      // The new holder writes what the mesh says now (its predecessor may have missed the last change).
      onChange: (leader) => {
        for (const w of this.writers) w.leadership();
        if (leader && this.lastIr) void this.pass();
      },
    });
    // Each replica knows only the proxies connected to it: without the others' shares, Programmed's messages name the
    // one writing; with them, how many replicas answered.
    if (programmed) programmed.replica = this.elector.identity;
    if (live?.replicas) live.replicas.replica = this.elector.identity;
    if (o.identities) {
      const identities = (this.identities = new IdentitySecrets({ ...o.identities, controlPlaneNamespace: o.namespace, kc: o.kc, log: o.log }));
      this.elector.observe((leader) => identities.setLeader(leader));
    }
  }

  start(): void {
    this.elector.start();
    if (this.o.live) this.tick = setInterval(() => this.elector.leader && void this.pass(), this.o.live.tickMs ?? 5_000).unref();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearInterval(this.tick);
    clearTimeout(this.poked);
    this.identities?.stop();
    this.o.live?.replicas?.close();
    await this.elector.stop();
  }

  /** A new IR: each Retry's status, written if this replica holds the Lease. */
  policies(ir: MeshIR): Promise<void> {
    this.lastIr = ir;
    // Which keys kept an older snapshot: known now, before another build.
    this.o.live?.programmed?.built();
    return this.pass();
  }

  /** A proxy connected, left or answered: a pass soon (one for any number of answers meanwhile). */
  private poke(): void {
    if (this.poked || this.stopped || !this.elector.leader) return;
    this.poked = setTimeout(() => {
      this.poked = undefined;
      void this.pass();
    }, this.o.live?.pokeMs ?? 1_000).unref();
  }

  /** A status pass over the last IR, after the one running (resolves once a pass that began after this call ends). */
  pass(): Promise<void> {
    this.again = true;
    this.running ??= (async () => {
      try {
        // First out of this call, so that `running` is set before it can be cleared.
        await undefined;
        while (this.again && !this.stopped) {
          this.again = false;
          const ir = this.lastIr;
          if (!ir || !this.elector.leader) continue;
          for (const w of this.writers) await w.write(ir, () => this.elector.leader && !this.stopped).catch((err) => this.o.log.warn({ err: (err as Error).message }, 'status writes failed'));
        }
      } finally {
        // In the same turn as the last look at `again`: a pass asked for after it starts a new run.
        this.running = undefined;
      }
    })();
    return this.running;
  }

  /** The mesh changed: the identity Secrets follow its service accounts. */
  meshChanged(): void {
    this.identities?.update(this.o.source.accounts());
  }

  /** The mesh CA rotated: the identity Secrets are issued again from it. */
  setCa(ca: KeyPair): void {
    this.identities?.setCa(ca);
  }

  info(): Record<string, unknown> {
    return {
      statusWriter: {
        lease: this.elector.name,
        identity: this.elector.identity,
        leader: this.elector.leader,
        writes: this.statuses.writes,
        routeWrites: this.writers[1]!.writes,
        liveWrites: this.statuses.liveWrites,
        liveHeldBack: this.statuses.deferred,
        ...(this.o.live?.replicas ? { replicaShares: { asked: this.o.live.replicas.asked, answered: this.o.live.replicas.answered } } : {}),
      },
      ...(this.identities ? { identitySecrets: this.identities.info() } : {}),
    };
  }
}
