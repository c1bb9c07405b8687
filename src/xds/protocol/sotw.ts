/**
 * State of the world ADS (`StreamAggregatedResources`): per type a version and nonce; LDS/CDS carry the full
 * set, RDS/EDS the names asked for. The version of a response is the hash of exactly what it holds, so a
 * proxy that reconnects with the version it has is sent nothing, and a NACKed content is never resent.
 */
import type { Resource, Snapshot, TypeSet } from '../resources/snapshot.js';
import { versionOf } from '../resources/snapshot.js';
import type { ServerCall } from '../transport/grpc.js';
import { listNames } from './status.js';
import { AdsStream, NameSet, type BaseTypeState, type StreamContext, type XdsRequest } from './stream.js';
import { resourceType, type ResourceType } from '../resources/types.js';
import { lenField } from '../resources/wire.js';

interface SotwState extends BaseTypeState {
  /** `version_info` of a request without nonce: what a reconnecting client already has. */
  clientVersion?: string;
  /** Version the client holds (sent, or claimed on reconnect). */
  current?: string;
  /** What that version holds. */
  held: readonly Resource[];
  /** The subscribed names, sorted and joined: the key under which streams share subset computations. */
  namesKey: string;
  /** How many times in a row the current version was sent (EDS resends for cluster warming). */
  repeat: number;
  /** A type another re-warms (CDS): the names its latest response added or changed, until the follower (EDS) is sent. */
  rewarm?: ReadonlySet<string>;
}

/** Per pair of lists (shared by the streams of a subscription), the names the second adds or changes. */
const listChanges = new WeakMap<readonly Resource[], WeakMap<readonly Resource[], ReadonlySet<string>>>();

function changedNames(before: readonly Resource[], after: readonly Resource[]): ReadonlySet<string> {
  let byAfter = listChanges.get(before);
  if (!byAfter) listChanges.set(before, (byAfter = new WeakMap()));
  let names = byAfter.get(after);
  if (!names) {
    const had = new Map(before.map((r) => [r.name, r.version]));
    byAfter.set(after, (names = new Set(after.filter((r) => had.get(r.name) !== r.version).map((r) => r.name))));
  }
  return names;
}

const CONTROL_PLANE = lenField(6, lenField(1, 'mesh-xds'));
const typeUrlFields = new Map<string, Buffer>();
const typeUrlField = (typeUrl: string): Buffer => typeUrlFields.get(typeUrl) ?? typeUrlFields.set(typeUrl, lenField(4, typeUrl)).get(typeUrl)!;

/** The resources of a type set a subscription selects, with their version, and the responses that carry them. */
interface Subset {
  readonly list: readonly Resource[];
  readonly names: readonly string[];
  readonly version: string;
  /** Encoded responses, by how many times in a row the version was sent (the nonce's suffix). */
  readonly bodies: Buffer[];
  /** Responses of only what a client holding another version lacks (RDS, EDS), by that version. */
  readonly partials: Map<string, Buffer>;
}

/** Partial responses remembered per subset (distinct versions held by its streams); beyond, the table starts over. */
const MAX_PARTIALS = 64;

/**
 * Per type set (one type of a snapshot), the subsets streams subscribe to: computed and encoded once for every
 * stream with the same subscription, so the same bytes go to all; forgotten with the type set itself.
 */
const subsets = new WeakMap<TypeSet, Map<string, Subset>>();
/** Distinct subscriptions remembered per type set; beyond, the table starts over (only sharing is lost). */
const MAX_SUBSETS = 1_000;

function subsetOf(set: TypeSet, key: string, make: () => Omit<Subset, 'bodies' | 'partials'>): Subset {
  let bySubscription = subsets.get(set);
  if (!bySubscription) subsets.set(set, (bySubscription = new Map()));
  let s = bySubscription.get(key);
  if (!s) {
    if (bySubscription.size >= MAX_SUBSETS) bySubscription.clear();
    bySubscription.set(key, (s = { ...make(), bodies: [], partials: new Map() }));
  }
  return s;
}

/**
 * Distinct subscriptions, each as one string that every stream with it shares (held once, not per stream).
 * A string key costs one hash of its characters per subscription change, a tenth of a SHA-256 of them.
 */
const subscriptionKeys = new Map<string, string>();
let subscriptionKeyChars = 0;
/** Characters the table may hold; beyond, it starts over (streams keep their keys; only sharing is lost). */
const MAX_SUBSCRIPTION_KEY_CHARS = 16 * 1024 * 1024;

function subscriptionKey(joined: string): string {
  const known = subscriptionKeys.get(joined);
  if (known !== undefined) return known;
  if (subscriptionKeyChars + joined.length > MAX_SUBSCRIPTION_KEY_CHARS) {
    subscriptionKeys.clear();
    subscriptionKeyChars = 0;
  }
  subscriptionKeys.set(joined, joined);
  subscriptionKeyChars += joined.length;
  return joined;
}

export class SotwStream extends AdsStream<SotwState> {
  constructor(ctx: StreamContext, call: ServerCall) {
    super(ctx, call, 'sotw', 'envoy.service.discovery.v3.DiscoveryRequest');
  }

  protected newState(): SotwState {
    return { seen: false, wildcard: false, names: new NameSet(), force: false, rev: 0, lastKey: {}, held: [], subRev: 0, namesKey: '', repeat: 0, awaiting: false };
  }

  protected nameSets(st: SotwState): readonly NameSet[] {
    return [st.names];
  }

  protected apply(type: ResourceType, st: SotwState, req: XdsRequest): void {
    // A nonce on the first request of a type on this stream answers nothing sent here (a client that kept it
    // across a reconnect): the request counts as a fresh one.
    const nonce: string = st.seen ? (req.response_nonce ?? '') : '';
    if (nonce) {
      // Only the answer to the latest response counts; an older one is stale and ignored whole.
      if (nonce !== st.nonce) return;
      if (req.error_detail) this.nack(type, st, req.error_detail);
      else this.ack(type, st, req.version_info ?? '');
    } else if (req.version_info && st.current === undefined) {
      st.clientVersion = req.version_info;
    }
    const names: readonly string[] = req.resource_names ?? [];
    // Legacy wildcard: an empty first request; later empty requests keep whatever the stream had.
    const wildcard = names.length === 0 ? (st.seen ? st.wildcard : true) : names.includes('*');
    // The usual request (an ACK) repeats the subscription: no new set for it.
    if (wildcard === st.wildcard && names.length === st.names.size && names.every((n) => st.names.has(n))) return;
    const set = new NameSet();
    for (const n of names) if (n !== '*') set.add(this.interned(type, n));
    if (wildcard !== st.wildcard || set.size !== st.names.size || [...set].some((n) => !st.names.has(n))) {
      st.wildcard = wildcard;
      st.names = set;
      // The key under which streams with the same subscription share subset computations: one string per
      // distinct subscription, shared by all its streams.
      st.namesKey = subscriptionKey([...set].sort().join('\n'));
      st.subRev++;
    }
  }

  protected sync(type: ResourceType, st: SotwState, snapshot: Snapshot, holdRemovals: boolean): boolean {
    const set = snapshot.get(type.typeUrl)!;
    const all = type.fullState && st.wildcard;
    const kept = holdRemovals && st.held.length ? st.held.filter((r) => !set.resources.has(r.name) && (st.wildcard || st.names.has(r.name))) : [];
    let list: readonly Resource[];
    let names: readonly string[];
    let version: string;
    let shared: Subset | undefined;
    if (kept.length === 0) {
      // What most streams compute: shared by every stream with the same subscription and snapshot.
      shared = subsetOf(set, all ? '*' : st.namesKey, () => {
        // In name order: the set's own order (no sort) when the subscription covers much of it.
        const l = all
          ? [...set.resources.values()]
          : st.names.size * 8 > set.resources.size
            ? [...set.resources.values()].filter((r) => st.names.has(r.name))
            : AdsStream.sorted([...st.names].map((n) => set.resources.get(n)).filter((r): r is Resource => r !== undefined));
        // A subscription to every resource of the set (a sidecar's EDS and RDS): the set's version, no new hash.
        return { list: l, names: l.map((r) => r.name), version: all || l.length === set.resources.size ? set.version : versionOf(type.typeUrl, l) };
      });
      ({ list, names, version } = shared);
    } else {
      const base = all ? [...set.resources.values()] : [...st.names].map((n) => set.resources.get(n)).filter((r): r is Resource => r !== undefined);
      list = AdsStream.sorted([...base, ...kept]);
      names = list.map((r) => r.name);
      version = versionOf(type.typeUrl, list);
    }
    if (st.current === undefined && st.clientVersion === version) {
      // Reconnect: the client already has exactly this.
      st.current = version;
      st.held = list;
      st.rev++;
      this.resumed(type, st, version, listNames(names));
      return false;
    }
    const changed = version !== st.current;
    if (!changed && !(st.force && list.length)) return false;
    if (!type.fullState && list.length === 0) {
      // Nothing the client asked for exists (or it unsubscribed everything): nothing to send, but remember
      // that it holds nothing, so a later subscription is answered.
      st.current = version;
      st.held = list;
      st.rev++;
      return false;
    }
    st.repeat = changed ? 0 : st.repeat + 1;
    // The nonce is the version and how many times in a row it was sent: unique between consecutive responses
    // of a stream, and the same for every stream sent the same content, so the whole response is shared.
    const nonce = `${version}.${st.repeat}`;
    const encode = (resources: readonly Resource[]): Buffer => {
      const parts: Uint8Array[] = [lenField(1, version)];
      for (const r of resources) for (const p of r.responseField) parts.push(p);
      parts.push(typeUrlField(type.typeUrl), lenField(5, nonce), CONTROL_PLANE);
      return Buffer.concat(parts);
    };
    // RDS and EDS are per name (REFERENCE §4: only LDS and CDS responses are the full set): a client that holds a
    // version is sent only what it lacks, under the version of everything it then holds; one more route
    // configuration subscribed is that one, not the thousands held besides it.
    const holds = !type.fullState && st.current !== undefined && st.held.length > 0;
    const partial = shared && holds && st.force ? this.rewarmed(type, st, shared, encode) : shared && holds && changed ? this.lacking(st, shared, encode) : undefined;
    // Envoy re-warms the clusters a CDS response adds or changes (and only those): their endpoints go again.
    if (type.rewarms && st.held.length && this.states.get(type.rewarms)?.seen) st.rewarm = changedNames(st.held, list);
    st.current = version;
    st.held = list;
    if (partial === null) {
      // Nothing it lacks (names unsubscribed, or removed from the snapshot, which RDS and EDS do not announce).
      st.rev++;
      return false;
    }
    const body = partial ?? (shared ? (shared.bodies[st.repeat] ??= encode(list)) : encode(list));
    this.send(type, body, version, nonce, listNames(names));
    return true;
  }

  /**
   * After a CDS response (EDS forced): the endpoints of the clusters it added or changed, which Envoy re-warms, and
   * whatever else the client lacks; null if none (unchanged clusters keep their endpoints in Envoy). Undefined,
   * a full response, when the leading type's changes are not known (its first response on this stream).
   */
  private rewarmed(type: ResourceType, st: SotwState, shared: Subset, encode: (resources: readonly Resource[]) => Buffer): Buffer | null | undefined {
    const leader = [...this.states].find(([url]) => resourceType(url)?.rewarms === type.typeUrl)?.[1];
    const rewarm = leader?.rewarm;
    if (leader) leader.rewarm = undefined;
    if (!rewarm) return undefined;
    const had = new Map(st.held.map((r) => [r.name, r.version]));
    const send = shared.list.filter((r) => rewarm.has(r.name) || had.get(r.name) !== r.version);
    return send.length ? encode(send) : null;
  }

  /**
   * The response of only the resources of `shared` a client holding `st.held` (at `st.current`) lacks; shared by
   * every stream holding that version; null if it lacks none, undefined if it lacks most (the full one is shared).
   */
  private lacking(st: SotwState, shared: Subset, encode: (resources: readonly Resource[]) => Buffer): Buffer | null | undefined {
    const from = st.current!;
    const known = shared.partials.get(from);
    if (known) return known;
    const had = new Map(st.held.map((r) => [r.name, r.version]));
    const lacks = shared.list.filter((r) => had.get(r.name) !== r.version);
    if (lacks.length === 0) return null;
    if (lacks.length * 2 > shared.list.length) return undefined;
    if (shared.partials.size >= MAX_PARTIALS) shared.partials.clear();
    const body = encode(lacks);
    shared.partials.set(from, body);
    return body;
  }
}
