/**
 * The seam of route features: what a caller's virtual host for one destination service port holds, whichever
 * policy kind set it. Every kind compiles into the IR (the FSM Retry into `ir.retries`, the Gateway API routes into
 * `ir.routes`); this module alone decides, per (caller identity, service port), what applies and in what order of
 * precedence, and names the policy that set each field. The Envoy builders take its answer (envoy/routes.ts), the
 * pipeline rebuilds from its signature, the retry-safety analysis and `policy explain` read it.
 *
 * Precedence:
 * - Routes: a consumer route (in the caller's namespace) replaces the producer routes for that namespace's callers
 *   (GAMMA). Without any route, one default route sends every request to the service port.
 * - Retries: an FSM Retry names its caller exactly (a ServiceAccount), a route every caller of a namespace or all of
 *   them; the more specific one wins. For a caller a Retry names, the Retry's retry policy is on every route to that
 *   destination, in place of the routes' `retry` and `timeouts.backendRequest`; the routes' matches, filters,
 *   backends and `timeouts.request` stay. The Retry's status says so (a Pitfall condition).
 */
import { contentHash } from '../xds/resources/encode.js';
import type { Duration } from '../policy/duration.js';
import type { MeshIR, ServiceIR, PortIR } from './ir.js';
import { portKey, type RouteRuleIR } from './routes.js';

/** The retry settings Envoy takes, from whichever kind (an FSM Retry spec is one). */
export interface RetrySettings {
  readonly retryOn: readonly string[];
  readonly retriableStatusCodes: readonly number[];
  readonly numRetries?: number;
  readonly perTryTimeout?: Duration;
  readonly backoffBaseInterval?: Duration;
}

/** A retry in force and the policy that set it (`Retry ns/name` or `HTTPRoute ns/name`). */
export interface AppliedSettings {
  readonly from: string;
  readonly settings: RetrySettings;
}

/** What one caller's virtual host for one service port holds, beyond the default. */
export interface RouteFeatures {
  /** The route rules in order (one per match); absent: the default route to the port. */
  readonly rules?: readonly RouteRuleIR[];
  /** The FSM Retry in force for this caller: on every route, in place of the routes' retries. */
  readonly retry?: AppliedSettings;
  /** Everything the features are made of, as a short key (memo keys, the pipeline's rebuild signature). */
  readonly key: string;
}

/**
 * Safe connection errors only (GEP-1731: retry only where the backend did not process the request): the connection
 * was refused or never made, the stream refused, or no byte of the request sent. Then the codes the route names.
 */
export const ROUTE_RETRY_ON = ['connect-failure', 'refused-stream', 'reset-before-request'] as const;

/**
 * A route rule's own retry: `retry.codes` -> retriable_status_codes, `attempts` -> num_retries (default 1),
 * `backoff` -> the base interval, `timeouts.backendRequest` -> per_try_timeout (also without `retry`: then no retries).
 */
export function ruleRetry(rule: RouteRuleIR): AppliedSettings | undefined {
  if (!rule.retry && !rule.backendTimeout) return undefined;
  const codes = rule.retry?.codes ?? [];
  return {
    from: rule.from,
    settings: {
      retryOn: rule.retry ? [...ROUTE_RETRY_ON, ...(codes.length ? ['retriable-status-codes'] : [])] : [],
      retriableStatusCodes: codes,
      numRetries: rule.retry?.attempts ?? 0,
      ...(rule.backendTimeout ? { perTryTimeout: rule.backendTimeout } : {}),
      ...(rule.retry?.backoff ? { backoffBaseInterval: rule.retry.backoff } : {}),
    },
  };
}

/** The retry a request on one route gets: the caller's FSM Retry if there is one, else the rule's own. */
export function retryOnRoute(features: RouteFeatures | undefined, rule: RouteRuleIR | undefined): AppliedSettings | undefined {
  return features?.retry ?? (rule ? ruleRetry(rule) : undefined);
}

const rulesKeys = new WeakMap<readonly RouteRuleIR[], string>();
/** A rule list's content key, computed once per list (lists are shared by every caller they apply to). */
function rulesKey(rules: readonly RouteRuleIR[]): string {
  let k = rulesKeys.get(rules);
  if (k === undefined) rulesKeys.set(rules, (k = contentHash(JSON.stringify(rules))));
  return k;
}

/** The rules a caller namespace gets on a service port: its consumer routes, else the producer routes. */
export function rulesFor(ir: MeshIR, service: string, port: number, callerNamespace: string): readonly RouteRuleIR[] | undefined {
  const routes = ir.routes[portKey(service, port)];
  return routes?.consumers?.[callerNamespace] ?? routes?.producer;
}

/**
 * Every service port whose virtual host differs from the default for one caller, keyed `ns/name:port`: where a
 * route applies, and every HTTP port of a destination its FSM Retry names.
 */
export function featuresFor(ir: MeshIR, identity: string, callerNamespace: string): Map<string, RouteFeatures> {
  const out = new Map(routeFeatures(ir, callerNamespace));
  const retries = ir.enableRetryPolicy ? ir.retries[identity] : undefined;
  if (retries) {
    // The caller's Retry is on every route to its destinations, and on the default route of their other HTTP ports.
    for (const service of servicesByKey(ir, Object.keys(retries))) {
      const applied = retries[`${service.namespace}/${service.name}`]!;
      const retry = { from: `Retry ${applied.policy}`, settings: applied.spec };
      for (const port of service.ports) {
        const key = portKey(`${service.namespace}/${service.name}`, port.port);
        const routed = out.get(key);
        if (routed) out.set(key, make(routed.rules, retry));
        else if (port.protocol === 'http') out.set(key, make(undefined, retry));
      }
    }
  }
  return out;
}

const namespaceFeatures = new WeakMap<MeshIR['routes'], Map<string, ReadonlyMap<string, RouteFeatures>>>();
/**
 * What the routes alone give the callers of one namespace, in the order of `ir.routes`: the same for each of its
 * identities, so made once per IR and namespace (a proxy build asks for it; 500 routes made it ~2 ms a proxy).
 */
function routeFeatures(ir: MeshIR, callerNamespace: string): ReadonlyMap<string, RouteFeatures> {
  let memo = namespaceFeatures.get(ir.routes);
  if (!memo) namespaceFeatures.set(ir.routes, (memo = new Map()));
  let out = memo.get(callerNamespace);
  if (out) return out;
  const made = new Map<string, RouteFeatures>();
  for (const key of Object.keys(ir.routes)) {
    const at = key.lastIndexOf(':');
    const rules = rulesFor(ir, key.slice(0, at), Number(key.slice(at + 1)), callerNamespace);
    if (rules) made.set(key, make(rules, undefined));
  }
  memo.set(callerNamespace, (out = made));
  return out;
}

const producerMemo = new WeakMap<MeshIR['routes'], ReadonlyMap<string, RouteFeatures>>();
/**
 * What a caller gets where neither a consumer route of its namespace nor a Retry of its own applies: the producer
 * routes, keyed `ns/name:port`. The same for most callers of a service port, so it goes in the route configurations
 * every sidecar shares; a caller whose `featuresFor` differs at a port gets its own (pipeline/build.ts).
 */
export function producerFeatures(ir: MeshIR): ReadonlyMap<string, RouteFeatures> {
  let out = producerMemo.get(ir.routes);
  if (out) return out;
  const made = new Map<string, RouteFeatures>();
  for (const [key, routes] of Object.entries(ir.routes)) if (routes.producer) made.set(key, make(routes.producer, undefined));
  producerMemo.set(ir.routes, (out = made));
  return out;
}

function make(rules: readonly RouteRuleIR[] | undefined, retry: AppliedSettings | undefined): RouteFeatures {
  const key = `${rules ? rulesKey(rules) : '-'}|${retry ? JSON.stringify(retry) : '-'}`;
  return { ...(rules ? { rules } : {}), ...(retry ? { retry } : {}), key };
}

const serviceIndex = new WeakMap<MeshIR['services'], Map<string, ServiceIR>>();
function servicesByKey(ir: MeshIR, keys: Iterable<string>): ServiceIR[] {
  let index = serviceIndex.get(ir.services);
  if (!index) serviceIndex.set(ir.services, (index = new Map(ir.services.map((s) => [`${s.namespace}/${s.name}`, s]))));
  return [...keys].map((k) => index!.get(k)).filter((s): s is ServiceIR => s !== undefined);
}

/**
 * Every retry a caller's requests to one service port may get, each with the policy that set it: what the
 * retry-safety analysis counts (the worst of them) and `policy explain` shows.
 */
export function retriesOnPort(ir: MeshIR, identity: string, service: ServiceIR, port: PortIR): AppliedSettings[] {
  const features = featuresFor(ir, identity, identity.slice(0, identity.indexOf('/'))).get(portKey(`${service.namespace}/${service.name}`, port.port));
  if (!features) return [];
  if (features.retry) return [features.retry];
  const out = new Map<string, AppliedSettings>();
  for (const rule of features.rules ?? []) {
    const r = ruleRetry(rule);
    if (r) out.set(JSON.stringify(r), r);
  }
  return [...out.values()];
}

/** A retry as the retry-safety analysis counts it: its settings and the policy that set it (`ns/name` of a Retry, else `HTTPRoute ns/name`). */
export interface RetryEdge {
  readonly policy: string;
  readonly spec: RetrySettings;
}

const attemptsOf = (s: RetrySettings): number => 1 + (s.numRetries ?? 1);

/**
 * Per identity, per destination service: the retry with the most attempts its requests may get there, whichever
 * kind set it (the caller's Retry where there is one, else the worst rule of the consumer routes its namespace
 * wrote). What the retry-safety analysis (compile/amplification.ts) walks: the call paths someone declared. A Retry
 * names its caller, a consumer route its callers' namespace; a producer route names none (every caller it may ever
 * have), so its retry is not an edge: made one for every identity, it turned the graph every-to-every (500 routes in
 * the big mesh: no path found within the search's bounds, 1.5-1.8 s a compile). A caller's Retry or consumer route
 * over a producer route's service is counted, and so is the retry budget of every destination, whoever retries.
 */
export function retryEdges(ir: MeshIR): Map<string, Map<string, RetryEdge>> {
  const out = new Map<string, Map<string, RetryEdge>>();
  const routed = new Map<string, Map<string, RetryEdge>>();
  const ofNamespace = (ns: string): Map<string, RetryEdge> => {
    let m = routed.get(ns);
    if (m) return m;
    routed.set(ns, (m = new Map()));
    for (const key of Object.keys(ir.routes)) {
      const at = key.lastIndexOf(':');
      const service = key.slice(0, at);
      for (const rule of ir.routes[key]?.consumers?.[ns] ?? []) {
        const r = ruleRetry(rule);
        if (!r || !r.settings.numRetries) continue;
        const held = m.get(service);
        if (!held || attemptsOf(r.settings) > attemptsOf(held.spec)) m.set(service, { policy: r.from, spec: r.settings });
      }
    }
    return m;
  };
  const identities = new Set([...ir.identities, ...Object.keys(ir.retries)]);
  for (const identity of [...identities].sort()) {
    const edges = new Map(ofNamespace(identity.slice(0, identity.indexOf('/'))));
    if (ir.enableRetryPolicy) for (const [service, a] of Object.entries(ir.retries[identity] ?? {})) edges.set(service, { policy: a.policy, spec: a.spec });
    if (edges.size) out.set(identity, new Map([...edges].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))));
  }
  return out;
}

/**
 * Every kind's tables signed by whom they concern: every caller (producer routes), a caller namespace (consumer
 * routes), one identity (its Retries). The pipeline rebuilds the proxies whose signature changed; a new policy kind
 * adds its table here and nowhere in the pipeline.
 */
export interface FeatureSignatures {
  readonly all: string;
  readonly byNamespace: ReadonlyMap<string, string>;
  readonly byIdentity: ReadonlyMap<string, string>;
}

export function featureSignatures(ir: MeshIR): FeatureSignatures {
  // Each rule list signed once (rulesKey), then the keys: never one string of every route (a mesh's routes may
  // together be more than a string can hold).
  const producer: string[] = [];
  const consumers = new Map<string, string[]>();
  for (const [port, r] of Object.entries(ir.routes)) {
    if (r.producer) producer.push(`${port}=${rulesKey(r.producer)}`);
    for (const [ns, rules] of Object.entries(r.consumers ?? {})) {
      let list = consumers.get(ns);
      if (!list) consumers.set(ns, (list = []));
      list.push(`${port}=${rulesKey(rules)}`);
    }
  }
  return {
    all: contentHash(producer.join('\n')),
    byNamespace: new Map([...consumers].map(([ns, list]) => [ns, contentHash(list.join('\n'))])),
    byIdentity: new Map(Object.entries(ir.retries).map(([id, m]) => [id, JSON.stringify(m)])),
  };
}
