/**
 * Churn at scale (issue 36): N simulated Envoy sidecars (bench/peer/clients, Go, one connection and one ADS stream
 * each) against mesh-xds's server process of the side-by-side benchmark (bench/peer/mesh-xds-server.ts), on the
 * small mesh with a Retry edited per change (scenario small-retry: 10 services x 2 ports, 100 identities, 50
 * Retries). Once all are synced, R proxies a second drop their connection and open a new one at once (a rollout),
 * in turn, while a Retry is edited every E seconds, for D seconds.
 *
 * Measured:
 * - push-to-ACK per edit: edit command -> each proxy whose snapshot the edit changes (the Retry's source identity's
 *   proxies) has received the changed resources and ACKed them; a proxy that reconnects meanwhile counts once its
 *   new stream is synced. p50/p99 over every such proxy of every edit, and the slowest edit's "all done".
 * - reconnect-to-synced: a new connection opened (dial included) -> its stream holds all it asked for, ACKed.
 * - server: max RSS sampled during the churn (every 250 ms), peak RSS of the whole run, CPU seconds (from /proc);
 *   the clients' CPU seconds (they share the machine's cores with the server).
 *
 * PEER_NODE_OPTIONS (e.g. "--cpu-prof --cpu-prof-dir=DIR") are given to the server process, as in bench/peer.ts.
 *
 * Run: npm run bench:churn -- [--n 20000] [--mode delta|sotw] [--reconnect-rate 30] [--edit-every 10]
 *      [--duration 120] [--json FILE]
 */
import { execFileSync, spawn } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import pino from 'pino';
import { Pipeline } from '../src/pipeline/pipeline.js';
import { SnapshotCache } from '../src/xds/resources/cache.js';
import type { Snapshot } from '../src/xds/resources/snapshot.js';
import { SCENARIOS } from './peer/scenario.js';
import { Child, usage } from './children.js';

const ROOT = path.join(import.meta.dirname, '..', '..');
const { values: args } = parseArgs({
  options: {
    n: { type: 'string', default: '20000' },
    mode: { type: 'string', default: 'delta' },
    'reconnect-rate': { type: 'string', default: '30' },
    'edit-every': { type: 'string', default: '10' },
    duration: { type: 'string', default: '120' },
    json: { type: 'string' },
  },
});
const N = Number(args.n);
const MODE = args.mode!;
const RATE = Number(args['reconnect-rate']);
const EVERY = Number(args['edit-every']);
const DURATION = Number(args.duration);
for (const [flag, v] of [['--n', N], ['--reconnect-rate', RATE], ['--edit-every', EVERY], ['--duration', DURATION]] as const) {
  if (!Number.isInteger(v) || v < (flag === '--reconnect-rate' ? 0 : 1)) throw new Error(`bench:churn: ${flag} must be a whole number${flag === '--reconnect-rate' ? '' : ' above 0'}, got ${String(v)}`);
}
if (MODE !== 'delta' && MODE !== 'sotw') throw new Error(`bench:churn: --mode must be delta or sotw, got ${MODE}`);
// One connection a proxy, in the server's process and in the clients' (which need about 20 and 8 more files).
const nofile = Number(/^Max open files\s+(\d+)/m.exec(readFileSync('/proc/self/limits', 'utf8'))?.[1] ?? Infinity);
if (N + 32 > nofile) throw new Error(`bench:churn: --n ${N} needs ${N + 32} open files in the server's process, and this machine allows ${nofile} a process (ulimit -n): at most --n ${nofile - 32}`);
const EDITS = Math.floor(DURATION / EVERY);
const scenario = SCENARIOS['small-retry'];

execFileSync('bash', [path.join(ROOT, 'scripts/build-bench-peer.sh')], { stdio: 'inherit' });
const BIN = path.join(ROOT, '.cache/bench-peer');
const now = (): number => performance.timeOrigin + performance.now();
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const loadavg = (): string => readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ');


// What each edit must deliver: per identity, the resources (type, name) new or changed, as mesh-xds builds them.
const cache = new SnapshotCache();
const pipeline = new Pipeline(cache, pino({ level: 'silent' }));
const snapshots: Map<string, Snapshot>[] = [];
let identities: string[] = [];
for (let i = 0; i <= EDITS; i++) {
  pipeline.update(scenario.state(i));
  if (i === 0) identities = [...pipeline.ir!.identities];
  snapshots.push(new Map(identities.map((id) => [id, cache.get(`sidecar:${id}`)!])));
}
const expects = snapshots.map((snap, i) => {
  const out: Record<string, [string, string][]> = {};
  if (i === 0) return out;
  for (const [id, s] of snap) {
    const list: [string, string][] = [];
    for (const [typeUrl, set] of s.types) {
      const old = snapshots[i - 1].get(id)?.types.get(typeUrl)?.resources;
      for (const r of set.resources.values()) if (old?.get(r.name)?.version !== r.version) list.push([typeUrl, r.name]);
    }
    if (list.length) out[id] = list;
  }
  return out;
});

const startLoad = loadavg();
const srv = new Child(
  spawn(process.execPath, [...(process.env.PEER_NODE_OPTIONS?.split(' ') ?? []), '--max-old-space-size=8192', path.join(ROOT, 'dist-dev/bench/peer/mesh-xds-server.js'), scenario.name], {
    stdio: ['pipe', 'pipe', 'inherit'],
  }),
);
const { port, pid } = await srv.next((m) => m.ok === 'listen', undefined, 'the server');
const clients = new Child(
  spawn(path.join(BIN, 'clients'), ['-addr', `127.0.0.1:${port}`, '-n', String(N), '-mode', MODE, '-identities', identities.join(','), ...(process.env.PEER_CLIENT_WINDOW ? ['-window', process.env.PEER_CLIENT_WINDOW] : [])], {
    stdio: ['pipe', 'pipe', 'inherit'],
  }),
);
const cpid = clients.proc.pid!;
const synced = await clients.next((m) => m.ev === 'synced', undefined, 'the initial sync');
console.log(`initial sync of ${N} ${MODE} proxies: ${(synced.ms / 1000).toFixed(1)} s (load ${loadavg()})`);
await sleep(1000);

// The churn phase.
const s0 = usage(pid);
const c0 = usage(cpid);
let maxRss = s0.rss;
const sampler = setInterval(() => (maxRss = Math.max(maxRss, usage(pid).rss)), 250);
const resync: number[] = [];
const pushAck: number[] = [];
const edits: { edit: number; proxies: number; acked: number; allMs: number | null; buildMs: number }[] = [];
let churned = 0;
const times = async (): Promise<{ acked: number[]; resyncing: number }> => {
  clients.send({ cmd: 'times' });
  const t = await clients.next((m) => m.ok === 'times', undefined, 'times');
  resync.push(...t.resync);
  churned = t.churned;
  return t;
};
clients.send({ cmd: 'churn', rate: RATE });
await clients.next((m) => m.ok === 'churn', undefined, 'churn');
const t0 = now();
for (let i = 1; i <= EDITS; i++) {
  await sleep(Math.max(0, t0 + i * EVERY * 1000 - now()));
  const owed = Array.from({ length: N }, (_, k) => identities[k % identities.length]).filter((id) => id in expects[i]).length;
  // A late "done" of the edit before is not this one's.
  while (await clients.maybe((m) => m.ev === 'done', 0));
  clients.send({ cmd: 'mark', expect: expects[i] });
  await clients.next((m) => m.ok === 'mark', undefined, 'mark');
  const at = now();
  srv.send({ cmd: 'apply', tag: `change-${i}` });
  // Done by the next edit (or within the edit interval after the last one), or counted as not done.
  const done = await clients.maybe((m) => m.ev === 'done', EVERY * 1000 - 500);
  const applied = await srv.next((m) => m.ok === 'apply', undefined, 'apply');
  const t = await times();
  const ms = t.acked.map((a) => a - at);
  pushAck.push(...ms);
  edits.push({ edit: i, proxies: owed, acked: ms.length, allMs: done ? done.at - at : null, buildMs: applied.ms });
}
await sleep(Math.max(0, t0 + DURATION * 1000 - now()));
clients.send({ cmd: 'churn', rate: 0 });
await clients.next((m) => m.ok === 'churn', undefined, 'churn');
const seconds = (now() - t0) / 1000;
clearInterval(sampler);
const s1 = usage(pid);
const c1 = usage(cpid);
// The last connections opened, given a moment to sync.
await sleep(2000);
const end = await times();
const endLoad = loadavg();

const pct = (xs: number[], p: number): number | null => {
  if (!xs.length) return null;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)];
};
const result = {
  date: new Date().toISOString(),
  n: N,
  mode: MODE,
  scenario: `${scenario.name} (${scenario.what})`,
  reconnectRate: RATE,
  editEvery: EVERY,
  duration: Math.round(seconds),
  initialSyncMs: synced.ms,
  pushToAck: { p50: pct(pushAck, 50), p99: pct(pushAck, 99), max: pct(pushAck, 100), proxies: pushAck.length, owed: edits.reduce((a, e) => a + e.proxies, 0) },
  edits,
  reconnectToSynced: { p50: pct(resync, 50), p99: pct(resync, 99), max: pct(resync, 100), over1s: resync.filter((x) => x > 1000).length, synced: resync.length, reconnected: churned, notSyncedAtEnd: end.resyncing },
  server: { maxRssMB: Math.round(maxRss / 2 ** 20), peakRssMB: Math.round(s1.peak / 2 ** 20), cpuSeconds: +(s1.cpu - s0.cpu).toFixed(1), cpuShare: +((s1.cpu - s0.cpu) / seconds).toFixed(2) },
  clients: { cpuSeconds: +(c1.cpu - c0.cpu).toFixed(1), cpuShare: +((c1.cpu - c0.cpu) / seconds).toFixed(2) },
  load: { start: startLoad, end: endLoad },
};
const f = (x: number | null): string => (x === null ? '-' : x >= 10_000 ? `${(x / 1000).toFixed(1)} s` : `${x.toFixed(0)} ms`);
console.log(
  `${N} ${MODE} proxies, ${RATE} reconnecting a second, a Retry edited every ${EVERY} s, ${result.duration} s (${result.scenario}); load ${startLoad} -> ${endLoad}`,
);
console.log(
  `push-to-ACK: p50 ${f(result.pushToAck.p50)}, p99 ${f(result.pushToAck.p99)}, max ${f(result.pushToAck.max)} (${pushAck.length} of ${result.pushToAck.owed} proxies over ${EDITS} edits; slowest edit all done ${f(Math.max(...edits.map((e) => e.allMs ?? Infinity)))})`,
);
console.log(
  `reconnect-to-synced: p50 ${f(result.reconnectToSynced.p50)}, p99 ${f(result.reconnectToSynced.p99)}, max ${f(result.reconnectToSynced.max)} (${resync.length} synced of ${churned} reconnected, ${result.reconnectToSynced.over1s} in over 1 s; ${end.resyncing} not synced at the end)`,
);
console.log(
  `server: RSS max ${result.server.maxRssMB} MB during the churn (peak ${result.server.peakRssMB} MB), CPU ${result.server.cpuSeconds} s (${result.server.cpuShare} cores); clients' CPU ${result.clients.cpuSeconds} s (${result.clients.cpuShare} cores)`,
);
if (args.json) writeFileSync(args.json, `${JSON.stringify(result, null, 2)}\n`);
clients.proc.kill('SIGKILL');
// A clean exit, so that a --cpu-prof in PEER_NODE_OPTIONS is written.
srv.send({ cmd: 'stop' });
await Promise.race([new Promise((r) => srv.proc.once('exit', r)), sleep(10_000)]);
process.exit(0);
