/** RouteConfiguration pieces: one virtual host per (service, port), with the applicable Retry as retry_policy. */
import type { PortIR, ServiceIR } from '../compile/ir.js';
import { serviceDomains } from '../compile/plan.js';
import type { RetryPolicy, VirtualHost } from './types.js';
import type { RetrySpec } from '../policy/retry.js';
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

/** `envoy.config.route.v3.RetryPolicy` for a validated Retry spec, or undefined when it means no retries. */
export function envoyRetryPolicy(spec: RetrySpec, opts: RetryOptions): RetryPolicy | undefined {
  if (opts.proxyless && spec.numRetries === 0) return undefined;
  return {
    ...(opts.proxyless ? {} : ANOTHER_HOST),
    retry_on: spec.retryOn.join(','),
    ...(spec.numRetries !== undefined ? { num_retries: { value: spec.numRetries } } : {}),
    ...(spec.perTryTimeout !== undefined ? { per_try_timeout: protoDuration(spec.perTryTimeout) } : {}),
    ...(spec.retriableStatusCodes.length ? { retriable_status_codes: [...spec.retriableStatusCodes] } : {}),
    ...(spec.backoffBaseInterval !== undefined ? { retry_back_off: { base_interval: protoDuration(spec.backoffBaseInterval) } } : {}),
  };
}

export function outboundVirtualHost(service: ServiceIR, port: PortIR, callerNamespace: string, retry: RetryPolicy | undefined, domains?: string[]): VirtualHost {
  return {
    name: outboundVirtualHostName(service.host),
    domains: domains ?? serviceDomains(service, port.dialPort, callerNamespace === service.namespace),
    routes: [
      {
        name: 'default',
        match: { prefix: '/' },
        route: {
          cluster: port.cluster,
          timeout: NO_TIMEOUT,
          ...(retry ? { retry_policy: retry } : {}),
        },
      },
    ],
  };
}

/**
 * The route configuration of one ClusterIP service port: its virtual host alone, matching any Host (the
 * listener already chose the destination, so a request to the ClusterIP by address is routed too), with the
 * caller's Retry for it. The same for every caller without one, whatever its namespace.
 */
export function serviceRoute(service: ServiceIR, port: PortIR, retry: RetryPolicy | undefined): RouteConfiguration {
  return { name: serviceRouteName(service.host, port.dialPort), virtual_hosts: [outboundVirtualHost(service, port, service.namespace, retry, ['*'])] };
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
