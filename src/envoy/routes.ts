/** RouteConfiguration pieces: one virtual host per (service, port), with the applicable Retry as retry_policy. */
import type { PortIR, ServiceIR } from '../compile/ir.js';
import { serviceDomains } from '../compile/plan.js';
import type { RetryPolicy, VirtualHost } from './types.js';
import { retryOnRoute, type RetrySettings, type RouteFeatures } from '../compile/features.js';
import { INVALID_BACKEND, type HeaderOpsIR, type MatchIR, type PathModifierIR, type RouteRuleIR, type ValueMatchIR } from '../compile/routes.js';
import { protoDuration } from '../policy/duration.js';
import { NO_TIMEOUT, inboundVirtualHostName, localClusterName, outboundVirtualHostName, serviceRouteName } from './common.js';
import type { RouteConfiguration } from './types.js';

export interface RetryOptions {
  /** Proxyless gRPC clients reject `num_retries: 0`; for them it becomes "no retry policy" (same effect). */
  readonly proxyless: boolean;
}

/**
 * A retry goes to another host than the ones already tried, when there is one: Envoy's `previous_hosts` predicate,
 * with up to 5 host selections to find one (Istio's defaults). Sidecars only: the proxyless gRPC clients' retry
 * support (gRFC A44) has no host predicates.
 */
const ANOTHER_HOST: Pick<RetryPolicy, 'retry_host_predicate' | 'host_selection_retry_max_attempts'> = {
  retry_host_predicate: [{ name: 'envoy.retry_host_predicates.previous_hosts', typed_config: { '@type': 'type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate' } }],
  host_selection_retry_max_attempts: 5,
};

/** `envoy.config.route.v3.RetryPolicy` for retry settings (an FSM Retry's, a route's), or undefined when they mean no retries. */
export function envoyRetryPolicy(spec: RetrySettings, opts: RetryOptions): RetryPolicy | undefined {
  if (opts.proxyless && spec.numRetries === 0) return undefined;
  return {
    ...(opts.proxyless ? {} : ANOTHER_HOST),
    ...(spec.retryOn.length ? { retry_on: spec.retryOn.join(',') } : {}),
    ...(spec.numRetries !== undefined ? { num_retries: { value: spec.numRetries } } : {}),
    ...(spec.perTryTimeout !== undefined ? { per_try_timeout: protoDuration(spec.perTryTimeout) } : {}),
    ...(spec.retriableStatusCodes.length ? { retriable_status_codes: [...spec.retriableStatusCodes] } : {}),
    ...(spec.backoffBaseInterval !== undefined ? { retry_back_off: { base_interval: protoDuration(spec.backoffBaseInterval) } } : {}),
  };
}

type Route = NonNullable<VirtualHost['routes']>[number];

const escapeRegex = (s: string): string => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

/**
 * A Gateway API path match: a prefix matches whole path segments (`/foo` matches `/foo` and `/foo/bar`, not
 * `/foobar`): Envoy's `path_separated_prefix`, which the proxyless gRPC clients do not take (grpc-js-xds NACKs it:
 * found by envoy-random-meshes); for them the same as a regex.
 */
function pathMatch(m: MatchIR, opts: RetryOptions): Route['match'] {
  const p = m.path;
  const prefix = p.value.replace(/\/+$/, '');
  const path =
    p.type === 'Exact'
      ? { path: p.value }
      : p.type === 'RegularExpression'
        ? { safe_regex: { regex: p.value } }
        : prefix === ''
          ? { prefix: '/' }
          : opts.proxyless
            ? { safe_regex: { regex: `${escapeRegex(prefix)}(/.*)?` } }
            : { path_separated_prefix: prefix };
  const exactOrRegex = (v: ValueMatchIR) => (v.type === 'Exact' ? { exact: v.value } : { safe_regex: { regex: v.value } });
  const headers = [...(m.method ? [{ name: ':method', string_match: { exact: m.method } }] : []), ...m.headers.map((h) => ({ name: h.name, string_match: exactOrRegex(h) }))];
  return {
    ...path,
    ...(headers.length ? { headers } : {}),
    ...(m.queryParams.length ? { query_parameters: m.queryParams.map((q) => ({ name: q.name, string_match: exactOrRegex(q) })) } : {}),
  };
}

/** A path modifier on a matched prefix: Envoy's prefix_rewrite, or a regex where the prefix or its replacement is `/`. */
function pathRewrite(mod: PathModifierIR, match: MatchIR): Record<string, unknown> {
  if (mod.type === 'ReplaceFullPath') return { regex_rewrite: { pattern: { regex: '^/.*$' }, substitution: mod.value } };
  const prefix = match.path.type === 'PathPrefix' ? match.path.value.replace(/\/+$/, '') : '';
  const replacement = mod.value.replace(/\/+$/, '');
  if (prefix === '') return { regex_rewrite: { pattern: { regex: '^/' }, substitution: `${replacement}/` } };
  if (replacement === '') return { regex_rewrite: { pattern: { regex: `^${escapeRegex(prefix)}/*` }, substitution: '/' } };
  return { prefix_rewrite: replacement };
}

const REDIRECT_CODE: Record<number, string> = { 301: 'MOVED_PERMANENTLY', 302: 'FOUND', 303: 'SEE_OTHER', 307: 'TEMPORARY_REDIRECT', 308: 'PERMANENT_REDIRECT' };

function headerOps(ops: HeaderOpsIR | undefined, side: 'request' | 'response'): Record<string, unknown> {
  if (!ops) return {};
  const add = [
    ...ops.set.map((h) => ({ header: { key: h.name, value: h.value }, append_action: 'OVERWRITE_IF_EXISTS_OR_ADD' })),
    ...ops.add.map((h) => ({ header: { key: h.name, value: h.value }, append_action: 'APPEND_IF_EXISTS_OR_ADD' })),
  ];
  return { ...(add.length ? { [`${side}_headers_to_add`]: add } : {}), ...(ops.remove.length ? { [`${side}_headers_to_remove`]: [...ops.remove] } : {}) };
}

/** One Gateway API rule match as an Envoy route, with the retry in force on it (the caller's Retry, else its own). */
function ruleRoute(rule: RouteRuleIR, port: PortIR, features: RouteFeatures, opts: RetryOptions): Route {
  const name = `${rule.from.replace(' ', '/')}/rule/${rule.rule}`;
  const common = { name, match: pathMatch(rule.match, opts), ...headerOps(rule.requestHeaders, 'request'), ...headerOps(rule.responseHeaders, 'response') };
  if (rule.redirect) {
    const r = rule.redirect;
    const path = r.path ? pathRewrite(r.path, rule.match) : {};
    return {
      ...common,
      redirect: {
        ...(r.scheme ? { scheme_redirect: r.scheme } : {}),
        ...(r.hostname ? { host_redirect: r.hostname } : {}),
        // Without a scheme or port the Gateway API keeps the listener's port: for a mesh route, the Service port.
        ...(r.port ? { port_redirect: r.port } : !r.scheme && r.hostname ? { port_redirect: port.port } : {}),
        ...('regex_rewrite' in path ? { regex_rewrite: path.regex_rewrite } : 'prefix_rewrite' in path ? { prefix_rewrite: path.prefix_rewrite } : {}),
        response_code: REDIRECT_CODE[r.statusCode],
      },
    } as Route;
  }
  // A proxyless client gets only the backends that resolved (an unknown cluster would hold its calls until its
  // subscription for it times out); a sidecar gets each unresolved one's share as 500s (INVALID_BACKEND).
  const backends = opts.proxyless ? rule.backends.filter((b) => b.cluster !== INVALID_BACKEND) : rule.backends;
  // No backend resolved: the Gateway API's 500.
  if (!backends.some((b) => b.cluster !== INVALID_BACKEND)) return { ...common, direct_response: { status: 500 } } as Route;
  const applied = retryOnRoute(features, rule);
  const retry = applied ? envoyRetryPolicy(applied.settings, opts) : undefined;
  // A backend with filters of its own is a weighted cluster (Envoy's per-cluster header options), even alone.
  const perBackend = backends.some((b) => b.requestHeaders || b.responseHeaders);
  const target =
    backends.length === 1 && !perBackend
      ? { cluster: backends[0]!.cluster }
      : {
          weighted_clusters: { clusters: backends.map((b) => ({ name: b.cluster, weight: { value: b.weight }, ...headerOps(b.requestHeaders, 'request'), ...headerOps(b.responseHeaders, 'response') })) },
          ...(backends.some((b) => b.cluster === INVALID_BACKEND) ? { cluster_not_found_response_code: 'INTERNAL_SERVER_ERROR' } : {}),
        };
  return {
    ...common,
    route: {
      ...target,
      timeout: rule.timeout ? protoDuration(rule.timeout) : NO_TIMEOUT,
      ...(rule.rewrite?.hostname ? { host_rewrite_literal: rule.rewrite.hostname } : {}),
      ...(rule.rewrite?.path ? pathRewrite(rule.rewrite.path, rule.match) : {}),
      ...(retry ? { retry_policy: retry } : {}),
    },
  } as Route;
}

/**
 * The routes of a caller's virtual host for one service port: the route rules in order (a request matching none
 * gets Envoy's 404), or the one default route to the port; each with the retry in force on it.
 */
export function envoyRoutes(port: PortIR, features: RouteFeatures | undefined, opts: RetryOptions): Route[] {
  // The proxyless gRPC clients take only forwarding routes: grpc-js-xds NACKs a redirect or direct_response (measured
  // in envoy-accepts), and fails on non_forwarding_action. A gRPC client cannot follow a redirect either. Those rules
  // are left out of their routes (a request they would have answered goes on to the next rule that matches).
  if (features?.rules) return features.rules.filter((rule) => !opts.proxyless || (!rule.redirect && rule.backends.some((b) => b.cluster !== INVALID_BACKEND))).map((rule) => ruleRoute(rule, port, features, opts));
  const retry = features?.retry ? envoyRetryPolicy(features.retry.settings, opts) : undefined;
  return [{ name: 'default', match: { prefix: '/' }, route: { cluster: port.cluster, timeout: NO_TIMEOUT, ...(retry ? { retry_policy: retry } : {}) } }];
}

export function outboundVirtualHost(service: ServiceIR, port: PortIR, callerNamespace: string, features: RouteFeatures | undefined, opts: RetryOptions, domains?: string[]): VirtualHost {
  return {
    name: outboundVirtualHostName(service.host),
    domains: domains ?? serviceDomains(service, port.dialPort, callerNamespace === service.namespace),
    routes: envoyRoutes(port, features, opts),
  };
}

/**
 * The route configuration of one ClusterIP service port: its virtual host alone, matching any Host (the
 * listener already chose the destination, so a request to the ClusterIP by address is routed too), with the
 * caller's route features for it. The same for every caller without any, whatever its namespace.
 */
export function serviceRoute(service: ServiceIR, port: PortIR, features: RouteFeatures | undefined): RouteConfiguration {
  return { name: serviceRouteName(service.host, port.dialPort), virtual_hosts: [outboundVirtualHost(service, port, service.namespace, features, { proxyless: false }, ['*'])] };
}

/**
 * The methods RFC 9110 (9.2.2) calls idempotent: a client may repeat one of these by itself when the connection
 * closes before the response, as Go's net/http does for a request on a reused connection.
 */
const IDEMPOTENT_METHODS = ['GET', 'HEAD', 'OPTIONS', 'TRACE', 'PUT', 'DELETE'];

/**
 * The inbound sidecar's own retries to the local app, for the HTTP/1.1 race of keep-alive: the app closes a
 * connection it found idle just as Envoy sends the next request on it, and the caller gets a 503 (UC,
 * `upstream_cx_destroy_remote_with_active_rq`) for a request the app never read.
 *
 * - Every request: `reset-before-request`, 2 retries, as Istio's inbound routes since 1.24 (ENABLE_INBOUND_RETRY_POLICY).
 *   A request is retried only if no byte of it was sent (the app could not have seen it): connect failures and
 *   requests still waiting for a connection. It never makes the app process a request twice. But Envoy counts a
 *   request as sent once it is handed to a pooled connection, so it does not cover the race above (envoy#47468;
 *   measured on Envoy 1.40.0 in test/envoy-inbound-reset.test.ts: not one retry).
 * - Idempotent methods: `reset`, 1 retry: the race is retried (on a new connection: Envoy drops the closed one when
 *   it reads the close). If it was not the race (the app read the request, then reset the connection without an
 *   answer), the app may process the request twice; no more, whatever the caller sends (Envoy does not take
 *   `x-envoy-max-retries`/`x-envoy-retry-on` from a request it receives, REFERENCE 7). Other methods (POST, PATCH)
 *   are left to the local cluster's idle timeout (clusters.ts): to an app whose keep-alive is longer than 1 s,
 *   Envoy never sends a request on a connection the app is about to close.
 *
 * The retry-safety analysis (compile/amplification.ts) counts the attempts of the Retry policies on each hop; these
 * add none that the app processes, except one repeat (x2 at most) of an idempotent request the app itself reset.
 * HTTP/2 ports (gRPC, h2c) get none, as Istio's gRPC ports: HTTP/2 has no such race (GOAWAY names the streams the
 * app did not take), and a retry policy keeps each stream's request body buffered, which long gRPC streams pay for.
 */
function inboundRoutes(cluster: string, http2: boolean): NonNullable<VirtualHost['routes']> {
  const route = { cluster, timeout: NO_TIMEOUT };
  if (http2) return [{ name: 'default', match: { prefix: '/' }, route }];
  return [
    {
      name: 'idempotent',
      match: { prefix: '/', headers: [{ name: ':method', string_match: { safe_regex: { regex: IDEMPOTENT_METHODS.join('|') } } }] },
      route: { ...route, retry_policy: { retry_on: 'reset', num_retries: { value: 1 } } },
    },
    { name: 'default', match: { prefix: '/' }, route: { ...route, retry_policy: { retry_on: 'reset-before-request', num_retries: { value: 2 } } } },
  ];
}

export function inboundVirtualHost(service: ServiceIR, port: PortIR): VirtualHost {
  return { name: inboundVirtualHostName(service.host), domains: ['*'], routes: inboundRoutes(localClusterName(port.cluster), port.http2) };
}
