/**
 * Sidecar certificates at scale (issue 36, "Identities"): WorkloadCerts issues one certificate (its own key pair) per
 * identity. Measures, in this process:
 * - start: N identities wanted at once, until every one holds a certificate (wall time, CPU, the event loop's
 *   longest stall from perf_hooks' monitorEventLoopDelay);
 * - a renewal wave: a new CA (rotation delay 0), every certificate issued again at once (the same figures);
 * - memory: RSS and heap after each;
 * - the loop's delay over 2 s of doing nothing first: the floor this machine's other work (preemption) sets; and
 *   for each phase the longest turn of the loop with the CPU the process used in it, and the most CPU in one turn
 *   (the process's, GC threads included: an upper bound of what held the loop).
 * Each batch's onChange asks for `secrets()` as the pipeline does. `npm run bench:identities [N]` (default 10,000).
 * `node --cpu-prof dist-dev/bench/identities.js` writes a CPU profile.
 */
import os from 'node:os';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import pino from 'pino';
import { createCa } from '../src/security/ca.js';
import { WorkloadCerts } from '../src/security/workload-certs.js';

const n = Number(process.argv[2] ?? 10_000);
const trustDomain = 'cluster.local';
const mb = (b: number): number => Math.round(b / 1048576);

async function phase(name: string, start: () => void, certs: WorkloadCerts, done: () => boolean): Promise<Record<string, unknown>> {
  const h = monitorEventLoopDelay({ resolution: 5 });
  // Each turn of the loop (an immediate per turn): its wall time and the process's CPU in it. A long turn with
  // little CPU is this process waiting for a core (the machine's other work), not work holding the loop.
  let longest = { wallMs: 0, cpuMs: 0 };
  let mostCpu = 0;
  let ticking = true;
  let at = performance.now();
  let cpuAt = process.cpuUsage();
  const tick = (): void => {
    const now = performance.now();
    const c = process.cpuUsage(cpuAt);
    const turn = { wallMs: now - at, cpuMs: (c.user + c.system) / 1000 };
    if (turn.wallMs > longest.wallMs) longest = turn;
    mostCpu = Math.max(mostCpu, turn.cpuMs);
    at = now;
    cpuAt = process.cpuUsage();
    if (ticking) setImmediate(tick);
  };
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  h.enable();
  setImmediate(tick);
  start();
  while (!done()) {
    await certs.settled();
    await new Promise((r) => setTimeout(r, 5));
  }
  const ms = performance.now() - t0;
  h.disable();
  ticking = false;
  const cpu = process.cpuUsage(cpu0);
  const m = process.memoryUsage();
  return {
    phase: name,
    identities: n,
    seconds: +(ms / 1000).toFixed(2),
    cpuSeconds: +((cpu.user + cpu.system) / 1e6).toFixed(2),
    perCertMs: +(ms / n).toFixed(3),
    loopDelayMaxMs: +(h.max / 1e6).toFixed(1),
    loopDelayP99Ms: +(h.percentile(99) / 1e6).toFixed(1),
    longestTurn: `${longest.wallMs.toFixed(1)} ms wall, ${longest.cpuMs.toFixed(1)} ms CPU`,
    mostCpuInATurnMs: +mostCpu.toFixed(1),
    rssMb: mb(m.rss),
    heapMb: mb(m.heapUsed),
  };
}

async function main(): Promise<void> {
  const ca = await createCa(trustDomain);
  const ids = Array.from({ length: n }, (_, i) => `ns-${i % 100}/sa-${i}`);
  let changes = 0;
  let held = 0;
  const log = pino({ level: 'warn' });
  const certs: WorkloadCerts = new WorkloadCerts({
    ca,
    trustDomain,
    log,
    rotationDelayMs: 0,
    onChange: (changed) => {
      changes++;
      held = certs.secrets().certs.size;
      void changed;
    },
  });
  const idle = monitorEventLoopDelay({ resolution: 5 });
  idle.enable();
  await new Promise((r) => setTimeout(r, 2_000));
  idle.disable();
  console.log(JSON.stringify({ phase: 'idle (2 s)', loopDelayMaxMs: +(idle.max / 1e6).toFixed(1), loopDelayP99Ms: +(idle.percentile(99) / 1e6).toFixed(1), load: os.loadavg()[0] }));
  const rssBefore = mb(process.memoryUsage().rss);
  const start = await phase('start', () => certs.want(ids), certs, () => held === n && certs.issued >= n);
  console.log(JSON.stringify({ ...start, rssBeforeMb: rssBefore, batches: changes }));

  const next = await createCa(trustDomain);
  const issuedBefore = certs.issued;
  changes = 0;
  const wave = await phase('renewal wave (new CA)', () => certs.setCa({ cert: next.cert + ca.cert, key: next.key }), certs, () => certs.issued >= issuedBefore + n);
  console.log(JSON.stringify({ ...wave, batches: changes }));
  certs.stop();
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
