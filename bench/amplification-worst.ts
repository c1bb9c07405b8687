/**
 * Retry amplification's worst case (issue 33): N identities, each retrying (numRetries R) to the Services of all
 * the others, so every order of them is a call path (N! paths, attempts (R+1)^N). Measures compile (which computes
 * the report) and the report alone, the heap they hold, the paths kept and the size of /debug/amplification's
 * answer. Run: npm run build && node --expose-gc dist-dev/bench/amplification-worst.js [N [R]]   (default 200 10)
 */
import { amplification, amplificationResponse } from '../src/compile/amplification.js';
import { compile } from '../src/compile/compile.js';
import type { MeshState } from '../src/model/mesh.js';
import { convertObjects, meshStateOf, type KubeObject } from '../src/sources/manifests.js';

/** The objects of n identities in one namespace, each with a Service and a Retry to every other Service. */
export function allToAllObjects(n: number, numRetries: number, namespace = 'dense'): KubeObject[] {
  const ip = (base: number, i: number): string => `10.${base}.${i >> 8}.${i & 255}`;
  const objects: KubeObject[] = [
    { apiVersion: 'config.flomesh.io/v1alpha3', kind: 'MeshConfig', metadata: { name: 'mesh-xds-config', namespace: 'mesh-xds' }, spec: { featureFlags: { enableRetryPolicy: true } } },
    { apiVersion: 'v1', kind: 'Namespace', metadata: { name: namespace, labels: { 'flomesh.io/monitored-by': 'mesh-xds' } } },
  ];
  for (let i = 0; i < n; i++) {
    objects.push({ apiVersion: 'v1', kind: 'Service', metadata: { name: `s${i}`, namespace }, spec: { clusterIP: ip(96, i + 1), selector: { app: `s${i}` }, ports: [{ name: 'http', port: 80 }] } });
    objects.push({ apiVersion: 'v1', kind: 'Pod', metadata: { name: `p${i}`, namespace, labels: { app: `s${i}` } }, spec: { serviceAccountName: `sa${i}`, containers: [{ name: 'app' }] }, status: { phase: 'Running', podIP: ip(2, i + 1) } });
    const destinations = Array.from({ length: n }, (_, j) => j)
      .filter((j) => j !== i)
      .map((j) => ({ kind: 'Service', name: `s${j}`, namespace }));
    objects.push({
      apiVersion: 'policy.flomesh.io/v1alpha1',
      kind: 'Retry',
      metadata: { name: `r${i}`, namespace },
      spec: { source: { kind: 'ServiceAccount', name: `sa${i}`, namespace }, destinations, retryPolicy: { retryOn: '5xx', numRetries, perTryTimeout: '1s' } },
    });
  }
  return objects;
}

/** The same as manifests (one JSON document a line, which YAML reads). */
export function allToAllYaml(n: number, numRetries: number, namespace = 'dense'): string {
  return `${allToAllObjects(n, numRetries, namespace)
    .map((o) => JSON.stringify(o))
    .join('\n---\n')}\n`;
}

/** The same as the mesh the folder source would deliver (without parsing text). */
export function allToAllState(n: number, numRetries: number, namespace = 'dense'): MeshState {
  const located = allToAllObjects(n, numRetries, namespace).map((object, doc) => ({ object, origin: { file: 'all-to-all.yaml', doc, line: 1 } }));
  return meshStateOf(convertObjects(located).objects, 'mesh-xds');
}

if (process.argv[1]?.endsWith('amplification-worst.js')) {
  const n = Number(process.argv[2] ?? 200);
  const r = Number(process.argv[3] ?? 10);
  const gc = (globalThis as { gc?: () => void }).gc;
  // A few collections, a turn apart: one alone leaves some of what compile dropped.
  const heap = async (): Promise<number> => {
    for (let i = 0; i < 4; i++) {
      gc?.();
      await new Promise((r) => setTimeout(r, 20));
    }
    return process.memoryUsage().heapUsed;
  };
  const mb = (b: number): string => `${(b / 2 ** 20).toFixed(1)} MB`;
  const state = allToAllState(n, r);
  let peakRss = process.memoryUsage().rss;
  const sampler = setInterval(() => (peakRss = Math.max(peakRss, process.memoryUsage().rss)), 5);
  const rssBefore = process.memoryUsage().rss;
  const heapBefore = await heap();
  // Compile runs on the event loop: the sampler above only runs between the steps below.
  let t = performance.now();
  const ir = compile(state);
  const compileMs = performance.now() - t;
  peakRss = Math.max(peakRss, process.memoryUsage().rss);
  const heapIr = await heap();
  t = performance.now();
  const report = amplification(ir);
  const reportMs = performance.now() - t;
  peakRss = Math.max(peakRss, process.memoryUsage().rss);
  const heapReport = await heap();
  t = performance.now();
  // As the debug server writes it (indented).
  const body = JSON.stringify(amplificationResponse(report), null, 2);
  const responseMs = performance.now() - t;
  clearInterval(sampler);
  const worst = report.paths[0];
  console.log(`all-to-all: ${n} identities, numRetries ${r} (${ir.policies.length} Retries, ${Object.values(ir.retries).reduce((k, m) => k + Object.keys(m).length, 0)} edges)`);
  console.log(`compile (with the report): ${compileMs.toFixed(0)} ms; the IR and its report hold ${mb(heapIr - heapBefore)} of heap`);
  console.log(`report alone: ${reportMs.toFixed(0)} ms, ${mb(heapReport - heapIr)} of heap kept; ${report.paths.length} paths${report.truncated ? ' (truncated)' : ''}`);
  console.log(`worst: ${worst ? `${worst.attempts}${worst.saturated ? ' (saturated)' : ''} attempts over ${worst.hops.length} hops` : 'none'}`);
  console.log(`/debug/amplification: ${body.length} bytes (${JSON.parse(body).omitted ?? 0} paths left out; the whole report would be ${JSON.stringify(report, null, 2).length}), made in ${responseMs.toFixed(0)} ms`);
  console.log(`process RSS: ${mb(rssBefore)} before, ${mb(peakRss)} at most (sampled between steps)`);
}
