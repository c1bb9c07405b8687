/**
 * Resources as they go on the wire (encoded once, shared by every proxy that gets them), sets of one type,
 * and snapshots: the complete config of one proxy, checked for consistency before anyone sees it.
 */
import { contentHash, encodeMessage } from './encode.js';
import { lenField } from './wire.js';
import { RESOURCE_TYPES, resourceType, type Reference } from './types.js';

export interface Resource {
  readonly typeUrl: string;
  readonly name: string;
  /** Hash of the encoded message. */
  readonly version: string;
  /** The encoded message. */
  readonly body: Uint8Array;
  /** The encoded `google.protobuf.Any` holding it. */
  readonly any: Buffer;
  /** Resources this one needs to exist in the same snapshot. */
  readonly refs: readonly Reference[];
}

export function makeResource(typeUrl: string, body: Uint8Array, name: string, refs: readonly Reference[]): Resource {
  const any = Buffer.concat([lenField(1, typeUrl), lenField(2, body)]);
  return { typeUrl, name, version: contentHash(body), body, any, refs };
}

/** Encodes a plain builder object of a registered type (throws EncodeError on any bad field). */
export function resourceFromObject(typeUrl: string, obj: any): Resource {
  const type = resourceType(typeUrl);
  if (!type) throw new Error(`unregistered resource type ${typeUrl}`);
  const name = type.nameOf(obj);
  const body = encodeMessage(type.message, obj, `${type.short} ${name}`);
  return makeResource(typeUrl, body, name, type.refs(obj));
}

/** The version of a list of resources of one type: a hash over their names and versions, in name order. */
export function versionOf(typeUrl: string, resources: Iterable<Resource>): string {
  const parts: string[] = [typeUrl];
  for (const r of resources) parts.push(`${r.name}\u0000${r.version}`);
  return contentHash(parts.join('\n'));
}

export class TypeSet {
  readonly version: string;
  readonly resources: ReadonlyMap<string, Resource>;
  constructor(
    readonly typeUrl: string,
    list: Iterable<Resource>,
  ) {
    const sorted = [...list].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    this.resources = new Map(sorted.map((r) => [r.name, r]));
    this.version = versionOf(typeUrl, sorted);
  }
}

export class SnapshotError extends Error {
  constructor(readonly problems: readonly string[]) {
    super(problems.join('; '));
    this.name = 'SnapshotError';
  }
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
    types = new Map([...byType].map(([url, list]) => [url, new TypeSet(url, list)]));
  }
  for (const t of RESOURCE_TYPES) if (!types.has(t.typeUrl)) types.set(t.typeUrl, new TypeSet(t.typeUrl, []));
  for (const set of types.values()) {
    for (const r of set.resources.values()) {
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
