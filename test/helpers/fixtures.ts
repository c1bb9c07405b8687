/** Small hand-made Envoy resources for protocol tests (the translator makes the real ones). */
import { CLUSTER, ENDPOINT, LISTENER, ROUTE } from '../../src/xds/resources/types.js';
import { buildSnapshot, resourceFromObject, type Resource, type Snapshot } from '../../src/xds/resources/snapshot.js';

const HCM = 'type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager';
const ROUTER = 'type.googleapis.com/envoy.extensions.filters.http.router.v3.Router';
const ads = { ads: {}, resource_api_version: 'V3' };

export function cluster(name: string, extra: object = {}): Resource {
  return resourceFromObject(CLUSTER, {
    name,
    type: 'EDS',
    eds_cluster_config: { eds_config: ads },
    connect_timeout: { seconds: 1 },
    lb_policy: 'ROUND_ROBIN',
    ...extra,
  });
}

export function endpoints(name: string, port: number, host = '127.0.0.1'): Resource {
  return resourceFromObject(ENDPOINT, {
    cluster_name: name,
    endpoints: [{ locality: {}, load_balancing_weight: { value: 1 }, lb_endpoints: [{ endpoint: { address: { socket_address: { address: host, port_value: port } } } }] }],
  });
}

function hcm(routeName: string): object {
  return {
    '@type': HCM,
    stat_prefix: routeName,
    rds: { route_config_name: routeName, config_source: ads },
    http_filters: [{ name: 'envoy.filters.http.router', typed_config: { '@type': ROUTER } }],
  };
}

/** An api_listener as proxyless gRPC clients want it. */
export function apiListener(name: string, routeName: string): Resource {
  return resourceFromObject(LISTENER, { name, api_listener: { api_listener: hcm(routeName) } });
}

export function retryPolicy(numRetries: number, baseMs = 10): object {
  return {
    retry_on: 'unavailable',
    num_retries: { value: numRetries },
    retry_back_off: { base_interval: { nanos: baseMs * 1e6 }, max_interval: { nanos: baseMs * 2e6 } },
  };
}

export function route(name: string, domain: string, clusterName: string, retry?: object): Resource {
  return resourceFromObject(ROUTE, {
    name,
    virtual_hosts: [
      {
        name: `vh-${domain}`,
        domains: [domain],
        routes: [{ match: { prefix: '' }, route: { cluster: clusterName, ...(retry ? { retry_policy: retry } : {}) } }],
      },
    ],
  });
}

/** listener `l`, route `r` -> cluster `c` -> endpoints on `port`. */
export function simpleSnapshot(opts: { port?: number; listener?: string; retry?: object; clusters?: string[] } = {}): Snapshot {
  const listener = opts.listener ?? 'l1';
  const clusters = opts.clusters ?? ['c1'];
  return buildSnapshot([
    ...clusters.map((c) => cluster(c)),
    ...clusters.map((c) => endpoints(c, opts.port ?? 8080)),
    apiListener(listener, 'r1'),
    route('r1', listener, clusters[0], opts.retry),
  ]);
}
