/**
 * The server side of the ADS benchmark (a child process of bench/ads-streams.ts): the real pipeline and ADS
 * server on a generated mesh; reports over IPC when every stream has ACKed, with RSS and CPU time.
 */
import { mkdtempSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createCa, issue, writeCaDir } from '../src/security/ca.js';
import { tlsFromCa } from '../src/security/tls.js';
import { Session } from 'node:inspector/promises';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import pino from 'pino';
import { Pipeline } from '../src/pipeline/pipeline.js';
import { SnapshotCache } from '../src/xds/resources/cache.js';
import { AdsServer } from '../src/xds/protocol/server.js';
import { ProxyRegistry, syncState, type ProxyConnection } from '../src/xds/protocol/status.js';
import { ENDPOINT, RESOURCE_TYPES, SECRET } from '../src/xds/resources/types.js';
import { WorkloadCerts } from '../src/security/workload-certs.js';
import { generateMesh, type MeshSize } from './mesh-gen.js';

const size: MeshSize = JSON.parse(process.argv[2]);
const log = pino({ level: 'silent' });
const cache = new SnapshotCache();
const registry = new ProxyRegistry();
// ADS_TLS=1: mTLS, the serving certificate issued from a CA made here; each identity gets a client certificate.
const tlsOn = Boolean(process.env.ADS_TLS);
const caDir = mkdtempSync(path.join(os.tmpdir(), 'mesh-xds-bench-ca-'));
const ca = await createCa('cluster.local');
writeCaDir(caDir, ca);
// ADS_SDS=1 (with ADS_TLS): sidecar mTLS, each identity's data-plane certificate and the CA bundle sent over SDS.
const sdsOn = Boolean(process.env.ADS_SDS);
const certsOf = sdsOn ? new WorkloadCerts({ ca, trustDomain: 'cluster.local', log, onChange: (ids) => pipeline.secretsChanged(ids) }) : undefined;
const pipeline: Pipeline = new Pipeline(cache, log, {}, certsOf);
let state = generateMesh(size);
pipeline.update(state);
await certsOf?.settled();
const tls = tlsOn ? await tlsFromCa(caDir, { trustDomain: 'cluster.local', namespace: 'mesh-xds', serviceAccount: 'mesh-xds', dnsNames: ['localhost'], ipAddresses: ['127.0.0.1'] }, log) : undefined;
const server = new AdsServer({ cache, registry, log, tls });
const port = await server.listen('127.0.0.1:0');

const send = (m: object): void => void process.send!(m);
/** How long the event loop was held (what a health probe or a stream would have waited), since the last reset. */
const loop = monitorEventLoopDelay({ resolution: 10 });
loop.enable();
const mem = (): number => process.memoryUsage().rss;

let expected = 0;
let waiting: { kind: 'initial' | 'change' | 'renew'; identity?: string; t0: number; cpu0: NodeJS.CpuUsage; since: Date; done: Set<ProxyConnection> } | undefined;

function synced(c: ProxyConnection): boolean {
  if (!waiting) return false;
  if (waiting.kind === 'initial') return RESOURCE_TYPES.filter((t) => sdsOn || t.typeUrl !== SECRET).every((t) => syncState(c.types.get(t.typeUrl)) === 'SYNCED');
  if (waiting.kind === 'renew') {
    if (`${c.identity.namespace}/${c.identity.serviceAccount}` !== waiting.identity) return false;
    const s = c.types.get(SECRET);
    return !!s && syncState(s) === 'SYNCED' && !!s.ackedAt && s.sentAt! >= waiting.since;
  }
  const s = c.types.get(ENDPOINT);
  return !!s && syncState(s) === 'SYNCED' && !!s.ackedAt && s.sentAt! >= waiting.since;
}

// ADS_PROFILE=FILE: a CPU profile of the server during the first change, for chrome://inspect or speedscope.
const profile = process.env.ADS_PROFILE ? new Session() : undefined;
profile?.connect();
let profiled = false;
/** Time spent translating and writing the responses of the last change (the rest is reading ACKs). */
let pushMs = 0;

function check(c: ProxyConnection): void {
  if (!waiting || waiting.done.has(c) || !synced(c)) return;
  waiting.done.add(c);
  if (waiting.done.size === expected) {
    const cpu = process.cpuUsage(waiting.cpu0);
    send({ cmd: `${waiting.kind}-acked`, ms: performance.now() - waiting.t0, cpuMs: (cpu.user + cpu.system) / 1000, rss: mem(), pushMs });
    if (profile && waiting.kind === 'change' && !profiled) {
      profiled = true;
      void profile.post('Profiler.stop').then(({ profile: p }) => writeFileSync(process.env.ADS_PROFILE!, JSON.stringify(p)));
    }
    waiting = undefined;
  }
}
registry.observe({ acked: (c) => check(c) });

process.on('message', async (m: any) => {
  if (m.cmd === 'expect') {
    expected = m.n;
    waiting = { kind: 'initial', t0: performance.now(), cpu0: process.cpuUsage(), since: new Date(), done: new Set() };
    send({ cmd: 'ok' });
  } else if (m.cmd === 'change') {
    if (profile && m.i === 0) {
      await profile.post('Profiler.enable');
      await profile.post('Profiler.start');
    }
    // One more ready endpoint for service 0: its ClusterLoadAssignment changes for every proxy.
    waiting = { kind: 'change', t0: performance.now(), cpu0: process.cpuUsage(), since: new Date(), done: new Set() };
    const pod = { ...state.pods[0], name: `extra-${m.i}`, ip: `10.254.${m.i}.1` };
    state = { ...state, pods: [...state.pods, pod] };
    const t = performance.now();
    pipeline.update(state);
    pushMs = performance.now() - t;
  } else if (m.cmd === 'renew') {
    // One identity's data-plane certificate renewed: SDS to its proxies only.
    const identity = pipeline.ir!.identities[0];
    expected = m.n;
    waiting = { kind: 'renew', identity, t0: performance.now(), cpu0: process.cpuUsage(), since: new Date(), done: new Set() };
    certsOf!.renew(identity);
  } else if (m.cmd === 'stats') {
    send({ cmd: 'stats', rss: mem(), connections: registry.connections.size, loopMaxMs: loop.max / 1e6, receiving: server.grpc.receiving });
    if (m.reset) loop.reset();
  } else if (m.cmd === 'stop') {
    void server.close(1000).then(() => process.exit(0));
  }
});

const ids = pipeline.ir!.identities;
const clusters = pipeline.ir!.services.flatMap((s) => s.ports.map((p) => p.cluster)).sort();
// The route configurations a sidecar's listeners name: each ClusterIP service port's own, and the port's for headless services.
const routes = [
  ...new Set(pipeline.ir!.services.flatMap((s) => s.ports.filter((p) => p.protocol === 'http').map((p) => (s.headless ? `rds-outbound.${p.dialPort}` : `${s.host}:${p.dialPort}`)))),
].sort();
const certs = tlsOn
  ? Object.fromEntries(await Promise.all(ids.map(async (id) => [id, await issue(ca, { trustDomain: 'cluster.local', namespace: id.split('/')[0], serviceAccount: id.split('/')[1] })] as const)))
  : undefined;
send({ cmd: 'ready', port, identities: ids, clusters, routes, rss: mem(), certs });
