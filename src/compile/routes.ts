/**
 * Gateway API mesh routes (GAMMA): HTTPRoute and GRPCRoute whose parents are Services -> the rules each
 * (destination service port, caller audience) gets, in the Gateway API's precedence order, and every route's
 * status per Service parent. Pure; never throws on user input.
 *
 * - A route in its parent Service's namespace is a producer route (every caller); one in another namespace is a
 *   consumer route (that namespace's callers only, and for them it replaces the producer routes).
 * - Rules of every route attached to one service port are merged and ordered as the Gateway API says (exact path,
 *   then the longest prefix, method, most headers, most query parameters, then the oldest route, then
 *   namespace/name, then rule and match order). A request that matches no rule gets a 404.
 * - Left out on purpose: ReferenceGrant (a backend in a third namespace is refused: RefNotPermitted), hostnames
 *   (ignored for mesh routes, as GAMMA says), RequestMirror, CORS, ExternalAuth and ExtensionRef filters (the route
 *   is not Accepted: UnsupportedValue), sessionPersistence.
 */
import { RE2JS } from 're2js';
import { clip, type Fields } from '../model/plain.js';
import { byRef, lineOfField, refKey, type MeshState, type RouteKind, type RouteObject } from '../model/mesh.js';
import { durationOf, parseGoDuration, type Duration } from '../policy/duration.js';
import type { Problem } from '../policy/retry.js';
import type { ServiceIR } from './ir.js';

/** What mesh-xds writes as `controllerName` in a route's `status.parents[]`. */
export const ROUTE_CONTROLLER = 'flomesh.io/mesh-xds';

export interface PathMatchIR {
  readonly type: 'Exact' | 'PathPrefix' | 'RegularExpression';
  readonly value: string;
}

export interface ValueMatchIR {
  readonly type: 'Exact' | 'RegularExpression';
  readonly name: string;
  readonly value: string;
}

export interface MatchIR {
  readonly path: PathMatchIR;
  readonly headers: readonly ValueMatchIR[];
  readonly queryParams: readonly ValueMatchIR[];
  readonly method?: string;
}

export interface HeaderOpsIR {
  readonly set: readonly { readonly name: string; readonly value: string }[];
  readonly add: readonly { readonly name: string; readonly value: string }[];
  readonly remove: readonly string[];
}

export interface PathModifierIR {
  readonly type: 'ReplaceFullPath' | 'ReplacePrefixMatch';
  readonly value: string;
}

export interface RedirectIR {
  readonly scheme?: string;
  readonly hostname?: string;
  readonly path?: PathModifierIR;
  readonly port?: number;
  readonly statusCode: number;
}

export interface RewriteIR {
  readonly hostname?: string;
  readonly path?: PathModifierIR;
}

export interface BackendIR {
  /** `ns/name` of the Service. */
  readonly service: string;
  readonly port: number;
  /** Its Envoy cluster (`ns/name|targetPort`); INVALID_BACKEND for a backend that did not resolve. */
  readonly cluster: string;
  readonly weight: number;
  /** The backend's own filters (`backendRefs[].filters`): header modifiers of the requests it gets, and their responses. */
  readonly requestHeaders?: HeaderOpsIR;
  readonly responseHeaders?: HeaderOpsIR;
}

/**
 * The cluster name of a backend that did not resolve: no cluster has it, so Envoy answers the requests its weight
 * sends there with the route's cluster_not_found_response_code (500, as the Gateway API says: "if two backends are
 * specified with equal weights, and one is invalid, 50 percent of traffic must receive a 500").
 */
export const INVALID_BACKEND = 'mesh-xds|invalid-backend';

/** A route's `retry` (GEP-1731): the status codes, the retries after the first try, the base backoff. */
export interface RouteRetryIR {
  readonly codes: readonly number[];
  readonly attempts: number;
  readonly backoff?: Duration;
}

/** One match of one rule: what becomes one Envoy route. */
export interface RouteRuleIR {
  /** `HTTPRoute ns/name` */
  readonly from: string;
  /** The rule's index in the route, and its name if it has one. */
  readonly rule: number;
  readonly ruleName?: string;
  readonly match: MatchIR;
  readonly requestHeaders?: HeaderOpsIR;
  readonly responseHeaders?: HeaderOpsIR;
  readonly redirect?: RedirectIR;
  readonly rewrite?: RewriteIR;
  /** Where it forwards (weights as written, unresolved ones to INVALID_BACKEND); none: a 500. */
  readonly backends: readonly BackendIR[];
  /** `timeouts.request`: all tries together (0: none). */
  readonly timeout?: Duration;
  /** `timeouts.backendRequest`: each try. */
  readonly backendTimeout?: Duration;
  readonly retry?: RouteRetryIR;
}

/** The routes of one service port: the producer routes' rules, and each consumer namespace's. */
export interface PortRoutesIR {
  readonly producer?: readonly RouteRuleIR[];
  readonly consumers?: Readonly<Record<string, readonly RouteRuleIR[]>>;
}

export interface RouteCondition {
  readonly type: 'Accepted' | 'ResolvedRefs';
  readonly status: 'True' | 'False';
  readonly reason: string;
  readonly message: string;
}

export interface ParentReport {
  /** The parentRef as written (group, kind, namespace, name, port, sectionName). */
  readonly parentRef: Readonly<Record<string, string | number>>;
  readonly conditions: readonly RouteCondition[];
}

export interface RouteReport {
  readonly kind: RouteKind;
  readonly namespace: string;
  readonly name: string;
  readonly generation?: number;
  /** Only the Service parents (a Gateway parent is another controller's); none: a route that is not (or no longer) ours. */
  readonly parents: readonly ParentReport[];
  readonly problems: readonly Problem[];
  /** `ns/name:port` of each service port it attaches to; `producer` or the consumer namespace. */
  readonly attached: readonly { readonly port: string; readonly audience: string }[];
}

/** `ns/name:port`: how the route table names a service port. */
export const portKey = (service: string, port: number): string => `${service}:${port}`;

// ---------------------------------------------------------------------------------------------------------------
// Reading a spec

const HEADER_NAME = /^[A-Za-z0-9!#$%&'*+\-.^_`|~]+$/;
/** GEP-2257: 1 to 4 of a number (up to 5 digits) and a unit. */
const GATEWAY_DURATION = /^([0-9]{1,5}(h|m|s|ms)){1,4}$/;
const REDIRECT_CODES = [301, 302, 303, 307, 308];
/** The CRD's own bounds (v1.7.0): 16 rules, 64 matches a rule, 128 matches over all rules. */
const MAX_RULES = 16;
const MAX_MATCHES = 64;
const MAX_ROUTE_MATCHES = 128;
/** A rule's header modifiers, its own and its backends', in characters of names and values together. */
const MAX_HEADER_BYTES = 16_384;
/** A reader stops reading a route after this many problems (the status names the first few). */
const MAX_PROBLEMS = 20;
/**
 * Route matches (Envoy routes) one service port may hold for one audience (the producer routes, or one consumer
 * namespace's), over all its routes: what a virtual host of a caller's sidecar holds at most from routes.
 */
export const MAX_RULES_PER_PORT = 1024;
/** The same in characters of the rules' JSON (what a virtual host is made of): 1 MiB. */
export const MAX_ROUTE_BYTES_PER_PORT = 1 << 20;
/** All of one namespace's routes together, over every service port they attach to: 8 MiB. */
export const MAX_ROUTE_BYTES_PER_NAMESPACE = 8 << 20;

class Reader {
  readonly problems: Problem[] = [];
  /** More problems than a status names: the rest is not read (its cost is bounded as its report is). */
  get full(): boolean {
    return this.problems.length >= MAX_PROBLEMS;
  }
  problem(field: string, message: string): void {
    if (this.problems.length < MAX_PROBLEMS) this.problems.push({ field: clip(field, 256), message: clip(message, 512) });
    else if (this.problems.length === MAX_PROBLEMS) this.problems.push({ field: 'spec', message: 'more problems were not read' });
  }
  unknown(obj: Fields, allowed: readonly string[], path: string): void {
    for (const k of Object.keys(obj)) if (!allowed.includes(k)) this.problem(`${path}.${k}`, `unknown field (known: ${allowed.join(', ')})`);
  }
  map(v: unknown, path: string): Fields | undefined {
    if (v === undefined || v === null) return undefined;
    if (typeof v !== 'object' || Array.isArray(v)) {
      this.problem(path, 'must be a mapping');
      return undefined;
    }
    return v as Fields;
  }
  list(v: unknown, path: string, max: number): readonly unknown[] {
    if (v === undefined || v === null) return [];
    if (!Array.isArray(v)) {
      this.problem(path, 'must be a list');
      return [];
    }
    if (v.length > max) this.problem(path, `has ${v.length} items; at most ${max}`);
    return v.slice(0, max);
  }
  string(v: unknown, path: string, opts: { required?: boolean; max?: number } = {}): string | undefined {
    if (v === undefined || v === null) {
      if (opts.required) this.problem(path, 'is required');
      return undefined;
    }
    if (typeof v !== 'string') {
      this.problem(path, `must be a string, got ${JSON.stringify(v)}`);
      return undefined;
    }
    if (v.length > (opts.max ?? 1024)) {
      this.problem(path, `is ${v.length} characters; at most ${opts.max ?? 1024}`);
      return undefined;
    }
    if (/[\0\r\n]/.test(v)) {
      this.problem(path, 'must not hold NUL, CR or LF');
      return undefined;
    }
    return v;
  }
  int(v: unknown, path: string, min: number, max: number): number | undefined {
    if (v === undefined || v === null) return undefined;
    if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) {
      this.problem(path, `must be a whole number from ${min} to ${max}, got ${JSON.stringify(v)}`);
      return undefined;
    }
    return v;
  }
  oneOf<T extends string>(v: unknown, path: string, allowed: readonly T[], dflt?: T): T | undefined {
    if (v === undefined || v === null) return dflt;
    if (typeof v !== 'string' || !(allowed as readonly string[]).includes(v)) {
      this.problem(path, `must be one of ${allowed.join(', ')}, got ${JSON.stringify(v)}`);
      return undefined;
    }
    return v as T;
  }
  duration(v: unknown, path: string): Duration | undefined {
    const s = this.string(v, path);
    if (s === undefined) return undefined;
    const parsed = GATEWAY_DURATION.test(s) ? parseGoDuration(s) : undefined;
    if (!parsed || 'error' in parsed) {
      this.problem(path, `"${s}" is not a Gateway API duration (1 to 4 of a number and h, m, s or ms, as in 1s, 500ms, 1m30s)`);
      return undefined;
    }
    return durationOf(parsed.nanos);
  }
  /** A regular expression Envoy's RE2 takes (re2Problem), quoted at most 64 characters in a problem. */
  regex(v: unknown, path: string): string | undefined {
    const s = this.string(v, path);
    if (s === undefined) return undefined;
    const problem = re2Problem(s);
    if (problem) {
      this.problem(path, `"${clip(s, 64)}" ${problem}`);
      return undefined;
    }
    return s;
  }
}

/** Envoy refuses a regex whose RE2 program is larger than this (its default `re2.max_program_size.error_level`). */
const RE2_MAX_PROGRAM = 100;
const re2Checked = new Map<string, string | undefined>();

/**
 * Why Envoy's RE2 would refuse a regex (undefined: it takes it): re2js parses it as RE2 does (no lookaround, no
 * backreference, no `\u` escapes or `\p{Script=...}` classes), and its program, about two instructions smaller than
 * RE2's own count, must stay within Envoy's 100. Remembered per pattern (at most 10,000).
 */
export function re2Problem(pattern: string): string | undefined {
  if (re2Checked.has(pattern)) return re2Checked.get(pattern);
  let problem: string | undefined;
  if (/\(\?<[=!]/.test(pattern)) problem = 'uses lookbehind, which RE2 (Envoy) does not have';
  else {
    try {
      const size = (RE2JS.compile(pattern) as unknown as { re2Input: { prog: { inst: unknown[] } } }).re2Input.prog.inst.length + 2;
      if (size > RE2_MAX_PROGRAM) problem = `is an RE2 program of about ${size} instructions; Envoy refuses over ${RE2_MAX_PROGRAM} (a shorter pattern, or a prefix or exact match)`;
    } catch (e) {
      problem = `is not a regular expression RE2 (Envoy) takes: ${clip((e as Error).message, 128)}`;
    }
  }
  if (re2Checked.size >= 10_000) re2Checked.clear();
  re2Checked.set(pattern, problem);
  return problem;
}

interface ParentRef {
  readonly written: Readonly<Record<string, string | number>>;
  readonly namespace: string;
  readonly name: string;
  readonly port?: number;
  /** Not a Service parent (a Gateway's): left to its controller. */
  readonly foreign: boolean;
}

interface BackendRef {
  readonly field: string;
  readonly group: string;
  readonly kind: string;
  readonly namespace: string;
  readonly name: string;
  readonly port?: number;
  readonly weight: number;
  readonly requestHeaders?: HeaderOpsIR;
  readonly responseHeaders?: HeaderOpsIR;
}

interface RuleSpec {
  readonly index: number;
  readonly name?: string;
  readonly matches: readonly MatchIR[];
  readonly requestHeaders?: HeaderOpsIR;
  readonly responseHeaders?: HeaderOpsIR;
  readonly redirect?: RedirectIR;
  readonly rewrite?: RewriteIR;
  readonly backends: readonly BackendRef[];
  readonly timeout?: Duration;
  readonly backendTimeout?: Duration;
  readonly retry?: RouteRetryIR;
}

export interface RouteSpec {
  readonly parents: readonly ParentRef[];
  readonly rules: readonly RuleSpec[];
}

/** Reads an HTTPRoute's or GRPCRoute's spec: the spec or every problem with its field path. */
export function parseRouteSpec(kind: RouteKind, namespace: string, spec: unknown): { spec: RouteSpec; problems: Problem[] } {
  const r = new Reader();
  const s = r.map(spec, 'spec') ?? {};
  r.unknown(s, ['parentRefs', 'hostnames', 'rules'], 'spec');
  const parents: ParentRef[] = [];
  r.list(s.parentRefs, 'spec.parentRefs', 32).forEach((p, i) => {
    const at = `spec.parentRefs[${i}]`;
    const m = r.map(p, at) ?? {};
    r.unknown(m, ['group', 'kind', 'namespace', 'name', 'port', 'sectionName'], at);
    const group = r.string(m.group, `${at}.group`) ?? 'gateway.networking.k8s.io';
    const pkind = r.string(m.kind, `${at}.kind`) ?? 'Gateway';
    const name = r.string(m.name, `${at}.name`, { required: true, max: 253 }) ?? '';
    const ns = r.string(m.namespace, `${at}.namespace`, { max: 63 }) ?? namespace;
    const port = r.int(m.port, `${at}.port`, 1, 65535);
    const written: Record<string, string | number> = { group, kind: pkind, ...(m.namespace !== undefined ? { namespace: ns } : {}), name };
    if (port !== undefined) written.port = port;
    if (typeof m.sectionName === 'string') written.sectionName = m.sectionName;
    parents.push({ written, namespace: ns, name, port, foreign: !((group === '' || group === 'core') && pkind === 'Service') });
  });
  const rules: RuleSpec[] = [];
  for (const [index, rule] of r.list(s.rules, 'spec.rules', MAX_RULES).entries()) {
    if (r.full) break;
    rules.push(parseRule(r, kind, namespace, rule, `spec.rules[${index}]`, index));
  }
  const matches = rules.reduce((n, rule) => n + rule.matches.length, 0);
  if (matches > MAX_ROUTE_MATCHES) r.problem('spec.rules', `hold ${matches} matches in all; at most ${MAX_ROUTE_MATCHES} (the CRD's bound)`);
  return { spec: { parents, rules }, problems: r.problems };
}

function parseRule(r: Reader, kind: RouteKind, namespace: string, v: unknown, at: string, index: number): RuleSpec {
  const m = r.map(v, at) ?? {};
  r.unknown(m, kind === 'HTTPRoute' ? ['name', 'matches', 'filters', 'backendRefs', 'timeouts', 'retry', 'sessionPersistence'] : ['name', 'matches', 'filters', 'backendRefs', 'sessionPersistence'], at);
  if (m.sessionPersistence !== undefined) r.problem(`${at}.sessionPersistence`, 'is not supported by mesh-xds');
  const name = r.string(m.name, `${at}.name`, { max: 253 });
  const matches = r.list(m.matches, `${at}.matches`, MAX_MATCHES).map((x, i) => (kind === 'HTTPRoute' ? httpMatch(r, x, `${at}.matches[${i}]`) : grpcMatch(r, x, `${at}.matches[${i}]`)));
  const filters = parseFilters(r, kind, m.filters, `${at}.filters`);
  const backends: BackendRef[] = [];
  r.list(m.backendRefs, `${at}.backendRefs`, 16).forEach((b, i) => {
    const bat = `${at}.backendRefs[${i}]`;
    const bm = r.map(b, bat) ?? {};
    r.unknown(bm, ['group', 'kind', 'namespace', 'name', 'port', 'weight', 'filters'], bat);
    // A backend's own header modifiers (the request as this backend gets it); other backend filters are refused.
    const bf = parseFilters(r, 'GRPCRoute', bm.filters, `${bat}.filters`);
    backends.push({
      field: bat,
      group: r.string(bm.group, `${bat}.group`) ?? '',
      kind: r.string(bm.kind, `${bat}.kind`) ?? 'Service',
      namespace: r.string(bm.namespace, `${bat}.namespace`, { max: 63 }) ?? namespace,
      name: r.string(bm.name, `${bat}.name`, { required: true, max: 253 }) ?? '',
      port: r.int(bm.port, `${bat}.port`, 1, 65535),
      weight: r.int(bm.weight, `${bat}.weight`, 0, 1_000_000) ?? 1,
      ...(bf.requestHeaders ? { requestHeaders: bf.requestHeaders } : {}),
      ...(bf.responseHeaders ? { responseHeaders: bf.responseHeaders } : {}),
    });
  });
  const opsBytes = (o: HeaderOpsIR | undefined): number => (o ? [...o.set, ...o.add].reduce((n, h) => n + h.name.length + h.value.length, 0) + o.remove.reduce((n, x) => n + x.length, 0) : 0);
  const headerBytes = opsBytes(filters.requestHeaders) + opsBytes(filters.responseHeaders) + backends.reduce((n, b) => n + opsBytes(b.requestHeaders) + opsBytes(b.responseHeaders), 0);
  if (headerBytes > MAX_HEADER_BYTES) r.problem(`${at}.filters`, `the rule's header modifiers (with its backends') hold ${headerBytes} characters; at most ${MAX_HEADER_BYTES}`);
  let timeout: Duration | undefined;
  let backendTimeout: Duration | undefined;
  const t = r.map(m.timeouts, `${at}.timeouts`);
  if (t) {
    r.unknown(t, ['request', 'backendRequest'], `${at}.timeouts`);
    timeout = r.duration(t.request, `${at}.timeouts.request`);
    backendTimeout = r.duration(t.backendRequest, `${at}.timeouts.backendRequest`);
    const nanos = (d: Duration): number => d.seconds * 1e9 + d.nanos;
    if (backendTimeout && nanos(backendTimeout) === 0) r.problem(`${at}.timeouts.backendRequest`, 'must be more than 0 (0 would mean no limit only for request)');
    if (timeout && backendTimeout && nanos(timeout) > 0 && nanos(backendTimeout) > nanos(timeout)) {
      r.problem(`${at}.timeouts.backendRequest`, 'must not be longer than timeouts.request');
    }
  }
  let retry: RouteRetryIR | undefined;
  const rt = r.map(m.retry, `${at}.retry`);
  if (rt) {
    r.unknown(rt, ['codes', 'attempts', 'backoff'], `${at}.retry`);
    const codes: number[] = [];
    r.list(rt.codes, `${at}.retry.codes`, 200).forEach((c, i) => {
      const code = r.int(c, `${at}.retry.codes[${i}]`, 400, 599);
      if (code !== undefined && !codes.includes(code)) codes.push(code);
    });
    const attempts = r.int(rt.attempts, `${at}.retry.attempts`, 0, 100) ?? 1;
    const backoff = r.duration(rt.backoff, `${at}.retry.backoff`);
    if (backoff && backoff.seconds === 0 && backoff.nanos === 0) r.problem(`${at}.retry.backoff`, 'must be more than 0');
    retry = { codes: codes.sort((a, b) => a - b), attempts, ...(backoff ? { backoff } : {}) };
  }
  return {
    index,
    ...(name ? { name } : {}),
    matches: matches.length ? matches : [{ path: { type: 'PathPrefix', value: '/' }, headers: [], queryParams: [] }],
    ...filters,
    backends,
    ...(timeout ? { timeout } : {}),
    ...(backendTimeout ? { backendTimeout } : {}),
    ...(retry ? { retry } : {}),
  };
}

function valueMatches(r: Reader, v: unknown, at: string, what: 'header' | 'query parameter'): ValueMatchIR[] {
  const out: ValueMatchIR[] = [];
  r.list(v, at, 16).forEach((x, i) => {
    const hat = `${at}[${i}]`;
    const m = r.map(x, hat) ?? {};
    r.unknown(m, ['type', 'name', 'value'], hat);
    const type = r.oneOf(m.type, `${hat}.type`, ['Exact', 'RegularExpression'] as const, 'Exact');
    const name = r.string(m.name, `${hat}.name`, { required: true, max: 256 });
    if (name !== undefined && !HEADER_NAME.test(name)) r.problem(`${hat}.name`, `"${name}" is not a valid ${what} name`);
    const value = type === 'RegularExpression' ? r.regex(m.value, `${hat}.value`) : r.string(m.value, `${hat}.value`, { required: true, max: 4096 });
    // Header names are case-insensitive (Envoy's are lowercase); the first match of a name counts (the spec's rule).
    const key = what === 'header' ? name?.toLowerCase() : name;
    if (type && key !== undefined && value !== undefined && !out.some((o) => o.name === key)) out.push({ type, name: key, value });
  });
  return out;
}

function httpMatch(r: Reader, v: unknown, at: string): MatchIR {
  const m = r.map(v, at) ?? {};
  r.unknown(m, ['path', 'headers', 'queryParams', 'method'], at);
  let path: PathMatchIR = { type: 'PathPrefix', value: '/' };
  const p = r.map(m.path, `${at}.path`);
  if (p) {
    r.unknown(p, ['type', 'value'], `${at}.path`);
    const type = r.oneOf(p.type, `${at}.path.type`, ['Exact', 'PathPrefix', 'RegularExpression'] as const, 'PathPrefix');
    const value = type === 'RegularExpression' ? r.regex(p.value, `${at}.path.value`) : r.string(p.value, `${at}.path.value`, { max: 1024 }) ?? '/';
    if (type && value !== undefined) {
      if (type !== 'RegularExpression' && !value.startsWith('/')) r.problem(`${at}.path.value`, `"${value}" must start with "/"`);
      else if (type !== 'RegularExpression' && /\/\/|\/\.\.?(\/|$)|%2f|%2F|#|\?/.test(value)) r.problem(`${at}.path.value`, `"${value}" must not hold "//", "/./", "/../", "%2f", "#" or "?"`);
      else path = { type, value };
    }
  }
  const method = r.oneOf(m.method, `${at}.method`, ['GET', 'HEAD', 'POST', 'PUT', 'DELETE', 'CONNECT', 'OPTIONS', 'TRACE', 'PATCH'] as const);
  return { path, headers: valueMatches(r, m.headers, `${at}.headers`, 'header'), queryParams: valueMatches(r, m.queryParams, `${at}.queryParams`, 'query parameter'), ...(method ? { method } : {}) };
}

const escapeRegex = (s: string): string => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
const GRPC_NAME = /^[A-Za-z_][A-Za-z_0-9]*(\.[A-Za-z_][A-Za-z_0-9]*)*$/;

/** A GRPCRoute match as the HTTP/2 path it means: `/<service>/<method>`. */
function grpcMatch(r: Reader, v: unknown, at: string): MatchIR {
  const m = r.map(v, at) ?? {};
  r.unknown(m, ['method', 'headers'], at);
  let path: PathMatchIR = { type: 'PathPrefix', value: '/' };
  const gm = r.map(m.method, `${at}.method`);
  if (gm) {
    r.unknown(gm, ['type', 'service', 'method'], `${at}.method`);
    const type = r.oneOf(gm.type, `${at}.method.type`, ['Exact', 'RegularExpression'] as const, 'Exact');
    const service = type === 'RegularExpression' ? r.regex(gm.service, `${at}.method.service`) : r.string(gm.service, `${at}.method.service`, { max: 1024 });
    const method = type === 'RegularExpression' ? r.regex(gm.method, `${at}.method.method`) : r.string(gm.method, `${at}.method.method`, { max: 1024 });
    if (service === undefined && method === undefined) r.problem(`${at}.method`, 'needs service, method or both');
    else if (type === 'Exact' && [service, method].some((x) => x !== undefined && !GRPC_NAME.test(x))) r.problem(`${at}.method`, 'service and method must be gRPC names (letters, digits, _ and, in service, dots)');
    else if (type === 'Exact') {
      path = service !== undefined && method !== undefined ? { type: 'Exact', value: `/${service}/${method}` } : service !== undefined ? { type: 'PathPrefix', value: `/${service}` } : { type: 'RegularExpression', value: `/[^/]+/${escapeRegex(method!)}` };
    } else {
      // Each part grouped: an alternation in one stays in it (`x|` must not make the path match anything).
      path = { type: 'RegularExpression', value: `/(?:${service ?? '[^/]+'})/(?:${method ?? '[^/]+'})` };
    }
    // The regex built here must be one Envoy takes too.
    const built = path.type === 'RegularExpression' ? re2Problem(path.value) : undefined;
    if (built) {
      r.problem(`${at}.method`, `makes the path regex "${clip(path.value, 64)}", which ${built}`);
      path = { type: 'PathPrefix', value: '/' };
    }
  }
  return { path, headers: valueMatches(r, m.headers, `${at}.headers`, 'header'), queryParams: [] };
}

function headerOps(r: Reader, v: unknown, at: string): HeaderOpsIR | undefined {
  const m = r.map(v, at);
  if (!m) {
    r.problem(at, 'is required by its filter type');
    return undefined;
  }
  r.unknown(m, ['set', 'add', 'remove'], at);
  const pairs = (key: 'set' | 'add'): { name: string; value: string }[] =>
    r.list(m[key], `${at}.${key}`, 16).flatMap((x, i) => {
      const pat = `${at}.${key}[${i}]`;
      const pm = r.map(x, pat) ?? {};
      r.unknown(pm, ['name', 'value'], pat);
      const name = r.string(pm.name, `${pat}.name`, { required: true, max: 256 });
      const value = r.string(pm.value, `${pat}.value`, { required: true, max: 4096 });
      if (name === undefined || value === undefined) return [];
      if (!HEADER_NAME.test(name)) return r.problem(`${pat}.name`, `"${name}" is not a valid header name`), [];
      if (name.toLowerCase() === 'host') return r.problem(`${pat}.name`, 'the Host header cannot be modified here (use a URLRewrite hostname)'), [];
      return [{ name: name.toLowerCase(), value }];
    });
  const remove = r.list(m.remove, `${at}.remove`, 16).flatMap((x, i) => {
    const name = r.string(x, `${at}.remove[${i}]`, { max: 256 });
    if (name === undefined) return [];
    if (!HEADER_NAME.test(name) || name.toLowerCase() === 'host') return r.problem(`${at}.remove[${i}]`, `"${name}" is not a header that can be removed`), [];
    return [name.toLowerCase()];
  });
  return { set: pairs('set'), add: pairs('add'), remove };
}

function pathModifier(r: Reader, v: unknown, at: string): PathModifierIR | undefined {
  const m = r.map(v, at);
  if (!m) return undefined;
  r.unknown(m, ['type', 'replaceFullPath', 'replacePrefixMatch'], at);
  const type = r.oneOf(m.type, `${at}.type`, ['ReplaceFullPath', 'ReplacePrefixMatch'] as const);
  if (!type) return undefined;
  const field = type === 'ReplaceFullPath' ? 'replaceFullPath' : 'replacePrefixMatch';
  const value = r.string(m[field], `${at}.${field}`, { required: true, max: 1024 });
  if (value === undefined) return undefined;
  if (!value.startsWith('/')) return r.problem(`${at}.${field}`, `"${value}" must start with "/"`), undefined;
  return { type, value };
}

function parseFilters(r: Reader, kind: RouteKind, v: unknown, at: string): Pick<RuleSpec, 'requestHeaders' | 'responseHeaders' | 'redirect' | 'rewrite'> {
  const out: { requestHeaders?: HeaderOpsIR; responseHeaders?: HeaderOpsIR; redirect?: RedirectIR; rewrite?: RewriteIR } = {};
  const supported = kind === 'HTTPRoute' ? ['RequestHeaderModifier', 'ResponseHeaderModifier', 'RequestRedirect', 'URLRewrite'] : ['RequestHeaderModifier', 'ResponseHeaderModifier'];
  r.list(v, at, 16).forEach((f, i) => {
    const fat = `${at}[${i}]`;
    const m = r.map(f, fat) ?? {};
    const type = r.string(m.type, `${fat}.type`, { required: true });
    if (type === undefined) return;
    if (!supported.includes(type)) return r.problem(`${fat}.type`, `filter ${type} is not supported by mesh-xds (supported: ${supported.join(', ')})`);
    const key = type[0]!.toLowerCase() + type.slice(1);
    const once = (field: keyof typeof out): boolean => (out[field] ? (r.problem(fat, `a second ${type} filter in one rule`), false) : true);
    if (type === 'RequestHeaderModifier' && once('requestHeaders')) out.requestHeaders = headerOps(r, m.requestHeaderModifier, `${fat}.requestHeaderModifier`);
    if (type === 'ResponseHeaderModifier' && once('responseHeaders')) out.responseHeaders = headerOps(r, m.responseHeaderModifier, `${fat}.responseHeaderModifier`);
    if (type === 'RequestRedirect' && once('redirect')) {
      const rm = r.map(m[key], `${fat}.${key}`) ?? {};
      r.unknown(rm, ['scheme', 'hostname', 'path', 'port', 'statusCode'], `${fat}.${key}`);
      const scheme = r.oneOf(rm.scheme, `${fat}.${key}.scheme`, ['http', 'https'] as const);
      const hostname = r.string(rm.hostname, `${fat}.${key}.hostname`, { max: 253 });
      const path = pathModifier(r, rm.path, `${fat}.${key}.path`);
      const port = r.int(rm.port, `${fat}.${key}.port`, 1, 65535);
      const statusCode = r.int(rm.statusCode, `${fat}.${key}.statusCode`, 300, 399) ?? 302;
      if (!REDIRECT_CODES.includes(statusCode)) r.problem(`${fat}.${key}.statusCode`, `must be one of ${REDIRECT_CODES.join(', ')}`);
      out.redirect = { ...(scheme ? { scheme } : {}), ...(hostname ? { hostname } : {}), ...(path ? { path } : {}), ...(port ? { port } : {}), statusCode };
    }
    if (type === 'URLRewrite' && once('rewrite')) {
      const rm = r.map(m.urlRewrite, `${fat}.urlRewrite`) ?? {};
      r.unknown(rm, ['hostname', 'path'], `${fat}.urlRewrite`);
      const hostname = r.string(rm.hostname, `${fat}.urlRewrite.hostname`, { max: 253 });
      const path = pathModifier(r, rm.path, `${fat}.urlRewrite.path`);
      out.rewrite = { ...(hostname ? { hostname } : {}), ...(path ? { path } : {}) };
    }
  });
  if (out.redirect && out.rewrite) r.problem(at, 'RequestRedirect and URLRewrite cannot be in one rule');
  return out;
}

// ---------------------------------------------------------------------------------------------------------------
// Compiling every route

const cond = (type: RouteCondition['type'], ok: boolean, reason: string, message: string): RouteCondition => ({ type, status: ok ? 'True' : 'False', reason, message });

interface Entry {
  readonly rule: RouteRuleIR;
  readonly created: string;
  readonly ref: string;
  readonly order: number;
}

/** Gateway API precedence: exact path, regex, longest prefix; method; most headers; most query parameters; oldest; name; order. */
function precedence(a: Entry, b: Entry): number {
  const rank = (m: MatchIR): number => (m.path.type === 'Exact' ? 0 : m.path.type === 'RegularExpression' ? 1 : 2);
  const ma = a.rule.match;
  const mb = b.rule.match;
  return (
    rank(ma) - rank(mb) ||
    (ma.path.type === 'PathPrefix' ? mb.path.value.length - ma.path.value.length : 0) ||
    Number(mb.method !== undefined) - Number(ma.method !== undefined) ||
    mb.headers.length - ma.headers.length ||
    mb.queryParams.length - ma.queryParams.length ||
    (a.created !== b.created ? (a.created === '' ? 1 : b.created === '' ? -1 : a.created < b.created ? -1 : 1) : 0) ||
    (a.ref < b.ref ? -1 : a.ref > b.ref ? 1 : 0) ||
    a.order - b.order
  );
}

/**
 * Every route of the mesh: the rules per service port (producer and per consumer namespace), ordered; and each
 * route's status per Service parent.
 */
export function compileRoutes(state: MeshState, meshNamespaces: Set<string>, services: readonly ServiceIR[]): { table: Record<string, PortRoutesIR>; reports: RouteReport[] } {
  const byKey = new Map(services.map((s) => [`${s.namespace}/${s.name}`, s]));
  const reports: RouteReport[] = [];
  const buckets = new Map<string, { producer: Entry[]; consumers: Map<string, Entry[]> }>();
  const bucketBytes = new Map<string, number>();
  const namespaceBytes = new Map<string, number>();
  const seen = new Set<string>();
  // Oldest first (then kind, namespace/name): what the bound of a service port keeps is what was there first.
  const created = (r: RouteObject): string => r.creationTimestamp ?? '\uffff';
  const routes = [...state.routes].sort((a, b) => (created(a) !== created(b) ? (created(a) < created(b) ? -1 : 1) : a.kind < b.kind ? -1 : a.kind > b.kind ? 1 : byRef(a, b)));
  for (const route of routes) {
    const ref = `${route.kind} ${refKey(route)}`;
    if (seen.has(ref)) continue;
    seen.add(ref);
    const { spec, problems } = parseRouteSpec(route.kind, route.namespace, route.spec);
    const located = problems.map((p) => ({ ...p, ...(route.origin ? { line: lineOfField(route.origin, p.field) } : {}) }));
    const ours = spec.parents.filter((p) => !p.foreign);
    // Another controller's route (Gateway parents only): reported with no parents, so that an entry of ours left
    // from when it named a Service is taken out of its status.
    if (!ours.length) {
      reports.push({ kind: route.kind, namespace: route.namespace, name: route.name, generation: route.generation, parents: [], problems: [], attached: [] });
      continue;
    }
    const parents: ParentReport[] = [];
    const attached: { port: string; audience: string }[] = [];
    const rules = problems.length ? [] : resolveRules(route, spec, byKey);
    for (const parent of ours) {
      const service = byKey.get(`${parent.namespace}/${parent.name}`);
      const accepted = ((): RouteCondition => {
        if (problems.length) return cond('Accepted', false, problems.some((p) => /not supported/.test(p.message)) ? 'UnsupportedValue' : 'Invalid', `${problems.length} problem(s): ${problems.slice(0, 3).map((p) => `${p.field}: ${p.message}`).join('; ')}`);
        if (!meshNamespaces.has(route.namespace)) return cond('Accepted', false, 'NotAllowedByListeners', `namespace "${route.namespace}" is not in mesh "${state.meshName}": no caller there has a sidecar`);
        if (!service) return cond('Accepted', false, 'NoMatchingParent', `Service ${parent.namespace}/${parent.name} is not in the mesh`);
        const ports = service.ports.filter((p) => parent.port === undefined || p.port === parent.port);
        if (!ports.length) return cond('Accepted', false, 'NoMatchingParent', `Service ${parent.namespace}/${parent.name} has no port ${parent.port}`);
        if (!ports.some((p) => p.protocol === 'http')) return cond('Accepted', false, 'UnsupportedValue', `Service ${parent.namespace}/${parent.name} has no HTTP port${parent.port ? ` ${parent.port}` : ''} (its ports are TCP)`);
        // The bound of a virtual host: older routes keep their rules, a newer one that would pass it is not taken.
        const audience = route.namespace === service.namespace ? 'producer' : route.namespace;
        const count = rules.reduce((n, x) => n + x.rules.length, 0);
        const bytes = rules.reduce((n, x) => n + x.bytes, 0);
        const httpPorts = ports.filter((p) => p.protocol === 'http');
        for (const port of httpPorts) {
          const key = portKey(`${service.namespace}/${service.name}`, port.port);
          const list = audience === 'producer' ? buckets.get(key)?.producer : buckets.get(key)?.consumers.get(audience);
          const held = list?.length ?? 0;
          const heldBytes = bucketBytes.get(`${key} ${audience}`) ?? 0;
          const whose = audience === 'producer' ? '' : ` of namespace ${audience}`;
          if (held + count > MAX_RULES_PER_PORT) {
            return cond('Accepted', false, 'UnsupportedValue', `Service ${parent.namespace}/${parent.name} port ${port.port} already has ${held} route matches from older routes${whose}; this route's ${count} would pass the bound of ${MAX_RULES_PER_PORT}`);
          }
          if (heldBytes + bytes > MAX_ROUTE_BYTES_PER_PORT) {
            return cond('Accepted', false, 'UnsupportedValue', `Service ${parent.namespace}/${parent.name} port ${port.port} already has ${heldBytes} characters of routes from older routes${whose}; this route's ${bytes} would pass the bound of ${MAX_ROUTE_BYTES_PER_PORT}`);
          }
        }
        // A namespace's routes together (its share of the control plane's work and of its callers' config).
        const nsBytes = namespaceBytes.get(route.namespace) ?? 0;
        if (nsBytes + bytes * httpPorts.length > MAX_ROUTE_BYTES_PER_NAMESPACE) {
          return cond('Accepted', false, 'UnsupportedValue', `namespace ${route.namespace}'s older routes already hold ${nsBytes} characters; this one's ${bytes * httpPorts.length} would pass the namespace's bound of ${MAX_ROUTE_BYTES_PER_NAMESPACE}`);
        }
        return cond('Accepted', true, 'Accepted', 'accepted');
      })();
      const unresolved = rules.flatMap((x) => x.unresolved);
      const resolved = unresolved.length ? cond('ResolvedRefs', false, unresolved[0]!.reason, unresolved.map((u) => u.message).slice(0, 3).join('; ')) : cond('ResolvedRefs', true, 'ResolvedRefs', 'resolved');
      parents.push({ parentRef: parent.written, conditions: [accepted, resolved] });
      if (accepted.status !== 'True' || !service) continue;
      const audience = route.namespace === service.namespace ? 'producer' : route.namespace;
      for (const port of service.ports) {
        if (port.protocol !== 'http' || (parent.port !== undefined && port.port !== parent.port)) continue;
        const key = portKey(`${service.namespace}/${service.name}`, port.port);
        if (attached.some((a) => a.port === key && a.audience === audience)) continue;
        attached.push({ port: key, audience });
        let bucket = buckets.get(key);
        if (!bucket) buckets.set(key, (bucket = { producer: [], consumers: new Map() }));
        const list = audience === 'producer' ? bucket.producer : bucket.consumers.get(audience) ?? (bucket.consumers.set(audience, []).get(audience) as Entry[]);
        for (const [order, rule] of rules.flatMap((x) => x.rules).entries()) list.push({ rule, created: route.creationTimestamp ?? '', ref, order });
        const bytes = rules.reduce((n, x) => n + x.bytes, 0);
        bucketBytes.set(`${key} ${audience}`, (bucketBytes.get(`${key} ${audience}`) ?? 0) + bytes);
        namespaceBytes.set(route.namespace, (namespaceBytes.get(route.namespace) ?? 0) + bytes);
      }
    }
    reports.push({ kind: route.kind, namespace: route.namespace, name: route.name, generation: route.generation, parents, problems: located, attached });
  }
  reports.sort((a, b) => (a.kind < b.kind ? -1 : a.kind > b.kind ? 1 : byRef(a, b)));
  const table: Record<string, PortRoutesIR> = {};
  for (const key of [...buckets.keys()].sort()) {
    const b = buckets.get(key)!;
    const sorted = (list: Entry[]): RouteRuleIR[] => [...list].sort(precedence).map((e) => e.rule);
    const consumers = [...b.consumers.keys()].sort();
    table[key] = {
      ...(b.producer.length ? { producer: sorted(b.producer) } : {}),
      ...(consumers.length ? { consumers: Object.fromEntries(consumers.map((ns) => [ns, sorted(b.consumers.get(ns)!)])) } : {}),
    };
  }
  return { table, reports };
}

/** A route's rules, one per match, with their backends resolved; the refs that did not resolve, with the spec's reasons. */
function resolveRules(route: RouteObject, spec: RouteSpec, services: Map<string, ServiceIR>): { rules: RouteRuleIR[]; unresolved: { reason: string; message: string }[]; bytes: number }[] {
  const parentServices = new Set(spec.parents.filter((p) => !p.foreign).map((p) => `${p.namespace}/${p.name}`));
  return spec.rules.map((rule) => {
    const unresolved: { reason: string; message: string }[] = [];
    const backends: BackendIR[] = [];
    for (const b of rule.backends) {
      const key = `${b.namespace}/${b.name}`;
      const problem = ((): { reason: string; message: string } | undefined => {
        if (!((b.group === '' || b.group === 'core') && b.kind === 'Service')) return { reason: 'InvalidKind', message: `${b.field}: kind ${b.group ? `${b.group}/` : ''}${b.kind} is not supported (only Service)` };
        // Without ReferenceGrant: a backend in the route's namespace, or a parent Service itself.
        if (b.namespace !== route.namespace && !parentServices.has(key)) return { reason: 'RefNotPermitted', message: `${b.field}: Service ${key} is in another namespace (ReferenceGrant is not supported)` };
        if (b.port === undefined) return { reason: 'BackendNotFound', message: `${b.field}: port is required for a Service backend` };
        const service = services.get(key);
        if (!service) return { reason: 'BackendNotFound', message: `${b.field}: Service ${key} is not in the mesh` };
        if (!service.ports.some((p) => p.port === b.port)) return { reason: 'BackendNotFound', message: `${b.field}: Service ${key} has no port ${b.port}` };
        return undefined;
      })();
      if (problem) unresolved.push(problem);
      if (b.weight === 0) continue;
      const port = problem ? undefined : services.get(key)!.ports.find((p) => p.port === b.port)!;
      backends.push({
        service: key,
        port: b.port ?? 0,
        cluster: port ? port.cluster : INVALID_BACKEND,
        weight: b.weight,
        ...(b.requestHeaders ? { requestHeaders: b.requestHeaders } : {}),
        ...(b.responseHeaders ? { responseHeaders: b.responseHeaders } : {}),
      });
    }
    const base = {
      from: `${route.kind} ${refKey(route)}`,
      rule: rule.index,
      ...(rule.name ? { ruleName: rule.name } : {}),
      ...(rule.requestHeaders ? { requestHeaders: rule.requestHeaders } : {}),
      ...(rule.responseHeaders ? { responseHeaders: rule.responseHeaders } : {}),
      ...(rule.redirect ? { redirect: rule.redirect } : {}),
      ...(rule.rewrite ? { rewrite: rule.rewrite } : {}),
      backends,
      ...(rule.timeout ? { timeout: rule.timeout } : {}),
      ...(rule.backendTimeout ? { backendTimeout: rule.backendTimeout } : {}),
      ...(rule.retry ? { retry: rule.retry } : {}),
    };
    // What the rule puts in a caller's virtual host, in characters of its JSON: its own fields once per match.
    const baseBytes = JSON.stringify(base).length;
    const bytes = rule.matches.reduce((n, match) => n + baseBytes + JSON.stringify(match).length, 0);
    return { rules: rule.matches.map((match) => ({ ...base, match })), unresolved, bytes };
  });
}
