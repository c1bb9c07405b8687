/**
 * Listeners: the sidecar's outbound side (15001, which hands each redirected connection to the listener of its
 * original destination: one not-bound listener per ClusterIP service port; headless services' pod addresses stay
 * filter chains of 15001), its inbound listener (15003), and the api_listeners proxyless gRPC clients ask for by name.
 */
import type { PortIR, ServiceIR } from '../compile/ir.js';
import type { OutboundMatch } from '../compile/plan.js';
import type { CidrRange, Filter, FilterChain, Listener, Packed, TcpProxy } from './types.js';
import { downstreamTls } from './tls.js';
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
  serviceRouteName,
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

/**
 * The 15001 listener. With use_original_dst Envoy restores each redirected connection's original destination (it
 * adds the original_dst listener filter itself) and hands the connection to the listener bound to that address
 * and port, if there is one (a ClusterIP service port: `serviceListener`); otherwise this listener's own filter
 * chains (headless services, matched on their pods' addresses) or its passthrough take it.
 */
export function outboundListener(chains: readonly FilterChain[]): Listener {
  return {
    name: OUTBOUND_LISTENER,
    address: { socket_address: { address: '0.0.0.0', port_value: OUTBOUND_PORT } },
    traffic_direction: 'OUTBOUND',
    use_original_dst: { value: true },
    filter_chains: [...chains],
    // Permissive mode: traffic to anything that is not a mesh service passes through to its original destination.
    default_filter_chain: { name: 'outbound-passthrough', filters: [tcpProxy('passthrough-outbound', PASSTHROUGH_CLUSTER)] },
  };
}

/**
 * The listener of one ClusterIP service port: on the ClusterIP and service port, not bound (15001 hands it the
 * connections redirected there), with the service port's one filter chain, whose HTTP routes are the service's
 * own route configuration (`serviceRoute`). An added service is a listener added,
 * not a change of every sidecar's 15001 listener. Named by its address as Istio names them (`10.96.0.10_14001`):
 * a ClusterIP that changes is a listener removed and another added.
 */
export function serviceListener(match: OutboundMatch): Listener {
  const [ip] = match.ips;
  const { service, port } = match;
  const name = `outbound_${service.namespace}/${service.name}_${port.dialPort}_${port.protocol}`;
  // The service's own route configuration (its HTTP stats keep the port's prefix, `http.outbound_<port>.`).
  const filters = [portFilter(port, `outbound_${port.dialPort}`, serviceRouteName(service.host, port.dialPort), name, port.cluster)];
  return {
    name: `${ip}_${match.port.dialPort}`,
    address: { socket_address: { address: ip, port_value: match.port.dialPort } },
    bind_to_port: { value: false },
    traffic_direction: 'OUTBOUND',
    filter_chains: [{ name, filters }],
  };
}

export function inboundFilterChain(service: ServiceIR, port: PortIR, mtls: boolean): FilterChain {
  const name = `inbound_${service.namespace}/${service.name}_${port.targetPort}_${port.protocol}`;
  const filter = portFilter(port, `inbound_${port.targetPort}`, inboundRouteName(port.targetPort), name, localClusterName(port.cluster));
  // With mTLS a caller without a certificate from the mesh CA (a pod without a sidecar) fails the handshake.
  return { name, filter_chain_match: { destination_port: { value: port.targetPort } }, filters: [filter], ...(mtls ? { transport_socket: downstreamTls() } : {}) };
}

/** The 15003 listener: traffic redirected to the pod's ports, its filter chains matched on the original port. */
export function inboundListener(chains: readonly FilterChain[]): Listener {
  return {
    name: INBOUND_LISTENER,
    address: { socket_address: { address: '0.0.0.0', port_value: INBOUND_PORT } },
    traffic_direction: 'INBOUND',
    listener_filters: [{ name: 'envoy.filters.listener.original_dst', typed_config: { '@type': T.ORIGINAL_DST } }],
    filter_chains: [...chains],
  };
}

/** The listener a proxyless gRPC client asks for (`xds:///<name>`): HCM with RDS, router filter last. */
export function apiListener(name: string, port: PortIR): Listener {
  return {
    name,
    api_listener: { api_listener: httpConnectionManager(name, outboundRouteName(port.dialPort)) },
  };
}
