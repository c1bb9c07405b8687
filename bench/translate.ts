/**
 * Translation benchmark (issue 3): 1,000 services x 2 ports, 5,000 pods, 1,000 service accounts, 500 Retry
 * policies. Full build of every proxy's snapshot from scratch, then one Retry change.
 * Run: npm run bench:translate   (node --expose-gc, after npm run build)
 */
import pino from 'pino';
import { amplification } from '../src/compile/amplification.js';
import { Pipeline } from '../src/pipeline/pipeline.js';
import { SnapshotCache } from '../src/xds/resources/cache.js';
import { loadEnvoyProtos } from '../src/xds/resources/protos.js';
import { BENCH_MESH, generateMesh, retryObject } from './mesh-gen.js';

const gc = (globalThis as any).gc as (() => void) | undefined;
const mb = (n: number): string => `${(n / 1024 / 1024).toFixed(1)} MB`;

function heap(): number {
  gc?.();
  return process.memoryUsage().heapUsed;
}

loadEnvoyProtos();
const state = generateMesh();
const heapBefore = heap();
const cache = new SnapshotCache();
const pipeline = new Pipeline(cache, pino({ level: 'silent' }));

const t0 = performance.now();
const full = pipeline.update(state);
const fullMs = performance.now() - t0;
const heapAfter = heap();
const versions = new Map([...cache.keys()].map((k) => [k, cache.peek(k)!.version]));
const distinct = new Set([...cache.keys()].flatMap((k) => [...cache.peek(k)!.types.values()].flatMap((t) => [...t.resources.values()])));
const totalBytes = [...distinct].reduce((n, r) => n + r.size, 0);

console.log(`mesh: ${BENCH_MESH.services} services x 2 ports, ${BENCH_MESH.pods} pods, ${BENCH_MESH.serviceAccounts} service accounts, ${BENCH_MESH.retries} Retry policies`);
console.log(`full build: ${fullMs.toFixed(0)} ms for ${full.rebuilt} proxy snapshots (${full.failed.length} failed)`);
console.log(`memory held by the snapshots: ${mb(heapAfter - heapBefore)} heap; process RSS ${mb(process.memoryUsage().rss)}`);
console.log(`distinct resources across all snapshots: ${distinct.size}, ${mb(totalBytes)} on the wire if each were sent once; encodes: ${JSON.stringify(pipeline.memoStats)}`);

// One Retry change: policy 0 gets numRetries 7.
const times: number[] = [];
let changed = 0;
for (let i = 0; i < 5; i++) {
  const retries = [...state.retries];
  retries[0] = retryObject(0, BENCH_MESH, 7 + i);
  const next = { ...state, retries };
  const t = performance.now();
  const r = pipeline.update(next);
  times.push(performance.now() - t);
  changed = r.changed;
}
const changedKeys = [...cache.keys()].filter((k) => cache.peek(k)!.version !== versions.get(k));
times.sort((a, b) => a - b);
console.log(`one Retry change: median ${times[2].toFixed(1)} ms (min ${times[0].toFixed(1)}, max ${times[4].toFixed(1)}) over 5 changes; ${changed} snapshot(s) got a new version (${changedKeys.join(', ')})`);

// The same full build again in fresh pipelines (the first run above also paid for JIT warm-up).
const warm: number[] = [];
for (let i = 0; i < 2; i++) {
  const t = performance.now();
  new Pipeline(new SnapshotCache(), pino({ level: 'silent' })).update(state);
  warm.push(performance.now() - t);
}
console.log(`full build again, warm process, fresh pipeline: ${warm.map((w) => `${w.toFixed(0)} ms`).join(', ')}`);

// A topology change (one endpoint more) for comparison: everything is re-derived from memoized pieces.
const pods = [...state.pods, { ...state.pods[0], name: 'extra-pod', ip: '10.250.0.1' }];
const t2 = performance.now();
const topo = pipeline.update({ ...state, pods });
console.log(`one endpoint added (topology change): ${(performance.now() - t2).toFixed(0)} ms, ${topo.changed} snapshots changed`);

// Retry amplification of the mesh after that change (issue 25): every call path of Retries in force.
const ampTimes: number[] = [];
let amp = amplification(pipeline.ir!);
for (let i = 0; i < 5; i++) {
  const t = performance.now();
  amp = amplification(pipeline.ir!);
  ampTimes.push(performance.now() - t);
}
ampTimes.sort((a, b) => a - b);
console.log(
  `retry amplification: ${amp.paths.length} call paths (worst ${amp.paths[0]?.attempts ?? 1} attempts${amp.truncated ? '; walk truncated at its bound' : ''}) in median ${ampTimes[2]!.toFixed(1)} ms (max ${ampTimes[4]!.toFixed(1)})`,
);
