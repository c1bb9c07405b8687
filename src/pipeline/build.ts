/**
 * MeshIR -> one Snapshot per proxy key. What every proxy shares (outbound clusters, endpoints, the outbound
 * listener) is encoded once per IR; what differs (route configs: caller namespace and retry policies; the
 * inbound side) is assembled from pieces encoded once each (virtual hosts), so a mesh of 1,000 identities
 * costs little more than one.
 */
import type { MeshIR, PortIR, ServiceIR } from '../compile/ir.js';
import { clusterLoadAssignment } from '../envoy/endpoints.js';
import { localCluster, outboundCluster, passthroughCluster } from '../envoy/clusters.js';
import { apiListener, inboundFilterChain, inboundListener, outboundFilterChain, outboundListener } from '../envoy/listeners.js';
import { envoyRetryPolicy, inboundVirtualHost, outboundVirtualHost, serviceDomains } from '../envoy/routes.js';
import { inboundRouteName, outboundRouteName } from '../envoy/common.js';
import { encodeMessage } from '../xds/encode.js';
import { parseProxyKey, type ProxyKind } from '../xds/node.js';
import { buildSnapshot, makeResource, resourceFromObject, TypeSet, type Resource, type Snapshot } from '../xds/snapshot.js';
import { CLUSTER, ENDPOINT, LISTENER, ROUTE } from '../xds/types.js';
import { lenField } from '../xds/wire.js';

/** Values kept across builds while they are used; dropped after a build that did not use them. */
class Memo<V> {
  private current = new Map<string, V>();
  private previous = new Map<string, V>();
  hits = 0;
  misses = 0;
  get(key: string, make: () => V): V {
    let v = this.current.get(key);
    if (v !== undefined) {
      this.hits++;
      return v;
    }
    v = this.previous.get(key);
    if (v !== undefined) this.hits++;
    else {
      this.misses++;
      v = make();
    }
    this.current.set(key, v);
    return v;
  }
  generation(): void {
    this.previous = this.current;
    this.current = new Map();
  }
  get size(): number {
    return this.current.size;
  }
}

interface HttpPortGroup {
  port: number;
  entries: { service: ServiceIR; port: PortIR }[];
}

/** What every proxy of the mesh shares, for one IR. */
interface Shared {
  clusters: TypeSet;
  endpoints: TypeSet;
  passthrough: TypeSet;
  outboundListener: Resource;
  httpPorts: HttpPortGroup[];
  services: Map<string, ServiceIR>;
}

export class SnapshotBuilder {
  private ir?: MeshIR;
  private shared?: Shared;
  private readonly resources = new Memo<Resource>();
  private readonly bytes = new Memo<Uint8Array>();
  private readonly sets = new Memo<TypeSet>();

  /**
   * Takes a new IR. Shared parts are rebuilt (from memoized pieces) when the topology changed; when only
   * policies changed they are kept, and pieces not used since are kept too (dropped at the next full update).
   */
  update(ir: MeshIR, opts: { topologyChanged?: boolean } = {}): void {
    this.ir = ir;
    if (opts.topologyChanged === false && this.shared) return;
    this.resources.generation();
    this.bytes.generation();
    this.sets.generation();
    this.shared = this.buildShared(ir);
  }

  get memoStats(): { hits: number; misses: number; pieces: number } {
    return {
      hits: this.resources.hits + this.bytes.hits + this.sets.hits,
      misses: this.resources.misses + this.bytes.misses + this.sets.misses,
      pieces: this.resources.size + this.bytes.size + this.sets.size,
    };
  }

  private resource(typeUrl: string, key: string, make: () => object): Resource {
    return this.resources.get(`${typeUrl}|${key}`, () => resourceFromObject(typeUrl, make()));
  }

  private buildShared(ir: MeshIR): Shared {
    const clusters: Resource[] = [];
    const endpoints: Resource[] = [];
    const chains: object[] = [];
    const matchKeys = new Set<string>();
    const httpPorts = new Map<number, HttpPortGroup>();
    for (const service of ir.services) {
      for (const port of service.ports) {
        clusters.push(this.resource(CLUSTER, `${port.cluster}|${port.http2}`, () => outboundCluster(port)));
        endpoints.push(this.resource(ENDPOINT, JSON.stringify([port.cluster, port.endpoints]), () => clusterLoadAssignment(port)));
        const chain = outboundFilterChain(service, port) as { filter_chain_match: unknown } | undefined;
        const matchKey = chain && JSON.stringify(chain.filter_chain_match);
        if (chain && !matchKeys.has(matchKey!)) {
          matchKeys.add(matchKey!);
          chains.push(chain);
        }
        if (port.protocol === 'http') {
          if (!httpPorts.has(port.dialPort)) httpPorts.set(port.dialPort, { port: port.dialPort, entries: [] });
          httpPorts.get(port.dialPort)!.entries.push({ service, port });
        }
      }
    }
    const listener = outboundListener(chains);
    const endpointSet = this.sets.get(`endpoints|${endpoints.map((r) => r.version).join(',')}`, () => TypeSet.of(ENDPOINT, endpoints));
    const clusterSet = this.sets.get(`clusters|${endpointSet.version}|${clusters.map((r) => r.version).join(',')}`, () => {
      // Checked once here against the endpoints they name, then trusted by every proxy's snapshot.
      buildSnapshot(new Map([[CLUSTER, TypeSet.of(CLUSTER, clusters)], [ENDPOINT, endpointSet]]));
      return TypeSet.of(CLUSTER, clusters, { trusted: true });
    });
    return {
      clusters: clusterSet,
      endpoints: endpointSet,
      passthrough: this.sets.get('passthrough', () => TypeSet.of(CLUSTER, [resourceFromObject(CLUSTER, passthroughCluster())])),
      outboundListener: this.resource(LISTENER, JSON.stringify(listener), () => listener),
      httpPorts: [...httpPorts.values()].sort((a, b) => a.port - b.port),
      services: new Map(ir.services.map((s) => [`${s.namespace}/${s.name}`, s])),
    };
  }

  /** Retry policy (as an Envoy object) per destination service for an identity. */
  private retriesOf(identity: string, kind: ProxyKind): Map<string, object> {
    const out = new Map<string, object>();
    const applied = this.ir!.retries.get(identity);
    if (!applied || !this.ir!.enableRetryPolicy) return out;
    for (const [dst, a] of applied) {
      const policy = envoyRetryPolicy(a.spec, { proxyless: kind === 'proxyless' });
      if (policy) out.set(dst, policy);
    }
    return out;
  }

  /** One `rds-outbound.<port>` route configuration, assembled from virtual hosts encoded once each. */
  private outboundRoute(group: HttpPortGroup, callerNs: string, retries: Map<string, object>): Resource {
    const relevant = group.entries
      .map(({ service }) => `${service.namespace}/${service.name}`)
      .filter((k) => retries.has(k))
      .map((k) => `${k}=${JSON.stringify(retries.get(k))}`);
    const key = `${group.port}|${callerNs}|${relevant.join(';')}`;
    return this.resources.get(`${ROUTE}|${key}`, () => {
      const name = outboundRouteName(group.port);
      const vhosts = group.entries.map(({ service, port }) => {
        const svcKey = `${service.namespace}/${service.name}`;
        const retry = retries.get(svcKey);
        const same = service.namespace === callerNs;
        return this.bytes.get(`vh|${svcKey}|${port.dialPort}|${port.cluster}|${same}|${retry ? JSON.stringify(retry) : ''}`, () =>
          encodeMessage('envoy.config.route.v3.VirtualHost', outboundVirtualHost(service, port, callerNs, retry), `RDS ${name} virtual host of ${svcKey}`),
        );
      });
      const body = Buffer.concat([lenField(1, name), ...vhosts.map((v) => lenField(2, v))]);
      return makeResource(ROUTE, body, name, []);
    });
  }

  /** The snapshot for a proxy key (`sidecar:ns/sa` or `proxyless:ns/sa`). Throws EncodeError/SnapshotError. */
  build(key: string): Snapshot {
    if (!this.ir || !this.shared) throw new Error('no mesh yet');
    const { kind, namespace, serviceAccount } = parseProxyKey(key);
    const identity = `${namespace}/${serviceAccount}`;
    const shared = this.shared;
    const retries = this.retriesOf(identity, kind);
    const routes = shared.httpPorts.map((g) => this.outboundRoute(g, namespace, retries));

    if (kind === 'proxyless') {
      const listeners = this.sets.get(`proxyless-lds|${namespace}`, () =>
        TypeSet.of(
          LISTENER,
          shared.httpPorts.flatMap((g) =>
            g.entries.flatMap(({ service, port }) =>
              serviceDomains(service, port.dialPort, service.namespace === namespace)
                .filter((d) => d.endsWith(`:${port.dialPort}`))
                .map((d) => this.resource(LISTENER, `api|${d}|${port.dialPort}`, () => apiListener(d, port))),
            ),
          ),
        ),
      );
      return buildSnapshot(
        new Map([
          [CLUSTER, shared.clusters],
          [ENDPOINT, shared.endpoints],
          [LISTENER, listeners],
          [ROUTE, TypeSet.of(ROUTE, routes)],
        ]),
      );
    }

    // Sidecar: inbound side for the services this identity's pods back.
    const backing = [...(this.ir.backing.get(identity) ?? [])].sort((a, b) => a.port.targetPort - b.port.targetPort || (a.port.cluster < b.port.cluster ? -1 : 1));
    const byTarget = new Map<number, { service: ServiceIR; port: PortIR }>();
    for (const b of backing) if (!byTarget.has(b.port.targetPort)) byTarget.set(b.port.targetPort, b);
    const localClusters = backing.map((b) => this.resource(CLUSTER, `local|${b.port.cluster}`, () => localCluster(b.port)));
    const inboundRoutes = [...byTarget.values()]
      .filter((b) => b.port.protocol === 'http')
      .map((b) =>
        this.resource(ROUTE, `inbound|${b.port.targetPort}|${b.service.host}|${b.port.cluster}`, () => ({
          name: inboundRouteName(b.port.targetPort),
          virtual_hosts: [inboundVirtualHost(b.service, b.port)],
        })),
      );
    const listeners: Resource[] = [shared.outboundListener];
    if (byTarget.size) {
      const chains = [...byTarget.values()].map((b) => inboundFilterChain(b.service, b.port));
      listeners.push(this.resource(LISTENER, `inbound|${JSON.stringify(chains)}`, () => inboundListener(chains)));
    }
    return buildSnapshot(
      new Map([
        [CLUSTER, TypeSet.union(CLUSTER, [shared.clusters, shared.passthrough, TypeSet.of(CLUSTER, localClusters)])],
        [ENDPOINT, shared.endpoints],
        [LISTENER, TypeSet.of(LISTENER, listeners)],
        [ROUTE, TypeSet.of(ROUTE, [...routes, ...inboundRoutes])],
      ]),
    );
  }

  /** Keys every known identity gets a snapshot for up front (sidecars); proxyless ones are built on demand. */
  eagerKeys(): string[] {
    return (this.ir?.identities ?? []).map((id) => `sidecar:${id}`);
  }
}
