/**
 * CSDS (`envoy.service.status.v3.ClientStatusDiscoveryService`) on the ADS port: per connected proxy, the
 * resources it was sent with their versions and client status, for standard xDS tooling.
 */
import * as grpc from '@grpc/grpc-js';
import type { SnapshotCache } from './cache.js';
import { envoyRoot } from './protos.js';
import { syncState, type ProxyConnection, type ProxyRegistry } from './status.js';

const CONFIG_STATUS = { SYNCED: 'SYNCED', 'NOT SENT': 'NOT_SENT', STALE: 'STALE', NACKED: 'ERROR' } as const;

function codec(name: string): { serialize: (v: object) => Buffer; deserialize: (b: Buffer) => any } {
  const type = envoyRoot().lookupType(name);
  return {
    serialize: (v) => Buffer.from(type.encode(type.fromObject(v)).finish()),
    deserialize: (b) => type.toObject(type.decode(b), { enums: String, longs: Number, defaults: false }),
  };
}

const req = codec('envoy.service.status.v3.ClientStatusRequest');
const res = codec('envoy.service.status.v3.ClientStatusResponse');
const PREFIX = '/envoy.service.status.v3.ClientStatusDiscoveryService';

export const CSDS_SERVICE: grpc.ServiceDefinition = {
  StreamClientStatus: {
    path: `${PREFIX}/StreamClientStatus`,
    requestStream: true,
    responseStream: true,
    requestSerialize: req.serialize,
    requestDeserialize: req.deserialize,
    responseSerialize: res.serialize,
    responseDeserialize: res.deserialize,
  },
  FetchClientStatus: {
    path: `${PREFIX}/FetchClientStatus`,
    requestStream: false,
    responseStream: false,
    requestSerialize: req.serialize,
    requestDeserialize: req.deserialize,
    responseSerialize: res.serialize,
    responseDeserialize: res.deserialize,
  },
};

function matchString(m: any, value: string): boolean {
  if (!m) return true;
  if (m.exact !== undefined) return value === m.exact;
  if (m.prefix !== undefined) return value.startsWith(m.prefix);
  if (m.suffix !== undefined) return value.endsWith(m.suffix);
  if (m.contains !== undefined) return value.includes(m.contains);
  if (m.safe_regex?.regex !== undefined) return new RegExp(`^(?:${m.safe_regex.regex})$`).test(value);
  return true;
}

function timestamp(d: Date | undefined): object | undefined {
  return d ? { seconds: Math.floor(d.getTime() / 1000), nanos: (d.getTime() % 1000) * 1e6 } : undefined;
}

function clientConfig(c: ProxyConnection, cache: SnapshotCache, withContents: boolean): object {
  const snapshot = cache.peek(c.key);
  const generic: object[] = [];
  for (const [typeUrl, s] of [...c.types].sort(([a], [b]) => (a < b ? -1 : 1))) {
    const state = syncState(s);
    for (const name of s.names) {
      const r = snapshot?.get(typeUrl)?.resources.get(name);
      generic.push({
        type_url: typeUrl,
        name,
        version_info: s.sentVersion ?? '',
        ...(withContents && r ? { xds_config: { type_url: typeUrl, value: r.body } } : {}),
        ...(s.sentAt ? { last_updated: timestamp(s.sentAt) } : {}),
        config_status: CONFIG_STATUS[state],
        client_status: state === 'NACKED' ? 'NACKED' : state === 'SYNCED' ? 'ACKED' : 'REQUESTED',
        ...(s.lastNack && state === 'NACKED'
          ? { error_state: { details: s.lastNack.error, version_info: s.lastNack.version, last_update_attempt: timestamp(s.lastNack.at) } }
          : {}),
      });
    }
  }
  const metadata = {
    fields: {
      namespace: { stringValue: c.identity.namespace },
      serviceAccount: { stringValue: c.identity.serviceAccount },
      ...(c.identity.podName ? { podName: { stringValue: c.identity.podName } } : {}),
    },
  };
  return { node: { id: c.identity.nodeId, user_agent_name: c.identity.userAgent, metadata }, generic_xds_configs: generic };
}

export function clientStatus(request: any, registry: ProxyRegistry, cache: SnapshotCache): object {
  const matchers: any[] = request?.node_matchers ?? [];
  const conns = [...registry.connections]
    .filter((c) => matchers.length === 0 || matchers.some((m) => matchString(m.node_id, c.identity.nodeId)))
    .sort((a, b) => (a.identity.nodeId < b.identity.nodeId ? -1 : a.identity.nodeId > b.identity.nodeId ? 1 : a.id - b.id));
  return { config: conns.map((c) => clientConfig(c, cache, !request?.exclude_resource_contents)) };
}

export function csdsImplementation(registry: ProxyRegistry, cache: SnapshotCache): grpc.UntypedServiceImplementation {
  return {
    FetchClientStatus: (call: grpc.ServerUnaryCall<any, object>, cb: grpc.sendUnaryData<object>) => cb(null, clientStatus(call.request, registry, cache)),
    StreamClientStatus: (call: grpc.ServerDuplexStream<any, object>) => {
      call.on('data', (r) => call.write(clientStatus(r, registry, cache)));
      call.on('end', () => call.end());
      call.on('error', () => call.end());
    },
  };
}
