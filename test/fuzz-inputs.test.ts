/**
 * A short run of bench/fuzz-inputs.ts (random and mutated ADS and CSDS requests, raw HTTP/2, mutated manifests, against
 * `mesh-xds serve` as a process): it stays up, answers every /healthz probe, and applies a good edit once the
 * bad input is gone. `npm run fuzz:inputs -- N` runs longer and also holds /healthz under 100 ms.
 */
import { expect, it } from 'vitest';
import { fuzzInputs } from '../bench/fuzz-inputs.js';

it('random and mutated requests and manifests: the server stays up, answers health checks, and applies a good edit after', async () => {
  const r = await fuzzInputs(300, 20261129);
  console.log(`fuzz: ${r.adsRequests} ADS, ${r.csdsRequests} CSDS, ${r.rawRequests} raw HTTP/2 requests, ${r.fileMutations} file mutations; /healthz max ${r.healthMaxMs.toFixed(1)} ms over ${r.healthProbes} probes`);
  expect(r.serverExited).toBeNull();
  expect(r.healthFailures).toEqual([]);
  expect(r.healthProbes).toBeGreaterThan(5);
  expect(r.rawRequests).toBeGreaterThan(10);
  expect(r.goodEditApplied).toBe(true);
}, 60_000);
