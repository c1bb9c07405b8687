/** Clusters: EDS over ADS for mesh services, STATIC to 127.0.0.1 for the local app, ORIGINAL_DST passthrough. */
import type { PortIR } from '../compile/ir.js';
import type { RetryBudget } from '../model/mesh.js';
import { ADS_SOURCE, MAX_UINT32, PASSTHROUGH_CLUSTER, localClusterName } from './common.js';
import { upstreamTls } from './tls.js';
import type { Cluster } from './types.js';

const HTTP_OPTIONS = 'envoy.extensions.upstreams.http.v3.HttpProtocolOptions';
/** gRPC and h2c upstreams (appProtocol) speak HTTP/2 only. */
const HTTP2 = { '@type': `type.googleapis.com/${HTTP_OPTIONS}`, explicit_http_config: { http2_protocol_options: {} } };
/** Other HTTP ports: the upstream is spoken to as the caller spoke (HTTP/1.1, or h2c such as gRPC on a port named `http`), as OSM does. */
const DOWNSTREAM = { '@type': `type.googleapis.com/${HTTP_OPTIONS}`, use_downstream_protocol_config: { http_protocol_options: {}, http2_protocol_options: {} } };
/** The upstream protocol of a port's clusters (outbound, and the inbound sidecar's to the local app). */
const protocolOptions = (port: PortIR): Pick<Cluster, 'typed_extension_protocol_options'> =>
  port.protocol === 'http' ? { typed_extension_protocol_options: { [HTTP_OPTIONS]: port.http2 ? HTTP2 : DOWNSTREAM } } : {};

/**
 * Every threshold raised, as OSM does (`max_retries` included, so a retry is never refused): the local app's and
 * the passthrough clusters, and a destination's when the mesh's retry budget is turned off (below).
 */
const UNLIMITED: Cluster['circuit_breakers'] = {
  thresholds: [
    {
      priority: 'DEFAULT',
      max_connections: { value: MAX_UINT32 },
      max_pending_requests: { value: MAX_UINT32 },
      max_requests: { value: MAX_UINT32 },
      max_retries: { value: MAX_UINT32 },
    },
  ],
};

/**
 * A destination's thresholds: unlimited as above, but with the mesh's retry budget in place of `max_retries` (Envoy
 * then ignores max_retries): retries in flight at most `budgetPercent` of the active requests, and never fewer than
 * `minRetryConcurrency`; a retry over it is not made and counted in `upstream_rq_retry_overflow`.
 */
function destinationBreakers(budget: RetryBudget | null): Cluster['circuit_breakers'] {
  if (!budget) return UNLIMITED;
  const { max_retries: _, ...rest } = UNLIMITED!.thresholds![0];
  return { thresholds: [{ ...rest, retry_budget: { budget_percent: { value: budget.budgetPercent }, min_retry_concurrency: { value: budget.minRetryConcurrency } } }] };
}

/** A mesh destination's cluster; with `tls` (sidecars, with mTLS on), mutual TLS to its pods' identities. */
export function outboundCluster(port: PortIR, budget: RetryBudget | null, tls?: { sni: string; sans: readonly string[] }): Cluster {
  return {
    name: port.cluster,
    alt_stat_name: port.cluster,
    type: 'EDS',
    eds_cluster_config: { eds_config: ADS_SOURCE },
    connect_timeout: { seconds: 1 },
    lb_policy: 'ROUND_ROBIN',
    circuit_breakers: destinationBreakers(budget),
    ...protocolOptions(port),
    ...(tls ? { transport_socket: upstreamTls(tls.sni, tls.sans) } : {}),
  };
}

/**
 * The local app's cluster closes a connection idle for 1 s, before the app does: app servers close idle keep-alive
 * connections after 2 s (gunicorn) or 5 s (Node.js, uvicorn, Apache), and Envoy's default is 1 h. A connection the
 * app closes while Envoy sends a request on it is a 503 for the caller (the HTTP/1.1 race of keep-alive, which no
 * retry makes safe for a POST: routes.ts); Envoy closing first leaves no race. A new connection to 127.0.0.1 after
 * a second of quiet costs little. Not on HTTP/2 ports: HTTP/2 closes with GOAWAY, which names the streams left
 * unprocessed.
 */
const LOCAL_IDLE_TIMEOUT = { seconds: 1 };
const LOCAL_HTTP = { ...DOWNSTREAM, common_http_protocol_options: { idle_timeout: LOCAL_IDLE_TIMEOUT } };

export function localCluster(port: PortIR): Cluster {
  const name = localClusterName(port.cluster);
  const protocol = port.protocol === 'http' && !port.http2 ? { typed_extension_protocol_options: { [HTTP_OPTIONS]: LOCAL_HTTP } } : protocolOptions(port);
  return {
    name,
    alt_stat_name: name,
    type: 'STATIC',
    connect_timeout: { seconds: 1 },
    lb_policy: 'ROUND_ROBIN',
    circuit_breakers: UNLIMITED,
    // The inbound sidecar speaks to the local app in the port's protocol too (gRPC needs HTTP/2 end to end).
    ...protocol,
    load_assignment: {
      cluster_name: name,
      endpoints: [{ lb_endpoints: [{ endpoint: { address: { socket_address: { address: '127.0.0.1', port_value: port.targetPort } } } }] }],
    },
  };
}

export function passthroughCluster(): Cluster {
  return {
    name: PASSTHROUGH_CLUSTER,
    type: 'ORIGINAL_DST',
    connect_timeout: { seconds: 1 },
    lb_policy: 'CLUSTER_PROVIDED',
    circuit_breakers: UNLIMITED,
  };
}
