/**
 * A generic checker for the protoc-gen-validate (`validate.rules`) annotations that the Envoy protos carry.
 * Driven by the loaded descriptors: no rule is written by hand per message. Works on protobufjs message
 * instances (decoded or built with fromObject); `Any` fields are unpacked and checked recursively.
 */
import protobuf from 'protobufjs';
import { lookupType, nameOf } from './protos.js';

export interface Violation {
  /** Field path from the resource root, e.g. `virtual_hosts[0].routes[1].route.retry_policy.retry_back_off.base_interval`. */
  readonly path: string;
  readonly message: string;
}

/**
 * The options of one `validate.rules` kind (`string`, `uint32`, `duration`, `repeated`...) as protobufjs parses
 * them from the descriptors: numbers may come as numbers, strings or Longs.
 */
interface KindRules {
  readonly const?: unknown;
  readonly lt?: unknown;
  readonly lte?: unknown;
  readonly gt?: unknown;
  readonly gte?: unknown;
  readonly in?: readonly unknown[];
  readonly not_in?: readonly unknown[];
  readonly required?: boolean;
  readonly defined_only?: boolean;
  readonly ignore_empty?: boolean;
  readonly len?: unknown;
  readonly min_len?: unknown;
  readonly max_len?: unknown;
  readonly min_bytes?: unknown;
  readonly max_bytes?: unknown;
  readonly prefix?: string;
  readonly suffix?: string;
  readonly contains?: string;
  readonly pattern?: string;
  readonly well_known_regex?: string;
  readonly strict?: boolean;
  readonly min_items?: unknown;
  readonly max_items?: unknown;
  readonly unique?: boolean;
  readonly items?: Rules;
  readonly min_pairs?: unknown;
  readonly max_pairs?: unknown;
  readonly keys?: { readonly string?: KindRules };
}

/** A field's `validate.rules`: one kind and its options. */
type Rules = Readonly<Record<string, KindRules | undefined>>;

/** A protobufjs message: its fields by name. */
type Msg = Readonly<Record<string, unknown>>;

/** A field of a value that should be a mapping (a message, a Duration, a wrapper). */
const fieldOf = (v: unknown, name: string): unknown => (v !== null && typeof v === 'object' ? (v as Msg)[name] : undefined);

const ruleCache = new WeakMap<protobuf.ReflectionObject, Rules | null>();

function optionsOf(obj: protobuf.ReflectionObject, key: string): unknown {
  const parsed = (obj as { parsedOptions?: Record<string, unknown>[] }).parsedOptions;
  if (!parsed) return undefined;
  for (const o of parsed) if (key in o) return o[key];
  return undefined;
}

function fieldRules(field: protobuf.Field): Rules | null {
  let r = ruleCache.get(field);
  if (r === undefined) {
    r = (optionsOf(field, '(validate.rules)') as Rules | undefined) ?? null;
    ruleCache.set(field, r);
  }
  return r;
}

function isSet(msg: Msg, name: string): boolean {
  return Object.prototype.hasOwnProperty.call(msg, name) && msg[name] !== null && msg[name] !== undefined;
}

export function toNumber(v: unknown): number {
  if (typeof v === 'number') return v;
  if (typeof v === 'string') return Number(v);
  const long = v as { toNumber?: () => number; low?: number; high?: number } | null | undefined;
  if (long && typeof long.toNumber === 'function') return long.toNumber();
  if (long && typeof long.low === 'number') return (long.high ?? 0) * 4294967296 + (long.low >>> 0);
  return Number(v);
}

function durationNanos(d: unknown): number {
  return toNumber(fieldOf(d, 'seconds') ?? 0) * 1e9 + toNumber(fieldOf(d, 'nanos') ?? 0);
}

function fmtDuration(d: unknown): string {
  return `${durationNanos(d) / 1e9}s`;
}

const HEADER_NAME_STRICT = /^:?[0-9a-zA-Z!#$%&'*+\-.^_|~`]+$/;
// eslint-disable-next-line no-control-regex -- these are the protoc-gen-validate header rules
const HEADER_VALUE_STRICT = /^[^\u0000-\u0008\u000A-\u001F\u007F]*$/;
// eslint-disable-next-line no-control-regex
const HEADER_LOOSE = /^[^\u0000\n\r]*$/;
const patternCache = new Map<string, RegExp>();

function checkComparable(
  rules: KindRules,
  value: number,
  path: string,
  out: Violation[],
  show: (n: unknown) => string = String,
  conv: (n: unknown) => number = toNumber,
): void {
  if (rules.const !== undefined && value !== conv(rules.const)) out.push({ path, message: `must equal ${show(rules.const)}` });
  if (rules.lt !== undefined && !(value < conv(rules.lt))) out.push({ path, message: `must be < ${show(rules.lt)}` });
  if (rules.lte !== undefined && !(value <= conv(rules.lte))) out.push({ path, message: `must be <= ${show(rules.lte)}` });
  if (rules.gt !== undefined && !(value > conv(rules.gt))) out.push({ path, message: `must be > ${show(rules.gt)}` });
  if (rules.gte !== undefined && !(value >= conv(rules.gte))) out.push({ path, message: `must be >= ${show(rules.gte)}` });
  if (Array.isArray(rules.in) && !rules.in.map(conv).includes(value)) out.push({ path, message: `must be one of ${rules.in.join(', ')}` });
  if (Array.isArray(rules.not_in) && rules.not_in.map(conv).includes(value)) out.push({ path, message: `must not be one of ${rules.not_in.join(', ')}` });
}

function checkString(rules: KindRules, s: string, path: string, out: Violation[]): void {
  if (rules.ignore_empty && s === '') return;
  // Code points (only surrogate pairs make them differ from UTF-16 units) and UTF-8 bytes, only when needed.
  const chars = /[\uD800-\uDFFF]/.test(s) ? [...s].length : s.length;
  const bytes = rules.min_bytes !== undefined || rules.max_bytes !== undefined ? Buffer.byteLength(s) : 0;
  if (rules.const !== undefined && s !== rules.const) out.push({ path, message: `must equal "${rules.const}"` });
  if (rules.len !== undefined && chars !== toNumber(rules.len)) out.push({ path, message: `must be ${rules.len} characters` });
  if (rules.min_len !== undefined && chars < toNumber(rules.min_len)) out.push({ path, message: `must be at least ${rules.min_len} characters` });
  if (rules.max_len !== undefined && chars > toNumber(rules.max_len)) out.push({ path, message: `must be at most ${rules.max_len} characters` });
  if (rules.min_bytes !== undefined && bytes < toNumber(rules.min_bytes)) out.push({ path, message: `must be at least ${rules.min_bytes} bytes` });
  if (rules.max_bytes !== undefined && bytes > toNumber(rules.max_bytes)) out.push({ path, message: `must be at most ${rules.max_bytes} bytes` });
  if (rules.prefix !== undefined && !s.startsWith(rules.prefix)) out.push({ path, message: `must start with "${rules.prefix}"` });
  if (rules.suffix !== undefined && !s.endsWith(rules.suffix)) out.push({ path, message: `must end with "${rules.suffix}"` });
  if (rules.contains !== undefined && !s.includes(rules.contains)) out.push({ path, message: `must contain "${rules.contains}"` });
  if (Array.isArray(rules.in) && !rules.in.includes(s)) out.push({ path, message: `must be one of ${rules.in.join(', ')}` });
  if (Array.isArray(rules.not_in) && rules.not_in.includes(s)) out.push({ path, message: `must not be one of ${rules.not_in.join(', ')}` });
  if (rules.pattern !== undefined) {
    let re = patternCache.get(rules.pattern);
    if (!re) {
      re = new RegExp(rules.pattern, 'u');
      patternCache.set(rules.pattern, re);
    }
    if (!re.test(s)) out.push({ path, message: `must match /${rules.pattern}/` });
  }
  if (rules.well_known_regex !== undefined) {
    const strict = rules.strict !== false;
    const kind = rules.well_known_regex;
    const re = !strict ? HEADER_LOOSE : kind === 'HTTP_HEADER_NAME' ? HEADER_NAME_STRICT : HEADER_VALUE_STRICT;
    if (!re.test(s)) out.push({ path, message: `must be a valid ${kind}` });
  }
}

/** Applies the scalar / well-known rules of one value (not repeated-level rules). */
function checkValue(rules: Rules, field: protobuf.Field, value: unknown, present: boolean, path: string, out: Violation[]): void {
  const kind = Object.keys(rules)[0]!;
  const r = rules[kind];
  if (!r || typeof r !== 'object') return;
  const type = field.resolvedType;
  switch (kind) {
    case 'message':
      if (r.required && !present) out.push({ path, message: 'is required' });
      return;
    case 'duration':
      if (!present) {
        if (r.required) out.push({ path, message: 'is required' });
        return;
      }
      checkComparable(r, durationNanos(value), path, out, fmtDuration, durationNanos);
      return;
    case 'timestamp':
      if (!present && r.required) out.push({ path, message: 'is required' });
      return;
    case 'any':
      if (!present) {
        if (r.required) out.push({ path, message: 'is required' });
        return;
      }
      if (Array.isArray(r.in) && !r.in.includes(fieldOf(value, 'type_url'))) out.push({ path, message: `type must be one of ${r.in.join(', ')}` });
      if (Array.isArray(r.not_in) && r.not_in.includes(fieldOf(value, 'type_url'))) out.push({ path, message: `type must not be ${String(fieldOf(value, 'type_url'))}` });
      return;
    case 'enum':
      if (r.defined_only && type instanceof protobuf.Enum && !Object.values(type.values).includes(value as number)) {
        out.push({ path, message: `${String(value)} is not a defined ${type.name} value` });
      }
      checkComparable({ const: r.const, in: r.in, not_in: r.not_in }, toNumber(value), path, out);
      return;
    case 'string': {
      // Rules on a StringValue wrapper apply to its value, only when the wrapper is set.
      if (type instanceof protobuf.Type) {
        if (present) checkString(r, String(fieldOf(value, 'value') ?? ''), path, out);
        return;
      }
      checkString(r, String(value ?? ''), path, out);
      return;
    }
    case 'bytes': {
      const len = (value as Uint8Array | null | undefined)?.length ?? 0;
      if (r.min_len !== undefined && len < toNumber(r.min_len)) out.push({ path, message: `must be at least ${r.min_len} bytes` });
      if (r.max_len !== undefined && len > toNumber(r.max_len)) out.push({ path, message: `must be at most ${r.max_len} bytes` });
      return;
    }
    case 'bool':
      if (r.const !== undefined && Boolean(type instanceof protobuf.Type ? fieldOf(value, 'value') : value) !== r.const) {
        out.push({ path, message: `must be ${r.const}` });
      }
      return;
    default: {
      // Numeric kinds: uint32, int64, double, ... on a scalar or on its wrapper message.
      if (type instanceof protobuf.Type) {
        if (present) checkComparable(r, toNumber(fieldOf(value, 'value') ?? 0), path, out);
        return;
      }
      checkComparable(r, toNumber(value ?? 0), path, out);
    }
  }
}

function unpackAny(any: unknown, path: string, out: Violation[]): void {
  const url = String(fieldOf(any, 'type_url') ?? '');
  let type: protobuf.Type;
  try {
    type = lookupType(url);
  } catch {
    out.push({ path, message: `unknown type ${url}` });
    return;
  }
  let inner: protobuf.Message;
  try {
    inner = type.decode((fieldOf(any, 'value') as Uint8Array | undefined) ?? new Uint8Array());
  } catch (e) {
    out.push({ path, message: `cannot decode ${url}: ${(e as Error).message}` });
    return;
  }
  validateMessage(type, inner, path, out);
}

const SKIP_RECURSE = new Set([
  'google.protobuf.Duration',
  'google.protobuf.Timestamp',
  'google.protobuf.Struct',
  'google.protobuf.Value',
  'google.protobuf.ListValue',
]);

function join(path: string, name: string): string {
  return path ? `${path}.${name}` : name;
}

interface FieldPlan {
  readonly field: protobuf.Field;
  readonly rules: Rules | null;
  readonly sub?: protobuf.Type;
  /** The rules pass when the field is unset (found by running them once on the unset value). */
  readonly unsetOk: boolean;
}

function unsetPasses(field: protobuf.Field, rules: Rules | null): boolean {
  if (!rules) return true;
  const probe: Violation[] = [];
  if (field.map) validateMapField(rules, undefined, {}, 'x', probe);
  else if (field.repeated) validateRepeatedField(field, rules, undefined, [], 'x', probe);
  else checkValue(rules, field, field.resolvedType instanceof protobuf.Type ? null : field.typeDefault, false, 'x', probe);
  return probe.length === 0;
}

interface TypePlan {
  readonly disabled: boolean;
  readonly requiredOneofs: readonly protobuf.OneOf[];
  readonly fields: readonly FieldPlan[];
}

const plans = new WeakMap<protobuf.Type, TypePlan>();

/** What to check on a message type, computed once per type from its descriptors. */
function planOf(type: protobuf.Type): TypePlan {
  let plan = plans.get(type);
  if (!plan) {
    plan = {
      disabled: optionsOf(type, '(validate.disabled)') === true,
      requiredOneofs: type.oneofsArray.filter((o) => optionsOf(o, '(validate.required)') === true),
      fields: type.fieldsArray.map((field) => {
        field.resolve();
        const rules = fieldRules(field);
        return { field, rules, sub: field.resolvedType instanceof protobuf.Type ? field.resolvedType : undefined, unsetOk: unsetPasses(field, rules) };
      }),
    };
    plans.set(type, plan);
  }
  return plan;
}

/** Checks every `validate.rules` / `validate.required` annotation reachable from `msg`; appends to `out`. */
export function validateMessage(type: protobuf.Type, message: object, path: string, out: Violation[]): void {
  const msg = message as Msg;
  const plan = planOf(type);
  if (plan.disabled) return;
  for (const oneof of plan.requiredOneofs) {
    if (!oneof.fieldsArray.some((f) => isSet(msg, f.name))) {
      out.push({ path: join(path, oneof.name), message: `one of ${oneof.fieldsArray.map((f) => f.name).join(', ')} is required` });
    }
  }
  for (const { field, rules, sub, unsetOk } of plan.fields) {
    const set = isSet(msg, field.name);
    // Fields of a oneof that is not set to them are not checked (as protoc-gen-validate does).
    if (!set && (field.partOf || unsetOk)) continue;
    const value = msg[field.name];
    if (set && !rules && !sub) continue;
    if (field.map) validateMapField(rules, sub, (value as object | undefined) ?? {}, join(path, field.name), out);
    else if (field.repeated) {
      const items = (value as readonly unknown[] | undefined) ?? [];
      if (!rules && items.length === 0) continue;
      validateRepeatedField(field, rules, sub, items, join(path, field.name), out);
    } else {
      const fpath = join(path, field.name);
      if (rules) checkValue(rules, field, value, set, fpath, out);
      if (sub && set) recurse(sub, value, fpath, out);
    }
  }
}

function validateMapField(rules: Rules | null, sub: protobuf.Type | undefined, value: object, fpath: string, out: Violation[]): void {
  const entries = Object.entries(value);
  const m = rules?.map;
  if (m?.min_pairs !== undefined && entries.length < toNumber(m.min_pairs)) out.push({ path: fpath, message: `must have at least ${m.min_pairs} entries` });
  if (m?.max_pairs !== undefined && entries.length > toNumber(m.max_pairs)) out.push({ path: fpath, message: `must have at most ${m.max_pairs} entries` });
  for (const [k, v] of entries) {
    if (m?.keys?.string) checkString(m.keys.string, k, `${fpath}[${k}]`, out);
    if (sub) recurse(sub, v, `${fpath}[${k}]`, out);
  }
}

function validateRepeatedField(field: protobuf.Field, rules: Rules | null, sub: protobuf.Type | undefined, items: readonly unknown[], fpath: string, out: Violation[]): void {
  const rr = rules?.repeated;
  if (rr?.min_items !== undefined && items.length < toNumber(rr.min_items)) out.push({ path: fpath, message: `must have at least ${rr.min_items} item(s)` });
  if (rr?.max_items !== undefined && items.length > toNumber(rr.max_items)) out.push({ path: fpath, message: `must have at most ${rr.max_items} item(s)` });
  if (rr?.unique) {
    const seen = new Set(items.map((i) => (typeof i === 'object' ? JSON.stringify(i) : i)));
    if (seen.size !== items.length) out.push({ path: fpath, message: 'items must be unique' });
  }
  items.forEach((item, i) => {
    const ipath = `${fpath}[${i}]`;
    if (rr?.items) checkValue(rr.items, field, item, item !== null && item !== undefined, ipath, out);
    if (sub) recurse(sub, item, ipath, out);
  });
}

function recurse(sub: protobuf.Type, value: unknown, path: string, out: Violation[]): void {
  if (value === null || value === undefined) return;
  const full = nameOf(sub);
  if (full === 'google.protobuf.Any') {
    unpackAny(value, path, out);
    return;
  }
  if (SKIP_RECURSE.has(full) || (full.startsWith('google.protobuf.') && full.endsWith('Value'))) return;
  validateMessage(sub, value as object, path, out);
}
