/**
 * What one proxy gets, decided from the IR (pure): the Retry specs in force for its identity per destination,
 * the inbound side of a sidecar (one filter chain per target port its pods serve, and the local clusters), and
 * the api_listeners a proxyless client may ask for. pipeline/build.ts only assembles, encodes and shares pieces.
 */
import { featuresFor, type RouteFeatures } from './features.js';
import type { MeshIR, PortIR, ServiceIR } from './ir.js';

export type ProxyKind = 'sidecar' | 'proxyless';

/** The config an identity gets: proxies of the same identity and kind share it (`sidecar:ns/sa`). */
export function proxyKey(id: { readonly kind: ProxyKind; readonly namespace: string; readonly serviceAccount: string }): string {
  return `${id.kind}:${id.namespace}/${id.serviceAccount}`;
}

export function parseProxyKey(key: string): { kind: ProxyKind; namespace: string; serviceAccount: string } {
  const m = /^(sidecar|proxyless):([^/]+)\/(.+)$/.exec(key);
  if (!m) throw new Error(`bad proxy key ${key}`);
  return { kind: m[1] as ProxyKind, namespace: m[2], serviceAccount: m[3] };
}

export interface PortOf {
  readonly service: ServiceIR;
  readonly port: PortIR;
}

export interface ProxyPlan {
  readonly key: string;
  readonly kind: ProxyKind;
  /** The proxy's namespace (short domain names of its own namespace's services). */
  readonly namespace: string;
  /** `ns/sa` */
  readonly identity: string;
  /**
   * Service port `ns/name:port` -> what this caller's virtual host for it holds beyond the default: routes and the
   * retries in force, from whichever policy kind (compile/features.ts).
   */
  readonly features: ReadonlyMap<string, RouteFeatures>;
  /** Sidecar: per target port its pods serve (ascending), the service port it is served as (first by cluster name). */
  readonly inbound: readonly PortOf[];
  /** Sidecar: one local cluster per backed cluster name. */
  readonly localClusters: readonly PortOf[];
  /** Proxyless: the listener names a client may dial (`host:port`), each with its service port. */
  readonly apiListeners: readonly ({ readonly name: string } & PortOf)[];
}

/** A port of the IR by service `ns/name` and port number. */
export function portOf(ir: MeshIR, service: string, port: number): PortOf | undefined {
  const s = ir.services.find((x) => `${x.namespace}/${x.name}` === service);
  const p = s?.ports.find((x) => x.port === port);
  return s && p ? { service: s, port: p } : undefined;
}

/**
 * OSM's domain list: short name forms only for callers in the service's namespace, each with and without the
 * port: `httpbin`, `httpbin:14001` (same namespace), `httpbin.httpbin`, `.svc`, `.svc.cluster`, `.svc.cluster.local`.
 */
export function serviceDomains(service: Pick<ServiceIR, 'name' | 'namespace'>, port: number, sameNamespace: boolean): string[] {
  const forms = [
    ...(sameNamespace ? [service.name] : []),
    `${service.name}.${service.namespace}`,
    `${service.name}.${service.namespace}.svc`,
    `${service.name}.${service.namespace}.svc.cluster`,
    `${service.name}.${service.namespace}.svc.cluster.local`,
  ];
  return forms.flatMap((f) => [f, `${f}:${port}`]);
}

/** A service port on the outbound listener, and the addresses (with its dial port) its filter chain matches. */
export interface OutboundMatch extends PortOf {
  readonly ips: readonly string[];
}

/**
 * The outbound listener's filter chains, mesh-wide: a ClusterIP service is matched on its ClusterIP and service
 * port, a headless one on its pods' addresses and target port. Envoy refuses two chains whose matches overlap,
 * so an address and port belongs to the first service port that claims it (services in namespace/name order):
 * a pod that two headless services select is reached through the first; a port left with no address has no chain.
 */
export function planOutbound(ir: MeshIR): OutboundMatch[] {
  const claimed = new Set<string>();
  const out: OutboundMatch[] = [];
  for (const service of ir.services) {
    for (const port of service.ports) {
      const candidates = service.headless ? [...new Set(port.endpoints.map((e) => e.ip))] : service.clusterIP ? [service.clusterIP] : [];
      const ips = candidates.filter((ip) => !claimed.has(`${ip}|${port.dialPort}`));
      for (const ip of ips) claimed.add(`${ip}|${port.dialPort}`);
      if (ips.length) out.push({ service, port, ips });
    }
  }
  return out;
}

export function planProxy(ir: MeshIR, key: string): ProxyPlan {
  const { kind, namespace, serviceAccount } = parseProxyKey(key);
  const identity = `${namespace}/${serviceAccount}`;
  const features = featuresFor(ir, identity, namespace);
  if (kind === 'proxyless') {
    // Every HTTP port by each name form a client may dial with the port (`host:port`).
    const apiListeners = ir.services.flatMap((service) =>
      service.ports
        .filter((port) => port.protocol === 'http')
        .flatMap((port) => serviceDomains(service, port.dialPort, service.namespace === namespace).filter((d) => d.endsWith(`:${port.dialPort}`)).map((name) => ({ name, service, port }))),
    );
    // Two ports dialled alike (a headless service's, on one target port): the first one's listener.
    const unique = [...new Map(apiListeners.reverse().map((l) => [l.name, l])).values()].reverse();
    return { key, kind, namespace, identity, features, inbound: [], localClusters: [], apiListeners: unique };
  }
  const backed = (ir.backing[identity] ?? [])
    .map((ref) => portOf(ir, ref.service, ref.port))
    .filter((b): b is PortOf => b !== undefined)
    .sort((a, b) => a.port.targetPort - b.port.targetPort || (a.port.cluster < b.port.cluster ? -1 : a.port.cluster > b.port.cluster ? 1 : 0));
  const byTarget = new Map<number, PortOf>();
  for (const b of backed) if (!byTarget.has(b.port.targetPort)) byTarget.set(b.port.targetPort, b);
  const byCluster = new Map<string, PortOf>();
  for (const b of backed) if (!byCluster.has(b.port.cluster)) byCluster.set(b.port.cluster, b);
  return { key, kind, namespace, identity, features, inbound: [...byTarget.values()], localClusters: [...byCluster.values()], apiListeners: [] };
}
