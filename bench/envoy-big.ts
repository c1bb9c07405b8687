/**
 * What one real Envoy sidecar holds in the big mesh (1,000 services x 2 ports, 5 endpoints each, beside the
 * guide's two workloads): its dynamic listeners, clusters, route configurations and endpoint sets, the bytes of
 * its config dump, and its own memory (admin `/memory`), once it is LIVE; then the same after one service is added
 * (what it was sent for it, by its RDS/LDS/CDS update counters).
 * Run: npm run build && npm run bench:envoy-big [-- SERVICES [GRPC|DELTA_GRPC]]   (Linux, root, the real parts installed)
 */
import { stringify } from 'yaml';
import { Sandbox, guideWorkloads, until } from '../sandbox/sandbox.js';
import { sampleRetryText } from '../sandbox/samples.js';

const SERVICES = Number(process.argv[2] ?? 1000);
/** The sidecar's ADS flavour: GRPC (state of the world, the default) or DELTA_GRPC. */
const FLAVOUR = (process.argv[3] ?? 'GRPC') as 'GRPC' | 'DELTA_GRPC';
const NAMESPACES = 10;

function bigMesh(services: number, extra = 0): string {
  const docs: object[] = Array.from({ length: NAMESPACES }, (_, i) => ({ apiVersion: 'v1', kind: 'Namespace', metadata: { name: `big-${i}`, labels: { 'flomesh.io/monitored-by': 'mesh-xds' } } }));
  for (let i = 0; i < services + extra; i++) {
    const ns = `big-${i % NAMESPACES}`;
    docs.push({
      apiVersion: 'v1',
      kind: 'Service',
      metadata: { name: `svc-${i}`, namespace: ns },
      spec: {
        clusterIP: `10.97.${Math.floor(i / 250)}.${(i % 250) + 1}`,
        selector: { app: `svc-${i}` },
        ports: [
          { name: 'http', port: 80, targetPort: 8080, protocol: 'TCP' },
          { name: 'grpc', port: 9090, targetPort: 9090, protocol: 'TCP', appProtocol: 'grpc' },
        ],
      },
    });
    docs.push({
      apiVersion: 'discovery.k8s.io/v1',
      kind: 'EndpointSlice',
      metadata: { name: `svc-${i}-a`, namespace: ns, labels: { 'kubernetes.io/service-name': `svc-${i}` } },
      addressType: 'IPv4',
      ports: [
        { name: 'http', port: 8080, protocol: 'TCP' },
        { name: 'grpc', port: 9090, protocol: 'TCP' },
      ],
      endpoints: Array.from({ length: 5 }, (_, j) => ({ addresses: [`10.240.${Math.floor((i * 5 + j) / 250)}.${((i * 5 + j) % 250) + 1}`], conditions: { ready: true } })),
    });
  }
  return docs.map((d) => stringify(d)).join('---\n');
}

const sb = await Sandbox.start({ workloads: guideWorkloads(FLAVOUR), manifests: { 'retry.yaml': sampleRetryText(), 'zz-big.yaml': bigMesh(SERVICES) } });
try {
  const curl = sb.workload('curl').sidecar;
  const counts = async (): Promise<Record<string, number>> => {
    const dump = await curl.admin('/config_dump?include_eds');
    const d = JSON.parse(dump);
    const section = (t: string): any => d.configs.find((c: any) => c['@type'].endsWith(`.${t}`)) ?? {};
    const memory = JSON.parse(await curl.admin('/memory'));
    return {
      listeners: (section('ListenersConfigDump').dynamic_listeners ?? []).length,
      clusters: (section('ClustersConfigDump').dynamic_active_clusters ?? []).length,
      routeConfigurations: (section('RoutesConfigDump').dynamic_route_configs ?? []).length,
      endpointSets: (section('EndpointsConfigDump').dynamic_endpoint_configs ?? []).length,
      configDumpBytes: dump.length,
      allocatedMB: Math.round(Number(memory.allocated) / 1e5) / 10,
      heapMB: Math.round(Number(memory.heap_size) / 1e5) / 10,
    };
  };
  await until(async () => (await counts()).clusters >= SERVICES * 2, 120_000, 'the curl sidecar to hold the big mesh');
  await new Promise((r) => setTimeout(r, 2000));
  console.log(JSON.stringify({ services: SERVICES, flavour: FLAVOUR, held: await counts() }));
  const stats = async (): Promise<Map<string, number>> => curl.stats('(rds|lds|cds)\\..*update_success|upstream_cx_rx_bytes_total');
  const before = await stats();
  sb.writeManifest('zz-big.yaml', bigMesh(SERVICES, 1));
  await until(async () => (await counts()).clusters >= (SERVICES + 1) * 2, 60_000, 'the added service in the curl sidecar');
  await new Promise((r) => setTimeout(r, 2000));
  const after = await stats();
  const updated = [...after].filter(([k, v]) => k.endsWith('update_success') && v !== before.get(k)).map(([k]) => k);
  const rx = (after.get('cluster.mesh-xds.upstream_cx_rx_bytes_total') ?? 0) - (before.get('cluster.mesh-xds.upstream_cx_rx_bytes_total') ?? 0);
  console.log(JSON.stringify({ added: 1, held: await counts(), updateCountersThatMoved: updated.length, bytesFromControlPlane: rx }));
} finally {
  await sb.close();
}
