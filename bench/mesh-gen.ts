/** A synthetic mesh for benchmarks: S services x 2 ports, P pods, A service accounts, R Retry policies. */
import { DEFAULT_MESH_CONFIG, type MeshState, type Namespace, type Pod, type RetryObject, type Service, type ServiceAccount } from '../src/model/mesh.js';

export interface MeshSize {
  namespaces: number;
  services: number;
  pods: number;
  serviceAccounts: number;
  retries: number;
}

export const BENCH_MESH: MeshSize = { namespaces: 50, services: 1000, pods: 5000, serviceAccounts: 1000, retries: 500 };

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
    routes: [],
  };
}
