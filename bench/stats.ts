/**
 * bench:stats (issue 34): what the sidecars' counters cost the server. `mesh-xds serve` (the real CLI, dist/) on a
 * folder of manifests: IDENTITIES identities x REPLICAS pods (one Service each), every identity calling DESTINATIONS
 * services, a Retry in force on RETRIED of them. The simulated sidecars (bench/stats-clients.ts, another process, so
 * that the server's CPU is measured alone from /proc) each hold one connection with one ADS stream, ACKing what they
 * are sent, and then one metrics stream flushing every FLUSH seconds what Envoy's metrics service sink sends with the
 * injected bootstrap (src/inject/template.ts): the per-cluster counters of the clusters it calls, and the rest of
 * what the stats matcher keeps (server.*, cluster_manager.*, listener_manager.*, control_plane.*, http.*, the capture
 * listeners', the xDS cluster's). `--rds-stats` adds what http.* also holds on a real sidecar: each RDS
 * subscription's own stats (http.<prefix>.rds.<route>.*: 3 counters, 3 gauges, a histogram), a route configuration
 * per service port in this mesh, which makes a flush 2,000 families, 270 kB.
 *
 * Measured: the server's CPU (user + system, all threads) over SECONDS of steady state with the ADS streams alone,
 * then over SECONDS with the metrics streams flushing (after a warm-up of two flushes); its RSS and heap (the lowest
 * of three reads of /metrics after each) at the end of each; then, the flushing paused, /debug/retries?paths=1 against
 * the sums the clients sent (every path, every counter it shows, each policy, proxies reporting, drops by reason).
 * Goals (issue 34): under 5% of one core, under 50 MB.
 *
 * Run: npm run build && npm run bench:stats [-- --sidecars 2000 --identities 200 --destinations 20 --retried 5
 *      --flush 5 --seconds 60 --rds-stats]. SERVER_NODE_OPTIONS (e.g. "--cpu-prof --cpu-prof-dir=DIR") are
 * given to the server's node; the server is stopped with SIGTERM so that a profile is written.
 */
import { fork, spawn } from 'node:child_process';
import { mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { compile } from '../src/compile/compile.js';
import { COUNTERS } from '../src/observed/retries.js';
import { convertObjects, meshStateOf, type KubeObject } from '../src/sources/manifests.js';
import type { ClientsConfig, FamilySpec } from './stats-clients.js';
import { usage } from './children.js';

const { values: args } = parseArgs({
  options: {
    sidecars: { type: 'string', default: '2000' },
    identities: { type: 'string', default: '200' },
    destinations: { type: 'string', default: '20' },
    retried: { type: 'string', default: '5' },
    flush: { type: 'string', default: '5' },
    seconds: { type: 'string', default: '60' },
    'rds-stats': { type: 'boolean', default: false },
  },
});
const SIDECARS = Number(args.sidecars);
const IDENTITIES = Number(args.identities);
const DESTINATIONS = Number(args.destinations);
const RETRIED = Number(args.retried);
const FLUSH = Number(args.flush);
const SECONDS = Number(args.seconds);
const NAMESPACES = 10;
if (IDENTITIES <= DESTINATIONS) throw new Error('--identities must be more than --destinations (each calls services of others)');

const ROOT = path.join(import.meta.dirname, '..', '..');
const here = import.meta.dirname;
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const mb = (b: number): string => `${(b / 2 ** 20).toFixed(1)} MB`;

// The mesh: identity i is sa-i in ns-(i % 10), with Service app-i (port 80 -> 8080) over its REPLICAS pods, calling
// app-(i+1) .. app-(i+DESTINATIONS); its Retry covers the first RETRIED of them.
const ns = (i: number): string => `ns-${i % NAMESPACES}`;
const dests = (i: number): number[] => Array.from({ length: DESTINATIONS }, (_, k) => (i + 1 + k) % IDENTITIES);
const objects: KubeObject[] = [
  {
    apiVersion: 'config.flomesh.io/v1alpha3',
    kind: 'MeshConfig',
    metadata: { name: 'mesh-xds-config', namespace: 'mesh-xds' },
    spec: { featureFlags: { enableRetryPolicy: true }, traffic: { enablePermissiveTrafficPolicyMode: true }, observability: { statsFlushInterval: `${FLUSH}s` } },
  },
  ...Array.from({ length: NAMESPACES }, (_, n): KubeObject => ({ apiVersion: 'v1', kind: 'Namespace', metadata: { name: `ns-${n}`, labels: { 'flomesh.io/monitored-by': 'mesh-xds' } } })),
];
const ip = (base: number, n: number): string => `10.${base + (n >> 16)}.${(n >> 8) & 255}.${n & 255}`;
for (let i = 0; i < IDENTITIES; i++) {
  objects.push({ apiVersion: 'v1', kind: 'ServiceAccount', metadata: { name: `sa-${i}`, namespace: ns(i) } });
  objects.push({ apiVersion: 'v1', kind: 'Service', metadata: { name: `app-${i}`, namespace: ns(i) }, spec: { clusterIP: ip(96, i + 1), selector: { app: `app-${i}` }, ports: [{ name: 'http', port: 80, targetPort: 8080 }] } });
  objects.push({
    apiVersion: 'policy.flomesh.io/v1alpha1',
    kind: 'Retry',
    metadata: { name: `retry-${i}`, namespace: ns(i) },
    spec: {
      source: { kind: 'ServiceAccount', name: `sa-${i}`, namespace: ns(i) },
      destinations: dests(i)
        .slice(0, RETRIED)
        .map((d) => ({ kind: 'Service', name: `app-${d}`, namespace: ns(d) })),
      retryPolicy: { retryOn: '5xx,connect-failure', numRetries: 1 + (i % 5), perTryTimeout: '1s', retryBackoffBaseInterval: '25ms' },
    },
  });
}
for (let p = 0; p < SIDECARS; p++) {
  const i = p % IDENTITIES;
  const r = Math.floor(p / IDENTITIES);
  objects.push({
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: { name: `app-${i}-${r}`, namespace: ns(i), labels: { app: `app-${i}` } },
    spec: { serviceAccountName: `sa-${i}`, containers: [{ name: 'app' }] },
    status: { phase: 'Running', podIP: ip(2, p + 1) },
  });
}
const dir = mkdtempSync(path.join(os.tmpdir(), 'mesh-xds-bench-stats-'));
writeFileSync(path.join(dir, 'mesh.yaml'), `${objects.map((o) => JSON.stringify(o)).join('\n---\n')}\n`);

// The same mesh as the server will see it: cluster names, route configurations, which paths have a Retry.
const converted = convertObjects(objects.map((object, doc) => ({ object, origin: { file: 'mesh.yaml', doc, line: 1 } })));
if (converted.errors.length) throw new Error(`the generated mesh has errors: ${JSON.stringify(converted.errors.slice(0, 3))}`);
const ir = compile(meshStateOf(converted.objects, 'mesh-xds'));
const accepted = ir.policies.filter((p) => p.state === 'Accepted').length;
if (accepted !== IDENTITIES) throw new Error(`${accepted} of ${IDENTITIES} Retries accepted: ${JSON.stringify(ir.policies.find((p) => p.state !== 'Accepted'))}`);
const serviceOf = new Map<string, string>();
const clusterOf = new Map<string, string>();
for (const s of ir.services) {
  for (const p of s.ports) {
    serviceOf.set(p.cluster, `${s.namespace}/${s.name}`);
    clusterOf.set(`${s.namespace}/${s.name}`, p.cluster);
  }
}
const rdsNames = [...new Set(ir.services.flatMap((s) => s.ports.filter((p) => p.protocol === 'http').map((p) => (s.headless ? `rds-outbound.${p.dialPort}` : `${s.host}:${p.dialPort}`))))].sort();
const identities = Array.from({ length: IDENTITIES }, (_, i) => {
  const id = `${ns(i)}/sa-${i}`;
  const destinations = dests(i).map((d) => clusterOf.get(`${ns(d)}/app-${d}`)!);
  return { id, destinations, retried: destinations.map((c) => !!ir.retries[id]?.[serviceOf.get(c)!]) };
});
const retriedPaths = identities.reduce((a, idn) => a + idn.retried.filter(Boolean).length, 0);

// What else a sidecar of this mesh sends with the bootstrap's stats matcher (src/inject/template.ts SIDECAR_STATS):
// counters and gauges it has set, histograms (Envoy sends each as a SUMMARY and a HISTOGRAM family).
const c = (name: string): FamilySpec => ({ name, kind: 'counter' });
const g = (name: string): FamilySpec => ({ name, kind: 'gauge' });
const h = (name: string): FamilySpec => ({ name, kind: 'histogram' });
const hcm = (prefix: string): FamilySpec[] => [
  ...['downstream_cx_total', 'downstream_cx_http1_total', 'downstream_cx_destroy', 'downstream_cx_destroy_remote', 'downstream_rq_total', 'downstream_rq_http1_total', 'downstream_rq_2xx', 'downstream_rq_5xx', 'downstream_rq_completed'].map((s) => c(`http.${prefix}.${s}`)),
  ...['downstream_cx_active', 'downstream_cx_http1_active', 'downstream_rq_active'].map((s) => g(`http.${prefix}.${s}`)),
  h(`http.${prefix}.downstream_cx_length_ms`),
  h(`http.${prefix}.downstream_rq_time`),
];
const listener = (l: string): FamilySpec[] => [c(`listener.${l}.downstream_cx_total`), c(`listener.${l}.worker_0.downstream_cx_total`), c(`listener.${l}.worker_1.downstream_cx_total`), g(`listener.${l}.downstream_cx_active`), g(`listener.${l}.downstream_pre_cx_active`), h(`listener.${l}.downstream_cx_length_ms`)];
const rds = (prefix: string, route: string): FamilySpec[] => {
  const at = `http.${prefix}.rds.${route.replaceAll(':', '_')}`;
  return [c(`${at}.config_reload`), c(`${at}.update_attempt`), c(`${at}.update_success`), g(`${at}.config_reload_time_ms`), g(`${at}.update_time`), g(`${at}.version`), h(`${at}.update_duration`)];
};
const fixed: FamilySpec[] = [
  ...['concurrency', 'days_until_first_cert_expiring', 'hot_restart_epoch', 'live', 'memory_allocated', 'memory_heap_size', 'memory_physical_size', 'parent_connections', 'state', 'stats_recent_lookups', 'total_connections', 'uptime', 'version'].map((s) => g(`server.${s}`)),
  h('server.initialization_time_ms'),
  ...['cluster_added', 'cluster_updated', 'cds.config_reload', 'cds.update_attempt', 'cds.update_success'].map((s) => c(`cluster_manager.${s}`)),
  ...['active_clusters', 'warming_clusters', 'cds.update_time', 'cds.version'].map((s) => g(`cluster_manager.${s}`)),
  h('cluster_manager.cds.update_duration'),
  ...['listener_added', 'listener_create_success', 'lds.config_reload', 'lds.update_attempt', 'lds.update_success'].map((s) => c(`listener_manager.${s}`)),
  ...['total_listeners_active', 'total_listeners_warming', 'total_listeners_draining', 'workers_started', 'lds.update_time', 'lds.version'].map((s) => g(`listener_manager.${s}`)),
  h('listener_manager.lds.update_duration'),
  g('control_plane.connected_state'),
  g('control_plane.pending_requests'),
  ...hcm('outbound_80'),
  ...hcm('inbound_8080'),
  ...listener('0.0.0.0_15001'),
  ...listener('0.0.0.0_15003'),
  // The xDS cluster's own (the matcher keeps cluster.mesh-xds.*): read by the server, dropped as not the mesh's.
  ...['upstream_cx_total', 'upstream_cx_http2_total', 'upstream_cx_rx_bytes_total', 'upstream_cx_tx_bytes_total', 'upstream_rq_total', 'upstream_rq_completed', 'upstream_rq_2xx', 'internal.upstream_rq_2xx', 'internal.upstream_rq_200', 'default.total_match_count'].map((s) => c(`cluster.mesh-xds.${s}`)),
  ...['upstream_cx_active', 'upstream_rq_active', 'membership_healthy', 'membership_total', 'max_host_weight'].map((s) => g(`cluster.mesh-xds.${s}`)),
  h('cluster.mesh-xds.upstream_cx_connect_ms'),
  h('cluster.mesh-xds.upstream_cx_length_ms'),
];
const rdsStats = !args['rds-stats'] ? [] : [...rdsNames.map((r) => rds('outbound_80', r)).flat(), ...rds('inbound_8080', 'rds-inbound.8080')];
const others = [...fixed, ...rdsStats];
const familiesOf = (fs: FamilySpec[]): number => fs.reduce((a, f) => a + (f.kind === 'histogram' ? 2 : 1), 0);

/** A free loopback port (taken and let go: the server binds it right after). */
async function freePort(): Promise<number> {
  const srv = net.createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const port = (srv.address() as net.AddressInfo).port;
  await new Promise((r) => srv.close(r));
  return port;
}


/** The machine's load: the 1-minute load average and the CPU seconds every process took over an interval. */
function machineCpu(): number {
  const [user, nice, system, , , irq, softirq, steal] = readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).slice(1).map(Number);
  return (user! + nice! + system! + irq! + softirq! + steal!) / 100;
}

const adsPort = await freePort();
const debugPort = await freePort();
const logFile = path.join(dir, 'server.log');
const logFd = openSync(logFile, 'a');
const server = spawn(
  process.execPath,
  [...(process.env.SERVER_NODE_OPTIONS?.split(' ').filter(Boolean) ?? []), path.join(ROOT, 'bin/mesh-xds.js'), 'serve', '--manifests', dir, '--ads-address', `127.0.0.1:${adsPort}`, '--debug-address', `127.0.0.1:${debugPort}`, '--log-level', 'warn'],
  { stdio: ['ignore', logFd, logFd] },
);
let serverExited = false;
server.on('exit', () => (serverExited = true));
process.on('exit', () => {
  if (!serverExited) server.kill('SIGKILL');
});
const debug = `http://127.0.0.1:${debugPort}`;
const get = async (p: string): Promise<Response> => fetch(`${debug}${p}`);
for (let t = Date.now(); ; ) {
  if (serverExited) throw new Error(`the server exited: ${readFileSync(logFile, 'utf8').slice(-2000)}`);
  const ok = await get('/readyz').then((r) => r.ok, () => false);
  if (ok) break;
  if (Date.now() - t > 120_000) throw new Error('the server was not ready in 120 s');
  await sleep(200);
}

/** The server's heap used (prom-client's default metrics on /metrics): the lowest of three reads, a second apart. */
async function heapUsed(): Promise<{ heap: number; text: string }> {
  let heap = Infinity;
  let text = '';
  for (let i = 0; i < 3; i++) {
    const res = await get('/metrics');
    text = await res.text();
    const used = Number(/^mesh_xds_process_nodejs_heap_size_used_bytes (\S+)/m.exec(text)?.[1]);
    if (Number.isFinite(used)) heap = Math.min(heap, used);
    else console.log(`/metrics (${res.status}) without the heap: ${text.slice(0, 200)}`);
    await sleep(1000);
  }
  return { heap, text };
}

const clients = fork(path.join(here, 'stats-clients.js'), [], { stdio: 'inherit' });
const inbox: any[] = [];
let wake: (() => void) | undefined;
clients.on('message', (m) => {
  inbox.push(m);
  wake?.();
});
clients.on('exit', (code) => {
  inbox.push({ ev: 'exited', code });
  wake?.();
});
async function receive(ev: string, ms = 600_000): Promise<any> {
  const until = Date.now() + ms;
  for (;;) {
    const i = inbox.findIndex((m) => m.ev === ev || m.ev === 'exited');
    if (i >= 0) {
      const m = inbox.splice(i, 1)[0];
      if (m.ev === 'exited') throw new Error(`the clients exited (${m.code})`);
      return m;
    }
    if (Date.now() > until) throw new Error(`timed out waiting for the clients' ${ev}`);
    await new Promise<void>((r) => {
      wake = r;
      setTimeout(r, 200);
    });
  }
}
await receive('ready');

const config: ClientsConfig = {
  address: `127.0.0.1:${adsPort}`,
  sidecars: Array.from({ length: SIDECARS }, (_, p) => ({ nodeId: `sidecar~${ip(2, p + 1)}~app-${p % IDENTITIES}-${Math.floor(p / IDENTITIES)}.${ns(p % IDENTITIES)}~${ns(p % IDENTITIES)}.svc.cluster.local`, pod: `app-${p % IDENTITIES}-${Math.floor(p / IDENTITIES)}`, identity: p % IDENTITIES })),
  identities,
  edsNames: [...serviceOf.keys()].sort(),
  rdsNames,
  others,
  flushMs: FLUSH * 1000,
  batchSize: 1000,
};
const started = new Date();
clients.send({ cmd: 'start', config });
const shape = await receive('started');
const synced = await receive('synced');
await sleep(5000);

// Without the stats: the ADS streams alone, in steady state.
const base0 = usage(server.pid!);
const cl0 = usage(clients.pid!).cpu;
const m0 = machineCpu();
await sleep(SECONDS * 1000);
const base1 = usage(server.pid!);
const without = { cpu: base1.cpu - base0.cpu, clients: usage(clients.pid!).cpu - cl0, machine: machineCpu() - m0, load: os.loadavg()[0]!, rss: base1.rss, ...(await heapUsed()) };

// With them: every sidecar flushing, after a warm-up of two flush intervals (every stream opened, the pairs made).
clients.send({ cmd: 'metrics' });
await receive('flushing');
await sleep(2 * FLUSH * 1000 + 2000);
clients.send({ cmd: 'progress' });
const p0 = await receive('progress');
const with0 = usage(server.pid!);
const cl1 = usage(clients.pid!).cpu;
const m1 = machineCpu();
await sleep(SECONDS * 1000);
const with1 = usage(server.pid!);
clients.send({ cmd: 'progress' });
const p1 = await receive('progress');
const withStats = { cpu: with1.cpu - with0.cpu, clients: usage(clients.pid!).cpu - cl1, machine: machineCpu() - m1, load: os.loadavg()[0]!, rss: with1.rss, peak: with1.peak, ...(await heapUsed()) };

// Correctness: the flushing paused, what the server shows against what was sent.
clients.send({ cmd: 'pause' });
const sent = await receive('paused');
// The server may still be reading what was sent (its backlog): wait until every delta is in, or nothing more comes.
const addedNow = async (): Promise<number> => Number(/^mesh_xds_observed_counters_total (\S+)/m.exec(await (await get('/metrics')).text())?.[1] ?? NaN);
const drain0 = performance.now();
for (let last = -1, still = 0; still < 10 && performance.now() - drain0 < 180_000; ) {
  const n = await addedNow();
  if (n === sent.nonZeroSent) break;
  still = n === last ? still + 1 : 0;
  last = n;
  await sleep(500);
}
const drainMs = performance.now() - drain0;
const view: any = await (await get('/debug/retries?paths=1')).json();
const metricsText = await (await get('/metrics')).text();
const FIELDS: [number, string][] = [
  [0, 'attempts'],
  [1, 'retries'],
  [2, 'retriesSucceeded'],
  [3, 'retriesExhausted'],
  [4, 'retriesRefused'],
  [7, 'responses5xx'],
  [8, 'timeouts'],
  [9, 'perTryTimeouts'],
  [10, 'connectFailures'],
];
/** What /debug/retries shows for counter i of sums from `at`: an attempt whose connection failed is not in upstream_rq_total (src/observed/retries.ts numbers()). */
const shown = (sums: readonly number[], at: number, i: number): number => sums[at + i]! + (i === 0 ? sums[at + 10]! : 0);
const problems: string[] = [];
const K = COUNTERS.length;
const paths = new Map<string, any>(view.paths.map((p: any) => [`${p.source} ${p.destination}`, p]));
const perPolicy = new Map<string, number[]>();
let pathsChecked = 0;
for (const idn of sent.sums as { id: string; destinations: string[]; sums: number[] }[]) {
  for (const [d, cluster] of idn.destinations.entries()) {
    const key = `${idn.id} ${serviceOf.get(cluster)}`;
    const p = paths.get(key);
    if (!p) {
      problems.push(`no path ${key} in /debug/retries`);
      continue;
    }
    pathsChecked++;
    for (const [i, field] of FIELDS) {
      const want = shown(idn.sums, d * K, i);
      if (p.windows.total[field] !== want) problems.push(`${key}: ${field} ${p.windows.total[field]}, sent ${want}`);
    }
    const policy = ir.retries[idn.id]?.[serviceOf.get(cluster)!]?.policy ?? null;
    if (p.policy !== policy) problems.push(`${key}: policy ${p.policy}, in force ${policy}`);
    if (policy) {
      const acc = perPolicy.get(policy) ?? new Array(K).fill(0);
      for (let i = 0; i < K; i++) acc[i] += idn.sums[d * K + i]!;
      perPolicy.set(policy, acc);
    }
  }
}
if (view.paths.length !== pathsChecked) problems.push(`/debug/retries shows ${view.paths.length} paths; ${pathsChecked} were sent for`);
let policiesChecked = 0;
for (const pol of view.policies) {
  const acc = perPolicy.get(pol.policy);
  if (!acc) {
    problems.push(`policy ${pol.policy} shown, nothing sent for it`);
    continue;
  }
  policiesChecked++;
  for (const [i, field] of FIELDS) if (pol.windows.total[field] !== shown(acc, 0, i)) problems.push(`policy ${pol.policy}: ${field} ${pol.windows.total[field]}, sent ${acc[i]}`);
}
if (policiesChecked !== perPolicy.size) problems.push(`${policiesChecked} policies shown of ${perPolicy.size}`);
if (view.proxiesReporting !== SIDECARS) problems.push(`proxies reporting ${view.proxiesReporting}, not ${SIDECARS}`);
// Nothing a sidecar sends is dropped: the families not summed are passed over, not counted (src/observed/metrics-service.ts).
if (Object.keys(view.dropped).length) problems.push(`dropped ${JSON.stringify(view.dropped)}, expected none`);
const droppedSeries = [...metricsText.matchAll(/^mesh_xds_observed_dropped_total\{reason="([^"]+)"\} (\S+)/gm)].filter((m) => Number(m[2]) > 0);
if (droppedSeries.length) problems.push(`/metrics dropped ${droppedSeries.map((m) => `${m[1]} ${m[2]}`).join(', ')}, expected none`);
const added = Number(/^mesh_xds_observed_counters_total (\S+)/m.exec(metricsText)?.[1] ?? NaN);
if (added !== sent.nonZeroSent) problems.push(`counters added ${added}, non-zero deltas sent ${sent.nonZeroSent}`);
const refused = [...metricsText.matchAll(/^mesh_xds_streams_refused_total\{reason="([^"]+)"\} (\S+)/gm)].filter((m) => Number(m[2]) > 0).map((m) => `${m[1]} ${m[2]}`);
if (refused.length) problems.push(`streams refused: ${refused.join(', ')}`);
if (sent.streamErrors.length) problems.push(`client stream errors: ${sent.streamErrors.slice(0, 3).join('; ')}`);
if (sent.pendingWrites) problems.push(`${sent.pendingWrites} metrics messages still unwritten`);

clients.send({ cmd: 'stop' });
server.kill('SIGTERM');
await Promise.race([new Promise((r) => server.once('exit', r)), sleep(15_000)]);

const pct = (cpu: number): string => `${((cpu / SECONDS) * 100).toFixed(2)}%`;
const flushesIn = p1.flushes - p0.flushes;
const expectedFlushes = (SIDECARS * SECONDS) / FLUSH;
const cost = withStats.cpu - without.cpu;
console.log(`bench:stats ${started.toISOString()} (node ${process.version}, ${os.cpus().length} cores)`);
console.log(
  `mesh: ${IDENTITIES} identities x ${SIDECARS / IDENTITIES} pods, ${ir.services.length} services, ${accepted} Retries; each identity calls ${DESTINATIONS} services, ${RETRIED} with a Retry (${retriedPaths} of ${IDENTITIES * DESTINATIONS} paths)`,
);
console.log(`${SIDECARS} sidecars, a connection each with an ADS stream (all synced ${(synced.ms / 1000).toFixed(1)} s after the first dial) and a metrics stream`);
console.log(
  `a flush: ${shape.families} families (${DESTINATIONS} x ${K} COUNTERS + ${DESTINATIONS} x 4 other per-cluster counters + ${familiesOf(fixed)} fixed${rdsStats.length ? ` + ${familiesOf(rdsStats)} of ${rdsNames.length + 1} RDS subscriptions` : ''}), ${shape.batches} message(s), ${(shape.flushBytes / 1024).toFixed(0)} kB; every ${FLUSH} s`,
);
console.log(`flushes in the window: ${flushesIn} of ${expectedFlushes} due (${p1.lateFlushes} late by more than half an interval in all); ${mb(p1.bytesSent - p0.bytesSent)} sent (${mb((p1.bytesSent - p0.bytesSent) / SECONDS)}/s)`);
console.log(`| ${SECONDS} s steady state | server CPU | of one core | server RSS | server heap used (lowest of 3 reads) | clients' CPU | machine CPU (2 cores: 200%) | load average |`);
console.log('|---|---|---|---|---|---|---|---|');
console.log(`| ADS streams alone | ${without.cpu.toFixed(2)} s | ${pct(without.cpu)} | ${mb(without.rss)} | ${mb(without.heap)} | ${without.clients.toFixed(1)} s | ${pct(without.machine)} | ${without.load.toFixed(2)} |`);
console.log(`| and the metrics streams | ${withStats.cpu.toFixed(2)} s | ${pct(withStats.cpu)} | ${mb(withStats.rss)} | ${mb(withStats.heap)} | ${withStats.clients.toFixed(1)} s | ${pct(withStats.machine)} | ${withStats.load.toFixed(2)} |`);
console.log(
  `the stats cost: ${cost.toFixed(2)} s of CPU in ${SECONDS} s = ${pct(cost)} of one core (goal < 5%: ${cost / SECONDS < 0.05 ? 'met' : 'NOT met'}), ${((cost * 1000) / flushesIn).toFixed(2)} ms per flush; memory +${mb(withStats.rss - without.rss)} RSS, +${mb(withStats.heap - without.heap)} heap (goal < 50 MB: ${withStats.rss - without.rss < 50 * 2 ** 20 && withStats.heap - without.heap < 50 * 2 ** 20 ? 'met' : 'NOT met'}); peak RSS ${mb(withStats.peak)}`,
);
console.log(
  `/debug/retries after the pause (the server had read everything sent ${(drainMs / 1000).toFixed(1)} s after the clients' last write): ${pathsChecked} paths x ${FIELDS.length} counters and ${policiesChecked} policies against the clients' sums (${sent.flushes} flushes, ${sent.messagesSent} messages, ${mb(sent.bytesSent)}); proxies reporting ${view.proxiesReporting}; dropped ${JSON.stringify(view.dropped)}: ${problems.length ? `${problems.length} PROBLEMS:\n  ${[...problems.filter((p) => !p.includes(': attempts ')), ...problems.filter((p) => p.includes(': attempts '))].slice(0, 20).join('\n  ')}` : 'all match'}`,
);
if (problems.length) {
  writeFileSync(path.join(dir, 'problems.txt'), `${problems.join('\n')}\n`);
  console.log(`the mesh, the server's log and every problem (problems.txt) kept in ${dir}`);
}
else rmSync(dir, { recursive: true, force: true });
process.exit(problems.length ? 1 : 0);
