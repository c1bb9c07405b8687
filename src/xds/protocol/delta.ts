/**
 * Incremental ADS (`DeltaAggregatedResources`): per-resource versions, subscribe/unsubscribe, removals, and
 * `initial_resource_versions` so a reconnecting client is sent only what it lacks.
 */
import type { Resource, Snapshot, TypeSet } from '../resources/snapshot.js';
import type { ServerCall } from '../transport/grpc.js';
import type { HeldNames } from './status.js';
import { AdsStream, NameMap, NameSet, type BaseTypeState, type StreamContext, type XdsRequest } from './stream.js';
import { RESOURCE_TYPES, type ResourceType } from '../resources/types.js';
import { lenField, lenFieldParts } from '../resources/wire.js';

interface DeltaState extends BaseTypeState {
  /** Resource name -> version the client has (from our sends or its initial_resource_versions). */
  known: NameMap<string>;
  /** The names of `known`, as the stream reports what the client holds (a live view). */
  knownNames: HeldNames;
  /** Subscribed names already reported as not existing. */
  absent: NameSet;
  /** A type another re-warms (CDS): the names of its latest response, until the follower (EDS) has resent theirs. */
  lastSent: ReadonlySet<string>;
  /**
   * The set `known` reflects (every subscribed resource of it known at its version): from there a new set is
   * synced from the changes between the two and the names subscribed since, not by going through all of it.
   */
  base?: TypeSet;
  /** Names subscribed since the last sync. */
  fresh: Set<string>;
  /** Names gone since `base` whose removal is held back (make-before-break), sent with the next removals. */
  held: Set<string>;
}

const NONE: ReadonlySet<string> = new Set();
const CONTROL_PLANE = lenField(7, lenField(1, 'mesh-xds'));
const typeUrlFields = new Map<string, Buffer>();
const typeUrlField = (typeUrl: string): Buffer => typeUrlFields.get(typeUrl) ?? typeUrlFields.set(typeUrl, lenField(4, typeUrl)).get(typeUrl)!;
const records = new WeakMap<Resource, readonly Uint8Array[]>();

/**
 * `envoy.service.discovery.v3.Resource` for a resource, as field 2 of the response: assembled once per resource
 * and shared by every stream it is sent on (assembling it per stream was a third of a delta sync's CPU). A
 * resource of one piece becomes one buffer; one in shared pieces (a route configuration) keeps them and gets
 * one buffer for everything before them.
 */
function deltaRecord(r: Resource): readonly Uint8Array[] {
  let record = records.get(r);
  if (!record) {
    records.set(r, (record = r.record(lenFieldParts(2, [lenField(3, r.name), lenField(1, r.version), ...r.anyField(2)]))));
  }
  return record;
}

export class DeltaStream extends AdsStream<DeltaState> {
  constructor(ctx: StreamContext, call: ServerCall) {
    super(ctx, call, 'delta', 'envoy.service.discovery.v3.DeltaDiscoveryRequest');
  }

  protected newState(): DeltaState {
    const known = new NameMap<string>();
    return { seen: false, wildcard: false, names: new NameSet(), force: false, rev: 0, lastKey: {}, known, knownNames: { get size() { return known.size; }, [Symbol.iterator]: () => known.keys() }, absent: new NameSet(), lastSent: NONE, subRev: 0, awaiting: false, fresh: new Set(), held: new Set() };
  }

  protected nameSets(st: DeltaState): readonly (NameSet | NameMap<unknown>)[] {
    return [st.names, st.known, st.absent];
  }

  protected apply(type: ResourceType, st: DeltaState, req: XdsRequest): void {
    const subscribe: readonly string[] = req.resource_names_subscribe ?? [];
    const unsubscribe: readonly string[] = req.resource_names_unsubscribe ?? [];
    if (!st.seen) {
      // A version longer than any we hand out cannot be one of ours: the client has nothing we know of.
      for (const [name, version] of Object.entries(req.initial_resource_versions ?? {})) if (String(version).length <= 64) st.known.set(name, String(version));
      if (subscribe.length === 0) st.wildcard = true;
    }
    for (const n of subscribe) {
      if (n === '*') {
        if (!st.wildcard) st.base = undefined;
        st.wildcard = true;
      } else {
        const name = this.interned(type, n);
        st.names.add(name);
        st.fresh.add(name);
        st.absent.delete(name);
      }
    }
    for (const n of unsubscribe) {
      if (n === '*') {
        if (st.wildcard) st.base = undefined;
        st.wildcard = false;
        for (const k of [...st.known.keys()]) if (!st.names.has(k)) st.known.delete(k);
      } else {
        st.names.delete(n);
        st.absent.delete(n);
        if (!st.wildcard) st.known.delete(n);
      }
    }
    // The names held changed: the stream recounts them against its bounds.
    if (subscribe.length || unsubscribe.length || !st.seen) st.subRev++;
    // Subscriptions always apply; ACK/NACK only for the latest response of this type.
    const nonce: string = req.response_nonce ?? '';
    if (nonce && nonce === st.nonce) {
      if (req.error_detail) this.nack(type, st, req.error_detail);
      else this.ack(type, st, st.sentVersion ?? '');
    }
  }

  protected sync(type: ResourceType, st: DeltaState, snapshot: Snapshot, holdRemovals: boolean): boolean {
    const set = snapshot.get(type.typeUrl)!;
    const hold = holdRemovals && type.fullState;
    const rewarm = st.force ? this.rewarmed(type) : undefined;
    const stepwise = st.base !== undefined && rewarm !== 'all';
    const { updates, removed } = stepwise ? this.changes(st, set, hold, rewarm) : this.everything(st, set, hold, rewarm);
    // The base moves with every sync that applied what changed; a full pass holding removals back does not
    // know which it held, so the next sync is a full one again.
    if (stepwise || !hold) {
      if (!stepwise) st.held.clear();
      st.base = set;
    } else st.base = undefined;
    st.fresh.clear();
    return this.respond(type, st, set, updates, removed.sort());
  }

  /**
   * Forced (EDS after CDS): the names of what the leading type just sent, the clusters Envoy re-warms (the others
   * are unchanged in Envoy and keep their endpoints), or all if the stream does not take the leading type.
   */
  private rewarmed(type: ResourceType): ReadonlySet<string> | 'all' {
    const leader = RESOURCE_TYPES.find((t) => t.rewarms === type.typeUrl);
    const leaderState = leader && this.states.get(leader.typeUrl);
    if (!leaderState) return 'all';
    const names = leaderState.lastSent;
    leaderState.lastSent = NONE;
    return names;
  }

  /** From the base: what changed between it and `set`, and the names subscribed since (most syncs after the first). */
  private changes(st: DeltaState, set: TypeSet, hold: boolean, rewarm?: ReadonlySet<string>): { updates: Resource[]; removed: string[] } {
    const change = set.changesSince(st.base!);
    const wants = (name: string): boolean => st.wildcard || st.names.has(name);
    const updates = new Map<string, Resource>();
    for (const r of change.changed) if (wants(r.name) && st.known.get(r.name) !== r.version) updates.set(r.name, r);
    const removed: string[] = [];
    for (const n of st.fresh) {
      if (!st.names.has(n)) continue; // unsubscribed again since
      const r = set.resources.get(n);
      if (r) {
        if (st.known.get(n) !== r.version) updates.set(n, r);
      } else if (!st.wildcard && !st.known.has(n) && !st.absent.has(n)) {
        removed.push(n);
        st.absent.add(n);
      }
    }
    for (const n of rewarm ?? NONE) {
      const r = set.resources.get(n);
      if (r && wants(n)) updates.set(n, r);
    }
    for (const n of change.gone) if (st.known.has(n) && wants(n)) st.held.add(n);
    if (!hold) {
      for (const n of st.held) if (!set.resources.has(n) && st.known.has(n) && wants(n)) removed.push(n);
      st.held.clear();
    }
    return { updates: AdsStream.sorted(updates.values()), removed };
  }

  /** Through everything: the first sync, after a change between wildcard and names, and a forced resend of all. */
  private everything(st: DeltaState, set: TypeSet, hold: boolean, rewarm?: ReadonlySet<string> | 'all'): { updates: Resource[]; removed: string[] } {
    // In name order: the set's own order (no sort) when the subscription covers much of it.
    const inOrder = st.wildcard || st.names.size * 8 > set.resources.size;
    const candidates = st.wildcard
      ? set.resources.values()
      : inOrder
        ? [...set.resources.values()].filter((r) => st.names.has(r.name))
        : [...st.names].map((n) => set.resources.get(n)).filter((r): r is Resource => r !== undefined);
    const forced = (name: string): boolean => rewarm === 'all' || (rewarm !== undefined && rewarm.has(name));
    const updates: Resource[] = [];
    for (const r of candidates) if (st.known.get(r.name) !== r.version || forced(r.name)) updates.push(r);
    const removed: string[] = [];
    if (!hold) {
      for (const name of st.known.keys()) {
        if (!set.resources.has(name) && (st.wildcard || st.names.has(name))) removed.push(name);
      }
    }
    if (!st.wildcard) {
      for (const name of st.names) {
        if (!set.resources.has(name) && !st.known.has(name) && !st.absent.has(name)) {
          removed.push(name);
          st.absent.add(name);
        }
      }
    }
    return { updates: inOrder ? updates : AdsStream.sorted(updates), removed };
  }

  /** Records what the client will hold and sends the response (nothing if there is nothing to say). */
  private respond(type: ResourceType, st: DeltaState, set: TypeSet, sortedUpdates: readonly Resource[], removed: readonly string[]): boolean {
    if (!sortedUpdates.length && !removed.length) return false;
    for (const r of sortedUpdates) st.known.set(r.name, r.version);
    // Kept only while the follower is subscribed (it then takes them at once): not the whole initial CDS per stream.
    if (type.rewarms && this.states.get(type.rewarms)?.seen) st.lastSent = new Set(sortedUpdates.map((r) => r.name));
    // A subscribed name removed is absent from then on: not reported again by a later full pass.
    for (const n of removed) {
      st.known.delete(n);
      if (st.names.has(n)) st.absent.add(n);
    }
    const nonce = this.nextNonce();
    // Written as pieces, each resource's shared by every stream it is sent on: nothing copied per stream.
    const parts: Uint8Array[] = [lenField(1, set.version)];
    for (const r of sortedUpdates) for (const p of deltaRecord(r)) parts.push(p);
    parts.push(typeUrlField(type.typeUrl));
    for (const n of removed) parts.push(lenField(6, n));
    parts.push(lenField(5, nonce), CONTROL_PLANE);
    this.send(type, parts, set.version, nonce, st.knownNames);
    return true;
  }
}
