/**
 * Random meshes against real clients: for each seed a random mesh (src/sandbox/random-mesh.ts) is served from a
 * folder, and every identity's Envoy sidecar (SotW and delta) and a proxyless gRPC client must ACK every type with
 * no listener left warming (src/sandbox/accept.ts). With CHANGES, the same clients then follow that many changes
 * of the mesh (some of its services and Retry policies taken away, then back), checked the same way after each.
 * A failing mesh is shrunk to a small one that still fails and printed, to become a golden case once the
 * translation is fixed.
 * Run: npm run build && npm run fuzz [-- MESHES [FIRST_SEED [SIZE [CHANGES]]]]   (Linux, root; the test suite runs a few)
 */
import { chmodSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { acceptMesh, type Verdict } from '../sandbox/accept.js';
import { Network } from '../sandbox/netns.js';
import { meshYaml, randomMesh, rng, shrink, type Manifest } from '../sandbox/random-mesh.js';
import type { AdsFlavour } from '../sandbox/sandbox.js';

export interface MeshResult {
  seed: number;
  verdict: Verdict;
  /** For a failing mesh: the smallest mesh found that still fails, as YAML. */
  shrunk?: string;
}

/**
 * `count` changes of a mesh, as the YAML of each: odd ones take away a random part of its services and Retry
 * policies (pods and service accounts stay, so the identities do), even ones bring everything back.
 */
export function meshChanges(objects: readonly Manifest[], seed: number, count: number): string[] {
  if (!objects.some((o) => o.kind === 'Service')) return [];
  const random = rng(seed * 7919 + 1);
  const changes: string[] = [];
  const whole = meshYaml(objects);
  for (let k = 1; k <= count; k++) {
    if (k % 2 === 0) {
      changes.push(whole);
      continue;
    }
    const fewer = objects.filter((o) => !['Service', 'Retry'].includes(o.kind) || random() < 0.5);
    // Nothing taken away by chance: take the first service, so that each change is one.
    const first = objects.find((o) => o.kind === 'Service');
    changes.push(meshYaml(fewer.length === objects.length ? objects.filter((o) => o !== first) : fewer));
  }
  return changes;
}

/** Checks one random mesh (and `changes` changes of it); shrinks it (within `shrinkChecks` more checks) if it fails. */
export async function checkRandomMesh(net: Network, tmp: string, seed: number, size = 1, flavours: AdsFlavour[] = ['GRPC', 'DELTA_GRPC'], shrinkChecks = 200, onFailure?: (v: Verdict) => void, changes = 0): Promise<MeshResult> {
  const verdictOf = async (objects: Manifest[]): Promise<Verdict> => {
    const dir = mkdtempSync(path.join(tmp, `mesh-${seed}-`));
    writeFileSync(path.join(dir, 'mesh.yaml'), meshYaml(objects));
    try {
      return await acceptMesh(net, dir, { tmp, flavours, proxyless: true, timeoutMs: 30_000, compareDumps: true, changes: meshChanges(objects, seed, changes) });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  };
  const mesh = randomMesh(seed, size);
  const verdict = await verdictOf(mesh.objects);
  if (verdict.problems.length === 0) return { seed, verdict };
  onFailure?.(verdict);
  let budget = shrinkChecks;
  // Shrinking keeps a mesh only if it fails the same way (the first problem's words, without versions).
  const kind = (v: Verdict): string => (v.problems[0] ?? '').replace(/^[^:]*: /, '').replace(/[A-Za-z0-9_-]{16}/g, 'V').slice(0, 80);
  const want = kind(verdict);
  const smallest = await shrink(mesh.objects, async (objects) => budget-- > 0 && kind(await verdictOf(objects)) === want);
  return { seed, verdict, shrunk: meshYaml(smallest) };
}

export async function fuzzMeshes(count: number, firstSeed = 1, size = 1, log: (line: string) => void = () => {}, changes = 0): Promise<MeshResult[]> {
  const tmp = mkdtempSync(path.join(os.tmpdir(), 'mesh-xds-fuzz-meshes-'));
  chmodSync(tmp, 0o755);
  mkdirSync(tmp, { recursive: true });
  const net = await Network.create();
  try {
    const results: MeshResult[] = [];
    for (let seed = firstSeed; seed < firstSeed + count; seed++) {
      const r = await checkRandomMesh(net, tmp, seed, size, undefined, undefined, (v) => log(`seed ${seed} FAILED (shrinking):\n- ${v.problems.join('\n- ')}`), changes);
      log(`seed ${seed}: ${r.verdict.checked.length} clients, ${r.verdict.problems.length ? `FAILED, shrunk to:\n${r.shrunk}` : 'ok'}`);
      results.push(r);
    }
    return results;
  } finally {
    await net.destroy();
    rmSync(tmp, { recursive: true, force: true });
  }
}

if (process.argv[1]?.endsWith('mesh-fuzz.js')) {
  // Interrupted: exit through 'exit', where the sandbox kills its Envoys and removes its namespaces and bridge.
  for (const [signal, code] of [['SIGINT', 130], ['SIGTERM', 143]] as const) process.on(signal, () => process.exit(code));
  const count = Number(process.argv[2] ?? 20);
  const first = Number(process.argv[3] ?? 1);
  const size = Number(process.argv[4] ?? 1);
  const changes = Number(process.argv[5] ?? 0);
  const started = performance.now();
  const results = await fuzzMeshes(count, first, size, (line) => console.log(line), changes);
  const failed = results.filter((r) => r.verdict.problems.length);
  const checks = results.flatMap((r) => r.verdict.checked);
  console.log(
    `${results.length} random meshes (seeds ${first}-${first + count - 1}, size ${size}, ${changes} changes each) in ${((performance.now() - started) / 1000).toFixed(0)} s: ` +
      `${new Set(results.flatMap((r) => r.verdict.checked.map((c) => `${r.seed} ${c.identity}`))).size} identities, ` +
      `${checks.filter((c) => c.client.startsWith('envoy')).length} Envoy sidecars and ${checks.filter((c) => c.client === 'grpc-js-xds').length} gRPC clients checked; ${failed.length} failed`,
  );
  process.exit(failed.length ? 1 : 0);
}
