/** Encoded resources back to readable JSON (Any expanded with `@type`), for golden files and the debug dump. */
import { envoyRoot } from './protos.js';
import type { Resource, Snapshot } from './snapshot.js';
import { RESOURCE_TYPES, resourceType } from './types.js';

export function resourceToJson(r: Resource): Record<string, unknown> {
  const type = envoyRoot().lookupType(resourceType(r.typeUrl)!.message);
  return type.toObject(type.decode(r.body), { json: true, enums: String, longs: Number, defaults: false }) as Record<string, unknown>;
}

/** `{CDS: [...], EDS: [...], LDS: [...], RDS: [...]}` in name order. */
export function snapshotToJson(s: Snapshot): Record<string, unknown[]> {
  const out: Record<string, unknown[]> = {};
  for (const t of RESOURCE_TYPES) out[t.short] = [...(s.get(t.typeUrl)?.resources.values() ?? [])].map(resourceToJson);
  return out;
}
