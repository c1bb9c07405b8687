/**
 * The registry of xDS resource types: everything the protocol code needs to know about a type lives here,
 * so adding one (Secret, say) is one entry and a builder.
 */
export interface Reference {
  readonly typeUrl: string;
  readonly name: string;
}

export interface ResourceType {
  /** Short name used in logs, metrics and the debug endpoint. */
  readonly short: 'CDS' | 'EDS' | 'LDS' | 'RDS';
  readonly typeUrl: string;
  /** Fully qualified protobuf message name. */
  readonly message: string;
  /** Position in ADS push order (make-before-break): CDS, EDS, LDS, RDS. */
  readonly order: number;
  /** SotW responses carry the full set (absence = deletion) rather than the requested names only. */
  readonly fullState: boolean;
  /** Name of a resource of this type, from its plain object. */
  readonly nameOf: (obj: any) => string;
  /** Other resources this one needs (RDS names of a listener, EDS names of a cluster). */
  readonly refs: (obj: any) => Reference[];
}

const P = 'type.googleapis.com/';
export const CLUSTER = `${P}envoy.config.cluster.v3.Cluster`;
export const ENDPOINT = `${P}envoy.config.endpoint.v3.ClusterLoadAssignment`;
export const LISTENER = `${P}envoy.config.listener.v3.Listener`;
export const ROUTE = `${P}envoy.config.route.v3.RouteConfiguration`;
const HCM = `${P}envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager`;

function hcmRouteNames(listener: any): string[] {
  const hcms: any[] = [];
  if (listener.api_listener?.api_listener) hcms.push(listener.api_listener.api_listener);
  for (const chain of [...(listener.filter_chains ?? []), ...(listener.default_filter_chain ? [listener.default_filter_chain] : [])]) {
    for (const filter of chain.filters ?? []) if (filter.typed_config) hcms.push(filter.typed_config);
  }
  return hcms
    .filter((c) => c['@type'] === HCM && c.rds?.route_config_name)
    .map((c) => c.rds.route_config_name as string);
}

const TYPES: readonly ResourceType[] = [
  {
    short: 'CDS',
    typeUrl: CLUSTER,
    message: 'envoy.config.cluster.v3.Cluster',
    order: 0,
    fullState: true,
    nameOf: (c) => c.name,
    refs: (c) =>
      c.type === 'EDS' ? [{ typeUrl: ENDPOINT, name: c.eds_cluster_config?.service_name || c.name }] : [],
  },
  {
    short: 'EDS',
    typeUrl: ENDPOINT,
    message: 'envoy.config.endpoint.v3.ClusterLoadAssignment',
    order: 1,
    fullState: false,
    nameOf: (e) => e.cluster_name,
    refs: () => [],
  },
  {
    short: 'LDS',
    typeUrl: LISTENER,
    message: 'envoy.config.listener.v3.Listener',
    order: 2,
    fullState: true,
    nameOf: (l) => l.name,
    refs: (l) => hcmRouteNames(l).map((name) => ({ typeUrl: ROUTE, name })),
  },
  {
    short: 'RDS',
    typeUrl: ROUTE,
    message: 'envoy.config.route.v3.RouteConfiguration',
    order: 3,
    fullState: false,
    nameOf: (r) => r.name,
    refs: () => [],
  },
];

const BY_URL = new Map(TYPES.map((t) => [t.typeUrl, t]));

/** All registered types in ADS push order. */
export const RESOURCE_TYPES: readonly ResourceType[] = [...TYPES].sort((a, b) => a.order - b.order);

export function resourceType(typeUrl: string): ResourceType | undefined {
  return BY_URL.get(typeUrl);
}
