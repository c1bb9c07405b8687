/**
 * Snapshots per proxy key. The pipeline puts a snapshot for every key it knows; a stream for a key that has none
 * yet makes a demand, which whoever builds snapshots (the pipeline) subscribes to and answers with `set`. Nothing
 * is handed out before `markReady()`: an empty LDS or CDS would wipe a proxy's config.
 */
import type { Snapshot } from './snapshot.js';

export type ProxyKey = string;
type Watcher = (snapshot: Snapshot) => void;

export class SnapshotCache {
  private readonly snapshots = new Map<ProxyKey, Snapshot>();
  private readonly watchers = new Map<ProxyKey, Set<Watcher>>();
  private readonly demands = new Set<(key: ProxyKey) => void>();
  private isReady = false;

  get ready(): boolean {
    return this.isReady;
  }

  /** Called once the sources have synced and a first snapshot set exists. */
  markReady(): void {
    if (this.isReady) return;
    this.isReady = true;
    for (const key of this.watchers.keys()) {
      const s = this.get(key);
      if (s) this.notify(key, s);
    }
  }

  /**
   * Hears of every key asked for that has no snapshot (a proxy of an identity not in the mesh, say); the listener
   * may `set` one at once, which the asker then gets. Returns what stops it.
   */
  onDemand(listener: (key: ProxyKey) => void): () => void {
    this.demands.add(listener);
    return () => this.demands.delete(listener);
  }

  /** Stores a snapshot; watchers hear of it only if its version differs from the one held. */
  set(key: ProxyKey, snapshot: Snapshot): boolean {
    const old = this.snapshots.get(key);
    if (old?.version === snapshot.version) return false;
    this.snapshots.set(key, snapshot);
    if (this.isReady) this.notify(key, snapshot);
    return true;
  }

  delete(key: ProxyKey): void {
    this.snapshots.delete(key);
  }

  get(key: ProxyKey): Snapshot | undefined {
    if (!this.isReady) return undefined;
    if (!this.snapshots.has(key)) for (const demand of this.demands) demand(key);
    return this.snapshots.get(key);
  }

  /** Snapshot held for a key, without resolving. */
  peek(key: ProxyKey): Snapshot | undefined {
    return this.snapshots.get(key);
  }

  keys(): IterableIterator<ProxyKey> {
    return this.snapshots.keys();
  }

  /** Keys with at least one stream watching. */
  watchedKeys(): IterableIterator<ProxyKey> {
    return this.watchers.keys();
  }

  watch(key: ProxyKey, watcher: Watcher): () => void {
    let set = this.watchers.get(key);
    if (!set) this.watchers.set(key, (set = new Set()));
    set.add(watcher);
    return () => {
      set.delete(watcher);
      if (set.size === 0) this.watchers.delete(key);
    };
  }

  private notify(key: ProxyKey, snapshot: Snapshot): void {
    for (const w of this.watchers.get(key) ?? []) w(snapshot);
  }
}
