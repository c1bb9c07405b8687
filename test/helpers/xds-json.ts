/**
 * Encoded resources back to plain objects, for the tests' assertions and golden files (the product prints resources
 * with `toProto3Json`, src/xds/resources/json.ts, and nothing else).
 */
import { lookupType } from '../../src/xds/resources/protos.js';
import { toProto3Json } from '../../src/xds/resources/json.js';
import { shownBody, type Resource, type Snapshot } from '../../src/xds/resources/snapshot.js';
import { RESOURCE_TYPES, resourceType } from '../../src/xds/resources/types.js';

/** A message's bytes as protobufjs's plain object (Any left packed, enums as names, no defaults). */
export function decodeMessage(messageName: string, bytes: Uint8Array): Record<string, unknown> {
  const type = lookupType(messageName);
  return type.toObject(type.decode(bytes), { longs: Number, enums: String, defaults: false, oneofs: false });
}

/** A resource as protobufjs's JSON form (secrets redacted as shown outside ADS). */
export function resourceToJson(r: Resource): Record<string, unknown> {
  const type = lookupType(resourceType(r.typeUrl)!.message);
  return type.toObject(type.decode(shownBody(r)), { json: true, enums: String, longs: Number, defaults: false }) as Record<string, unknown>;
}

/** A resource as Envoy's /config_dump prints it: proto3 JSON with its `@type`. */
export function resourceToProto3Json(r: Resource): unknown {
  return toProto3Json(lookupType('google.protobuf.Any'), { type_url: r.typeUrl, value: shownBody(r) });
}

/** `{CDS: [...], EDS: [...], LDS: [...], RDS: [...], SDS: [...]}` in name order, each resource as Envoy prints it. */
export function snapshotToJson(s: Snapshot): Record<string, unknown[]> {
  const out: Record<string, unknown[]> = {};
  for (const t of RESOURCE_TYPES) out[t.short] = [...(s.get(t.typeUrl)?.resources.values() ?? [])].map(resourceToProto3Json);
  return out;
}
