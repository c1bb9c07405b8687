/**
 * From a plain builder object (proto field names, `@type` on Any, Durations as {seconds, nanos}) to the
 * exact bytes sent on the wire, with every check a careless encoder would skip: protobufjs drops unknown
 * keys and unknown enum names silently, so both are reported here; then the `validate.rules` checker runs on
 * the message as it will be encoded.
 */
import { createHash } from 'node:crypto';
import protobuf from 'protobufjs';
import { lookupType, nameOf } from './protos.js';
import { validateMessage, type Violation } from './validate.js';

export class EncodeError extends Error {
  constructor(
    readonly resource: string,
    readonly violations: readonly Violation[],
  ) {
    super(`${resource}: ${violations.map((v) => `${v.path || '(root)'}: ${v.message}`).join('; ')}`);
    this.name = 'EncodeError';
  }
}

/** Reports keys that are not fields of `type` and enum names that do not exist. */
export function checkShape(type: protobuf.Type, obj: unknown, path: string, out: Violation[]): void {
  if (obj === null || typeof obj !== 'object') {
    out.push({ path, message: `expected a ${type.name} object, got ${JSON.stringify(obj)}` });
    return;
  }
  const fields = obj as Readonly<Record<string, unknown>>;
  const isAny = nameOf(type) === 'google.protobuf.Any';
  if (isAny && typeof fields['@type'] === 'string') {
    const url = fields['@type'];
    let inner: protobuf.Type;
    try {
      inner = lookupType(url);
    } catch {
      out.push({ path, message: `unknown @type ${url}` });
      return;
    }
    const { ['@type']: _t, ...rest } = fields;
    checkShape(inner, rest, path, out);
    return;
  }
  for (const [key, value] of Object.entries(fields)) {
    const fpath = path ? `${path}.${key}` : key;
    const field = type.fields[key];
    if (!field) {
      out.push({ path: fpath, message: `unknown field of ${nameOf(type)}` });
      continue;
    }
    if (value === null || value === undefined) continue;
    const rt = field.resolvedType;
    const each = (v: unknown, p: string): void => {
      if (rt instanceof protobuf.Type) checkShape(rt, v, p, out);
      else if (rt instanceof protobuf.Enum && typeof v === 'string' && !(v in rt.values)) {
        out.push({ path: p, message: `unknown ${rt.name} value "${v}"` });
      }
    };
    if (field.map) for (const [k, v] of Object.entries(value as object)) each(v, `${fpath}[${k}]`);
    else if (field.repeated) {
      if (!Array.isArray(value)) out.push({ path: fpath, message: 'expected a list' });
      else value.forEach((v, i) => each(v, `${fpath}[${i}]`));
    } else each(value, fpath);
  }
}

/** Encodes `obj` as `messageName`, or throws EncodeError naming every bad field. */
export function encodeMessage(messageName: string, obj: object, label = messageName): Uint8Array {
  const type = lookupType(messageName);
  const violations: Violation[] = [];
  checkShape(type, obj, '', violations);
  if (violations.length) throw new EncodeError(label, violations);
  const msg = type.fromObject(obj);
  validateMessage(type, msg, '', violations);
  if (violations.length) throw new EncodeError(label, violations);
  return type.encode(msg).finish();
}

/** Content version: a prefix of the SHA-256 of the bytes (stable across restarts and replicas). */
export function contentHash(...parts: (Uint8Array | string)[]): string {
  const h = createHash('sha256');
  for (const p of parts) h.update(p);
  return h.digest('base64url').slice(0, 16);
}
