/**
 * Sources -> compile -> snapshots -> cache. Called with each new MeshState; rebuilds what changed and
 * publishes only snapshots that passed every check. A proxy whose new snapshot fails keeps its last good one.
 */
import type { Logger } from 'pino';
import { compile, compileTopologyOnly } from '../compile/compile.js';
import type { MeshIR } from '../compile/ir.js';
import type { MeshState } from '../model/mesh.js';
import type { SnapshotCache } from '../xds/resources/cache.js';
import type { Snapshot } from '../xds/resources/snapshot.js';
import { SnapshotBuilder } from './build.js';
import { featureSignatures, type FeatureSignatures } from '../compile/features.js';
import type { WorkloadCerts } from '../security/workload-certs.js';

/** A turn of the event loop: what waits (health checks, ADS) is served. */
const turn = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

export interface BuildReport {
  readonly at: Date;
  readonly ms: number;
  readonly rebuilt: number;
  readonly changed: number;
  readonly failed: { key: string; error: string }[];
  readonly topologyChanged: boolean;
}

export interface PipelineEvents {
  built?(report: BuildReport, ir: MeshIR): void;
}

export class Pipeline {
  private readonly builder: SnapshotBuilder;
  private state?: MeshState;
  private topology?: ReturnType<typeof compileTopologyOnly>;
  /** The route features' signatures of the last IR, by scope (compile/features.ts). */
  private featuresSig?: FeatureSignatures;
  ir?: MeshIR;
  lastReport?: BuildReport;
  /** Told of every new IR (the Kubernetes source writes Retry statuses from it). */
  onPolicies?: (ir: MeshIR) => void;

  constructor(
    private readonly cache: SnapshotCache,
    private readonly log: Logger,
    private readonly events: PipelineEvents = {},
    /** Sidecar-to-sidecar mTLS: the certificates to send the sidecars (their issuer tells `secretsChanged`). */
    private readonly certs?: WorkloadCerts,
  ) {
    this.builder = new SnapshotBuilder({ trustDomain: certs?.trustDomain });
    // A proxy of a key with no snapshot yet: built from the current mesh when first asked for (a sidecar once its
    // certificate is issued: `secretsChanged` builds it then).
    cache.onDemand((key) => {
      if (!this.builder.hasSecrets(key)) return this.wantCerts();
      const snapshot = this.buildOne(key);
      if (snapshot) cache.set(key, snapshot);
    });
  }

  /** The identities whose sidecars need a certificate: the mesh's and those of sidecars connected. */
  private wantCerts(): void {
    if (!this.certs || !this.ir) return;
    const sidecars = (keys: Iterable<string>): string[] => [...keys].filter((k) => k.startsWith('sidecar:')).map((k) => k.slice('sidecar:'.length));
    const watched = sidecars(this.cache.watchedKeys());
    this.certs.want([...sidecars(this.builder.eagerKeys()), ...watched], watched);
    this.builder.setSecrets(this.certs.secrets());
  }

  /**
   * Certificates issued or renewed (those identities), or a new CA bundle (undefined: every sidecar): their sidecars'
   * snapshots are built again, SDS being all that changes.
   */
  secretsChanged(identities: readonly string[] | undefined): void {
    if (!this.certs || !this.ir) return;
    this.builder.setSecrets(this.certs.secrets());
    const live = new Set([...this.builder.eagerKeys(), ...this.cache.watchedKeys()]);
    const keys = identities ? identities.map((id) => `sidecar:${id}`).filter((k) => live.has(k)) : [...live].filter((k) => k.startsWith('sidecar:'));
    let changed = 0;
    for (const key of keys) {
      if (!this.builder.hasSecrets(key)) continue;
      const snapshot = this.buildOne(key);
      if (snapshot && this.cache.set(key, snapshot)) changed++;
    }
    this.log.debug({ identities: identities?.length ?? 'all', changed }, 'sidecar secrets changed');
  }

  /** Memo counters of the builder (hits = pieces reused instead of built and encoded again). */
  get memoStats(): { hits: number; misses: number; pieces: number } {
    return this.builder.memoStats;
  }

  /** The snapshot an identity would get now (for the debug endpoint), without caching it. */
  preview(key: string): Snapshot {
    return this.builder.preview(key);
  }

  private buildOne(key: string): Snapshot | undefined {
    try {
      return this.builder.build(key);
    } catch (err) {
      this.log.error({ key, err: (err as Error).message }, 'snapshot failed its checks; not published');
      return undefined;
    }
  }

  /**
   * Takes a new mesh as a source delivers it: what is big is prepared first, a slice per turn of the event loop
   * (a ClusterLoadAssignment of 50,000 endpoints, say), then `update` runs. One mesh at a time; a mesh that
   * arrives meanwhile replaces one still waiting (each mesh is whole: the latest holds every change).
   */
  submit(state: MeshState): Promise<void> {
    this.waiting = state;
    this.running ??= this.drain().finally(() => (this.running = undefined));
    return this.running;
  }

  private waiting?: MeshState;
  private running?: Promise<void>;
  /** The topology compiled for a mesh being prepared, reused by its `update`. */
  private prepared?: { state: MeshState; topology: ReturnType<typeof compileTopologyOnly> };

  private async drain(): Promise<void> {
    while (this.waiting) {
      const state = this.waiting;
      this.waiting = undefined;
      try {
        await this.prepare(state);
      } catch (err) {
        // update() reports it, with the same error, and publishes nothing.
        this.log.debug({ err: (err as Error).message }, 'preparing the mesh failed');
      }
      if (this.waiting) continue;
      try {
        this.update(state);
      } catch (err) {
        // update() reports what it can; anything else must not become an unhandled rejection (the process would end).
        this.log.error({ err: (err as Error).stack ?? String(err) }, 'translating the mesh failed; proxies keep their last good config');
      }
    }
  }

  private async prepare(state: MeshState): Promise<void> {
    if (!this.topologyChanged(state)) return;
    // Not in the turn of the source that delivered the mesh (it has done its own work in that turn).
    await turn();
    const topology = compileTopologyOnly(state);
    this.prepared = { state, topology };
    await turn();
    await this.builder.prepare(compile(state, topology), turn);
  }

  private topologyChanged(state: MeshState): boolean {
    const prev = this.state;
    return (
      !prev ||
      !this.topology ||
      prev.namespaces !== state.namespaces ||
      prev.services !== state.services ||
      prev.endpointSlices !== state.endpointSlices ||
      prev.pods !== state.pods ||
      prev.meshName !== state.meshName ||
      // The retry budget is in every destination cluster: shared parts.
      JSON.stringify(prev.meshConfig.retryBudget) !== JSON.stringify(state.meshConfig.retryBudget)
    );
  }

  update(state: MeshState): BuildReport {
    const started = performance.now();
    const prev = this.state;
    const topologyChanged = this.topologyChanged(state);
    const flagChanged = prev?.meshConfig.enableRetryPolicy !== state.meshConfig.enableRetryPolicy;
    let ir: MeshIR;
    try {
      const topology = !topologyChanged ? this.topology! : this.prepared?.state === state ? this.prepared.topology : compileTopologyOnly(state);
      this.prepared = undefined;
      ir = compile(state, topology);
      this.builder.update(ir, { topologyChanged });
      this.topology = topology;
    } catch (err) {
      // A system error (user errors are diagnostics): publish nothing, every proxy keeps its last good config.
      const error = (err as Error).message;
      this.log.error({ err: error }, 'translating the mesh failed; nothing published, proxies keep their last good config');
      const report: BuildReport = { at: new Date(), ms: performance.now() - started, rebuilt: 0, changed: 0, failed: [{ key: '*', error }], topologyChanged };
      this.lastReport = report;
      return report;
    }
    this.state = state;
    this.ir = ir;
    this.wantCerts();

    // Which identities' route features changed (compile/features.ts signs every kind's tables by scope): only their
    // proxies need rebuilding when the topology did not.
    const sig = featureSignatures(ir);
    const prevSig = this.featuresSig;
    this.featuresSig = sig;
    const changedKeys = (a: ReadonlyMap<string, string>, b: ReadonlyMap<string, string> | undefined): Set<string> => new Set([...new Set([...a.keys(), ...(b?.keys() ?? [])])].filter((k) => a.get(k) !== b?.get(k)));
    const touched = changedKeys(sig.byIdentity, prevSig?.byIdentity);
    const namespacesTouched = changedKeys(sig.byNamespace, prevSig?.byNamespace);
    const everyoneTouched = sig.all !== prevSig?.all;

    const eager = new Set(this.builder.eagerKeys());
    const watched = new Set(this.cache.watchedKeys());
    const keys = new Set([...eager, ...watched, ...this.cache.keys()]);
    const full = topologyChanged || flagChanged || everyoneTouched;
    let rebuilt = 0;
    let changed = 0;
    const failed: { key: string; error: string }[] = [];
    for (const key of keys) {
      if (!eager.has(key) && !watched.has(key)) {
        this.cache.delete(key);
        continue;
      }
      // Its certificate is being issued: built when it is (`secretsChanged`).
      if (!this.builder.hasSecrets(key)) continue;
      const identity = key.slice(key.indexOf(':') + 1);
      if (!full && this.cache.peek(key) && !touched.has(identity) && !namespacesTouched.has(identity.slice(0, identity.indexOf('/')))) continue;
      rebuilt++;
      try {
        if (this.cache.set(key, this.builder.build(key))) changed++;
      } catch (err) {
        failed.push({ key, error: (err as Error).message });
        this.log.error({ key, err: (err as Error).message }, 'snapshot failed its checks; the proxy keeps its last good config');
      }
    }
    this.cache.markReady();
    // Route variants of edited policies that no proxy holds any more are dropped.
    this.builder.retain(this.cache.keys());
    const report: BuildReport = { at: new Date(), ms: performance.now() - started, rebuilt, changed, failed, topologyChanged };
    this.lastReport = report;
    this.log.info({ ms: Math.round(report.ms * 10) / 10, rebuilt, changed, failed: failed.length, policies: ir.policies.length }, 'mesh translated');
    for (const d of ir.diagnostics) this.log.warn({ object: d.object }, d.message);
    this.events.built?.(report, ir);
    this.onPolicies?.(ir);
    return report;
  }
}

