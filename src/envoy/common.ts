/** Names and small pieces shared by the Envoy builders (OSM's naming, so Envoy's stat names match the guide). */
import type { ConfigSource, Duration, HttpConnectionManager, HttpFilter, Packed } from './types.js';

export const T = {
  HCM: 'type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager',
  ROUTER: 'type.googleapis.com/envoy.extensions.filters.http.router.v3.Router',
  TCP_PROXY: 'type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy',
  ORIGINAL_DST: 'type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst',
} as const;

export const OUTBOUND_LISTENER = 'outbound-listener';
export const INBOUND_LISTENER = 'inbound-listener';
export const OUTBOUND_PORT = 15001;
export const INBOUND_PORT = 15003;
export const PASSTHROUGH_CLUSTER = 'passthrough-outbound';

export const outboundRouteName = (port: number): string => `rds-outbound.${port}`;
/**
 * The route configuration of one ClusterIP service port, which only that port's listener names (`host:port`, as
 * Istio names its per-service routes): a service added or changed is a few small resources for each sidecar.
 */
export const serviceRouteName = (host: string, port: number): string => `${host}:${port}`;
export const inboundRouteName = (targetPort: number): string => `rds-inbound.${targetPort}`;
export const localClusterName = (cluster: string): string => `${cluster}|local`;
export const outboundVirtualHostName = (host: string): string => `outbound_virtual-host|${host}`;
export const inboundVirtualHostName = (host: string): string => `inbound_virtual-host|${host}`;

/** Config source for resources fetched over the same ADS stream. */
export const ADS_SOURCE: ConfigSource = { ads: {}, resource_api_version: 'V3' };

export const MAX_UINT32 = 4294967295;

/** The router filter, last in every HTTP filter chain (gRPC clients require it last). */
export const ROUTER_FILTER: HttpFilter = { name: 'envoy.filters.http.router', typed_config: { '@type': T.ROUTER } };

export function httpConnectionManager(statPrefix: string, routeName: string): Packed<HttpConnectionManager> {
  return {
    '@type': T.HCM,
    stat_prefix: statPrefix,
    codec_type: 'AUTO',
    // A sidecar is transparent: the app's own Server header reaches the caller (the guide shows gunicorn's).
    server_header_transformation: 'PASS_THROUGH',
    rds: { route_config_name: routeName, config_source: ADS_SOURCE },
    // WebSocket upgrades pass through (gRPC clients ignore this).
    upgrade_configs: [{ upgrade_type: 'websocket' }],
    http_filters: [ROUTER_FILTER],
  };
}

/** `0s`: no route-level timeout (OSM's choice), so retries are bounded by per_try_timeout and num_retries. */
export const NO_TIMEOUT: Duration = {};
