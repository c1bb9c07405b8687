/**
 * mesh-xds under test in the side-by-side benchmark (bench/peer.ts): the real pipeline and ADS server on a
 * scenario's mesh, driven over stdin/stdout with the same commands as bench/peer/gcp-server:
 *   {"cmd":"apply","tag":"change-I"} -> {"ok":"apply","ms":X}   the mesh after change I, translated and pushed
 * Run by the driver: node dist-dev/bench/peer/mesh-xds-server.js SCENARIO
 */
import { writeFileSync } from 'node:fs';
import { Session } from 'node:inspector/promises';
import readline from 'node:readline';
import pino from 'pino';
import { Pipeline } from '../../src/pipeline/pipeline.js';
import { SnapshotCache } from '../../src/xds/resources/cache.js';
import { AdsServer } from '../../src/xds/protocol/server.js';
import { ProxyRegistry } from '../../src/xds/protocol/status.js';
import { SCENARIOS } from './scenario.js';

const scenario = SCENARIOS[process.argv[2]];
// PEER_LOG=warn (or info...): the server's log on stderr, e.g. to see why streams were refused.
const log = pino({ level: process.env.PEER_LOG ?? 'silent' }, pino.destination(2));
const cache = new SnapshotCache();
const pipeline = new Pipeline(cache, log);
pipeline.update(scenario.state(0));
const server = new AdsServer({ cache, registry: new ProxyRegistry(), log });
const port = await server.listen('127.0.0.1:0');
const send = (m: object): void => void process.stdout.write(`${JSON.stringify(m)}\n`);

// PEER_PROFILE=FILE: a CPU profile of one change (PEER_PROFILE_CHANGE, default the first), from its command until
// the next command arrives; PEER_PROFILE_INITIAL=FILE: one of the initial sync, from listening until the first command.
const profile = process.env.PEER_PROFILE || process.env.PEER_PROFILE_INITIAL ? new Session() : undefined;
profile?.connect();
let profiling: string | undefined;
if (process.env.PEER_PROFILE_INITIAL) {
  await profile!.post('Profiler.enable');
  await profile!.post('Profiler.start');
  profiling = process.env.PEER_PROFILE_INITIAL;
}

send({ ok: 'listen', port, pid: process.pid });
for await (const line of readline.createInterface({ input: process.stdin })) {
  const cmd = JSON.parse(line);
  if (profiling) {
    const { profile: p } = await profile!.post('Profiler.stop');
    writeFileSync(profiling, JSON.stringify(p));
    profiling = undefined;
  }
  if (cmd.cmd === 'apply') {
    const i = Number(/^change-(\d+)$/.exec(cmd.tag)![1]);
    if (process.env.PEER_PROFILE && i === Number(process.env.PEER_PROFILE_CHANGE ?? 1)) {
      await profile!.post('Profiler.enable');
      await profile!.post('Profiler.start');
      profiling = process.env.PEER_PROFILE;
    }
    const t = performance.now();
    pipeline.update(scenario.state(i));
    send({ ok: 'apply', ms: performance.now() - t });
  } else if (cmd.cmd === 'stop') {
    await server.close(500);
    process.exit(0);
  }
}
