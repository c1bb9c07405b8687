/**
 * Resources as they go on the wire (encoded once, shared by every proxy that gets them), sets of one type,
 * and snapshots: the complete config of one proxy, checked for consistency before anyone sees it.
 */
import { contentHash, encodeMessage } from './encode.js';
import { lenField, lenFieldParts } from './wire.js';
import { RESOURCE_TYPES, resourceType, type Reference } from './types.js';
import { asMap } from '../../model/plain.js';
import { envoyRoot } from './protos.js';

const typeUrlFields = new Map<string, Buffer>();

/**
 * A resource as it goes on the wire, encoded once and shared by every proxy that gets it. The message is
 * held as pieces (one for most; a route configuration is its name and its virtual hosts, each encoded once
 * and shared by every route configuration that has it), so nothing is copied until a response is written.
 */
export class Resource {
  private pieces?: readonly Uint8Array[];
  private bytes?: number;
  constructor(
    readonly typeUrl: string,
    readonly name: string,
    /** Hash of the content: of the bytes, or of the pieces' hashes. */
    readonly version: string,
    /** The pieces, or how to get them when first needed (a variant of another resource). */
    parts: readonly Uint8Array[] | (() => readonly Uint8Array[]),
    /** Resources this one needs to exist in the same snapshot. */
    readonly refs: readonly Reference[],
  ) {
    if (typeof parts === 'function') this.lazy = parts;
    else this.pieces = parts;
  }

  private readonly lazy?: () => readonly Uint8Array[];

  get parts(): readonly Uint8Array[] {
    return (this.pieces ??= this.lazy!());
  }

  /** Size of the encoded message in bytes. */
  get size(): number {
    return (this.bytes ??= this.parts.reduce((n, p) => n + p.length, 0));
  }

  /** The encoded message (copied together if it is in pieces). */
  get body(): Uint8Array {
    return this.parts.length === 1 ? this.parts[0] : Buffer.concat(this.parts);
  }

  private responseRecord?: readonly Uint8Array[];

  /**
   * This resource as field 2 of a DiscoveryResponse (a `google.protobuf.Any`), assembled once and shared by every
   * response that holds it: one buffer for a resource of one piece; for one of shared pieces (a route
   * configuration), one buffer for what precedes them, then the pieces.
   */
  get responseField(): readonly Uint8Array[] {
    return (this.responseRecord ??= this.record(this.anyField(2)));
  }

  /**
   * A record holding this resource, given as the pieces that end with its own (`anyField` inside others): the
   * pieces before its own joined into one buffer, and its own as they are, or all in one buffer if it is one piece.
   */
  record(fields: readonly Uint8Array[]): readonly Uint8Array[] {
    const pieces = this.parts.length === 1 ? 0 : this.parts.length;
    return [Buffer.concat(fields.slice(0, fields.length - pieces)), ...fields.slice(fields.length - pieces)];
  }

  /** The pieces of field `fieldNo` holding this resource as a `google.protobuf.Any`. */
  anyField(fieldNo: number): Uint8Array[] {
    let typeField = typeUrlFields.get(this.typeUrl);
    if (!typeField) typeUrlFields.set(this.typeUrl, (typeField = lenField(1, this.typeUrl)));
    return lenFieldParts(fieldNo, [typeField, ...lenFieldParts(2, this.parts)]);
  }
}

const shownBodies = new WeakMap<Resource, Uint8Array>();

/**
 * The encoded message as shown outside ADS (config dumps, CSDS, JSON): the resource itself, or for a type with
 * secret fields (SDS), a copy with them redacted. Only ADS streams are ever sent `body`.
 */
export function shownBody(r: Resource): Uint8Array {
  const type = resourceType(r.typeUrl);
  if (!type?.redact) return r.body;
  let shown = shownBodies.get(r);
  if (!shown) {
    const t = envoyRoot().lookupType(type.message);
    const plain = asMap(t.toObject(t.decode(r.body), { enums: String, longs: Number, defaults: false }));
    shownBodies.set(r, (shown = t.encode(t.fromObject(type.redact(plain))).finish()));
  }
  return shown;
}

export function makeResource(typeUrl: string, body: Uint8Array, name: string, refs: readonly Reference[]): Resource {
  return new Resource(typeUrl, name, contentHash(body), [body], refs);
}

/** A resource assembled from pieces whose hashes are known: its version hashes those, not the bytes. */
export function assembleResource(typeUrl: string, name: string, parts: readonly { bytes: Uint8Array; hash: string }[], refs: readonly Reference[] = []): Resource {
  return new Resource(typeUrl, name, contentHash(`${typeUrl}\n${name}\n${parts.map((p) => p.hash).join(',')}`), parts.map((p) => p.bytes), refs);
}

/** The distinct references of a plain builder object of a registered type. */
export function refsOf(typeUrl: string, obj: object): Reference[] {
  const refs = new Map(resourceType(typeUrl)!.refs(asMap(obj)).map((r) => [`${r.typeUrl} ${r.name}`, r]));
  return [...refs.values()];
}

/** Encodes a plain builder object of a registered type (throws EncodeError on any bad field). */
export function resourceFromObject(typeUrl: string, obj: object): Resource {
  const type = resourceType(typeUrl);
  if (!type) throw new Error(`unregistered resource type ${typeUrl}`);
  const name = type.nameOf(asMap(obj));
  const body = encodeMessage(type.message, obj, `${type.short} ${name}`);
  return makeResource(typeUrl, body, name, refsOf(typeUrl, obj));
}

/** The version of a list of resources of one type: a hash over their names and versions, in name order. */
export function versionOf(typeUrl: string, resources: Iterable<Resource>): string {
  const parts: string[] = [typeUrl];
  for (const r of resources) parts.push(`${r.name}\u0000${r.version}`);
  return contentHash(parts.join('\n'));
}

const byName = (a: Resource, b: Resource): number => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0);

/** Two lists in name order as one. */
function mergeByName(a: readonly Resource[], b: Resource[]): Resource[] {
  if (a.length === 0) return b;
  const out: Resource[] = [];
  let i = 0;
  let j = 0;
  while (i < a.length && j < b.length) out.push(a[i].name < b[j].name ? a[i++] : b[j++]);
  while (i < a.length) out.push(a[i++]);
  while (j < b.length) out.push(b[j++]);
  return out;
}

/** A read-only name -> resource map made of other maps, iterated in name order (`list`, made once when first needed). */
abstract class PartsMap implements ReadonlyMap<string, Resource> {
  private sorted?: Resource[];
  abstract readonly size: number;
  abstract get(name: string): Resource | undefined;
  /** Every resource in name order. */
  protected abstract merge(): Resource[];
  has(name: string): boolean {
    return this.get(name) !== undefined;
  }
  private list(): Resource[] {
    return (this.sorted ??= this.merge());
  }
  values(): MapIterator<Resource> {
    return this.list()[Symbol.iterator]() as MapIterator<Resource>;
  }
  keys(): MapIterator<string> {
    return this.list().map((r) => r.name)[Symbol.iterator]() as MapIterator<string>;
  }
  entries(): MapIterator<[string, Resource]> {
    return this.list().map((r) => [r.name, r] as [string, Resource])[Symbol.iterator]() as MapIterator<[string, Resource]>;
  }
  [Symbol.iterator](): MapIterator<[string, Resource]> {
    return this.entries();
  }
  forEach(fn: (value: Resource, key: string, map: ReadonlyMap<string, Resource>) => void): void {
    for (const r of this.list()) fn(r, r.name, this);
  }
}

/** Over several disjoint parts. */
class UnionMap extends PartsMap {
  readonly size: number;
  constructor(private readonly parts: readonly ReadonlyMap<string, Resource>[]) {
    super();
    this.size = parts.reduce((n, p) => n + p.size, 0);
  }
  get(name: string): Resource | undefined {
    for (const p of this.parts) {
      const r = p.get(name);
      if (r) return r;
    }
    return undefined;
  }
  /** Each part iterates in name order: merged, not sorted (a shared part of thousands and a small one of its own). */
  protected merge(): Resource[] {
    return this.parts.reduce<Resource[]>((merged, p) => mergeByName(merged, [...p.values()]), []);
  }
}

/** Which of `count` chunks a name is in: FNV-1a of its characters (stable across restarts and replicas). */
export function chunkOf(name: string, count: number): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < name.length; i++) h = Math.imul(h ^ name.charCodeAt(i), 0x01000193);
  return (h >>> 0) % count;
}

/** Over chunks (each holding exactly the names `chunkOf` puts in it) and a rest: a name is looked up in its chunk. */
class ChunkMap extends PartsMap {
  readonly size: number;
  constructor(
    private readonly chunks: readonly ReadonlyMap<string, Resource>[],
    private readonly rest: ReadonlyMap<string, Resource>,
  ) {
    super();
    this.size = chunks.reduce((n, c) => n + c.size, rest.size);
  }
  get(name: string): Resource | undefined {
    return this.chunks[chunkOf(name, this.chunks.length)].get(name) ?? this.rest.get(name);
  }
  protected merge(): Resource[] {
    return [...this.rest.values(), ...this.chunks.flatMap((c) => [...c.values()])].sort(byName);
  }
}

/** From one set of a type to another: the resources added or changed, and the names gone. */
export interface SetChange {
  readonly changed: readonly Resource[];
  readonly gone: readonly string[];
}

const NO_CHANGE: SetChange = { changed: [], gone: [] };

export class TypeSet {
  readonly version: string;
  readonly resources: ReadonlyMap<string, Resource>;
  /** Parts already checked for references (shared by many snapshots, checked once). */
  readonly trusted: boolean;
  private constructor(
    readonly typeUrl: string,
    resources: ReadonlyMap<string, Resource>,
    version: string,
    trusted: boolean,
    private readonly parts: readonly TypeSet[] = [],
    /** A chunk of a large set (`chunk`): which of how many, every name in it being `chunkOf` that. */
    readonly chunk?: { readonly index: number; readonly count: number },
  ) {
    this.resources = resources;
    this.version = version;
    this.trusted = trusted;
  }

  /** A set of resources; `trusted` if their references were checked already (resources without any are). */
  static of(typeUrl: string, list: Iterable<Resource>, opts: { trusted?: boolean } = {}): TypeSet {
    const sorted = [...list].sort(byName);
    for (let i = 1; i < sorted.length; i++) {
      if (sorted[i].name === sorted[i - 1].name) {
        throw new SnapshotError([`two ${resourceType(typeUrl)?.short ?? typeUrl} resources named "${sorted[i].name}"`]);
      }
    }
    const trusted = opts.trusted ?? sorted.every((r) => r.refs.length === 0);
    return new TypeSet(typeUrl, new Map(sorted.map((r) => [r.name, r])), versionOf(typeUrl, sorted), trusted);
  }

  /** Several disjoint sets as one, without copying; the version is a hash of the parts' versions. */
  static union(typeUrl: string, parts: readonly TypeSet[]): TypeSet {
    const nonEmpty = parts.filter((p) => p.resources.size > 0);
    if (nonEmpty.length === 1) return nonEmpty[0];
    if (nonEmpty.length === 0) return TypeSet.of(typeUrl, []);
    // Disjoint by construction; checked on all parts but the largest (the shared one), which is cheap.
    const largest = nonEmpty.reduce((a, b) => (b.resources.size > a.resources.size ? b : a));
    for (const p of nonEmpty) {
      if (p === largest) continue;
      for (const name of p.resources.keys()) {
        if (nonEmpty.some((q) => q !== p && q.resources.has(name))) {
          throw new SnapshotError([`two ${resourceType(typeUrl)?.short ?? typeUrl} resources named "${name}"`]);
        }
      }
    }
    const version = contentHash(`union\n${nonEmpty.map((p) => p.version).join('\n')}`);
    return new TypeSet(typeUrl, new UnionMap(nonEmpty.map((p) => p.resources)), version, nonEmpty.every((p) => p.trusted), nonEmpty);
  }

  /**
   * Chunk `index` of `count` of a large set: the resources whose names `chunkOf` puts there (checked). A large set
   * shared by many snapshots is held as chunks so that a snapshot differing in a few resources (a caller's Retry)
   * replaces only the chunks holding them, and a change to the large set is one new chunk, not a new set.
   */
  static chunk(typeUrl: string, index: number, count: number, list: Iterable<Resource>): TypeSet {
    const set = TypeSet.of(typeUrl, list);
    for (const name of set.resources.keys()) {
      if (chunkOf(name, count) !== index) throw new Error(`${resourceType(typeUrl)?.short ?? typeUrl} "${name}" is not of chunk ${index} of ${count}`);
    }
    return new TypeSet(typeUrl, set.resources, set.version, set.trusted, [], { index, count });
  }

  /** A list split into `count` chunks (`chunk`). */
  static chunks(typeUrl: string, list: Iterable<Resource>, count: number): TypeSet[] {
    const byChunk: Resource[][] = Array.from({ length: count }, () => []);
    for (const r of list) byChunk[chunkOf(r.name, count)].push(r);
    return byChunk.map((rs, i) => TypeSet.chunk(typeUrl, i, count, rs));
  }

  /**
   * Chunks (every one of a `chunks` split, in order, any of them replaced by another chunk of the same index) and
   * the rest, as one set: nothing copied, a name found in its chunk at once. Two such sets of as many chunks are
   * compared chunk by chunk (`changesSince`), so the chunks they share cost nothing.
   */
  static chunked(typeUrl: string, chunks: readonly TypeSet[], rest: TypeSet): TypeSet {
    chunks.forEach((c, i) => {
      if (c.chunk?.index !== i || c.chunk.count !== chunks.length) throw new Error(`chunk ${i} of ${chunks.length} of ${resourceType(typeUrl)?.short ?? typeUrl} is not one`);
    });
    const problems = [...rest.resources.keys()].filter((n) => chunks.length && chunks[chunkOf(n, chunks.length)].resources.has(n));
    if (problems.length) throw new SnapshotError(problems.map((n) => `two ${resourceType(typeUrl)?.short ?? typeUrl} resources named "${n}"`));
    const parts = [...chunks, rest];
    const version = contentHash(`chunked\n${parts.map((p) => p.version).join('\n')}`);
    return new TypeSet(typeUrl, new ChunkMap(chunks.map((c) => c.resources), rest.resources), version, parts.every((p) => p.trusted), parts);
  }

  /** Changes since an earlier set, by earlier set (computed once per pair, shared by every stream making the step). */
  private readonly changes = new WeakMap<TypeSet, SetChange>();

  /**
   * What differs from `prev`: resources added or changed (in no particular order) and names gone. Two unions of
   * as many parts are compared part by part, so a part both share (the outbound listeners of every sidecar)
   * costs nothing and one that changed is compared once for all the sets it is in. A name that moved between
   * parts may be listed as changed with its old version (streams skip what the client has).
   */
  changesSince(prev: TypeSet): SetChange {
    if (prev === this) return NO_CHANGE;
    let change = this.changes.get(prev);
    if (change) return change;
    const changed: Resource[] = [];
    const gone: string[] = [];
    if (this.parts.length && this.parts.length === prev.parts.length) {
      this.parts.forEach((part, i) => {
        const c = part.changesSince(prev.parts[i]);
        for (const r of c.changed) changed.push(r);
        for (const n of c.gone) if (!this.resources.has(n)) gone.push(n);
      });
    } else {
      for (const r of this.resources.values()) if (prev.resources.get(r.name)?.version !== r.version) changed.push(r);
      for (const n of prev.resources.keys()) if (!this.resources.has(n)) gone.push(n);
    }
    this.changes.set(prev, (change = { changed, gone }));
    return change;
  }

  /** The parts a snapshot must check references of. */
  get untrusted(): Iterable<Resource> {
    if (this.trusted) return [];
    if (this.parts.length) return this.parts.flatMap((p) => [...p.untrusted]);
    return this.resources.values();
  }
}

export class SnapshotError extends Error {
  constructor(readonly problems: readonly string[]) {
    super(problems.join('; '));
    this.name = 'SnapshotError';
  }
}

/**
 * One of Envoy's rules that proto validation does not catch (REFERENCE §7): a route configuration with two
 * virtual hosts of one name, or one domain in two virtual hosts, is rejected whole. Checked before publishing.
 */
export function checkVirtualHosts(route: string, hosts: Iterable<{ readonly name: string; readonly domains: readonly string[] }>): void {
  const names = new Set<string>();
  const domains = new Map<string, string>();
  const problems: string[] = [];
  for (const h of hosts) {
    if (names.has(h.name)) problems.push(`RDS ${route}: two virtual hosts named "${h.name}"`);
    names.add(h.name);
    for (const d of h.domains) {
      const other = domains.get(d);
      if (other !== undefined) problems.push(`RDS ${route}: domain "${d}" is in virtual hosts "${other}" and "${h.name}" (Envoy rejects the route configuration)`);
      else domains.set(d, h.name);
    }
  }
  if (problems.length) throw new SnapshotError(problems);
}

/**
 * Another of Envoy's rules (REFERENCE §7): a listener whose filter chains have overlapping matches is rejected.
 * Our chains match host prefixes (/32, /128) and a port, so overlap is the same address and port twice (or the
 * same port twice, for chains that match on the port only).
 */
export function checkFilterChains(listener: string, chains: readonly { name?: string; filter_chain_match?: { prefix_ranges?: { address_prefix?: string; prefix_len?: { value?: number } | null }[]; destination_port?: { value?: number } | null } | null }[]): void {
  const seen = new Map<string, string>();
  const problems: string[] = [];
  for (const c of chains) {
    const port = c.filter_chain_match?.destination_port?.value ?? '*';
    const ranges = c.filter_chain_match?.prefix_ranges ?? [];
    for (const key of ranges.length ? ranges.map((r) => `${r.address_prefix}/${r.prefix_len?.value}:${port}`) : [`*:${port}`]) {
      const other = seen.get(key);
      if (other !== undefined) problems.push(`LDS ${listener}: filter chains "${other}" and "${c.name}" both match ${key} (Envoy rejects overlapping matches)`);
      else seen.set(key, c.name ?? '');
    }
  }
  if (problems.length) throw new SnapshotError(problems);
}

export class Snapshot {
  readonly version: string;
  constructor(readonly types: ReadonlyMap<string, TypeSet>) {
    this.version = contentHash(RESOURCE_TYPES.map((t) => types.get(t.typeUrl)?.version ?? '').join(','));
  }
  get(typeUrl: string): TypeSet | undefined {
    return this.types.get(typeUrl);
  }
}

/**
 * Assembles a snapshot from resources (or from ready-made, possibly shared, type sets) and checks it:
 * no duplicate names, and every RDS/EDS name referenced by a listener or cluster exists.
 */
export function buildSnapshot(input: Iterable<Resource> | ReadonlyMap<string, TypeSet>): Snapshot {
  const problems: string[] = [];
  let types: Map<string, TypeSet>;
  if (input instanceof Map) types = new Map(input);
  else {
    const byType = new Map<string, Resource[]>();
    const seen = new Set<string>();
    for (const r of input as Iterable<Resource>) {
      const key = `${r.typeUrl} ${r.name}`;
      if (seen.has(key)) problems.push(`duplicate ${resourceType(r.typeUrl)?.short ?? r.typeUrl} resource "${r.name}"`);
      seen.add(key);
      if (!byType.has(r.typeUrl)) byType.set(r.typeUrl, []);
      byType.get(r.typeUrl)!.push(r);
    }
    types = new Map([...byType].map(([url, list]) => [url, TypeSet.of(url, list)]));
  }
  for (const t of RESOURCE_TYPES) if (!types.has(t.typeUrl)) types.set(t.typeUrl, TypeSet.of(t.typeUrl, []));
  for (const set of types.values()) {
    for (const r of set.untrusted) {
      for (const ref of r.refs) {
        if (!types.get(ref.typeUrl)?.resources.has(ref.name)) {
          const from = resourceType(r.typeUrl)?.short ?? r.typeUrl;
          const to = resourceType(ref.typeUrl)?.short ?? ref.typeUrl;
          problems.push(`${from} "${r.name}" refers to ${to} "${ref.name}", which is not in the snapshot`);
        }
      }
    }
  }
  if (problems.length) throw new SnapshotError(problems);
  return new Snapshot(types);
}
