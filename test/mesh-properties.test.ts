/**
 * Properties of the translation on random meshes (src/sandbox/random-mesh.ts), without Envoy:
 * - after any sequence of changes, the snapshots built incrementally equal a fresh build of the final mesh, byte
 *   for byte (this guards every memo key of the builder);
 * - policy churn with no topology change leaves the builder's memo where it was.
 * The real-Envoy property (every random mesh accepted) is in envoy-random-meshes.test.ts.
 */
import pino from 'pino';
import { describe, expect, it } from 'vitest';
import type { MeshState } from '../src/model/mesh.js';
import { Pipeline } from '../src/pipeline/pipeline.js';
import { randomMesh, rng, type Manifest } from '../sandbox/random-mesh.js';
import { convertObjects, meshStateOf, parseManifestText } from '../src/sources/manifests.js';
import { SnapshotCache } from '../src/xds/resources/cache.js';
import { meshYaml } from '../sandbox/random-mesh.js';
import { RESOURCE_TYPES } from '../src/xds/resources/types.js';

function stateOf(objects: Manifest[]): MeshState {
  const parsed = parseManifestText(meshYaml(objects), 'mesh.yaml');
  return meshStateOf(convertObjects(parsed.objects).objects, 'mesh-xds');
}

/** Keeps the previous array of a kind when its content is the same (as the folder source does). */
function stable(prev: MeshState | undefined, next: MeshState): MeshState {
  if (!prev) return next;
  const out: any = { ...next };
  for (const k of ['namespaces', 'services', 'endpointSlices', 'pods', 'serviceAccounts', 'retries'] as const) {
    if (JSON.stringify(prev[k]) === JSON.stringify(next[k])) out[k] = prev[k];
  }
  return out;
}

/** Every snapshot of a cache as comparable bytes: type -> name -> version and encoded body. */
function contents(cache: SnapshotCache): Record<string, Record<string, Record<string, string>>> {
  const out: Record<string, Record<string, Record<string, string>>> = {};
  for (const key of [...cache.keys()].sort()) {
    const snap = cache.peek(key)!;
    out[key] = {};
    for (const t of RESOURCE_TYPES) {
      const set = snap.get(t.typeUrl);
      out[key][t.short] = Object.fromEntries([...(set?.resources.values() ?? [])].map((r) => [r.name, `${r.version} ${Buffer.from(r.body).toString('base64')}`]));
      out[key][`${t.short} version`] = { version: set?.version ?? '' };
    }
  }
  return out;
}

type Change = (objects: Manifest[], r: () => number) => Manifest[];
const clone = <T>(x: T): T => structuredClone(x);
const pickIndex = (objects: Manifest[], kind: string, r: () => number): number => {
  const idx = objects.map((o, i) => (o.kind === kind ? i : -1)).filter((i) => i >= 0);
  return idx.length ? idx[Math.floor(r() * idx.length)] : -1;
};

const CHANGES: Record<string, Change> = {
  'remove a service': (o, r) => o.filter((_, i) => i !== pickIndex(o, 'Service', r)),
  'add a service': (o, r) => [...o, { apiVersion: 'v1', kind: 'Service', metadata: { name: `new${Math.floor(r() * 1e6)}`, namespace: 'ns0' }, spec: { clusterIP: `10.99.${Math.floor(r() * 250)}.${1 + Math.floor(r() * 250)}`, selector: { app: 'app0' }, ports: [{ name: 'http', port: 80, targetPort: 8080 }] } }],
  'remove a port': (o, r) => {
    const i = pickIndex(o, 'Service', r);
    if (i < 0) return o;
    const s = clone(o[i]) as any;
    if (s.spec.ports.length > 1) s.spec.ports.pop();
    return o.map((x, j) => (j === i ? s : x));
  },
  'add a port': (o, r) => {
    const i = pickIndex(o, 'Service', r);
    if (i < 0) return o;
    const s = clone(o[i]) as any;
    const port = 20000 + Math.floor(r() * 1000);
    if (!s.spec.ports.some((p: any) => p.port === port)) s.spec.ports.push({ name: `extra-${port}`, port, targetPort: port, protocol: 'TCP' });
    return o.map((x, j) => (j === i ? s : x));
  },
  'remove a pod (endpoint)': (o, r) => o.filter((_, i) => i !== pickIndex(o, 'Pod', r)),
  'flip a pod ready': (o, r) => {
    const i = pickIndex(o, 'Pod', r);
    if (i < 0) return o;
    const p = clone(o[i]) as any;
    p.status.conditions[0].status = p.status.conditions[0].status === 'True' ? 'False' : 'True';
    return o.map((x, j) => (j === i ? p : x));
  },
  'edit a retry': (o, r) => {
    const i = pickIndex(o, 'Retry', r);
    if (i < 0) return o;
    const p = clone(o[i]) as any;
    p.spec.retryPolicy.numRetries = Math.floor(r() * 7);
    return o.map((x, j) => (j === i ? p : x));
  },
  'remove a retry': (o, r) => o.filter((_, i) => i !== pickIndex(o, 'Retry', r)),
  'toggle a namespace in the mesh': (o, r) => {
    const i = pickIndex(o, 'Namespace', r);
    if (i < 0) return o;
    const n = clone(o[i]) as any;
    n.metadata.labels = n.metadata.labels['flomesh.io/monitored-by'] ? {} : { 'flomesh.io/monitored-by': 'mesh-xds' };
    return o.map((x, j) => (j === i ? n : x));
  },
  'toggle retries': (o) =>
    o.map((x) => {
      if (x.kind !== 'MeshConfig') return x;
      const m = clone(x) as any;
      m.spec.featureFlags.enableRetryPolicy = !m.spec.featureFlags.enableRetryPolicy;
      return m;
    }),
};

describe('incremental builds equal a fresh build of the final mesh', () => {
  for (let seed = 1; seed <= 40; seed++) {
    it(`random mesh ${seed}, 12 random changes`, () => {
      const r = rng(seed * 7919);
      let objects = randomMesh(seed).objects;
      const log = pino({ level: 'silent' });
      const cache = new SnapshotCache();
      const pipeline = new Pipeline(cache, log);
      let state = stateOf(objects);
      pipeline.update(state);
      const applied: string[] = [];
      for (let step = 0; step < 12; step++) {
        const name = Object.keys(CHANGES)[Math.floor(r() * Object.keys(CHANGES).length)];
        objects = CHANGES[name](objects, r);
        applied.push(name);
        state = stable(state, stateOf(objects));
        pipeline.update(state);
      }
      const fresh = new SnapshotCache();
      new Pipeline(fresh, log).update(stateOf(objects));
      // Proxies of identities that left the mesh keep nothing; compare what a fresh build has.
      const incremental = contents(cache);
      const expected = contents(fresh);
      expect(Object.keys(incremental).sort(), applied.join(', ')).toEqual(Object.keys(expected).sort());
      expect(incremental, applied.join(', ')).toEqual(expected);
    });
  }
});

describe('memory under policy churn', () => {
  it('1,000 policy edits with no topology change leave the builder memo as it was', () => {
    // A mesh where some Retry applies from an identity that has a proxy to a service with an HTTP port.
    const applies = (p: Pipeline): boolean =>
      p.ir!.enableRetryPolicy &&
      Object.entries(p.ir!.retries).some(([id, dsts]) => p.ir!.identities.includes(id) && Object.keys(dsts).some((d) => p.ir!.services.some((s) => `${s.namespace}/${s.name}` === d && s.ports.some((x) => x.protocol === 'http'))));
    let seed = 0;
    let state: MeshState;
    let pipeline: Pipeline;
    do {
      state = stateOf(randomMesh(++seed, 2).objects);
      pipeline = new Pipeline(new SnapshotCache(), pino({ level: 'silent' }));
      pipeline.update(state);
    } while (!applies(pipeline));
    const retries = state.retries.map((_, i) => i);
    expect(retries.length).toBeGreaterThan(0);
    const edit = (n: number): void => {
      const i = retries[n % retries.length];
      // Only the Retry changes: the same arrays for everything else, as the sources hand them over.
      const spec = state.retries[i].spec as any;
      const edited = { ...state.retries[i], spec: { ...spec, retryPolicy: { ...spec.retryPolicy, retryOn: '5xx', numRetries: n % 5, perTryTimeout: `${100 + n}ms` } } };
      state = { ...state, retries: state.retries.map((r, j) => (j === i ? edited : r)) };
      pipeline.update(state);
    };
    for (let n = 0; n < 20; n++) edit(n);
    const before = pipeline.memoStats.pieces;
    for (let n = 20; n < 1020; n++) edit(n);
    expect(pipeline.memoStats.pieces).toBeLessThanOrEqual(before);
  });
});
