/** A synthetic mesh for benchmarks: S services x 2 ports, P pods, A service accounts, R Retry policies, H HTTPRoutes. */
import { DEFAULT_MESH_CONFIG, type MeshState, type Namespace, type Pod, type RetryObject, type RouteObject, type Service, type ServiceAccount } from '../src/model/mesh.js';

export interface MeshSize {
  namespaces: number;
  services: number;
  pods: number;
  serviceAccounts: number;
  retries: number;
  /** Gateway API HTTPRoutes (mesh routes, `routeObject`); none without it. */
  routes?: number;
}

export const BENCH_MESH: MeshSize = { namespaces: 50, services: 1000, pods: 5000, serviceAccounts: 1000, retries: 500 };
/** The big mesh with 500 HTTPRoutes (issue 38). */
export const BENCH_MESH_ROUTES: MeshSize = { ...BENCH_MESH, routes: 500 };

const ip = (n: number, base: number): string => `10.${base + Math.floor(n / 65536)}.${Math.floor(n / 256) % 256}.${n % 256}`;

export function retryObject(i: number, size: MeshSize, numRetries = 3): RetryObject {
  const sa = (i * 7) % size.serviceAccounts;
  const svc = (i * 13) % size.services;
  return {
    namespace: `ns-${sa % size.namespaces}`,
    name: `retry-${i}`,
    creationTimestamp: `2026-01-01T00:00:${String(i % 60).padStart(2, '0')}Z`,
    spec: {
      source: { kind: 'ServiceAccount', name: `sa-${sa}`, namespace: `ns-${sa % size.namespaces}` },
      destinations: [{ kind: 'Service', name: `svc-${svc}`, namespace: `ns-${svc % size.namespaces}` }],
      retryPolicy: { retryOn: '5xx,connect-failure', numRetries, perTryTimeout: '1s', retryBackoffBaseInterval: '25ms' },
    },
  };
}

/** Route i is a consumer route when this holds (one in ten, and only where there is another namespace to be in). */
export const isConsumerRoute = (i: number, size: MeshSize): boolean => i % 10 === 9 && size.namespaces > 1;

/**
 * HTTPRoute i of the benchmark mesh; `edit` > 0 is that route edited (a producer route's split moves by `edit`
 * percent, a consumer route's header gets another value). Nine in ten are producer routes, each on its own service
 * (svc-i, port 80) with 2 to 4 rules: /api/vN split 90/10 to svc-i and a second service of its namespace with a retry
 * ({codes: [503], attempts: 2}) and a request timeout; a header match (x-canary) to the second service; an exact
 * /healthz with a per-try timeout; and a catch-all that sets a request header. One in ten is a consumer route in
 * another namespace (half of them over a service that has a producer route, the other half over one without): a
 * header set for that namespace's callers, a retry, a timeout.
 */
export function routeObject(i: number, size: MeshSize, edit = 0): RouteObject {
  const consumer = isConsumerRoute(i, size);
  const s = (consumer && i % 20 === 9 ? i - 1 : i) % size.services;
  const ns = `ns-${s % size.namespaces}`;
  const a = `svc-${s}`;
  // A second backend in the same namespace (services are spread over the namespaces round robin).
  const b = `svc-${(s + size.namespaces) % size.services}`;
  const created = `2026-02-01T00:${String(Math.floor(i / 60) % 60).padStart(2, '0')}:${String(i % 60).padStart(2, '0')}Z`;
  if (consumer) {
    const from = `ns-${((s % size.namespaces) + 1 + (Math.floor(i / 10) % (size.namespaces - 1))) % size.namespaces}`;
    return {
      kind: 'HTTPRoute',
      namespace: from,
      name: `${a}-from-${from}`,
      creationTimestamp: created,
      generation: 1 + edit,
      spec: {
        parentRefs: [{ group: '', kind: 'Service', name: a, namespace: ns, port: 80 }],
        rules: [
          {
            filters: [{ type: 'RequestHeaderModifier', requestHeaderModifier: { set: [{ name: 'x-caller', value: edit ? `${from}-${edit}` : from }] } }],
            backendRefs: [{ name: a, namespace: ns, port: 80 }],
            retry: { codes: [503], attempts: 2 },
            timeouts: { request: '5s' },
          },
        ],
      },
    };
  }
  const api = {
    matches: [{ path: { type: 'PathPrefix', value: `/api/v${1 + (i % 3)}` } }],
    backendRefs: [
      { name: a, port: 80, weight: 90 - edit },
      { name: b, port: 80, weight: 10 + edit },
    ],
    retry: { codes: [503], attempts: 2 },
    timeouts: { request: '3s' },
  };
  const canary = { matches: [{ headers: [{ name: 'x-canary', value: 'true' }] }], backendRefs: [{ name: b, port: 80 }] };
  const health = { matches: [{ path: { type: 'Exact', value: '/healthz' } }], backendRefs: [{ name: a, port: 80 }], timeouts: { request: '1s', backendRequest: '500ms' } };
  const rest = { filters: [{ type: 'RequestHeaderModifier', requestHeaderModifier: { set: [{ name: 'x-route', value: a }] } }], backendRefs: [{ name: a, port: 80 }] };
  return {
    kind: 'HTTPRoute',
    namespace: ns,
    name: a,
    creationTimestamp: created,
    generation: 1 + edit,
    spec: { parentRefs: [{ group: '', kind: 'Service', name: a, port: 80 }], rules: [...[api, canary, health].slice(0, 1 + (i % 3)), rest] },
  };
}

export function generateMesh(size: MeshSize = BENCH_MESH): MeshState {
  const namespaces: Namespace[] = Array.from({ length: size.namespaces }, (_, i) => ({ name: `ns-${i}`, labels: { 'flomesh.io/monitored-by': 'mesh-xds' } }));
  const services: Service[] = Array.from({ length: size.services }, (_, i) => ({
    namespace: `ns-${i % size.namespaces}`,
    name: `svc-${i}`,
    clusterIP: ip(i, 96),
    selector: { app: `svc-${i}` },
    ports: [
      { name: 'http', port: 80, targetPort: 8080, protocol: 'TCP' },
      { name: 'grpc', port: 9090, targetPort: 9090, protocol: 'TCP', appProtocol: 'grpc' },
    ],
  }));
  const serviceAccounts: ServiceAccount[] = Array.from({ length: size.serviceAccounts }, (_, i) => ({ namespace: `ns-${i % size.namespaces}`, name: `sa-${i}` }));
  // Pods: 5 per service; the pods of service i run as service account i (same namespace).
  const pods: Pod[] = Array.from({ length: size.pods }, (_, i) => {
    const svc = i % size.services;
    return {
      namespace: `ns-${svc % size.namespaces}`,
      name: `svc-${svc}-pod-${Math.floor(i / size.services)}`,
      serviceAccount: `sa-${svc % size.serviceAccounts}`,
      ip: ip(i, 200),
      labels: { app: `svc-${svc}` },
      namedPorts: {},
      ready: true,
    };
  });
  const retries = Array.from({ length: size.retries }, (_, i) => retryObject(i, size));
  return {
    meshName: 'mesh-xds',
    meshConfig: { ...DEFAULT_MESH_CONFIG, enableRetryPolicy: true },
    namespaces,
    services,
    endpointSlices: [],
    pods,
    serviceAccounts,
    retries,
    routes: Array.from({ length: size.routes ?? 0 }, (_, i) => routeObject(i, size)),
  };
}
