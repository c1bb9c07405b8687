/**
 * mesh-xds and go-control-plane side by side (issue 12): the same simulated Envoy sidecars (bench/peer/clients,
 * Go, one connection and one ADS stream each) against each server in turn, in one run, on the same mesh and the
 * same changes. go-control-plane (bench/peer/gcp-server) serves, through its snapshot cache, exactly the
 * resources mesh-xds builds: this driver translates every state with mesh-xds's pipeline and hands the encoded
 * snapshots over in files, decoded by the peer before the clients connect.
 *
 * Measured per server: the initial sync (first dial -> every stream holds all it asked for, clients' clock);
 * per change: change command -> every stream has received what changed for it (median and max); server CPU
 * (from /proc) and RSS; bytes of responses received per change (every response, not only the needed ones).
 *
 * PEER_CLIENT_WINDOW=BYTES fixes the clients' HTTP/2 windows (per stream and connection; by default gRPC grows them up
 * to 16 MB a stream, and 2,000 SotW streams of the big mesh then buffer more than the machine's 24 GB).
 * PEER_NODE_OPTIONS (e.g. "--cpu-prof --cpu-prof-dir=DIR") are given to mesh-xds's server process; PEER_PROFILE=FILE
 * has it write a CPU profile of one change: the first, or the Nth with PEER_PROFILE_CHANGE=N.
 *
 * Run: npm run bench:peer -- [--scenario small,big,big-routes,route-producer,route-consumer] [--n 2000,10000] [--mode sotw,delta] [--changes 5]
 *      [--servers mesh-xds,go-control-plane] [--pin]: every combination of the values given
 *      (default: the small mesh, 2,000 and 10,000 proxies, SotW and delta). The big mesh's snapshots are 350 MB a
 *      state on disk, and go-control-plane needed more than 18 GB for it at 2,000 proxies: try it at 500 first.
 */
import { execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import pino from 'pino';
import { Pipeline } from '../src/pipeline/pipeline.js';
import { SnapshotCache } from '../src/xds/resources/cache.js';
import type { Resource, Snapshot } from '../src/xds/resources/snapshot.js';
import { lenField, lenFieldParts } from '../src/xds/resources/wire.js';
import { SCENARIOS, type Scenario } from './peer/scenario.js';
import { Child, usage } from './children.js';

const ROOT = path.join(import.meta.dirname, '..', '..');
const { values: args } = parseArgs({
  options: {
    scenario: { type: 'string' },
    n: { type: 'string' },
    mode: { type: 'string' },
    changes: { type: 'string', default: '5' },
    servers: { type: 'string', default: 'mesh-xds,go-control-plane' },
    pin: { type: 'boolean', default: false },
  },
});
const CHANGES = Number(args.changes);
/** --pin: the server on CPU 0, the clients on CPU 1 (taskset), as a control plane on cores of its own would be. */
const pinned = (cpu: number, cmd: string, argv: string[]): [string, string[]] => (args.pin ? ['taskset', ['-c', String(cpu), cmd, ...argv]] : [cmd, argv]);
const SERVERS = args.servers!.split(',');

interface Shape {
  scenario: Scenario;
  n: number;
  mode: 'sotw' | 'delta';
}
// Every combination of the comma-separated values given.
const shapes: Shape[] = (args.scenario ?? 'small').split(',').flatMap((name) =>
  (args.n ?? '2000,10000').split(',').flatMap((n) =>
    (args.mode ?? 'sotw,delta').split(',').map((mode) => ({ scenario: SCENARIOS[name], n: Number(n), mode: mode as Shape['mode'] })),
  ),
);

execFileSync('bash', [path.join(ROOT, 'scripts/build-bench-peer.sh')], { stdio: 'inherit' });
const BIN = path.join(ROOT, '.cache/bench-peer');
const work = mkdtempSync(path.join(os.tmpdir(), 'mesh-xds-peer-'));
const now = (): number => performance.timeOrigin + performance.now();
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** What each state of the scenario is, as mesh-xds builds it: per identity, per type, the resource set. */
interface Built {
  identities: string[];
  snapshots: Map<string, Snapshot>[];
}

function build(scenario: Scenario): Built {
  const cache = new SnapshotCache();
  const pipeline = new Pipeline(cache, pino({ level: 'silent' }));
  const snapshots: Map<string, Snapshot>[] = [];
  let identities: string[] = [];
  for (let i = 0; i <= CHANGES; i++) {
    pipeline.update(scenario.state(i));
    if (i === 0) identities = [...pipeline.ir!.identities];
    snapshots.push(new Map(identities.map((id) => [id, cache.get(`sidecar:${id}`)!])));
  }
  return { identities, snapshots };
}

/**
 * The snapshots of the identities whose snapshot differs from `before` (all without it), for the peer:
 * records 'R' (one distinct resource, as a google.protobuf.Any) and 'S' (identity, type, version, indexes).
 */
function dump(file: string, now: Map<string, Snapshot>, before?: Map<string, Snapshot>): void {
  const out: Uint8Array[] = [];
  const index = new Map<Resource, number>();
  const u32 = (n: number): Buffer => {
    const b = Buffer.alloc(4);
    b.writeUInt32BE(n);
    return b;
  };
  const str = (s: string): Buffer[] => [u32(Buffer.byteLength(s)), Buffer.from(s)];
  for (const [id, snap] of now) {
    if (before?.get(id)?.version === snap.version) continue;
    for (const [typeUrl, set] of snap.types) {
      const idx: number[] = [];
      for (const r of set.resources.values()) {
        let k = index.get(r);
        if (k === undefined) {
          index.set(r, (k = index.size));
          const any = Buffer.concat([lenField(1, typeUrl), ...lenFieldParts(2, r.parts)]);
          out.push(Buffer.from('R'), u32(any.length), any);
        }
        idx.push(k);
      }
      out.push(Buffer.from('S'), ...str(id), ...str(typeUrl), ...str(set.version), u32(idx.length), ...idx.map(u32));
    }
  }
  writeFileSync(file, Buffer.concat(out));
}

/** Per identity, the resources (type, name) new or changed from `before` to `now`. */
function changed(now: Map<string, Snapshot>, before: Map<string, Snapshot>): Record<string, [string, string][]> {
  const out: Record<string, [string, string][]> = {};
  for (const [id, snap] of now) {
    const list: [string, string][] = [];
    for (const [typeUrl, set] of snap.types) {
      const old = before.get(id)?.types.get(typeUrl)?.resources;
      for (const r of set.resources.values()) if (old?.get(r.name)?.version !== r.version) list.push([typeUrl, r.name]);
    }
    if (list.length) out[id] = list;
  }
  return out;
}

interface Result {
  server: string;
  initialMs: number;
  initialCpu: number;
  changeMs: number[];
  changeCpu: number[];
  bytes: number[];
  responses: number[];
  /** Streams that received anything per change. */
  proxies: number[];
  reconnects: number;
  rss: number;
  peak: number;
  clientCpu: number;
  clientChangeCpu: number[];
}

async function runOne(server: string, shape: Shape, built: Built, files: string[], expects: Record<string, [string, string][]>[]): Promise<Result> {
  const srv = new Child(
    spawn(
      ...(server === 'mesh-xds'
        ? pinned(0, process.execPath, [...(process.env.PEER_NODE_OPTIONS?.split(' ') ?? []), '--max-old-space-size=8192', path.join(ROOT, 'dist-dev/bench/peer/mesh-xds-server.js'), shape.scenario.name])
        : pinned(0, path.join(BIN, 'gcp-server'), [])),
      { stdio: ['pipe', 'pipe', 'inherit'] },
    ),
  );
  const { port, pid } = await srv.next((m) => m.ok === 'listen');
  if (server !== 'mesh-xds') {
    for (const [i, file] of files.entries()) {
      srv.send({ cmd: 'load', tag: `change-${i}`, file });
      await srv.next((m) => m.ok === 'load');
    }
    srv.send({ cmd: 'apply', tag: 'change-0' });
    await srv.next((m) => m.ok === 'apply');
  }
  const u0 = usage(pid);
  const clients = new Child(
    spawn(...pinned(1, path.join(BIN, 'clients'), ['-addr', `127.0.0.1:${port}`, '-n', String(shape.n), '-mode', shape.mode, '-identities', built.identities.join(','), ...(process.env.PEER_CLIENT_WINDOW ? ['-window', process.env.PEER_CLIENT_WINDOW] : []), ...(process.env.PEER_CLIENTS_PROFILE ? ['-cpuprofile', process.env.PEER_CLIENTS_PROFILE] : [])]), {
      stdio: ['pipe', 'pipe', 'inherit'],
    }),
  );
  const synced = await clients.next((m) => m.ev === 'synced');
  const u1 = usage(pid);
  const result: Result = {
    server,
    initialMs: synced.ms,
    initialCpu: u1.cpu - u0.cpu,
    changeMs: [],
    changeCpu: [],
    bytes: [],
    responses: [],
    proxies: [],
    reconnects: 0,
    rss: 0,
    peak: 0,
    clientCpu: 0,
    clientChangeCpu: [],
  };
  await sleep(1000);
  for (let i = 1; i <= CHANGES; i++) {
    clients.send({ cmd: 'mark', expect: expects[i] });
    await clients.next((m) => m.ok === 'mark');
    const cpu0 = usage(pid).cpu;
    const clientCpu0 = usage(clients.proc.pid!).cpu;
    const t0 = now();
    srv.send({ cmd: 'apply', tag: `change-${i}` });
    const done = await clients.next((m) => m.ev === 'done');
    result.changeMs.push(done.at - t0);
    result.clientChangeCpu.push(usage(clients.proc.pid!).cpu - clientCpu0);
    await srv.next((m) => m.ok === 'apply');
    await sleep(1000);
    clients.send({ cmd: 'report' });
    const report = await clients.next((m) => m.ok === 'report');
    result.changeCpu.push(usage(pid).cpu - cpu0);
    result.bytes.push(report.bytes);
    result.responses.push(report.responses);
    result.proxies.push(report.proxies);
    result.reconnects = report.reconnects;
  }
  const u2 = usage(pid);
  result.rss = u2.rss;
  result.peak = u2.peak;
  result.clientCpu = usage(clients.proc.pid!).cpu;
  clients.stop();
  // A clean exit, so that a --cpu-prof in PEER_NODE_OPTIONS is written.
  srv.send({ cmd: 'stop' });
  await Promise.race([new Promise((r) => srv.proc.once('exit', r)), sleep(10_000)]);
  srv.stop();
  return result;
}

const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const ms = (x: number): string => (x >= 10_000 ? `${(x / 1000).toFixed(1)} s` : `${x.toFixed(0)} ms`);
const mb = (b: number): string => `${(b / 1024 / 1024).toFixed(0)} MB`;
const kb = (b: number): string => (b >= 10 * 1024 * 1024 ? mb(b) : `${(b / 1024).toFixed(0)} kB`);

console.log(`| mesh | proxies | mode | server | initial sync | its CPU | change -> all (median / max of ${CHANGES}) | CPU per change | bytes per change | responses per change | proxies sent anything (whose snapshot changed) | RSS after | peak RSS | clients' CPU (per change) | streams reopened |`);
console.log('|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|');
let flip = false;
for (const shape of shapes) {
  const built = build(shape.scenario);
  // What go-control-plane is given: mesh-xds's snapshots as files, and what each change must deliver.
  const files = built.snapshots.map((s, i) => {
    const f = path.join(work, `${shape.scenario.name}-${i}.bin`);
    dump(f, s, built.snapshots[i - 1]);
    return f;
  });
  const expects = built.snapshots.map((s, i) => (i ? changed(s, built.snapshots[i - 1]) : {}));
  // The proxies whose snapshot changed (a proxy takes identity k mod the count): the median over the changes.
  const owed = median(expects.slice(1).map((e) => Array.from({ length: shape.n }, (_, k) => built.identities[k % built.identities.length]!).filter((id) => id in e).length));
  const order = flip ? [...SERVERS].reverse() : SERVERS;
  flip = !flip;
  for (const server of order) {
    const r = await runOne(server, shape, built, files, expects);
    console.log(
      `| ${shape.scenario.name} (${shape.scenario.what}) | ${shape.n} | ${shape.mode} | ${r.server} | ${ms(r.initialMs)} | ${r.initialCpu.toFixed(1)} s | ${ms(median(r.changeMs))} / ${ms(Math.max(...r.changeMs))} | ${median(r.changeCpu).toFixed(2)} s | ${kb(median(r.bytes))} | ${median(r.responses)} | ${median(r.proxies)} (${owed}) | ${mb(r.rss)} | ${mb(r.peak)} | ${r.clientCpu.toFixed(1)} s (${median(r.clientChangeCpu).toFixed(2)} s) | ${r.reconnects} |`,
    );
  }
  for (const f of files) rmSync(f, { force: true });
}
rmSync(work, { recursive: true, force: true });
process.exit(0);
