/**
 * How long the CLI takes to answer (issue 37: `validate`, `policy explain -f`, `policy amplification -f` and
 * `--help` under 300 ms on a quiet machine, where `node -e 0` takes about 90 ms). Each command runs N times as a
 * child process, interleaved with `node -e 0` so that both see the same load; printed as the median and the
 * fastest run, and each median as a ratio to `node -e 0`'s measured in the same run.
 * Run: npm run build && npm run bench:cli [-- N]
 */
import { spawnSync } from 'node:child_process';
import { packagePath } from '../src/paths.js';

const N = Number(process.argv[2] ?? 15);
const BIN = packagePath('bin/mesh-xds.js');
const DEMO = packagePath('deploy/demo');

const COMMANDS: { name: string; args: string[] }[] = [
  { name: 'node -e 0', args: ['-e', '0'] },
  { name: 'mesh-xds --help', args: [BIN, '--help'] },
  { name: 'mesh-xds validate -f deploy/demo/retry.yaml', args: [BIN, 'validate', '-f', `${DEMO}/retry.yaml`] },
  { name: 'mesh-xds validate -f deploy/demo', args: [BIN, 'validate', '-f', DEMO] },
  { name: 'mesh-xds policy explain -f deploy/demo', args: [BIN, 'policy', 'explain', '--from', 'curl/curl', '--to', 'httpbin/httpbin', '-f', DEMO] },
  { name: 'mesh-xds policy amplification -f deploy/demo', args: [BIN, 'policy', 'amplification', '-f', DEMO] },
];

const times = COMMANDS.map(() => [] as number[]);
/** A command that failed is reported, not timed (an older build may not have it). */
const failed = new Map<number, string>();
for (let i = 0; i < N; i++) {
  COMMANDS.forEach((c, j) => {
    if (failed.has(j)) return;
    const start = process.hrtime.bigint();
    const r = spawnSync(process.execPath, c.args, { stdio: ['ignore', 'ignore', 'pipe'] });
    const ms = Number(process.hrtime.bigint() - start) / 1e6;
    if (r.status !== 0) failed.set(j, `exit ${r.status}: ${String(r.stderr).split('\n')[0]}`);
    else times[j].push(ms);
  });
}

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};
const base = median(times[0]);
console.log(`${N} runs each, interleaved; node ${process.version}`);
console.log(`${'command'.padEnd(48)} ${'median'.padStart(8)} ${'fastest'.padStart(8)} ${'x node -e 0'.padStart(12)}`);
COMMANDS.forEach((c, j) => {
  if (failed.has(j)) return console.log(`${c.name.padEnd(48)} ${failed.get(j)}`);
  const m = median(times[j]);
  console.log(`${c.name.padEnd(48)} ${`${m.toFixed(0)} ms`.padStart(8)} ${`${Math.min(...times[j]).toFixed(0)} ms`.padStart(8)} ${(m / base).toFixed(2).padStart(12)}`);
});
console.log(`goal: 300 ms where node -e 0 takes 90 ms, about ${(300 / 90).toFixed(1)} x node -e 0`);
