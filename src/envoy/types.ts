/**
 * The Envoy message types the builders return: the input types generated from the Envoy protos that the pinned
 * proto package ships (@grpc/grpc-js-xds, type-only), so that a misspelt field or a wrong shape fails the type
 * check. An Any is written as its message with `@type` (proto-loader's AnyExtension), which encode.ts packs.
 */
export type { Cluster } from '@grpc/grpc-js-xds/build/src/generated/envoy/config/cluster/v3/Cluster.js';
export type { ClusterLoadAssignment } from '@grpc/grpc-js-xds/build/src/generated/envoy/config/endpoint/v3/ClusterLoadAssignment.js';
export type { Listener } from '@grpc/grpc-js-xds/build/src/generated/envoy/config/listener/v3/Listener.js';
export type { FilterChain } from '@grpc/grpc-js-xds/build/src/generated/envoy/config/listener/v3/FilterChain.js';
export type { Filter } from '@grpc/grpc-js-xds/build/src/generated/envoy/config/listener/v3/Filter.js';
export type { RouteConfiguration } from '@grpc/grpc-js-xds/build/src/generated/envoy/config/route/v3/RouteConfiguration.js';
export type { VirtualHost } from '@grpc/grpc-js-xds/build/src/generated/envoy/config/route/v3/VirtualHost.js';
export type { RetryPolicy } from '@grpc/grpc-js-xds/build/src/generated/envoy/config/route/v3/RetryPolicy.js';
export type { HttpConnectionManager } from '@grpc/grpc-js-xds/build/src/generated/envoy/extensions/filters/network/http_connection_manager/v3/HttpConnectionManager.js';
export type { HttpFilter } from '@grpc/grpc-js-xds/build/src/generated/envoy/extensions/filters/network/http_connection_manager/v3/HttpFilter.js';

export type { CidrRange } from '@grpc/grpc-js-xds/build/src/generated/envoy/config/core/v3/CidrRange.js';
export type { ConfigSource } from '@grpc/grpc-js-xds/build/src/generated/envoy/config/core/v3/ConfigSource.js';
export type { Duration } from '@grpc/grpc-js-xds/build/src/generated/google/protobuf/Duration.js';

/** A message packed in an Any: its fields and its `@type`. */
export type Packed<T> = T & { '@type': string };

/** `envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy`, the fields we set (the package generates no type for it). */
export interface TcpProxy {
  stat_prefix: string;
  cluster: string;
}
export type { Secret } from '@grpc/grpc-js-xds/build/src/generated/envoy/extensions/transport_sockets/tls/v3/Secret.js';
export type { UpstreamTlsContext } from '@grpc/grpc-js-xds/build/src/generated/envoy/extensions/transport_sockets/tls/v3/UpstreamTlsContext.js';
export type { DownstreamTlsContext } from '@grpc/grpc-js-xds/build/src/generated/envoy/extensions/transport_sockets/tls/v3/DownstreamTlsContext.js';
export type { CommonTlsContext } from '@grpc/grpc-js-xds/build/src/generated/envoy/extensions/transport_sockets/tls/v3/CommonTlsContext.js';
export type { TransportSocket } from '@grpc/grpc-js-xds/build/src/generated/envoy/config/core/v3/TransportSocket.js';
