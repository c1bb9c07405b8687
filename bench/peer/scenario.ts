/**
 * The meshes of the side-by-side benchmark (bench/peer.ts) and the changes made to them, as pure functions
 * of a change number, so that the driver (which dumps snapshots for go-control-plane) and mesh-xds's own
 * server process build exactly the same states.
 */
import type { MeshState } from '../../src/model/mesh.js';
import { BENCH_MESH, BENCH_MESH_ROUTES, generateMesh, isConsumerRoute, retryObject, routeObject, type MeshSize } from '../mesh-gen.js';

export interface Scenario {
  readonly name: string;
  readonly what: string;
  readonly size: MeshSize;
  /** The mesh after change `i` (0 is the initial mesh; each change builds on the one before). */
  state(i: number): MeshState;
}

/** The ADS benchmark's mesh (10 services x 2 ports, 100 identities); a change adds a ready endpoint to svc-0. */
const SMALL: MeshSize = { namespaces: 10, services: 10, pods: 50, serviceAccounts: 100, retries: 50 };

/** The translation benchmark's mesh (1,000 services x 2 ports, 1,000 identities); a change adds a service. */
const BIG: MeshSize = BENCH_MESH;

function endpointAdded(size: MeshSize): (i: number) => MeshState {
  const base = generateMesh(size);
  return (i) => ({ ...base, pods: [...base.pods, ...Array.from({ length: i }, (_, k) => ({ ...base.pods[0], name: `extra-${k}`, ip: `10.254.${k}.1` }))] });
}

function serviceAdded(size: MeshSize): (i: number) => MeshState {
  const base = generateMesh(size);
  return (i) => {
    const added = Array.from({ length: i }, (_, k) => k);
    return {
      ...base,
      services: [
        ...base.services,
        ...added.map((k) => ({
          namespace: 'ns-0',
          name: `added-${k}`,
          clusterIP: `10.95.${k}.1`,
          selector: { app: `added-${k}` },
          ports: [
            { name: 'http', port: 80, targetPort: 8080, protocol: 'TCP' },
            { name: 'grpc', port: 9090, targetPort: 9090, protocol: 'TCP', appProtocol: 'grpc' },
          ],
        })),
      ],
      pods: [
        ...base.pods,
        ...added.map((k) => ({ ...base.pods[0], name: `added-${k}-pod-0`, ip: `10.253.${k}.1`, labels: { app: `added-${k}` }, serviceAccount: 'sa-0' })),
      ],
    };
  };
}

/** Route `index` of the mesh edited once more per change (bench/mesh-gen.ts routeObject's `edit`). */
function routeEdited(size: MeshSize, index: number): (i: number) => MeshState {
  const base = generateMesh(size);
  return (i) => ({ ...base, routes: base.routes.map((r, k) => (k === index && i > 0 ? routeObject(index, size, i) : r)) });
}

/** Change i edits Retry (i - 1) mod R once more (its numRetries): one source identity's proxies get it (bench/churn.ts). */
function retryEdited(size: MeshSize): (i: number) => MeshState {
  const base = generateMesh(size);
  const edits = (k: number, i: number): number => (k < i ? Math.floor((i - 1 - k) / size.retries) + 1 : 0);
  return (i) => ({ ...base, retries: base.retries.map((r, k) => (edits(k, i) ? retryObject(k, size, 3 + edits(k, i)) : r)) });
}

/**
 * The first consumer route of namespace ns-0: the proxies of the benchmark take the identities in order
 * (ns-0/... first), so its callers have proxies at any N.
 */
const NS0_CONSUMER = Array.from({ length: BENCH_MESH_ROUTES.routes! }, (_, i) => i).find((i) => isConsumerRoute(i, BENCH_MESH_ROUTES) && routeObject(i, BENCH_MESH_ROUTES).namespace === 'ns-0')!;

export const SCENARIOS: Record<string, Scenario> = {
  small: { name: 'small', what: 'an endpoint added to svc-0', size: SMALL, state: endpointAdded(SMALL) },
  'small-retry': { name: 'small-retry', what: 'a Retry edited (its numRetries)', size: SMALL, state: retryEdited(SMALL) },
  big: { name: 'big', what: 'a service (2 ports, 1 pod) added', size: BIG, state: serviceAdded(BIG) },
  // The big mesh with 500 HTTPRoutes (issue 38).
  'big-routes': { name: 'big-routes', what: '500 HTTPRoutes; a service (2 ports, 1 pod) added', size: BENCH_MESH_ROUTES, state: serviceAdded(BENCH_MESH_ROUTES) },
  'route-producer': { name: 'route-producer', what: '500 HTTPRoutes; producer route ns-0/svc-0 edited (its split)', size: BENCH_MESH_ROUTES, state: routeEdited(BENCH_MESH_ROUTES, 0) },
  'route-consumer': {
    name: 'route-consumer',
    what: `500 HTTPRoutes; consumer route ns-0/${routeObject(NS0_CONSUMER, BENCH_MESH_ROUTES).name} edited (a header)`,
    size: BENCH_MESH_ROUTES,
    state: routeEdited(BENCH_MESH_ROUTES, NS0_CONSUMER),
  },
};
