/** RouteConfiguration pieces: one virtual host per (service, port), with the applicable Retry as retry_policy. */
import type { PortIR, ServiceIR } from '../compile/ir.js';
import { serviceDomains } from '../compile/plan.js';
import type { RetryPolicy, VirtualHost } from './types.js';
import type { RetrySpec } from '../policy/retry.js';
import { protoDuration } from '../policy/duration.js';
import { NO_TIMEOUT, inboundVirtualHostName, localClusterName, outboundVirtualHostName } from './common.js';

export interface RetryOptions {
  /** Proxyless gRPC clients reject `num_retries: 0`; for them it becomes "no retry policy" (same effect). */
  readonly proxyless: boolean;
}

/** `envoy.config.route.v3.RetryPolicy` for a validated Retry spec, or undefined when it means no retries. */
export function envoyRetryPolicy(spec: RetrySpec, opts: RetryOptions): RetryPolicy | undefined {
  if (opts.proxyless && spec.numRetries === 0) return undefined;
  return {
    retry_on: spec.retryOn.join(','),
    ...(spec.numRetries !== undefined ? { num_retries: { value: spec.numRetries } } : {}),
    ...(spec.perTryTimeout !== undefined ? { per_try_timeout: protoDuration(spec.perTryTimeout) } : {}),
    ...(spec.retriableStatusCodes.length ? { retriable_status_codes: [...spec.retriableStatusCodes] } : {}),
    ...(spec.backoffBaseInterval !== undefined ? { retry_back_off: { base_interval: protoDuration(spec.backoffBaseInterval) } } : {}),
  };
}

export function outboundVirtualHost(service: ServiceIR, port: PortIR, callerNamespace: string, retry: RetryPolicy | undefined): VirtualHost {
  return {
    name: outboundVirtualHostName(service.host),
    domains: serviceDomains(service, port.dialPort, callerNamespace === service.namespace),
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

export function inboundVirtualHost(service: ServiceIR, port: PortIR): VirtualHost {
  return {
    name: inboundVirtualHostName(service.host),
    domains: ['*'],
    routes: [{ name: 'default', match: { prefix: '/' }, route: { cluster: localClusterName(port.cluster), timeout: NO_TIMEOUT } }],
  };
}
