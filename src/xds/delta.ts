/**
 * Incremental ADS (`DeltaAggregatedResources`): per-resource versions, subscribe/unsubscribe, removals, and
 * `initial_resource_versions` so a reconnecting client is sent only what it lacks.
 */
import type { Resource, Snapshot } from './snapshot.js';
import type { ServerCall } from './grpc.js';
import { AdsStream, type BaseTypeState, type StreamContext } from './stream.js';
import type { TypeStatus } from './status.js';
import { RESOURCE_TYPES, type ResourceType } from './types.js';
import { lenField, lenFieldParts } from './wire.js';

interface DeltaState extends BaseTypeState {
  /** Resource name -> version the client has (from our sends or its initial_resource_versions). */
  known: Map<string, string>;
  /** Subscribed names already reported as not existing. */
  absent: Set<string>;
  /** A type another re-warms (CDS): the names of its latest response, until the follower (EDS) has resent theirs. */
  lastSent: ReadonlySet<string>;
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
    const all = lenFieldParts(2, [lenField(3, r.name), lenField(1, r.version), ...r.anyField(2)]);
    const pieces = r.parts.length === 1 ? 0 : r.parts.length;
    records.set(r, (record = [Buffer.concat(all.slice(0, all.length - pieces)), ...all.slice(all.length - pieces)]));
  }
  return record;
}

export class DeltaStream extends AdsStream<DeltaState> {
  constructor(ctx: StreamContext, call: ServerCall) {
    super(ctx, call, 'delta', 'envoy.service.discovery.v3.DeltaDiscoveryRequest');
  }

  protected newState(): DeltaState {
    return { seen: false, wildcard: false, names: new Set(), force: false, rev: 0, lastKey: {}, known: new Map(), absent: new Set(), lastSent: NONE, subRev: 0, heldNames: 0, heldBytes: 0 };
  }

  protected nameSets(st: DeltaState): Iterable<Iterable<string>> {
    return [st.names, st.known.keys(), st.absent];
  }

  protected apply(type: ResourceType, st: DeltaState, req: any, status: TypeStatus): void {
    const subscribe: string[] = req.resource_names_subscribe ?? [];
    const unsubscribe: string[] = req.resource_names_unsubscribe ?? [];
    if (!st.seen) {
      // A version longer than any we hand out cannot be one of ours: the client has nothing we know of.
      for (const [name, version] of Object.entries(req.initial_resource_versions ?? {})) if (String(version).length <= 64) st.known.set(name, String(version));
      if (subscribe.length === 0) st.wildcard = true;
    }
    for (const n of subscribe) {
      if (n === '*') st.wildcard = true;
      else {
        st.names.add(n);
        st.absent.delete(n);
      }
    }
    for (const n of unsubscribe) {
      if (n === '*') {
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
      if (req.error_detail) this.nack(type, status, req.error_detail);
      else this.ack(type, status, status.sentVersion ?? '');
    }
  }

  protected sync(type: ResourceType, st: DeltaState, snapshot: Snapshot, holdRemovals: boolean): boolean {
    const set = snapshot.get(type.typeUrl)!;
    // In name order: the set's own order (no sort) when the subscription covers much of it.
    const inOrder = st.wildcard || st.names.size * 8 > set.resources.size;
    const candidates = st.wildcard
      ? set.resources.values()
      : inOrder
        ? [...set.resources.values()].filter((r) => st.names.has(r.name))
        : [...st.names].map((n) => set.resources.get(n)).filter((r): r is Resource => r !== undefined);
    // Forced (EDS after CDS): only the resources of what the leading type just sent, the clusters Envoy re-warms;
    // the others are unchanged in Envoy and keep their endpoints.
    const leader = st.force ? RESOURCE_TYPES.find((t) => t.rewarms === type.typeUrl) : undefined;
    const leaderState = leader && this.states.get(leader.typeUrl);
    const rewarm = leaderState?.lastSent;
    if (leaderState) leaderState.lastSent = NONE;
    const updates: Resource[] = [];
    for (const r of candidates) if (st.known.get(r.name) !== r.version || (st.force && (!rewarm || rewarm.has(r.name)))) updates.push(r);
    const removed: string[] = [];
    if (!(holdRemovals && type.fullState)) {
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
    if (!updates.length && !removed.length) return false;
    const sortedUpdates = inOrder ? updates : AdsStream.sorted(updates);
    removed.sort();
    for (const r of sortedUpdates) st.known.set(r.name, r.version);
    // Kept only while the follower is subscribed (it then takes them at once): not the whole initial CDS per stream.
    if (type.rewarms && this.states.get(type.rewarms)?.seen) st.lastSent = new Set(sortedUpdates.map((r) => r.name));
    for (const n of removed) st.known.delete(n);
    const nonce = this.nextNonce();
    const parts: Uint8Array[] = [lenField(1, set.version)];
    for (const r of sortedUpdates) for (const p of deltaRecord(r)) parts.push(p);
    parts.push(typeUrlField(type.typeUrl));
    for (const n of removed) parts.push(lenField(6, n));
    parts.push(lenField(5, nonce), CONTROL_PLANE);
    const body = Buffer.concat(parts);
    this.send(type, body, set.version, nonce, [...st.known.keys()]);
    return true;
  }
}
