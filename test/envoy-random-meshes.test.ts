/**
 * Random meshes accepted by real clients (bench/mesh-fuzz.ts): every identity's Envoy (SotW and delta) and a
 * proxyless gRPC client ACK every type, with no listener left warming and Envoy's config dump equal to the
 * server's; then six more meshes changed twice each (services and Retry policies taken away, then back: the
 * delta streams' stepwise sync), Envoys only (grpc-js-xds 1.14.1 crashes when its target's virtual host goes).
 * A few seeds here; `npm run fuzz -- N` runs more. A failure prints the mesh shrunk to what still fails.
 */
import { expect, it } from 'vitest';
import { fuzzMeshes } from '../bench/mesh-fuzz.js';
import { sandboxMissing } from './helpers/sandbox.js';

it.skipIf(sandboxMissing.length > 0)('six random meshes, and six more changed twice: every sidecar and gRPC client ACKs everything', async () => {
  const results = [...(await fuzzMeshes(6, 101, 1)), ...(await fuzzMeshes(6, 201, 1, undefined, 2))];
  const checked = results.flatMap((r) => r.verdict.checked);
  expect(checked.filter((c) => c.client.startsWith('envoy')).length).toBeGreaterThan(6);
  for (const r of results) expect(r.verdict.problems, `seed ${r.seed}; shrunk mesh:\n${r.shrunk ?? ''}`).toEqual([]);
}, 300_000);
