/**
 * A short run of bench/fuzz-inputs.ts (random and mutated ADS and CSDS requests, raw HTTP/2, mutated manifests, against
 * `mesh-xds serve` as a process): it stays up, answers every /healthz probe, and applies a good edit once the
 * bad input is gone. `npm run fuzz:inputs -- N` runs longer and also holds /healthz under 100 ms.
 */
import * as grpc from '@grpc/grpc-js';
import { expect, it } from 'vitest';
import { fuzzInputs } from '../bench/fuzz-inputs.js';

it('random and mutated requests and manifests: the server stays up, answers health checks, and applies a good edit after', async () => {
  // 5 s of hostile clients: on a loaded machine 3 s did not always get 64 MiB of partial messages to the server.
  const r = await fuzzInputs(300, 20261129, { seconds: 5, partialStreams: 40, connections: 2, bombsPerSecond: 20 });
  const h = r.hostile!;
  console.log(`fuzz: ${r.adsRequests} ADS, ${r.csdsRequests} CSDS, ${r.rawRequests} raw HTTP/2 requests, ${r.fileMutations} file mutations; /healthz max ${r.healthMaxMs.toFixed(1)} ms over ${r.healthProbes} probes`);
  console.log(`hostile: ${h.writtenMb} MB written after answers (${h.writerResets} resets), ${h.partialsSent} incomplete 4 MiB messages (refused: ${JSON.stringify(h.partialsRefused)}), ${h.bombsSent} gzip bombs (${h.bombsRefused} refused); RSS ${h.rssBeforeMb.toFixed(0)} -> at most ${h.rssMaxMb.toFixed(0)} MB; well-behaved streams ${h.wellBehaved.ok} ok`);
  expect(r.serverExited).toBeNull();
  // Under the hostile clients a well-behaved client is served throughout, and what they sent is refused.
  expect(h.wellBehaved.failed).toEqual([]);
  expect(h.wellBehaved.ok).toBeGreaterThanOrEqual(4);
  expect(h.writerResets).toBeGreaterThan(0);
  expect(h.partialsRefused[String(grpc.status.RESOURCE_EXHAUSTED)]).toBeGreaterThan(0);
  expect(h.bombsRefused).toBe(h.bombsSent);
  expect(r.healthFailures).toEqual([]);
  expect(r.healthProbes).toBeGreaterThan(5);
  expect(r.rawRequests).toBeGreaterThan(10);
  expect(r.goodEditApplied).toBe(true);
}, 90_000);
