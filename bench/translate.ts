/**
 * Translation benchmark (issue 3): 1,000 services x 2 ports, 5,000 pods, 1,000 service accounts, 500 Retry
 * policies, and with --routes N that many Gateway API HTTPRoutes (issue 38; bench/mesh-gen.ts routeObject). Full
 * build of every proxy's snapshot from scratch, then one Retry change, then a producer route edit and a consumer
 * route edit (a route added where the mesh has none): time, snapshots rebuilt and changed.
 * Run: npm run bench:translate [-- --routes 500]   (node --expose-gc, after npm run build)
 */
import { parseArgs } from 'node:util';
import pino from 'pino';
import { amplification } from '../src/compile/amplification.js';
import { featuresFor } from '../src/compile/features.js';
import type { MeshState } from '../src/model/mesh.js';
import { Pipeline } from '../src/pipeline/pipeline.js';
import { SnapshotCache } from '../src/xds/resources/cache.js';
import { loadEnvoyProtos } from '../src/xds/resources/protos.js';
import { BENCH_MESH, generateMesh, isConsumerRoute, retryObject, routeObject } from './mesh-gen.js';

const { values: args } = parseArgs({ options: { routes: { type: 'string', default: '0' } } });
const SIZE = { ...BENCH_MESH, routes: Number(args.routes) };

const gc = (globalThis as any).gc as (() => void) | undefined;
const mb = (n: number): string => `${(n / 1024 / 1024).toFixed(1)} MB`;

function heap(): number {
  gc?.();
  return process.memoryUsage().heapUsed;
}

loadEnvoyProtos();
const state = generateMesh(SIZE);
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

console.log(`mesh: ${SIZE.services} services x 2 ports, ${SIZE.pods} pods, ${SIZE.serviceAccounts} service accounts, ${SIZE.retries} Retry policies, ${SIZE.routes} HTTPRoutes`);
console.log(`full build: ${fullMs.toFixed(0)} ms for ${full.rebuilt} proxy snapshots (${full.failed.length} failed)`);
console.log(`memory held by the snapshots: ${mb(heapAfter - heapBefore)} heap; process RSS ${mb(process.memoryUsage().rss)}`);
console.log(`distinct resources across all snapshots: ${distinct.size}, ${mb(totalBytes)} on the wire if each were sent once; encodes: ${JSON.stringify(pipeline.memoStats)}`);

// One Retry change: policy 0 gets numRetries 7.
const times: number[] = [];
let changed = 0;
let current: MeshState = state;
for (let i = 0; i < 5; i++) {
  const retries = [...state.retries];
  retries[0] = retryObject(0, SIZE, 7 + i);
  const next = (current = { ...state, retries });
  const t = performance.now();
  const r = pipeline.update(next);
  times.push(performance.now() - t);
  changed = r.changed;
}
const changedKeys = [...cache.keys()].filter((k) => cache.peek(k)!.version !== versions.get(k));
times.sort((a, b) => a - b);
console.log(`one Retry change: median ${times[2].toFixed(1)} ms (min ${times[0].toFixed(1)}, max ${times[4].toFixed(1)}) over 5 changes; ${changed} snapshot(s) got a new version (${changedKeys.join(', ')})`);

/**
 * Route `index` edited (added where the mesh has none), 5 times, each from the mesh before (put back untimed): the
 * time, how many snapshots were rebuilt and got a new version, and whether those were only `expected`'s.
 */
function routeEdit(what: string, index: number): void {
  const base = current;
  const at = base.routes.findIndex((r) => r.name === routeObject(index, SIZE).name && r.namespace === routeObject(index, SIZE).namespace);
  const edited = routeObject(index, SIZE, 1);
  const audience = isConsumerRoute(index, SIZE) ? edited.namespace : undefined;
  const expected = audience ? pipeline.ir!.identities.filter((id) => id.startsWith(`${audience}/`)).length : pipeline.ir!.identities.length;
  const ms: number[] = [];
  const reports: { rebuilt: number; changed: number; outside: number }[] = [];
  for (let i = 0; i < 5; i++) {
    const routes = [...base.routes];
    const r = routeObject(index, SIZE, 1 + i);
    if (at >= 0) routes[at] = r;
    else routes.push(r);
    const before = new Map([...cache.keys()].map((k) => [k, cache.peek(k)!.version]));
    const t = performance.now();
    const report = pipeline.update({ ...base, routes });
    ms.push(performance.now() - t);
    const moved = [...cache.keys()].filter((k) => cache.peek(k)!.version !== before.get(k));
    reports.push({ rebuilt: report.rebuilt, changed: report.changed, outside: audience ? moved.filter((k) => !k.startsWith(`sidecar:${audience}/`)).length : 0 });
    pipeline.update(base);
  }
  const order = [...ms].sort((a, b) => a - b);
  const r = reports[0]!;
  const same = reports.every((x) => x.rebuilt === r.rebuilt && x.changed === r.changed && x.outside === r.outside);
  console.log(
    `${what} (${at >= 0 ? 'edited' : 'added'}: HTTPRoute ${edited.namespace}/${edited.name}): median ${order[2]!.toFixed(1)} ms (min ${order[0]!.toFixed(1)}, max ${order[4]!.toFixed(1)}) over 5; ` +
      `${r.rebuilt} rebuilt, ${r.changed} changed${same ? '' : ' (varied)'}; ${audience ? `the sidecars of ${audience}: ${expected}, changed outside it: ${r.outside}` : `every sidecar: ${expected}`}`,
  );
}
routeEdit('one producer route edit', 0);
routeEdit('one consumer route edit', 9);

// The seam's answer for every identity (what each proxy build asks once): the cost of walking every route key.
const seam: number[] = [];
for (let i = 0; i < 5; i++) {
  const t = performance.now();
  for (const id of pipeline.ir!.identities) featuresFor(pipeline.ir!, id, id.slice(0, id.indexOf('/')));
  seam.push(performance.now() - t);
}
seam.sort((a, b) => a - b);
console.log(`featuresFor, every identity (${pipeline.ir!.identities.length}): median ${seam[2]!.toFixed(1)} ms (max ${seam[4]!.toFixed(1)})`);

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
const topo = pipeline.update({ ...current, pods });
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
