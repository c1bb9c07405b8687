/**
 * The sidecar template: what a pod of the mesh gets (the init container that redirects its traffic, the Envoy
 * sidecar with its bootstrap, the identity Secret's volume). The one place that says it: the admission webhook
 * patches pods with it, `mesh-xds inject` renders manifests with it, and the sandbox runs pods from it. Pure.
 */
import { SIDECAR_INJECTION_ANNOTATION } from '../model/names.js';
import { spiffeId } from '../security/spiffe.js';

/** The one Envoy version of the project: the image here, the tests' binary (scripts/real-parts.txt), the demo. */
export const ENVOY_VERSION = '1.40.0';
export const ENVOY_IMAGE = `envoyproxy/envoy:v${ENVOY_VERSION}`;
/** Any image with sh, iptables and ip6tables. */
export const INIT_IMAGE = 'nicolaka/netshoot:v0.13';
/** Sidecars run as this uid; the init container's rules leave its traffic alone (OSM's choice). */
export const PROXY_UID = 1500;
export const SIDECAR_CONTAINER = 'envoy';
export const INIT_CONTAINER = 'mesh-init';
export const IDENTITY_VOLUME = 'mesh-xds-identity';
/** Where the sidecar mounts its identity Secret (certificate, key, mesh CA and the SDS files naming them). */
export const IDENTITY_MOUNT = '/etc/mesh-xds/identity';
export const ADMIN_PORT = 15000;
export const OUTBOUND_PORT = 15001;
export const INBOUND_PORT = 15003;
/** Envoy's readiness (its admin's /ready, and nothing else of the admin) on the pod's address. */
export const HEALTH_PORT = 15021;
/** The ports the sidecar takes in the pod's network namespace. */
export const SIDECAR_PORTS = [ADMIN_PORT, OUTBOUND_PORT, INBOUND_PORT, HEALTH_PORT] as const;

/** FSM's names: the namespace label of enrolment, and the injection annotation of namespaces and pods. */
export { SIDECAR_INJECTION_ANNOTATION };
/** What was injected, and by which mesh-xds: on every injected pod. */
export const INJECTED_ANNOTATION = 'mesh-xds.flomesh.io/injected';

/** The Secret of a service account's identity in its namespace (written by the control plane). */
export const identitySecretName = (serviceAccount: string): string => `mesh-xds-identity-${serviceAccount}`;

export interface SidecarTemplateOptions {
  /** The control plane's namespace: its Service is `mesh-xds.<namespace>.svc.<trustDomain>`, its identity `.../sa/mesh-xds`. */
  controlPlaneNamespace: string;
  trustDomain: string;
  /** ADS to the control plane over mTLS with the pod's identity Secret (the control plane has the mesh CA). */
  mtls: boolean;
  /** mesh-xds's version, named in the injected annotation. */
  version: string;
  envoyImage?: string;
  initImage?: string;
  adsPort?: number;
  /** The sidecar's ADS flavour (default GRPC, state of the world). */
  adsFlavour?: 'GRPC' | 'DELTA_GRPC';
  /** The app's own HTTP probes, rewritten to the health port: the sidecar forwards each to the app (`appProbes`). */
  probes?: readonly AppProbe[];
  /** How often the sidecar sends its counters to the control plane (the MeshConfig's, default 5). */
  statsFlushSeconds?: number;
}

/**
 * The stats each sidecar keeps and sends (its stats matcher): per cluster its requests, connections, TLS and config
 * updates (`upstream_rq_*`, `upstream_cx_*`, `ssl.*`, `update_*`: among them what the control plane sums per Retry,
 * src/observed/retries.ts COUNTERS), the xDS connection's own, and the server's, listener and cluster managers', HTTP
 * managers' (RDS updates) and listeners' stats an operator reads on the sidecar's admin page. Not kept: the rest per
 * cluster (membership, circuit breaker and load balancer gauges, health checks, outlier detection...: set on every
 * cluster of a large mesh, so sent at every flush, and held by Envoy for each).
 */
export const SIDECAR_STATS: readonly Obj[] = [
  { prefix: 'server.' },
  { prefix: 'cluster_manager.' },
  { prefix: 'listener_manager.' },
  { prefix: 'control_plane.' },
  { prefix: 'http.' },
  { prefix: 'listener.' },
  { prefix: 'cluster.mesh-xds.' },
  { safe_regex: { regex: '^cluster\\.[^.]+\\.(upstream_(rq|cx)_[a-z0-9_]+|ssl\\..+|update_[a-z_]+)$' } },
];

/**
 * The sidecar's counters, streamed to the control plane over its xDS connection (Envoy's metrics service sink): deltas
 * since the last flush, in messages of at most 1,000 families.
 */
export function statsSink(flushSeconds = 5): Obj {
  return {
    stats_flush_interval: `${flushSeconds}s`,
    stats_config: { stats_matcher: { inclusion_list: { patterns: [...SIDECAR_STATS] } } },
    stats_sinks: [
      {
        name: 'envoy.stat_sinks.metrics_service',
        typed_config: {
          '@type': 'type.googleapis.com/envoy.config.metrics.v3.MetricsServiceConfig',
          transport_api_version: 'V3',
          report_counters_as_deltas: true,
          batch_size: 1000,
          grpc_service: { envoy_grpc: { cluster_name: 'mesh-xds' } },
        },
      },
    ],
  };
}

/**
 * An app container's httpGet probe, which the kubelet now sends to the sidecar's health port as `path`, and the
 * sidecar forwards to the app on loopback (`port`, `target` the original path): the app's ports require a client
 * certificate from the mesh CA once sidecars speak mTLS, which the kubelet has not.
 */
export interface AppProbe {
  readonly path: string;
  readonly port: number;
  readonly target: string;
}

/** The health port's path of one probe of one container (Istio's shape). */
export const appProbePath = (container: string, kind: 'liveness' | 'readiness' | 'startup'): string =>
  `/app-health/${container}/${kind === 'liveness' ? 'livez' : kind === 'readiness' ? 'readyz' : 'startupz'}`;
const appProbeCluster = (port: number): string => `app-probe-${port}`;

export type Json = null | boolean | number | string | Json[] | { [k: string]: Json };
type Obj = { [k: string]: Json };

export const controlPlaneHost = (o: SidecarTemplateOptions): string => `mesh-xds.${o.controlPlaneNamespace}.svc.${o.trustDomain}`;

/**
 * The init container's script: outbound TCP to 15001, inbound to 15003, as OSM's init container does; Envoy's own
 * traffic (uid 1500), loopback, the admin port and the health port are left alone. IPv4 and IPv6; running it twice
 * leaves the same rules (chains flushed, jumps added once).
 */
export const INIT_SCRIPT = `set -e
for ipt in iptables ip6tables; do
  if [ "$ipt" = ip6tables ] && ! ip6tables -t nat -S >/dev/null 2>&1; then
    echo "no IPv6 nat table: IPv6 traffic is not redirected"; continue
  fi
  lo=127.0.0.1/32; [ "$ipt" = ip6tables ] && lo=::1/128
  for chain in PROXY_INBOUND PROXY_IN_REDIRECT PROXY_OUTPUT PROXY_REDIRECT; do
    $ipt -t nat -N $chain 2>/dev/null || $ipt -t nat -F $chain
  done
  $ipt -t nat -A PROXY_REDIRECT -p tcp -j REDIRECT --to-port ${OUTBOUND_PORT}
  $ipt -t nat -A PROXY_IN_REDIRECT -p tcp -j REDIRECT --to-port ${INBOUND_PORT}
  $ipt -t nat -A PROXY_INBOUND -p tcp --dport ${ADMIN_PORT} -j RETURN
  $ipt -t nat -A PROXY_INBOUND -p tcp --dport ${HEALTH_PORT} -j RETURN
  $ipt -t nat -A PROXY_INBOUND -p tcp -j PROXY_IN_REDIRECT
  # The sidecar's own traffic to its pod's address (an app calling itself through a Service) goes to the inbound
  # listener, which takes the mTLS, as it would from another pod (OSM's rule); the rest of the sidecar's goes out.
  $ipt -t nat -A PROXY_OUTPUT -o lo ! -d $lo -m owner --uid-owner ${PROXY_UID} -j PROXY_IN_REDIRECT
  $ipt -t nat -A PROXY_OUTPUT -m owner --uid-owner ${PROXY_UID} -j RETURN
  $ipt -t nat -A PROXY_OUTPUT -d $lo -j RETURN
  $ipt -t nat -A PROXY_OUTPUT -j PROXY_REDIRECT
  $ipt -t nat -C PREROUTING -p tcp -j PROXY_INBOUND 2>/dev/null || $ipt -t nat -A PREROUTING -p tcp -j PROXY_INBOUND
  $ipt -t nat -C OUTPUT -p tcp -j PROXY_OUTPUT 2>/dev/null || $ipt -t nat -A OUTPUT -p tcp -j PROXY_OUTPUT
done
`;

/** The SDS files of the identity Secret: Envoy reloads the certificate and the CA when the kubelet swaps the files. */
export function identitySdsFiles(o: Pick<SidecarTemplateOptions, 'controlPlaneNamespace' | 'trustDomain'>): Record<string, string> {
  const watched = `      watched_directory: { path: ${IDENTITY_MOUNT} }\n`;
  return {
    'sds-identity.yaml':
      'resources:\n' +
      '  - "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret\n' +
      `    name: ${BOOTSTRAP_SECRETS.identity}\n` +
      '    tls_certificate:\n' +
      `      certificate_chain: { filename: ${IDENTITY_MOUNT}/tls.crt }\n` +
      `      private_key: { filename: ${IDENTITY_MOUNT}/tls.key }\n` +
      watched,
    'sds-mesh-ca.yaml':
      'resources:\n' +
      '  - "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret\n' +
      `    name: ${BOOTSTRAP_SECRETS.ca}\n` +
      '    validation_context:\n' +
      `      trusted_ca: { filename: ${IDENTITY_MOUNT}/ca.crt }\n` +
      watched +
      '      match_typed_subject_alt_names:\n' +
      `        - { san_type: URI, matcher: { exact: "${spiffeId(o.trustDomain, o.controlPlaneNamespace, 'mesh-xds')}" } }\n`,
  };
}

/**
 * The bootstrap's own secrets (file-based SDS from the identity Secret), for the ADS connection only; the data plane's
 * come over ADS (envoy/tls.ts).
 */
export const BOOTSTRAP_SECRETS = { identity: 'identity', ca: 'mesh-ca' } as const;

/**
 * The sidecar's bootstrap, without its node (`nodeOf` adds it): admin on loopback, /ready on the health port,
 * everything else over ADS from the control plane's Service, with the pod's identity when mTLS is on.
 */
export function sidecarBootstrap(o: SidecarTemplateOptions): Obj {
  const host = controlPlaneHost(o);
  const sds = (name: string, file: string): Obj => ({ name, sds_config: { path_config_source: { path: `${IDENTITY_MOUNT}/${file}`, watched_directory: { path: IDENTITY_MOUNT } }, resource_api_version: 'V3' } });
  const controlPlane: Obj = {
    name: 'mesh-xds',
    type: 'STRICT_DNS',
    connect_timeout: '1s',
    typed_extension_protocol_options: {
      'envoy.extensions.upstreams.http.v3.HttpProtocolOptions': {
        '@type': 'type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions',
        explicit_http_config: { http2_protocol_options: { connection_keepalive: { interval: '30s', timeout: '10s' } } },
      },
    },
    load_assignment: { cluster_name: 'mesh-xds', endpoints: [{ lb_endpoints: [{ endpoint: { address: { socket_address: { address: host, port_value: o.adsPort ?? 15128 } } } }] }] },
    ...(o.mtls
      ? {
          transport_socket: {
            name: 'envoy.transport_sockets.tls',
            typed_config: {
              '@type': 'type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext',
              sni: host,
              common_tls_context: {
                alpn_protocols: ['h2'],
                tls_certificate_sds_secret_configs: [sds(BOOTSTRAP_SECRETS.identity, 'sds-identity.yaml')],
                validation_context_sds_secret_config: sds(BOOTSTRAP_SECRETS.ca, 'sds-mesh-ca.yaml'),
              },
            },
          },
        }
      : {}),
  };
  const admin: Obj = { name: 'envoy-admin', type: 'STATIC', connect_timeout: '1s', load_assignment: { cluster_name: 'envoy-admin', endpoints: [{ lb_endpoints: [{ endpoint: { address: { socket_address: { address: '127.0.0.1', port_value: ADMIN_PORT } } } }] }] } };
  const health: Obj = {
    name: 'health',
    address: { socket_address: { address: '0.0.0.0', port_value: HEALTH_PORT } },
    filter_chains: [
      {
        filters: [
          {
            name: 'envoy.filters.network.http_connection_manager',
            typed_config: {
              '@type': 'type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager',
              stat_prefix: 'health',
              route_config: {
                virtual_hosts: [
                  {
                    name: 'health',
                    domains: ['*'],
                    routes: [
                      { match: { path: '/ready' }, route: { cluster: 'envoy-admin' } },
                      ...(o.probes ?? []).map((p): Obj => ({ match: { path: p.path }, route: { cluster: appProbeCluster(p.port), prefix_rewrite: p.target } })),
                    ],
                  },
                ],
              },
              http_filters: [{ name: 'envoy.filters.http.router', typed_config: { '@type': 'type.googleapis.com/envoy.extensions.filters.http.router.v3.Router' } }],
            },
          },
        ],
      },
    ],
  };
  return {
    admin: { address: { socket_address: { address: '127.0.0.1', port_value: ADMIN_PORT } } },
    ...statsSink(o.statsFlushSeconds),
    dynamic_resources: {
      ads_config: { api_type: o.adsFlavour ?? 'GRPC', transport_api_version: 'V3', set_node_on_first_message_only: true, grpc_services: [{ envoy_grpc: { cluster_name: 'mesh-xds' } }] },
      cds_config: { ads: {}, resource_api_version: 'V3' },
      lds_config: { ads: {}, resource_api_version: 'V3' },
    },
    static_resources: {
      clusters: [
        controlPlane,
        admin,
        ...[...new Set((o.probes ?? []).map((p) => p.port))].map((port): Obj => ({
          name: appProbeCluster(port),
          type: 'STATIC',
          connect_timeout: '1s',
          load_assignment: { cluster_name: appProbeCluster(port), endpoints: [{ lb_endpoints: [{ endpoint: { address: { socket_address: { address: '127.0.0.1', port_value: port } } } }] }] },
        })),
      ],
      listeners: [health],
    },
  };
}

/** The node identity mesh-xds reads, from the downward API (`$(VAR)`, expanded by the kubelet). */
const NODE: Obj = {
  id: '$(POD_NAME).$(POD_NAMESPACE)',
  cluster: '$(SERVICE_ACCOUNT).$(POD_NAMESPACE)',
  metadata: { namespace: '$(POD_NAMESPACE)', serviceAccount: '$(SERVICE_ACCOUNT)', podName: '$(POD_NAME)' },
};

/** The init container: the script above, as root with NET_ADMIN and NET_RAW only. */
export function initContainer(o: SidecarTemplateOptions): Obj {
  return {
    name: INIT_CONTAINER,
    image: o.initImage ?? INIT_IMAGE,
    command: ['/bin/sh', '-c'],
    args: [INIT_SCRIPT],
    securityContext: { runAsUser: 0, runAsNonRoot: false, capabilities: { add: ['NET_ADMIN', 'NET_RAW'], drop: ['ALL'] } },
    resources: { requests: { cpu: '10m', memory: '16Mi' }, limits: { memory: '64Mi' } },
  };
}

/** The Envoy container: the whole bootstrap in `--config-yaml` (JSON is YAML), the node from the downward API. */
export function sidecarContainer(o: SidecarTemplateOptions): Obj {
  const field = (name: string, fieldPath: string): Obj => ({ name, valueFrom: { fieldRef: { fieldPath } } });
  return {
    name: SIDECAR_CONTAINER,
    image: o.envoyImage ?? ENVOY_IMAGE,
    args: ['--config-yaml', JSON.stringify({ node: NODE, ...sidecarBootstrap(o) }), '--log-level', 'info', '--disable-hot-restart'],
    env: [field('POD_NAME', 'metadata.name'), field('POD_NAMESPACE', 'metadata.namespace'), field('SERVICE_ACCOUNT', 'spec.serviceAccountName')],
    ports: [
      { name: 'envoy-admin', containerPort: ADMIN_PORT },
      { name: 'envoy-health', containerPort: HEALTH_PORT },
    ],
    readinessProbe: { httpGet: { path: '/ready', port: HEALTH_PORT }, periodSeconds: 2, failureThreshold: 3 },
    resources: { requests: { cpu: '100m', memory: '128Mi' }, limits: { memory: '512Mi' } },
    securityContext: { runAsUser: PROXY_UID, runAsGroup: PROXY_UID, runAsNonRoot: true, allowPrivilegeEscalation: false, capabilities: { drop: ['ALL'] } },
    ...(o.mtls ? { volumeMounts: [{ name: IDENTITY_VOLUME, mountPath: IDENTITY_MOUNT, readOnly: true }] } : {}),
  };
}

/**
 * The identity Secret of the pod's service account. Readable by every uid of the pod (0444): the sidecar's uid is
 * not the app's, and giving it a group would mean changing the pod's fsGroup, which re-owns the app's volumes. The
 * key is the pod's own identity, which its app holds anyway; other pods never see it.
 */
export function identityVolume(serviceAccount: string): Obj {
  return { name: IDENTITY_VOLUME, secret: { secretName: identitySecretName(serviceAccount), defaultMode: 0o444 } };
}
