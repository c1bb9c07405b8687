/**
 * Listeners: the sidecar's outbound (15001, original_dst, one filter chain per service port) and inbound
 * (15003) listeners, and the api_listeners proxyless gRPC clients ask for by name.
 */
import type { PortIR, ServiceIR } from '../compile/ir.js';
import type { OutboundMatch } from '../compile/plan.js';
import type { CidrRange, Filter, FilterChain, Listener, Packed, TcpProxy } from './types.js';
import {
  INBOUND_LISTENER,
  INBOUND_PORT,
  OUTBOUND_LISTENER,
  OUTBOUND_PORT,
  PASSTHROUGH_CLUSTER,
  T,
  httpConnectionManager,
  inboundRouteName,
  localClusterName,
  outboundRouteName,
} from './common.js';

function cidr(ip: string): CidrRange {
  return { address_prefix: ip, prefix_len: { value: ip.includes(':') ? 128 : 32 } };
}

function tcpProxy(statPrefix: string, cluster: string): Filter {
  const config: Packed<TcpProxy> = { '@type': T.TCP_PROXY, stat_prefix: statPrefix, cluster };
  return { name: 'envoy.filters.network.tcp_proxy', typed_config: config };
}

/** The network filter for a service port: HTTP through the connection manager and RDS, TCP straight to a cluster. */
function portFilter(port: PortIR, statPrefix: string, routeName: string, tcpStatPrefix: string, tcpCluster: string): Filter {
  return port.protocol === 'http'
    ? { name: 'envoy.filters.network.http_connection_manager', typed_config: httpConnectionManager(statPrefix, routeName) }
    : tcpProxy(tcpStatPrefix, tcpCluster);
}

/** The filter chain for one service port on the outbound listener, matching the addresses the plan gave it. */
export function outboundFilterChain({ service, port, ips }: OutboundMatch): FilterChain {
  const name = `outbound_${service.namespace}/${service.name}_${port.dialPort}_${port.protocol}`;
  const filter = portFilter(port, `outbound_${port.dialPort}`, outboundRouteName(port.dialPort), name, port.cluster);
  return {
    name,
    filter_chain_match: {
      prefix_ranges: ips.map(cidr),
      // Headless services are reached on the pod's port, ClusterIP services on the service port.
      destination_port: { value: port.dialPort },
    },
    filters: [filter],
  };
}

/** A listener for traffic redirected by iptables: it matches filter chains on the original destination. */
function redirectListener(name: string, port: number, direction: 'INBOUND' | 'OUTBOUND', chains: readonly FilterChain[]): Listener {
  return {
    name,
    address: { socket_address: { address: '0.0.0.0', port_value: port } },
    traffic_direction: direction,
    listener_filters: [{ name: 'envoy.filters.listener.original_dst', typed_config: { '@type': T.ORIGINAL_DST } }],
    filter_chains: [...chains],
  };
}

export function outboundListener(chains: readonly FilterChain[]): Listener {
  return {
    ...redirectListener(OUTBOUND_LISTENER, OUTBOUND_PORT, 'OUTBOUND', chains),
    // Permissive mode: traffic to anything that is not a mesh service passes through to its original destination.
    default_filter_chain: { name: 'outbound-passthrough', filters: [tcpProxy('passthrough-outbound', PASSTHROUGH_CLUSTER)] },
  };
}

export function inboundFilterChain(service: ServiceIR, port: PortIR): FilterChain {
  const name = `inbound_${service.namespace}/${service.name}_${port.targetPort}_${port.protocol}`;
  const filter = portFilter(port, `inbound_${port.targetPort}`, inboundRouteName(port.targetPort), name, localClusterName(port.cluster));
  return { name, filter_chain_match: { destination_port: { value: port.targetPort } }, filters: [filter] };
}

export function inboundListener(chains: readonly FilterChain[]): Listener {
  return redirectListener(INBOUND_LISTENER, INBOUND_PORT, 'INBOUND', chains);
}

/** The listener a proxyless gRPC client asks for (`xds:///<name>`): HCM with RDS, router filter last. */
export function apiListener(name: string, port: PortIR): Listener {
  return {
    name,
    api_listener: { api_listener: httpConnectionManager(name, outboundRouteName(port.dialPort)) },
  };
}
