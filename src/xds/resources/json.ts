/**
 * Encoded messages as JSON: `toProto3Json`, the canonical proto3 JSON mapping Envoy's own /config_dump uses (proto
 * field names, `@type` on Any, Durations as "1.5s", wrappers as bare values, 64-bit integers as strings), so tools
 * that read Envoy dumps read ours; `fromProto3Json`, its inverse.
 */
import { asList, asMap, asString, type Fields } from '../../model/plain.js';
import protobuf from 'protobufjs';
import { nameOf } from './protos.js';
import { toNumber } from './validate.js';

const LONG = new Set(['int64', 'uint64', 'sint64', 'fixed64', 'sfixed64']);
const WRAPPERS = new Set(['DoubleValue', 'FloatValue', 'Int64Value', 'UInt64Value', 'Int32Value', 'UInt32Value', 'BoolValue', 'StringValue', 'BytesValue']);

/** Proto3 JSON Duration: seconds with 0, 3, 6 or 9 fractional digits ("1s", "0.010s"). */
function durationString(m: Fields): string {
  const s = toNumber(m.seconds ?? 0);
  const n = toNumber(m.nanos ?? 0);
  if (n === 0) return `${s}s`;
  const sign = s < 0 || n < 0 ? '-' : '';
  let frac = String(Math.abs(n)).padStart(9, '0');
  while (frac.length > 3 && frac.endsWith('000')) frac = frac.slice(0, -3);
  return `${sign}${Math.abs(s)}.${frac}s`;
}

function scalar(field: protobuf.Field, v: unknown): unknown {
  if (field.resolvedType instanceof protobuf.Enum) return field.resolvedType.valuesById[v as number] ?? v;
  if (LONG.has(field.type)) return String(toNumber(v));
  if (field.type === 'bytes') return Buffer.from(v as Uint8Array).toString('base64');
  return v;
}

function structValue(value: unknown): unknown {
  const v = asMap(value);
  if (v.structValue) return Object.fromEntries(Object.entries(asMap(asMap(v.structValue).fields)).map(([k, x]) => [k, structValue(x)]));
  if (v.listValue) return asList(asMap(v.listValue).values).map(structValue);
  if ('stringValue' in v) return v.stringValue;
  if ('numberValue' in v) return v.numberValue;
  if ('boolValue' in v) return v.boolValue;
  return null;
}

/**
 * A scalar field without presence (not in a oneof, not `optional`) holding its default: proto3 JSON leaves it
 * out, as Envoy's printer does (our encoder may have written it explicitly).
 */
function isDefault(field: protobuf.Field, v: unknown): boolean {
  if (field.partOf || field.resolvedType instanceof protobuf.Type) return false;
  if (field.resolvedType instanceof protobuf.Enum) return v === 0 || v === field.resolvedType.valuesById[0];
  if (LONG.has(field.type)) return toNumber(v) === 0;
  if (field.type === 'bytes') return (v as Uint8Array).length === 0;
  return v === 0 || v === false || v === '';
}

/** A decoded message in the proto3 JSON mapping (with proto field names, as Envoy prints them). */
export function toProto3Json(type: protobuf.Type, message: object): unknown {
  const msg = message as Fields;
  const full = nameOf(type);
  if (full === 'google.protobuf.Any') {
    const url = asString(msg.type_url);
    const inner = type.root.lookupType(url.slice(url.lastIndexOf('/') + 1));
    const body = toProto3Json(inner, inner.decode((msg.value as Uint8Array | undefined) ?? new Uint8Array()));
    const innerFull = nameOf(inner);
    if (innerFull.startsWith('google.protobuf.') && (innerFull === 'google.protobuf.Duration' || WRAPPERS.has(inner.name))) {
      return { '@type': url, value: body };
    }
    return { '@type': url, ...(body as object) };
  }
  if (full === 'google.protobuf.Duration') return durationString(msg);
  if (full === 'google.protobuf.Timestamp') return new Date(toNumber(msg.seconds ?? 0) * 1000 + toNumber(msg.nanos ?? 0) / 1e6).toISOString();
  if (full.startsWith('google.protobuf.') && WRAPPERS.has(type.name)) return scalar(type.fields.value, msg.value ?? type.fields.value.defaultValue);
  if (full === 'google.protobuf.Struct') return structValue({ structValue: msg });
  if (full === 'google.protobuf.Value') return structValue(msg);
  const out: Record<string, unknown> = {};
  for (const field of type.fieldsArray) {
    if (!Object.prototype.hasOwnProperty.call(msg, field.name)) continue;
    const v = msg[field.name];
    if (v === null || v === undefined) continue;
    const sub = field.resolvedType instanceof protobuf.Type ? field.resolvedType : undefined;
    const conv = (x: unknown): unknown => (sub ? toProto3Json(sub, x as object) : scalar(field, x));
    if (field.map) {
      if (Object.keys(asMap(v)).length) out[field.name] = Object.fromEntries(Object.entries(asMap(v)).map(([k, x]) => [k, conv(x)]));
    } else if (field.repeated) {
      if (asList(v).length) out[field.name] = asList(v).map(conv);
    } else if (!isDefault(field, v)) out[field.name] = conv(v);
  }
  return out;
}


function parseDuration(s: string): { seconds: number; nanos: number } {
  const m = /^(-?\d+)(?:\.(\d{1,9}))?s$/.exec(s);
  if (!m) throw new Error(`bad Duration "${s}"`);
  const seconds = Number(m[1]);
  const nanos = m[2] ? Number(m[2].padEnd(9, '0')) : 0;
  return { ...(seconds ? { seconds } : {}), ...(nanos ? { nanos } : {}) } as { seconds: number; nanos: number };
}

/** The inverse of toProto3Json: proto3 JSON back to a message of `type` (for tools and round-trip tests). */
export function fromProto3Json(type: protobuf.Type, json: unknown): protobuf.Message {
  const full = nameOf(type);
  if (full === 'google.protobuf.Any') {
    const url = asString(asMap(json)['@type']);
    const inner = type.root.lookupType(url.slice(url.lastIndexOf('/') + 1));
    const { '@type': _t, ...rest } = asMap(json);
    const wrapped = nameOf(inner) === 'google.protobuf.Duration' || (nameOf(inner).startsWith('google.protobuf.') && WRAPPERS.has(inner.name));
    const msg = fromProto3Json(inner, wrapped ? rest.value : rest);
    return type.create({ type_url: url, value: inner.encode(msg).finish() });
  }
  if (full === 'google.protobuf.Duration') return type.create(parseDuration(asString(json)));
  if (full === 'google.protobuf.Timestamp') {
    const ms = Date.parse(asString(json));
    return type.create({ seconds: Math.floor(ms / 1000), nanos: (ms % 1000) * 1e6 });
  }
  if (full.startsWith('google.protobuf.') && WRAPPERS.has(type.name)) return type.fromObject({ value: json });
  const obj: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(asMap(json))) {
    const field = type.fields[k];
    if (!field) throw new Error(`${full}: unknown field "${k}"`);
    const sub = field.resolvedType instanceof protobuf.Type ? field.resolvedType : undefined;
    const conv = (x: unknown): unknown => (sub ? fromProto3Json(sub, x) : field.type === 'bytes' && typeof x === 'string' ? Buffer.from(x, 'base64') : x);
    if (field.map) obj[k] = Object.fromEntries(Object.entries(v as object).map(([mk, mv]) => [mk, conv(mv)]));
    else if (field.repeated) obj[k] = (v as unknown[]).map(conv);
    else obj[k] = conv(v);
  }
  return type.fromObject(obj);
}
