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

export function inboundVirtualHost(service: ServiceIR, port: PortIR): VirtualHost {
  return {
    name: inboundVirtualHostName(service.host),
    domains: ['*'],
    routes: [{ name: 'default', match: { prefix: '/' }, route: { cluster: localClusterName(port.cluster), timeout: NO_TIMEOUT } }],
  };
}
