/**
 * MeshIR -> one Snapshot per proxy key. What every proxy shares (outbound clusters, endpoints, the outbound
 * listener) is encoded once per IR; what differs (route configs: caller namespace and retry policies; the
 * inbound side) is assembled from pieces encoded once each (virtual hosts), so a mesh of 1,000 identities
 * costs little more than one.
 */
import type { MeshIR, PortIR, ServiceIR } from '../compile/ir.js';
import { clusterLoadAssignment } from '../envoy/endpoints.js';
import { localCluster, outboundCluster, passthroughCluster } from '../envoy/clusters.js';
import { apiListener, inboundFilterChain, inboundListener, outboundFilterChain, outboundListener, serviceListener } from '../envoy/listeners.js';
import { inboundVirtualHost, outboundVirtualHost, serviceRoute } from '../envoy/routes.js';
import { producerFeatures, type RouteFeatures } from '../compile/features.js';
import { portKey } from '../compile/routes.js';
import { INBOUND_LISTENER, OUTBOUND_LISTENER, inboundRouteName, outboundRouteName, outboundVirtualHostName, serviceRouteName } from '../envoy/common.js';
import { contentHash, encodeMessage } from '../xds/resources/encode.js';
import { planOutbound, planProxy, portOf, serviceDomains, type ProxyPlan } from '../compile/plan.js';
import { assembleResource, buildSnapshot, checkFilterChains, checkVirtualHosts, chunkOf, makeResource, refsOf, Resource, resourceFromObject, SnapshotError, TypeSet, type Snapshot } from '../xds/resources/snapshot.js';
import { CLUSTER, ENDPOINT, LISTENER, RESOURCE_TYPES, ROUTE, SECRET } from '../xds/resources/types.js';
import { caSecret, identitySecret, type IdentityCert, type MeshSecrets } from '../envoy/tls.js';
import { spiffeId } from '../security/spiffe.js';
import { lenField, lenFieldParts } from '../xds/resources/wire.js';

/** How many ClusterIP service route configurations a chunk of the shared set holds, about. */
const ROUTES_PER_CHUNK = 32;

/** Ports with more endpoints than this have them encoded ahead of the build, this many per turn (`prepare`). */
export const ENDPOINT_SLICE = 2_000;
const LOCALITY_LB_ENDPOINTS = 'envoy.config.endpoint.v3.LocalityLbEndpoints';
const CLUSTER_LOAD_ASSIGNMENT = 'envoy.config.endpoint.v3.ClusterLoadAssignment';

/** The memo key of a port's ClusterLoadAssignment: all it is made of. */
const endpointsKey = (port: PortIR): string => JSON.stringify([port.cluster, port.endpoints]);

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
  /** Whether `key` is held (for this build or the last one). */
  has(key: string): boolean {
    return this.current.has(key) || this.previous.has(key);
  }
  /** Holds a value made ahead of the build that will ask for it. */
  put(key: string, v: V): void {
    this.current.set(key, v);
  }
  generation(): void {
    this.previous = this.current;
    this.current = new Map();
  }
  get size(): number {
    return this.current.size;
  }
}

/** An encoded message as a field record of its parent (or the parent's own fields), with its content hash. */
interface Piece {
  bytes: Uint8Array;
  hash: string;
}

interface HttpPortGroup {
  port: number;
  /** Hash of what the group's route configurations are made of (services, ports, clusters). */
  sig: string;
  /** Name field of the route configuration `rds-outbound.<port>`. */
  namePiece: Piece;
  entries: { service: ServiceIR; port: PortIR; key: string; plain: [Piece?, Piece?] }[];
  /** Service `ns/name` -> its index in `entries`. */
  index: Map<string, number>;
}

/** A ClusterIP service's HTTP port, whose listener names the service port's own route configuration. */
interface ServiceRoute {
  readonly service: ServiceIR;
  readonly port: PortIR;
  /** `ns/name` of the service (how a plan names a Retry's destination). */
  readonly key: string;
  readonly name: string;
}

/** A route configuration in which some virtual hosts carry a Retry, and those virtual hosts. */
/** The shared route chunks with the producer routes in (`SnapshotBuilder.routeDefaults`), and what they were made of. */
interface RouteDefaults {
  readonly shared: Shared;
  readonly features: ReadonlyMap<string, RouteFeatures>;
  /** Each service port's route configuration with its producer routes, by plain version and features. */
  readonly routes: Map<string, Resource>;
  /** The chunks that hold such a route, by index and content. */
  readonly chunkSets: Map<string, TypeSet>;
  readonly chunks: TypeSet[];
}

interface Variant {
  readonly resource: Resource;
  readonly hosts: Piece[];
}

/** What one proxy's snapshot is assembled from: its plan, and what every proxy shares. */
interface ProxyParts {
  readonly plan: ProxyPlan;
  readonly shared: Shared;
}

/** What every proxy of the mesh shares, for one IR. */
interface Shared {
  /** Destination clusters as proxyless clients get them (plaintext: no mTLS in the pinned gRPC clients). */
  clusters: TypeSet;
  /** Destination clusters as sidecars get them: with mTLS on, each to its pods' identities. */
  sidecarClusters: TypeSet;
  endpoints: TypeSet;
  passthrough: TypeSet;
  /** The 15001 listener and one listener per ClusterIP service port, checked against sidecarHttpPorts. */
  outboundListeners: TypeSet;
  httpPorts: HttpPortGroup[];
  /**
   * The HTTP port groups the 15001 listener has a filter chain for (headless services): a sidecar gets only their
   * route configurations (Envoy asks only for what its listeners name). Proxyless clients get every group (their
   * listeners name them all).
   */
  sidecarHttpPorts: HttpPortGroup[];
  /** The HTTP ports of ClusterIP services, each with its own listener and route configuration (for sidecars), by service. */
  serviceRoutes: Map<string, ServiceRoute[]>;
  /** The same, by route configuration name. */
  routeByName: Map<string, ServiceRoute>;
  /**
   * Their route configurations without a Retry, in chunks (`TypeSet.chunks`): what every sidecar gets, a caller
   * with a Retry for some services having the chunks that hold those replaced.
   */
  serviceRouteChunks: TypeSet[];
  /** Hash of all HTTP port groups (what proxyless listeners are made of). */
  httpSig: string;
}

const NO_SECRETS = TypeSet.of(SECRET, []);

export class SnapshotBuilder {
  private ir?: MeshIR;
  private shared?: Shared;
  private readonly resources = new Memo<Resource>();
  private readonly pieces = new Memo<Piece>();
  private readonly sets = new Memo<TypeSet>();
  /**
   * Route configurations in which some virtual hosts carry a Retry, and those virtual hosts. Every policy edit
   * makes new ones, so they are kept only while a published snapshot holds them (`retain`), not per topology.
   */
  private readonly variants = new Map<string, Variant>();
  /** The variants each key's snapshot holds, as last built (`retain`), and those the build under way uses. */
  private readonly variantsOf = new Map<string, Variant[]>();
  private using?: Variant[];
  /**
   * The shared route configurations with the producer routes in them (what a caller with no consumer route and no
   * Retry gets), for the IR's routes and the shared parts they were made for; the resources and chunks of the last
   * ones are reused by the next (a producer route edit makes one new resource and one new chunk, for every sidecar).
   */
  private defaults?: RouteDefaults;
  private readonly retryHosts = new Map<string, Piece>();
  /** Each identity's SDS certificate resource, by identity, while its certificate is current. */
  private readonly identitySecrets = new Map<string, { cert: IdentityCert; resource: Resource }>();
  private secrets?: MeshSecrets;
  private caResource?: Resource;

  /**
   * `trustDomain`: sidecar-to-sidecar mTLS is on (the control plane issues certificates from the mesh CA): every
   * sidecar's inbound side requires a certificate from the mesh CA and its destination clusters present its own and
   * verify the destination's SPIFFE ids; a sidecar's snapshot then needs its certificate (`setSecrets`).
   */
  constructor(private readonly opts: { trustDomain?: string } = {}) {
    const missing = RESOURCE_TYPES.filter((t) => !this.assembly[t.typeUrl]).map((t) => t.short);
    if (missing.length) throw new Error(`registered resource types with no assembly in pipeline/build.ts: ${missing.join(', ')}`);
  }

  get mtls(): boolean {
    return this.opts.trustDomain !== undefined;
  }

  /** New certificates or a new CA bundle: only SDS changes (the caller rebuilds the identities concerned). */
  setSecrets(secrets: MeshSecrets): void {
    if (secrets.bundle !== this.secrets?.bundle) this.caResource = resourceFromObject(SECRET, caSecret(secrets.bundle));
    this.secrets = secrets;
    for (const [id, kept] of this.identitySecrets) if (secrets.certs.get(id) !== kept.cert) this.identitySecrets.delete(id);
  }

  /** Whether a proxy key's snapshot can be built: with mTLS, a sidecar's needs its identity's certificate. */
  hasSecrets(key: string): boolean {
    if (!this.mtls || !key.startsWith('sidecar:')) return true;
    return Boolean(this.caResource && this.secrets?.certs.has(key.slice('sidecar:'.length)));
  }

  /**
   * Takes a new IR. Shared parts are rebuilt (from memoized pieces) when the topology changed; when only
   * policies changed they are kept, and pieces not used since are kept too (dropped at the next full update).
   */
  update(ir: MeshIR, opts: { topologyChanged?: boolean } = {}): void {
    if (opts.topologyChanged === false && this.shared) {
      this.ir = ir;
      return;
    }
    this.resources.generation();
    this.pieces.generation();
    this.sets.generation();
    // If the shared part fails its checks, this throws and the builder keeps the previous IR and parts.
    const shared = this.buildShared(ir);
    this.ir = ir;
    this.shared = shared;
  }

  get memoStats(): { hits: number; misses: number; pieces: number } {
    return {
      hits: this.resources.hits + this.pieces.hits + this.sets.hits,
      misses: this.resources.misses + this.pieces.misses + this.sets.misses,
      pieces: this.resources.size + this.pieces.size + this.sets.size + this.variants.size + this.retryHosts.size,
    };
  }

  /**
   * Drops the route variants (and their Retry virtual hosts) that no published snapshot holds: those of the keys
   * given (the published ones) as each was last built.
   */
  retain(published: Iterable<string>): void {
    const live = new Set<Variant>();
    const keys = new Set(published);
    for (const [key, used] of this.variantsOf) {
      if (keys.has(key)) for (const v of used) live.add(v);
      else this.variantsOf.delete(key);
    }
    const hosts = new Set<Piece>();
    for (const [key, v] of this.variants) {
      if (live.has(v)) for (const h of v.hosts) hosts.add(h);
      else this.variants.delete(key);
    }
    for (const [key, h] of this.retryHosts) if (!hosts.has(h)) this.retryHosts.delete(key);
  }

  /**
   * Encodes ahead of `update` the endpoints of every port with more than ENDPOINT_SLICE of them, a slice at a time
   * with a turn of the event loop (`turn`) after each, so that one EndpointSlice of 50,000 endpoints does not hold
   * the loop for the whole of its encoding; `update` then finds them made. The bytes, hence the version, are those
   * of the one-shot encoding.
   */
  async prepare(ir: MeshIR, turn: () => Promise<void>): Promise<void> {
    for (const service of ir.services) {
      for (const port of service.ports) {
        if (port.endpoints.length <= ENDPOINT_SLICE) continue;
        const key = `${ENDPOINT}|${endpointsKey(port)}`;
        if (this.resources.has(key)) continue;
        const cla = clusterLoadAssignment(port);
        const locality = cla.endpoints![0]!;
        const label = `EDS ${port.cluster}`;
        // LocalityLbEndpoints in field order (locality 1, lb_endpoints 2, load_balancing_weight 3): its fields
        // before the endpoints, the endpoints a slice at a time, the fields after. Concatenated protobuf of one
        // message is that message; lb_endpoints has no rule on the list as a whole, so each slice is checked alone.
        const parts: Uint8Array[] = [encodeMessage(LOCALITY_LB_ENDPOINTS, { locality: locality.locality }, label)];
        const all = locality.lb_endpoints!;
        for (let at = 0; at < all.length; at += ENDPOINT_SLICE) {
          await turn();
          parts.push(encodeMessage(LOCALITY_LB_ENDPOINTS, { lb_endpoints: all.slice(at, at + ENDPOINT_SLICE) }, label));
        }
        parts.push(encodeMessage(LOCALITY_LB_ENDPOINTS, { load_balancing_weight: locality.load_balancing_weight }, label));
        await turn();
        const body = Buffer.concat([encodeMessage(CLUSTER_LOAD_ASSIGNMENT, { cluster_name: cla.cluster_name }, label), ...lenFieldParts(2, parts)]);
        this.resources.put(key, makeResource(ENDPOINT, body, port.cluster, refsOf(ENDPOINT, cla)));
      }
    }
  }

  private resource(typeUrl: string, key: string, make: () => object): Resource {
    return this.resources.get(`${typeUrl}|${key}`, () => resourceFromObject(typeUrl, make()));
  }

  private buildShared(ir: MeshIR): Shared {
    const clusters: Resource[] = [];
    const sidecarClusters: Resource[] = [];
    const endpoints: Resource[] = [];
    const sans = this.mtls ? this.destinationIds(ir) : new Map<string, string[]>();
    const matches = planOutbound(ir);
    // Headless services' pod addresses stay filter chains of the 15001 listener; ClusterIP service ports get
    // listeners of their own.
    const chains = matches.filter((m) => m.service.headless).map(outboundFilterChain);
    checkFilterChains(OUTBOUND_LISTENER, chains);
    const chainPieces = chains.map((chain) => this.piece(3, 'envoy.config.listener.v3.FilterChain', chain, `LDS ${OUTBOUND_LISTENER} filter chain ${chain.name}`));
    const httpPorts = new Map<number, HttpPortGroup>();
    const clusterNames = new Set<string>();
    for (const service of ir.services) {
      for (const port of service.ports) {
        // Two ports of a service with the same target port (80 -> 8080 and 8080 -> 8080) share one cluster.
        if (!clusterNames.has(port.cluster)) {
          clusterNames.add(port.cluster);
          const budget = ir.retryBudget;
          const key = `${port.cluster}|${port.protocol}|${port.http2}|${budget ? `${budget.budgetPercent}/${budget.minRetryConcurrency}` : '-'}`;
          const plain = this.resource(CLUSTER, key, () => outboundCluster(port, budget));
          clusters.push(plain);
          // With mTLS, a destination whose pods are the mesh's (identities known) is reached over mTLS; one with none
          // (endpoints that are not the mesh's pods) in plaintext, as before.
          const ids = sans.get(port.cluster);
          const tls = ids ? { sni: service.host, sans: ids } : undefined;
          sidecarClusters.push(tls ? this.resource(CLUSTER, `${key}|tls|${tls.sni}|${ids!.join(',')}`, () => outboundCluster(port, budget, tls)) : plain);
          endpoints.push(this.resource(ENDPOINT, endpointsKey(port), () => clusterLoadAssignment(port)));
        }
        if (port.protocol === 'http') {
          if (!httpPorts.has(port.dialPort)) {
            const name = lenField(1, outboundRouteName(port.dialPort));
            httpPorts.set(port.dialPort, { port: port.dialPort, sig: '', namePiece: { bytes: name, hash: contentHash(name) }, entries: [], index: new Map() });
          }
          const key = `${service.namespace}/${service.name}`;
          const group = httpPorts.get(port.dialPort)!;
          // One virtual host per service and dial port: two ports of a headless service on one target port
          // are dialled alike (the first one's route is used; a second virtual host would repeat its domains).
          if (group.index.has(key)) continue;
          group.index.set(key, group.entries.length);
          group.entries.push({ service, port, key, plain: [] });
        }
      }
    }
    // The 15001 listener is assembled from its filter chains, each encoded once (a change to a headless service
    // re-encodes only the chains it touched); a ClusterIP service port's listener is encoded once per content.
    const header = this.piece(0, 'envoy.config.listener.v3.Listener', outboundListener([]), `LDS ${OUTBOUND_LISTENER}`);
    const assembled = assembleResource(LISTENER, OUTBOUND_LISTENER, [header, ...chainPieces], refsOf(LISTENER, outboundListener(chains)));
    const listeners = [this.resources.get(`${LISTENER}|outbound|${assembled.version}`, () => assembled)];
    for (const m of matches) {
      if (m.service.headless) continue;
      const listener = serviceListener(m);
      listeners.push(this.resource(LISTENER, JSON.stringify(listener), () => listener));
    }
    const endpointSet = this.sets.get(`endpoints|${endpoints.map((r) => r.version).join(',')}`, () => TypeSet.of(ENDPOINT, endpoints));
    const clusterSet = this.sets.get(`clusters|${endpointSet.version}|${clusters.map((r) => r.version).join(',')}`, () => {
      // Checked once here against the endpoints they name, then trusted by every proxy's snapshot.
      buildSnapshot(new Map([[CLUSTER, TypeSet.of(CLUSTER, clusters)], [ENDPOINT, endpointSet]]));
      return TypeSet.of(CLUSTER, clusters, { trusted: true });
    });
    const sidecarClusterSet = !this.mtls
      ? clusterSet
      : this.sets.get(`sidecar-clusters|${endpointSet.version}|${sidecarClusters.map((r) => r.version).join(',')}`, () => {
          buildSnapshot(new Map([[CLUSTER, TypeSet.of(CLUSTER, sidecarClusters)], [ENDPOINT, endpointSet]]));
          return TypeSet.of(CLUSTER, sidecarClusters, { trusted: true });
        });
    // Memo keys must name everything a value is made of: a key that outlives the topology it was built from
    // would hand out a stale resource.
    const groups = [...httpPorts.values()].sort((a, b) => a.port - b.port);
    // 15001's own filter chains (headless services) name `rds-outbound.<port>`; a ClusterIP service port's listener
    // names the service's own route configuration.
    const chained = new Set(matches.filter((m) => m.service.headless && m.port.protocol === 'http').map((m) => m.port.dialPort));
    const serviceRoutes = new Map<string, ServiceRoute[]>();
    for (const { service, port } of matches.filter((m) => !m.service.headless && m.port.protocol === 'http')) {
      const key = `${service.namespace}/${service.name}`;
      serviceRoutes.set(key, [...(serviceRoutes.get(key) ?? []), { service, port, key, name: serviceRouteName(service.host, port.dialPort) }]);
    }
    const plainRoutes = [...serviceRoutes.values()].flat().map((r) => this.serviceRoute(r, undefined));
    // Chunks of about 32: a service added or changed is a new chunk, every other chunk the same set as before.
    const count = Math.max(1, Math.ceil(plainRoutes.length / ROUTES_PER_CHUNK));
    const serviceRouteChunks = TypeSet.chunks(ROUTE, plainRoutes, count).map((c, i) =>
      this.sets.get(`svc-routes|${i}/${count}|${c.version}`, () => c),
    );
    for (const g of groups) g.sig = contentHash(`${g.port}\n${g.entries.map((e) => `${e.key}|${e.port.cluster}`).join('\n')}`);
    const sidecarHttpPorts = groups.filter((g) => chained.has(g.port));
    const outboundListeners = this.sets.get(`outbound-lds|${listeners.map((r) => r.version).join(',')}`, () => {
      // Checked once here against the route configurations every sidecar gets, then trusted by each snapshot.
      const routes = new Set([...sidecarHttpPorts.map((g) => outboundRouteName(g.port)), ...plainRoutes.map((r) => r.name)]);
      const missing = listeners.flatMap((l) => l.refs.filter((r) => !routes.has(r.name)).map((r) => `LDS "${l.name}" refers to RDS "${r.name}", which is not in the snapshot`));
      if (missing.length) throw new SnapshotError(missing);
      return TypeSet.of(LISTENER, listeners, { trusted: true });
    });
    return {
      clusters: clusterSet,
      sidecarClusters: sidecarClusterSet,
      endpoints: endpointSet,
      passthrough: this.sets.get('passthrough', () => TypeSet.of(CLUSTER, [resourceFromObject(CLUSTER, passthroughCluster())])),
      outboundListeners,
      httpPorts: groups,
      sidecarHttpPorts,
      serviceRoutes,
      routeByName: new Map([...serviceRoutes.values()].flat().map((r) => [r.name, r])),
      serviceRouteChunks,
      httpSig: contentHash(groups.map((g) => g.sig).join(',')),
    };
  }

  /** The SPIFFE ids of the pods behind each destination cluster (sorted), for clusters that have any. */
  private destinationIds(ir: MeshIR): Map<string, string[]> {
    const ids = new Map<string, Set<string>>();
    for (const [identity, refs] of Object.entries(ir.backing)) {
      const [ns, sa] = identity.split('/') as [string, string];
      for (const ref of refs) {
        const p = portOf(ir, ref.service, ref.port);
        if (!p) continue;
        let set = ids.get(p.port.cluster);
        if (!set) ids.set(p.port.cluster, (set = new Set()));
        set.add(spiffeId(this.opts.trustDomain!, ns, sa));
      }
    }
    return new Map([...ids].map(([c, set]) => [c, [...set].sort()]));
  }

  /**
   * A message encoded and validated once per distinct content, as field `fieldNo` of its parent
   * (0: the message itself, to be followed by more fields).
   */
  private piece(fieldNo: number, message: string, obj: object, label: string): Piece {
    const json = JSON.stringify(obj);
    return this.pieces.get(`${message}|${fieldNo}|${json}`, () => {
      const bytes = encodeMessage(message, obj, label);
      return { bytes: fieldNo ? lenField(fieldNo, bytes) : bytes, hash: contentHash(bytes) };
    });
  }

  /** A virtual host, encoded and validated once per distinct content. */
  private virtualHost(entry: HttpPortGroup['entries'][number], callerNs: string, features: RouteFeatures | undefined, proxyless: boolean): Piece {
    const same = entry.service.namespace === callerNs;
    // Without features the virtual host depends only on whether the caller shares the namespace: kept on the entry.
    if (!features && entry.plain[same ? 1 : 0]) return entry.plain[same ? 1 : 0]!;
    const make = (): Piece => {
      const bytes = encodeMessage(
        'envoy.config.route.v3.VirtualHost',
        outboundVirtualHost(entry.service, entry.port, callerNs, features, { proxyless }),
        `RDS ${outboundRouteName(entry.port.dialPort)} virtual host of ${entry.key}`,
      );
      return { bytes: lenField(2, bytes), hash: contentHash(bytes) };
    };
    const key = `vh|${entry.key}|${entry.port.dialPort}|${entry.port.cluster}|${same}`;
    if (!features) return (entry.plain[same ? 1 : 0] = this.pieces.get(key, make));
    // Memo keys name everything a value is made of: the backends' clusters are in the features' key.
    const retryKey = `${key}|${proxyless}|${features.key}`;
    let piece = this.retryHosts.get(retryKey);
    if (!piece) this.retryHosts.set(retryKey, (piece = make()));
    return piece;
  }

  /**
   * One `rds-outbound.<port>` route configuration, assembled from virtual hosts encoded once each. Callers in
   * the same namespace share one; a caller with Retry policies gets that one with its few virtual hosts
   * replaced, at a cost that does not grow with the number of services.
   */
  private outboundRoute(group: HttpPortGroup, callerNs: string, features: ReadonlyMap<string, RouteFeatures>, proxyless: boolean): Resource {
    const base = this.resources.get(`${ROUTE}|${group.sig}|${callerNs}`, () => {
      const name = outboundRouteName(group.port);
      checkVirtualHosts(
        name,
        group.entries.map((e) => ({ name: outboundVirtualHostName(e.service.host), domains: serviceDomains(e.service, e.port.dialPort, e.service.namespace === callerNs) })),
      );
      return assembleResource(ROUTE, name, [group.namePiece, ...group.entries.map((e) => this.virtualHost(e, callerNs, undefined, false))]);
    });
    const overrides: [number, Piece][] = [];
    for (const [at, f] of features) {
      const i = group.index.get(at.slice(0, at.lastIndexOf(':')));
      if (i !== undefined && portKey(group.entries[i].key, group.entries[i].port.port) === at) overrides.push([i, this.virtualHost(group.entries[i], callerNs, f, proxyless)]);
    }
    if (overrides.length === 0) return base;
    overrides.sort((a, b) => a[0] - b[0]);
    const variant = overrides.map(([i, p]) => `${i}:${p.hash}`).join(',');
    const key = `${base.version}|${variant}`;
    let v = this.variants.get(key);
    if (!v) {
      const replaced = new Map(overrides.map(([i, p]) => [i + 1, p.bytes]));
      const resource = new Resource(ROUTE, base.name, contentHash(`${base.version}\n${variant}`), () => base.parts.map((part, j) => replaced.get(j) ?? part), []);
      this.variants.set(key, (v = { resource, hosts: overrides.map(([, p]) => p) }));
    }
    this.using?.push(v);
    return v.resource;
  }

  /**
   * A ClusterIP service port's route configuration: one per content, shared by every caller with the same Retry
   * for it (most have none). Those with a Retry are kept only while published (`retain`), as route variants are.
   */
  private serviceRoute(r: ServiceRoute, features: RouteFeatures | undefined): Resource {
    const key = `${ROUTE}|svc|${r.name}|${r.port.cluster}`;
    if (!features) return this.resources.get(key, () => resourceFromObject(ROUTE, serviceRoute(r.service, r.port, undefined)));
    const retryKey = `${key}|${features.key}`;
    let v = this.variants.get(retryKey);
    if (!v) this.variants.set(retryKey, (v = { resource: resourceFromObject(ROUTE, serviceRoute(r.service, r.port, features)), hosts: [] }));
    this.using?.push(v);
    return v.resource;
  }

  /**
   * The shared route chunks with the producer routes' features in (`defaults`), made again only when the routes or
   * the shared parts changed. Each service port's resource and each chunk are taken from the last ones where they
   * are the same, so a sidecar's set differs from its last one in the chunk of the route edited, and every sidecar
   * shares that chunk (compared once).
   */
  private routeDefaults(shared: Shared): RouteDefaults {
    const features = producerFeatures(this.ir!);
    const last = this.defaults;
    if (last?.shared === shared && last.features === features) return last;
    const routes = new Map<string, Resource>();
    const chunkSets = new Map<string, TypeSet>();
    const chunks = shared.serviceRouteChunks.map((chunk, i) => {
      let changed = false;
      const list = [...chunk.resources.values()].map((plain) => {
        const r = shared.routeByName.get(plain.name)!;
        const f = features.get(portKey(r.key, r.port.port));
        if (!f) return plain;
        changed = true;
        const key = `${plain.name}|${plain.version}|${f.key}`;
        let made = last?.routes.get(key);
        if (!made) made = resourceFromObject(ROUTE, serviceRoute(r.service, r.port, f));
        routes.set(key, made);
        return made;
      });
      if (!changed) return chunk;
      const key = `${i}/${chunk.chunk!.count}|${list.map((r) => r.version).join(',')}`;
      const set = last?.chunkSets.get(key) ?? TypeSet.chunk(ROUTE, i, chunk.chunk!.count, list);
      chunkSets.set(key, set);
      return set;
    });
    return (this.defaults = { shared, features, routes, chunkSets, chunks });
  }

  /**
   * Each registered type's set for one proxy: where a type joins the snapshots. A type is its registry entry
   * (xds/resources/types.ts), its builder (envoy/), the plan's decision (compile/plan.ts) and its line here; a
   * registered type without one fails when the builder is made.
   */
  private readonly assembly: Readonly<Record<string, (p: ProxyParts) => TypeSet>> = {
    [CLUSTER]: ({ plan, shared }) =>
      plan.kind === 'proxyless'
        ? shared.clusters
        : TypeSet.union(CLUSTER, [
            shared.sidecarClusters,
            shared.passthrough,
            TypeSet.of(
              CLUSTER,
              plan.localClusters.map(({ port }) => this.resource(CLUSTER, `local|${port.cluster}|${port.protocol}|${port.http2}`, () => localCluster(port))),
            ),
          ]),
    [ENDPOINT]: ({ shared }) => shared.endpoints,
    [LISTENER]: ({ plan, shared }) =>
      plan.kind === 'proxyless'
        ? this.sets.get(`proxyless-lds|${shared.httpSig}|${plan.namespace}`, () =>
            TypeSet.of(
              LISTENER,
              plan.apiListeners.map(({ name, port }) => this.resource(LISTENER, `api|${name}|${port.dialPort}`, () => apiListener(name, port))),
            ),
          )
        : TypeSet.union(LISTENER, [shared.outboundListeners, TypeSet.of(LISTENER, this.inboundListener(plan))]),
    [ROUTE]: ({ plan, shared }) => {
      // Outbound: every HTTP port group's route configuration (a sidecar's: those its listeners name), with this
      // caller's retries; a sidecar's inbound routes besides.
      const proxyless = plan.kind === 'proxyless';
      const outbound = (proxyless ? shared.httpPorts : shared.sidecarHttpPorts).map((g) => this.outboundRoute(g, plan.namespace, plan.features, proxyless));
      if (plan.kind === 'proxyless') return TypeSet.of(ROUTE, outbound);
      const inbound = plan.inbound
        .filter(({ port }) => port.protocol === 'http')
        .map(({ service, port }) =>
          this.resource(ROUTE, `inbound|${port.targetPort}|${service.host}|${port.cluster}|${port.http2}`, () => ({
            name: inboundRouteName(port.targetPort),
            virtual_hosts: [inboundVirtualHost(service, port)],
          })),
        );
      const own = TypeSet.of(ROUTE, [...outbound, ...inbound]);
      // The ClusterIP services' route configurations: the shared chunks, those holding a service this caller has a
      // Retry for replaced by the chunk with its variant.
      const { chunks, features: defaults } = this.routeDefaults(shared);
      const mine = new Map<number, Resource[]>();
      for (const [at, f] of plan.features) {
        if (defaults.get(at)?.key === f.key) continue;
        const r = shared.serviceRoutes.get(at.slice(0, at.lastIndexOf(':')))?.find((x) => portKey(x.key, x.port.port) === at);
        if (!r) continue;
        const i = chunkOf(r.name, chunks.length);
        mine.set(i, [...(mine.get(i) ?? []), this.serviceRoute(r, f)]);
      }
      if (!mine.size) return TypeSet.chunked(ROUTE, chunks, own);
      return TypeSet.chunked(
        ROUTE,
        chunks.map((chunk, i) => {
          const variants = mine.get(i);
          if (!variants) return chunk;
          const replaced = new Set(variants.map((r) => r.name));
          return TypeSet.chunk(ROUTE, i, chunks.length, [...[...chunk.resources.values()].filter((r) => !replaced.has(r.name)), ...variants]);
        }),
        own,
      );
    },
    // With mTLS, a sidecar's identity certificate and the CA bundle; nothing for proxyless clients or without mTLS.
    [SECRET]: ({ plan }) => {
      if (!this.mtls || plan.kind === 'proxyless') return NO_SECRETS;
      const cert = this.secrets?.certs.get(plan.identity);
      if (!cert || !this.caResource) {
        // A preview (the debug port, of an identity no proxy has asked for) shows the rest; a published one needs it.
        if (this.previewing) return NO_SECRETS;
        throw new SnapshotError([`SDS: no certificate issued for ${plan.identity} yet`]);
      }
      let kept = this.identitySecrets.get(plan.identity);
      if (kept?.cert !== cert) this.identitySecrets.set(plan.identity, (kept = { cert, resource: resourceFromObject(SECRET, identitySecret(cert)) }));
      return TypeSet.of(SECRET, [kept.resource, this.caResource]);
    },
  };

  /** A sidecar's inbound listener: a filter chain per service port its pods serve (none without any). */
  private inboundListener(plan: ProxyPlan): Resource[] {
    if (!plan.inbound.length) return [];
    const chains = plan.inbound.map(({ service, port }) => inboundFilterChain(service, port, this.mtls));
    return [
      this.resource(LISTENER, `inbound|${JSON.stringify(chains)}`, () => {
        checkFilterChains(INBOUND_LISTENER, chains);
        return inboundListener(chains);
      }),
    ];
  }

  /** The snapshot for a proxy key (`sidecar:ns/sa` or `proxyless:ns/sa`): every registered type's set. Throws EncodeError/SnapshotError. */
  build(key: string): Snapshot {
    if (!this.ir || !this.shared) throw new Error('no mesh yet');
    const parts: ProxyParts = { plan: planProxy(this.ir, key), shared: this.shared };
    const used: Variant[] = [];
    this.using = used;
    try {
      const snapshot = buildSnapshot(new Map(RESOURCE_TYPES.map((t) => [t.typeUrl, this.assembly[t.typeUrl]!(parts)])));
      // What a published snapshot of this key holds (a preview is not published).
      if (this.previewing) return snapshot;
      if (used.length) this.variantsOf.set(key, used);
      else this.variantsOf.delete(key);
      return snapshot;
    } finally {
      this.using = undefined;
    }
  }

  private previewing = false;

  /** A snapshot to look at, never published: without the secrets of an identity that has no certificate yet. */
  preview(key: string): Snapshot {
    this.previewing = true;
    try {
      return this.build(key);
    } finally {
      this.previewing = false;
    }
  }

  /** Keys every known identity gets a snapshot for up front (sidecars); proxyless ones are built on demand. */
  eagerKeys(): string[] {
    return (this.ir?.identities ?? []).map((id) => `sidecar:${id}`);
  }
}
