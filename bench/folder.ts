/**
 * The folder source on a large tree: 5,000 manifest files read at start, then 5,000 more added while it runs.
 * Reports how long each took to be applied and the longest the event loop was blocked meanwhile (what ADS,
 * health checks and the debug server would have waited).
 * Run: npm run build && npm run bench:folder [-- FILES]
 */
import { cpSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import pino from 'pino';
import type { MeshState } from '../src/model/mesh.js';
import { loadRetrySchema } from '../src/sources/crd.js';
import { FileSource } from '../src/sources/files.js';
import { Pipeline } from '../src/pipeline/pipeline.js';
import { SnapshotCache } from '../src/xds/resources/cache.js';
import { loadEnvoyProtos } from '../src/xds/resources/protos.js';
import { packagePath } from '../src/paths.js';

const DEMO = packagePath('deploy/demo');

const N = Number(process.argv[2] ?? 5000);
const dir = mkdtempSync(path.join(os.tmpdir(), 'mesh-xds-folder-'));

/** A Service and a Pod per file, spread over 50 subdirectories. */
function write(from: number, count: number): void {
  for (let i = from; i < from + count; i++) {
    const sub = path.join(dir, `d${i % 50}`);
    mkdirSync(sub, { recursive: true });
    writeFileSync(
      path.join(sub, `app-${i}.yaml`),
      `apiVersion: v1\nkind: Service\nmetadata: {name: app-${i}, namespace: ns-${i % 20}}\nspec: {clusterIP: 10.${100 + (i >> 16)}.${(i >> 8) & 255}.${i & 255}, selector: {app: app-${i}}, ports: [{name: http, port: 80, targetPort: 8080}]}\n---\n` +
        `apiVersion: v1\nkind: Pod\nmetadata: {name: app-${i}-0, namespace: ns-${i % 20}, labels: {app: app-${i}}}\nspec: {serviceAccountName: sa-${i % 200}, containers: [{name: app}]}\nstatus: {phase: Running, podIP: 10.${200 + (i >> 16)}.${(i >> 8) & 255}.${i & 255}}\n`,
    );
  }
}

write(0, N);
const states: MeshState[] = [];
const source = new FileSource({ dir, meshName: 'mesh-xds', log: pino({ level: 'silent' }), retrySchema: loadRetrySchema(), onChange: (s) => states.push(s) });
const delay = monitorEventLoopDelay({ resolution: 5 });
delay.enable();
let t0 = performance.now();
await source.start();
const startMs = performance.now() - t0;
const startMax = delay.max / 1e6;
delay.reset();

t0 = performance.now();
write(N, N);
const writeMs = performance.now() - t0;
while (!states.at(-1) || states.at(-1)!.services.length < 2 * N) await new Promise((r) => setTimeout(r, 20));
const addMs = performance.now() - t0;
const addMax = delay.max / 1e6;
source.stop();
rmSync(dir, { recursive: true, force: true });
console.log(`${N} files read at start in ${(startMs / 1000).toFixed(2)} s; longest event-loop block ${startMax.toFixed(0)} ms`);
console.log(`${N} more files added (written in ${(writeMs / 1000).toFixed(2)} s) applied ${(addMs / 1000).toFixed(2)} s after the first write; longest event-loop block ${addMax.toFixed(0)} ms`);

// One big object: an EndpointSlice of 50,000 endpoints (3 MB) added to the demo mesh, read by the folder source
// and translated by the pipeline as `mesh-xds serve` does.
loadEnvoyProtos();
const big = mkdtempSync(path.join(os.tmpdir(), 'mesh-xds-folder-big-'));
cpSync(DEMO, big, { recursive: true });
const lines = ['apiVersion: discovery.k8s.io/v1', 'kind: EndpointSlice', 'metadata: {name: httpbin-big, namespace: httpbin, labels: {kubernetes.io/service-name: httpbin}}', 'addressType: IPv4', 'ports: [{name: http, port: 14001}]', 'endpoints:'];
for (let i = 0; i < 50_000; i++) lines.push(`- addresses: ["10.${100 + (i >> 16)}.${(i >> 8) & 255}.${i & 255}"]`, '  conditions: {ready: true}');
const pipeline = new Pipeline(new SnapshotCache(), pino({ level: 'silent' }));
let translateMs = 0;
let applied = 0;
const bigSource = new FileSource({
  dir: big,
  meshName: 'mesh-xds',
  log: pino({ level: 'silent' }),
  retrySchema: loadRetrySchema(),
  // As `mesh-xds serve` hands a mesh to the pipeline: big parts prepared a slice at a time, then the update.
  onChange: (s) => {
    void pipeline.submit(s).then(() => {
      translateMs = pipeline.lastReport!.ms;
      applied++;
    });
  },
});
pipeline.update(await bigSource.start());
delay.reset();
t0 = performance.now();
writeFileSync(path.join(big, 'big.yaml'), `${lines.join('\n')}\n`);
while (!applied) await new Promise((r) => setTimeout(r, 20));
const bigMs = performance.now() - t0;
const bigMax = delay.max / 1e6;
delay.disable();
bigSource.stop();
rmSync(big, { recursive: true, force: true });
console.log(`an EndpointSlice of 50,000 endpoints (3 MB) read and translated in ${(bigMs / 1000).toFixed(2)} s; longest event-loop block ${bigMax.toFixed(0)} ms (the update after the big endpoints were prepared in slices: ${translateMs.toFixed(0)} ms)`);
