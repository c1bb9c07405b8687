/**
 * Random meshes, as manifests (what a folder or `kubectl apply` would hold), seeded and reproducible: several
 * namespaces (in the mesh or not), ClusterIP and headless services with one to three ports (HTTP, TCP, gRPC,
 * named or by appProtocol, several ports on one targetPort), selectors that overlap on the same pods, pods with
 * and without service accounts, ready or not, EndpointSlices, Retry policies valid, invalid and in conflict, and
 * Gateway API mesh routes (HTTPRoute, GRPCRoute; producer and consumer; every match, filter and backend form, some
 * refused, some with backends that do not exist).
 * `shrink` reduces a failing mesh to a small one that still fails.
 */
import { stringify } from 'yaml';

export type Manifest = { apiVersion: string; kind: string; metadata: { name: string; namespace?: string; labels?: Record<string, string>; [k: string]: unknown }; [k: string]: unknown };

/** mulberry32: small, fast, seeded. */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const RETRY_ON = ['5xx', 'gateway-error', 'reset', 'connect-failure', 'retriable-4xx', 'refused-stream', 'unavailable', 'cancelled', 'deadline-exceeded', 'internal', 'resource-exhausted', '503', '502'];
const BAD_RETRY_ON = ['bogus', '5XX', '999', ''];
const PORT_KINDS: { name?: string; appProtocol?: string }[] = [
  { name: 'http' },
  { name: 'http-web' },
  { name: 'grpc', appProtocol: 'grpc' },
  { name: 'h2', appProtocol: 'h2c' },
  { name: 'tcp-db' },
  { name: 'redis', appProtocol: 'redis' },
  {},
  { name: 'web', appProtocol: 'http' },
];

export interface RandomMesh {
  seed: number;
  objects: Manifest[];
}

/** A random mesh for a seed. `size` scales the number of objects (1: a few services and pods). */
export function randomMesh(seed: number, size = 1): RandomMesh {
  const r = rng(seed);
  const int = (n: number): number => Math.floor(r() * n);
  const pick = <T>(xs: readonly T[]): T => xs[int(xs.length)];
  const chance = (p: number): boolean => r() < p;
  const objects: Manifest[] = [];
  const namespaces = Array.from({ length: 1 + int(3 * size) }, (_, i) => `ns${i}`);
  for (const ns of namespaces) {
    objects.push({ apiVersion: 'v1', kind: 'Namespace', metadata: { name: ns, labels: chance(0.85) ? { 'flomesh.io/monitored-by': 'mesh-xds' } : {} } });
  }
  objects.push({
    apiVersion: 'config.flomesh.io/v1alpha3',
    kind: 'MeshConfig',
    metadata: { name: 'mesh', namespace: 'mesh-xds' },
    spec: { featureFlags: { enableRetryPolicy: chance(0.85) }, traffic: { enablePermissiveTrafficPolicyMode: true } },
  });
  const accounts = new Set<string>();
  const apps = Array.from({ length: 1 + int(4 * size) }, (_, i) => ({ ns: pick(namespaces), app: `app${i}` }));
  // Pods, each labelled with an app (and sometimes a shared tier label that several selectors use).
  let podIp = 1;
  const pods: { ns: string; name: string; labels: Record<string, string>; ip: string; sa: string; ports: Record<string, number> }[] = [];
  for (const [i, a] of apps.entries()) {
    for (let k = 0; k < int(3); k++) {
      const sa = chance(0.2) ? 'default' : `sa${int(3)}`;
      const ports: Record<string, number> = { http: 8080, grpc: 9090 };
      pods.push({ ns: a.ns, name: `${a.app}-${k}`, labels: { app: a.app, ...(chance(0.4) ? { tier: 'shared' } : {}) }, ip: `10.1.${i}.${podIp++}`, sa, ports });
      if (sa !== 'default' || chance(0.5)) accounts.add(`${a.ns}/${sa}`);
    }
  }
  for (const p of pods) {
    objects.push({
      apiVersion: 'v1',
      kind: 'Pod',
      metadata: { name: p.name, namespace: p.ns, labels: p.labels },
      spec: { ...(p.sa === 'default' && chance(0.5) ? {} : { serviceAccountName: p.sa }), containers: [{ name: 'app', ports: Object.entries(p.ports).map(([name, containerPort]) => ({ name, containerPort })) }] },
      status: { phase: 'Running', podIP: p.ip, conditions: [{ type: 'Ready', status: chance(0.85) ? 'True' : 'False' }] },
    });
  }
  for (const a of accounts) {
    const [ns, name] = a.split('/');
    objects.push({ apiVersion: 'v1', kind: 'ServiceAccount', metadata: { name, namespace: ns } });
  }
  // Services: selectors on an app, or on the shared tier (overlapping); ClusterIP or headless.
  const services: { ns: string; name: string; ports: { name?: string; port: number }[] }[] = [];
  for (const [i, a] of apps.entries()) {
    const headless = chance(0.2);
    const kinds = Array.from({ length: 1 + int(3) }, () => pick(PORT_KINDS));
    const sharedTarget = chance(0.25);
    const used = new Set<string>();
    const ports = kinds
      .map((k, j) => ({
        ...(k.name ? { name: kinds.length > 1 ? `${k.name}${j ? `-${j}` : ''}` : k.name } : kinds.length > 1 ? { name: `p${j}` } : {}),
        port: [80, 8080, 9090, 14001, 3306][int(5)] + j,
        targetPort: sharedTarget ? 8080 : chance(0.2) ? 'http' : 8080 + j,
        protocol: 'TCP',
        ...(k.appProtocol ? { appProtocol: k.appProtocol } : {}),
      }))
      .filter((p) => !used.has(String(p.port)) && used.add(String(p.port)));
    const selector = chance(0.2) ? { tier: 'shared' } : { app: a.app };
    objects.push({
      apiVersion: 'v1',
      kind: 'Service',
      metadata: { name: `svc${i}`, namespace: a.ns },
      spec: { clusterIP: headless ? 'None' : `10.96.${i}.${1 + int(250)}`, selector, ports },
    });
    services.push({ ns: a.ns, name: `svc${i}`, ports });
    // Sometimes an EndpointSlice instead of selected pods.
    if (chance(0.2)) {
      objects.push({
        apiVersion: 'discovery.k8s.io/v1',
        kind: 'EndpointSlice',
        metadata: { name: `svc${i}-slice`, namespace: a.ns, labels: { 'kubernetes.io/service-name': `svc${i}` } },
        addressType: 'IPv4',
        ports: ports.map((p) => ({ ...(p.name ? { name: p.name } : {}), port: typeof p.targetPort === 'number' ? p.targetPort : 8080, protocol: 'TCP' })),
        endpoints: Array.from({ length: int(3) }, (_, k) => ({ addresses: [`10.2.${i}.${k + 1}`], conditions: { ready: chance(0.8) } })),
      });
    }
  }
  // Retry policies: valid ones, invalid ones, and some with the same source and destination (conflicts).
  const identities = [...accounts];
  for (let i = 0; i < int(4 * size) + (identities.length ? 1 : 0); i++) {
    if (!identities.length || !services.length) break;
    const [srcNs, srcSa] = (chance(0.2) && i > 0 ? identities[0] : pick(identities)).split('/');
    const dst = chance(0.2) && i > 0 ? services[0] : pick(services);
    const invalid = chance(0.15);
    const tokens = Array.from({ length: 1 + int(2) }, () => pick(RETRY_ON));
    objects.push({
      apiVersion: 'policy.flomesh.io/v1alpha1',
      kind: 'Retry',
      metadata: { name: `retry${i}`, namespace: srcNs, creationTimestamp: `2026-01-0${1 + int(9)}T00:00:00Z` },
      spec: {
        source: { kind: 'ServiceAccount', name: srcSa, namespace: srcNs },
        destinations: [{ kind: 'Service', name: dst.name, namespace: dst.ns }, ...(chance(0.2) ? [{ kind: 'Pod', name: 'x', namespace: dst.ns }] : [])],
        retryPolicy: {
          retryOn: invalid ? pick(BAD_RETRY_ON) : [...new Set(tokens)].join(','),
          ...(chance(0.8) ? { numRetries: invalid && chance(0.5) ? -1 : int(6) } : {}),
          ...(chance(0.6) ? { perTryTimeout: pick(['1s', '250ms', '1m30s', '100ms']) } : {}),
          ...(chance(0.6) ? { retryBackoffBaseInterval: pick(['10ms', '1s', '250ms']) } : {}),
        },
      },
    });
  }
  // Mesh routes, after everything else (the objects above are the same for a seed with or without them).
  for (let i = 0; i < int(3 * size) + 1; i++) {
    if (!services.length) break;
    const parent = pick(services);
    const ns = chance(0.6) ? parent.ns : pick(namespaces);
    const grpc = chance(0.2);
    const port = pick(parent.ports).port;
    const sameNs = services.filter((x) => x.ns === ns);
    const backend = (): Record<string, unknown> => {
      const to = chance(0.6) || !sameNs.length ? parent : pick(sameNs);
      return { name: chance(0.1) ? 'missing' : to.name, ...(to.ns !== ns ? { namespace: to.ns } : {}), port: chance(0.9) ? pick(to.ports).port : 1, ...(chance(0.4) ? { weight: int(4) } : {}) };
    };
    const value = (): string => pick(['a', 'b-1', 'v2']);
    const rules = Array.from({ length: 1 + int(3) }, () => {
      const matches = Array.from({ length: int(3) }, () =>
        grpc
          ? { ...(chance(0.7) ? { method: chance(0.8) ? { service: pick(['pkg.Svc', 'echo.Echo']), ...(chance(0.6) ? { method: pick(['Get', 'Echo']) } : {}) } : { type: 'RegularExpression', method: 'Ge.*' } } : {}), ...(chance(0.3) ? { headers: [{ name: 'x-h', value: value() }] } : {}) }
          : {
              ...(chance(0.8) ? { path: pick([{ type: 'Exact', value: '/a' }, { type: 'PathPrefix', value: pick(['/', '/api', '/api/']) }, { type: 'RegularExpression', value: '/r/[0-9]+' }]) } : {}),
              ...(chance(0.3) ? { headers: [{ name: pick(['X-Version', 'x-user']), ...(chance(0.3) ? { type: 'RegularExpression', value: 'v[0-9]' } : { value: value() }) }] } : {}),
              ...(chance(0.2) ? { queryParams: [{ name: 'q', value: value() }] } : {}),
              ...(chance(0.2) ? { method: pick(['GET', 'POST']) } : {}),
            },
      );
      const filters: unknown[] = [];
      if (chance(0.3)) filters.push({ type: 'RequestHeaderModifier', requestHeaderModifier: { set: [{ name: 'x-set', value: value() }], ...(chance(0.5) ? { add: [{ name: 'x-add', value: '1' }] } : {}), ...(chance(0.5) ? { remove: ['x-drop'] } : {}) } });
      if (chance(0.2)) filters.push({ type: 'ResponseHeaderModifier', responseHeaderModifier: { set: [{ name: 'x-resp', value: value() }] } });
      const redirect = !grpc && chance(0.15);
      if (redirect) filters.push({ type: 'RequestRedirect', requestRedirect: { ...(chance(0.5) ? { scheme: 'https' } : {}), ...(chance(0.5) ? { hostname: 'example.com' } : {}), ...(chance(0.3) ? { port: 8443 } : {}), statusCode: pick([301, 302, 303, 307, 308]), ...(chance(0.4) ? { path: { type: 'ReplaceFullPath', replaceFullPath: '/moved' } } : {}) } });
      else if (!grpc && chance(0.2)) filters.push({ type: 'URLRewrite', urlRewrite: { ...(chance(0.5) ? { hostname: 'rewritten' } : {}), path: chance(0.5) ? { type: 'ReplaceFullPath', replaceFullPath: '/full' } : { type: 'ReplacePrefixMatch', replacePrefixMatch: pick(['/', '/v2', '/v2/']) } } });
      if (chance(0.05)) filters.push({ type: 'RequestMirror', requestMirror: { backendRef: { name: parent.name, port } } });
      return {
        ...(matches.length ? { matches } : {}),
        ...(filters.length ? { filters } : {}),
        ...(redirect ? {} : { backendRefs: Array.from({ length: 1 + int(2) }, backend) }),
        ...(!grpc && chance(0.3) ? { timeouts: { request: pick(['10s', '0s', '1m']), ...(chance(0.5) ? { backendRequest: pick(['1s', '500ms']) } : {}) } } : {}),
        ...(!grpc && chance(0.4) ? { retry: { ...(chance(0.8) ? { codes: [pick([500, 502, 503, 504])] } : {}), ...(chance(0.8) ? { attempts: int(4) } : {}), ...(chance(0.5) ? { backoff: pick(['100ms', '1s']) } : {}) } } : {}),
      };
    });
    objects.push({
      apiVersion: 'gateway.networking.k8s.io/v1',
      kind: grpc ? 'GRPCRoute' : 'HTTPRoute',
      metadata: { name: `route${i}`, namespace: ns, creationTimestamp: `2026-02-0${1 + int(9)}T00:00:00Z` },
      spec: { parentRefs: [{ group: '', kind: 'Service', name: parent.name, ...(parent.ns !== ns ? { namespace: parent.ns } : {}), ...(chance(0.3) ? { port } : {}) }], rules },
    });
  }
  return { seed, objects };
}

export function meshYaml(objects: readonly Manifest[]): string {
  return objects.map((o) => stringify(o)).join('---\n');
}

/**
 * Greedy shrinking: removes objects one at a time (then fields of Retry policies and Service ports) while the
 * mesh still fails; returns the smallest failing mesh found.
 */
export async function shrink(objects: Manifest[], fails: (objects: Manifest[]) => Promise<boolean>): Promise<Manifest[]> {
  let current = objects;
  let progress = true;
  while (progress) {
    progress = false;
    for (let i = current.length - 1; i >= 0; i--) {
      const candidate = current.filter((_, j) => j !== i);
      if (await fails(candidate)) {
        current = candidate;
        progress = true;
      }
    }
  }
  return current;
}
