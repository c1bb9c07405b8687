/**
 * The registry of xDS resource types: everything the protocol code needs to know about a type lives here,
 * so adding one (Secret, say) is one entry and a builder.
 */
import { asList, asMap, asString, type Fields } from '../../model/plain.js';

export interface Reference {
  readonly typeUrl: string;
  readonly name: string;
}

export interface ResourceType {
  /** Short name used in logs, metrics and the debug endpoint. */
  readonly short: 'CDS' | 'EDS' | 'LDS' | 'RDS' | 'SDS';
  readonly typeUrl: string;
  /** Fully qualified protobuf message name. */
  readonly message: string;
  /** Position in ADS push order (make-before-break): CDS, EDS, LDS, RDS, SDS. */
  readonly order: number;
  /** SotW responses carry the full set (absence = deletion) rather than the requested names only. */
  readonly fullState: boolean;
  /** Name of a resource of this type, from its plain object. */
  readonly nameOf: (obj: Fields) => string;
  /** Other resources this one needs (RDS names of a listener, EDS names of a cluster). */
  readonly refs: (obj: Fields) => Reference[];
  /** A type that must be sent again after a change of this one, even if unchanged (Envoy re-warms clusters and waits for their EDS). */
  readonly rewarms?: string;
  /** How Envoy's admin /config_dump holds this type (envoy.admin.v3.*ConfigDump). */
  readonly dump: ConfigDumpShape;
  /**
   * A resource as shown outside ADS (the debug config dump, CSDS, JSON views): its secret fields replaced, as
   * Envoy's own config dump redacts the fields its protos mark `(udpa.annotations.sensitive)`.
   */
  readonly redact?: (obj: Fields) => Fields;
}

/** One type's section of an admin ConfigDump: the message, and its entries for resources sent with a version. */
export interface ConfigDumpShape {
  readonly message: string;
  /** The section for resources (their Any) sent with `version`. */
  readonly section: (version: string, resources: readonly { name: string; any: object }[]) => object;
  /** The resources of such a section as printed (proto3 JSON), by name (for comparing with Envoy's own). */
  readonly read: (section: Fields) => Record<string, unknown>;
  /** Envoy prints this section in /config_dump without asking (EDS needs ?include_eds). */
  readonly byDefault: boolean;
}

const P = 'type.googleapis.com/';
export const CLUSTER = `${P}envoy.config.cluster.v3.Cluster`;
export const ENDPOINT = `${P}envoy.config.endpoint.v3.ClusterLoadAssignment`;
export const LISTENER = `${P}envoy.config.listener.v3.Listener`;
export const ROUTE = `${P}envoy.config.route.v3.RouteConfiguration`;
export const SECRET = `${P}envoy.extensions.transport_sockets.tls.v3.Secret`;
/** What Envoy prints in place of a sensitive field's data. */
export const REDACTED = '[redacted]';
const HCM = `${P}envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager`;

function hcmRouteNames(listener: Fields): string[] {
  const hcms: Fields[] = [];
  const api = asMap(asMap(listener.api_listener).api_listener);
  if (Object.keys(api).length) hcms.push(api);
  for (const chain of [...asList(listener.filter_chains), ...(listener.default_filter_chain ? [listener.default_filter_chain] : [])]) {
    for (const filter of asList(asMap(chain).filters)) if (asMap(filter).typed_config) hcms.push(asMap(asMap(filter).typed_config));
  }
  return hcms.filter((c) => c['@type'] === HCM && asString(asMap(c.rds).route_config_name)).map((c) => asString(asMap(c.rds).route_config_name));
}

/** Envoy's printed sections: `field` of each entry, by the name `key` gives it. */
const byName = (entries: unknown, pick: (e: Fields) => unknown, key: (resource: Fields, e: Fields) => unknown): Record<string, unknown> =>
  Object.fromEntries(asList(entries).map((e) => [asString(key(asMap(pick(asMap(e))), asMap(e))), pick(asMap(e))]));

const TYPES: readonly ResourceType[] = [
  {
    short: 'CDS',
    typeUrl: CLUSTER,
    message: 'envoy.config.cluster.v3.Cluster',
    order: 0,
    fullState: true,
    nameOf: (c) => asString(c.name),
    refs: (c) => (c.type === 'EDS' ? [{ typeUrl: ENDPOINT, name: asString(asMap(c.eds_cluster_config).service_name) || asString(c.name) }] : []),
    rewarms: ENDPOINT,
    dump: {
      message: 'envoy.admin.v3.ClustersConfigDump',
      section: (version_info, rs) => ({ version_info, dynamic_active_clusters: rs.map((r) => ({ version_info, cluster: r.any })) }),
      read: (d) => byName(d.dynamic_active_clusters, (c) => c.cluster, (r) => r.name),
      byDefault: true,
    },
  },
  {
    short: 'EDS',
    typeUrl: ENDPOINT,
    message: 'envoy.config.endpoint.v3.ClusterLoadAssignment',
    order: 1,
    fullState: false,
    nameOf: (e) => asString(e.cluster_name),
    refs: () => [],
    dump: {
      message: 'envoy.admin.v3.EndpointsConfigDump',
      section: (version_info, rs) => ({ dynamic_endpoint_configs: rs.map((r) => ({ version_info, endpoint_config: r.any })) }),
      read: (d) => byName(d.dynamic_endpoint_configs, (e) => e.endpoint_config, (r) => r.cluster_name),
      byDefault: false,
    },
  },
  {
    short: 'LDS',
    typeUrl: LISTENER,
    message: 'envoy.config.listener.v3.Listener',
    order: 2,
    fullState: true,
    nameOf: (l) => asString(l.name),
    refs: (l) => hcmRouteNames(l).map((name) => ({ typeUrl: ROUTE, name })),
    dump: {
      message: 'envoy.admin.v3.ListenersConfigDump',
      section: (version_info, rs) => ({ version_info, dynamic_listeners: rs.map((r) => ({ name: r.name, active_state: { version_info, listener: r.any } })) }),
      // A listener only draining (removed by LDS, its connections finishing) is no longer config Envoy holds.
      read: (d) =>
        byName(
          asList(d.dynamic_listeners).filter((l) => asMap(l).active_state || asMap(l).warming_state),
          (l) => asMap(l.active_state).listener ?? l,
          (_r, l) => l.name,
        ),
      byDefault: true,
    },
  },
  {
    short: 'RDS',
    typeUrl: ROUTE,
    message: 'envoy.config.route.v3.RouteConfiguration',
    order: 3,
    fullState: false,
    nameOf: (r) => asString(r.name),
    refs: () => [],
    dump: {
      message: 'envoy.admin.v3.RoutesConfigDump',
      section: (version_info, rs) => ({ dynamic_route_configs: rs.map((r) => ({ version_info, route_config: r.any })) }),
      read: (d) => byName(d.dynamic_route_configs, (r) => r.route_config, (r) => r.name),
      byDefault: true,
    },
  },
  {
    // Sidecar mTLS: the identity's certificate and key, and the CA bundle, asked for by name (SDS over ADS).
    short: 'SDS',
    typeUrl: SECRET,
    message: 'envoy.extensions.transport_sockets.tls.v3.Secret',
    order: 4,
    fullState: false,
    nameOf: (s) => asString(s.name),
    refs: () => [],
    dump: {
      message: 'envoy.admin.v3.SecretsConfigDump',
      section: (version_info, rs) => ({ dynamic_active_secrets: rs.map((r) => ({ name: r.name, version_info, secret: r.any })) }),
      read: (d) => byName(d.dynamic_active_secrets, (s) => s.secret, (_r, s) => s.name),
      byDefault: true,
    },
    // TlsCertificate.private_key is the one sensitive field the mesh sends (a DataSource: Envoy keeps its shape).
    redact: (s) => {
      const cert = asMap(s.tls_certificate);
      return cert.private_key ? { ...s, tls_certificate: { ...cert, private_key: { inline_string: REDACTED } } } : s;
    },
  },
];

const BY_URL = new Map(TYPES.map((t) => [t.typeUrl, t]));

/** All registered types in ADS push order. */
export const RESOURCE_TYPES: readonly ResourceType[] = [...TYPES].sort((a, b) => a.order - b.order);

export function resourceType(typeUrl: string): ResourceType | undefined {
  return BY_URL.get(typeUrl);
}
