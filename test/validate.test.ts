import { describe, expect, it } from 'vitest';
import { EncodeError, encodeMessage } from '../src/xds/resources/encode.js';
import { loadEnvoyProtos } from '../src/xds/resources/protos.js';
import { resourceFromObject } from '../src/xds/resources/snapshot.js';
import { ROUTE } from '../src/xds/resources/types.js';

function violations(fn: () => unknown): string[] {
  try {
    fn();
  } catch (e) {
    if (e instanceof EncodeError) return e.violations.map((v) => `${v.path}: ${v.message}`);
    throw e;
  }
  return [];
}

const route = (retry: object): object => ({
  name: 'r',
  virtual_hosts: [{ name: 'vh', domains: ['a'], routes: [{ match: { prefix: '' }, route: { cluster: 'c', retry_policy: retry } }] }],
});

describe('validate.rules from the Envoy protos', () => {
  it('loads every message the server encodes, decodes or dumps', () => {
    const { root, loadMs } = loadEnvoyProtos();
    console.log(`proto load: ${loadMs.toFixed(0)} ms`);
    for (const name of [
      'envoy.service.discovery.v3.DeltaDiscoveryRequest',
      'envoy.service.status.v3.ClientStatusResponse',
      'envoy.config.listener.v3.Listener',
      'envoy.config.route.v3.RouteConfiguration',
      'envoy.config.cluster.v3.Cluster',
      'envoy.config.endpoint.v3.ClusterLoadAssignment',
      'envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager',
      'envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy',
      'envoy.extensions.filters.http.router.v3.Router',
      'envoy.extensions.filters.listener.original_dst.v3.OriginalDst',
      'envoy.extensions.upstreams.http.v3.HttpProtocolOptions',
      'envoy.config.bootstrap.v3.Bootstrap',
      'envoy.admin.v3.ConfigDump',
    ]) {
      expect(() => root.lookupType(name), name).not.toThrow();
    }
  });

  it('accepts a correct retry policy', () => {
    expect(violations(() => resourceFromObject(ROUTE, route({ retry_on: '5xx', retry_back_off: { base_interval: { seconds: 1 } } })))).toEqual([]);
  });

  it('requires RetryBackOff.base_interval and wants it > 0', () => {
    const p = 'virtual_hosts[0].routes[0].route.retry_policy.retry_back_off';
    expect(violations(() => encodeMessage('envoy.config.route.v3.RouteConfiguration', route({ retry_back_off: {} })))).toEqual([
      `${p}.base_interval: is required`,
    ]);
    expect(violations(() => encodeMessage('envoy.config.route.v3.RouteConfiguration', route({ retry_back_off: { base_interval: {} } })))).toEqual([
      `${p}.base_interval: must be > 0s`,
    ]);
  });

  it('enforces string, repeated and oneof rules', () => {
    const v = violations(() =>
      encodeMessage('envoy.config.route.v3.RouteConfiguration', {
        name: 'r',
        virtual_hosts: [{ name: '', domains: [], routes: [{ match: { prefix: '' } }] }],
      }),
    );
    expect(v).toEqual([
      'virtual_hosts[0].name: must be at least 1 characters',
      'virtual_hosts[0].domains: must have at least 1 item(s)',
      'virtual_hosts[0].routes[0].action: one of route, redirect, direct_response, filter_action, non_forwarding_action is required',
    ]);
  });

  it('checks inside Any (HCM in a listener) and reports unknown fields and enum names', () => {
    const v = violations(() =>
      encodeMessage('envoy.config.listener.v3.Listener', {
        name: 'l',
        api_listener: {
          api_listener: {
            '@type': 'type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager',
            statPrefix: 'camel',
            codec_type: 'HTTP9',
          },
        },
      }),
    );
    expect(v).toEqual(['api_listener.api_listener.statPrefix: unknown field of envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager', 'api_listener.api_listener.codec_type: unknown CodecType value "HTTP9"']);
    const inner = violations(() =>
      encodeMessage('envoy.config.listener.v3.Listener', {
        name: 'l',
        api_listener: {
          api_listener: {
            '@type': 'type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager',
            rds: { route_config_name: 'r', config_source: { ads: {} } },
          },
        },
      }),
    );
    expect(inner).toEqual(['api_listener.api_listener.stat_prefix: must be at least 1 characters']);
  });

  it('enforces numeric rules on scalars and wrappers', () => {
    const v = violations(() =>
      encodeMessage('envoy.config.endpoint.v3.ClusterLoadAssignment', {
        cluster_name: 'c',
        endpoints: [{ load_balancing_weight: { value: 0 }, lb_endpoints: [{ endpoint: { address: { socket_address: { address: '1.2.3.4', port_value: 70000 } } } }] }],
      }),
    );
    expect(v).toEqual([
      'endpoints[0].lb_endpoints[0].endpoint.address.socket_address.port_value: must be <= 65535',
      'endpoints[0].load_balancing_weight: must be >= 1',
    ]);
  });
});
