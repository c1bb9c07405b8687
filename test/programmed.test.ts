/**
 * `Programmed`: whether every connected proxy of a Retry's source identity has ACKed a route configuration version
 * holding the policy. Real ADS on loopback, the pipeline publishing the guide's mesh, raw ADS clients that ACK or
 * NACK as told (SotW and delta).
 */
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { MeshIR } from '../src/compile/ir.js';
import { ProgrammedTracker } from '../src/outputs/programmed.js';
import { Pipeline } from '../src/pipeline/pipeline.js';
import type { SnapshotCache } from '../src/xds/resources/cache.js';
import type { ProxyRegistry } from '../src/xds/protocol/status.js';
import type { AdsServer } from '../src/xds/protocol/server.js';
import { ROUTE } from '../src/xds/resources/types.js';
import { RawAdsClient, node, type AdsTestStream } from './helpers/ads-client.js';
import { eventually } from './helpers/grpc-xds.js';
import { stateFromYaml } from './helpers/mesh.js';
import { startAds } from './helpers/server.js';
import { readFileSync } from 'node:fs';
import path from 'node:path';

const GUIDE = readFileSync(path.join(import.meta.dirname, 'golden/guide/input.yaml'), 'utf8');
/** The guide's mesh, with the guide's Retry at `numRetries` and, if asked, a second Retry from curl to curl's own service. */
const mesh = (numRetries = 5, second = false, extraService = false): string =>
  GUIDE.replace(/numRetries: \d+/, `numRetries: ${numRetries}`) +
  (second
    ? `
---
kind: Retry
apiVersion: policy.flomesh.io/v1alpha1
metadata: { name: to-self, namespace: curl }
spec:
  source: { kind: ServiceAccount, name: curl, namespace: curl }
  destinations: [{ kind: Service, name: curl, namespace: curl }]
  retryPolicy: { retryOn: 5xx, numRetries: 2 }
`
    : '') +
  (extraService
    ? `
---
apiVersion: v1
kind: Service
metadata: { name: other, namespace: httpbin }
spec:
  clusterIP: 10.96.198.99
  ports: [{ name: http, port: 8080, targetPort: 8080 }]
`
    : '');

let ads: { cache: SnapshotCache; registry: ProxyRegistry; server: AdsServer; address: string };
let pipeline: Pipeline;
let client: RawAdsClient;
const streams: AdsTestStream[] = [];

beforeAll(async () => {
  ads = await startAds();
  pipeline = new Pipeline(ads.cache, pino({ level: 'silent' }));
  pipeline.update(stateFromYaml(mesh()));
  client = new RawAdsClient(ads.address);
});

afterAll(async () => {
  for (const s of streams) s.close();
  client?.close();
  await ads?.server.close(0);
});

const routeNames = (): string[] => [...ads.cache.peek('sidecar:curl/curl')!.get(ROUTE)!.resources.keys()];

/** A SotW stream of a curl sidecar taking every route configuration it has; its first RDS response, not yet answered. */
async function sotw(id: string): Promise<{ s: AdsTestStream; version: string; nonce: string }> {
  const s = client.sotw();
  streams.push(s);
  s.send({ node: node({ id, namespace: 'curl', serviceAccount: 'curl' }), type_url: ROUTE, resource_names: routeNames() });
  const r = await s.next();
  expect(r.type_url).toBe(ROUTE);
  return { s, version: r.version_info, nonce: r.nonce };
}

const ack = (s: AdsTestStream, version: string, nonce: string): void => s.send({ type_url: ROUTE, resource_names: routeNames(), version_info: version, response_nonce: nonce });

const tracker = (o: { settleMs?: number; failedKeys?: () => string[] } = {}): ProgrammedTracker => new ProgrammedTracker({ registry: ads.registry, cache: ads.cache, settleMs: 0, ...o });
const ir = (): MeshIR => pipeline.ir!;
const acked = (n: number) => eventually(() => [...ads.registry.connections].filter((c) => c.types.get(ROUTE)?.ackedVersion !== undefined && !c.types.get(ROUTE)!.awaiting).length === n, 5000, `${n} proxies answered`);

describe('Programmed', () => {
  let t: ProgrammedTracker;
  beforeAll(() => {
    t = tracker();
  });
  let a: { s: AdsTestStream; version: string; nonce: string };

  it('is Unknown while no proxy of the identity is connected', () => {
    expect(t.evaluate(ir()).get('curl/retry')).toEqual({ status: 'Unknown', reason: 'NoProxies', message: 'no proxy of curl/curl is connected', proxies: 0, lacking: 0 });
    // Only accepted policies have one.
    expect([...t.evaluate(ir()).keys()]).toEqual(['curl/retry']);
  });

  it('is False (Pending) naming a proxy sent the policy that has not ACKed it, True once it has', async () => {
    a = await sotw('curl-a');
    await eventually(() => ads.registry.connections.size === 1, 5000, 'the stream registered');
    expect(t.evaluate(ir()).get('curl/retry')).toMatchObject({ status: 'False', reason: 'Pending', message: '1 of 1 proxies of curl/curl connected do not have this policy: curl-a (not ACKed)' });
    // Just sent (within settleMs): not counted yet, so nothing is decided.
    expect(tracker({ settleMs: 60_000 }).evaluate(ir()).get('curl/retry')).toBeUndefined();
    ack(a.s, a.version, a.nonce);
    await acked(1);
    expect(t.evaluate(ir()).get('curl/retry')).toEqual({ status: 'True', reason: 'Programmed', message: '1 of 1 proxies of curl/curl connected have ACKed a configuration holding this policy', proxies: 1, lacking: 0 });
  });

  it('is False (Rejected) naming a proxy that NACKed it, with its error; True again once it is gone', async () => {
    const b = await sotw('curl-b');
    b.s.send({ type_url: ROUTE, resource_names: routeNames(), response_nonce: b.nonce, error_detail: { code: 3, message: 'Proto constraint validation failed:\n  route: bad' } });
    await eventually(() => [...ads.registry.connections].some((c) => c.types.get(ROUTE)?.lastNack), 5000, 'the NACK');
    expect(t.evaluate(ir()).get('curl/retry')).toMatchObject({
      status: 'False',
      reason: 'Rejected',
      message: '1 of 2 proxies of curl/curl connected do not have this policy: curl-b (NACKed: Proto constraint validation failed: route: bad)',
      proxies: 2,
      lacking: 1,
    });
    b.s.close();
    await eventually(() => ads.registry.connections.size === 1, 5000, 'curl-b gone');
    expect(t.evaluate(ir()).get('curl/retry')).toMatchObject({ status: 'True', proxies: 1 });
  });

  it("a proxy keeps a policy while it is sent another change; another policy of the same proxy is Pending until it ACKs", async () => {
    pipeline.update(stateFromYaml(mesh(5, true)));
    const r = await a.s.next();
    expect(r.type_url).toBe(ROUTE);
    // The version curl-a ACKed held curl/retry as it still is: still True. curl/to-self it has not ACKed.
    const now = t.evaluate(ir());
    expect(now.get('curl/retry')).toMatchObject({ status: 'True', proxies: 1 });
    expect(now.get('curl/to-self')).toMatchObject({ status: 'False', reason: 'Pending', message: expect.stringContaining('curl-a (not ACKed)') });
    ack(a.s, r.version_info, r.nonce);
    await eventually(() => t.evaluate(ir()).get('curl/to-self')?.status === 'True', 5000, 'to-self programmed');
    a = { s: a.s, version: r.version_info, nonce: r.nonce };
  });

  it("a change of the policy's spec is Pending until ACKed: the versions that held the old one do not count", async () => {
    pipeline.update(stateFromYaml(mesh(2, true)));
    const r = await a.s.next();
    expect(t.evaluate(ir()).get('curl/retry')).toMatchObject({ status: 'False', reason: 'Pending' });
    // The other policy did not change: the version curl-a holds still has it.
    expect(t.evaluate(ir()).get('curl/to-self')).toMatchObject({ status: 'True' });
    ack(a.s, r.version_info, r.nonce);
    await eventually(() => t.evaluate(ir()).get('curl/retry')?.status === 'True', 5000, 'the new spec programmed');
  });

  it('a snapshot kept after its rebuild failed does not count as holding anything new', () => {
    const suspicious = tracker({ failedKeys: () => ['sidecar:curl/curl'] });
    suspicious.built();
    expect(suspicious.evaluate(ir()).get('curl/retry')).toMatchObject({ status: 'False', reason: 'Pending' });
    // The same proxy, the same ACK, the snapshot trusted: True.
    expect(tracker().evaluate(ir()).get('curl/retry')).toMatchObject({ status: 'True' });
  });

  it('names at most 5 proxies, clipped, and counts the rest', async () => {
    const many = await Promise.all(Array.from({ length: 7 }, (_, i) => sotw(`curl-${'x'.repeat(80)}-${i}`)));
    await eventually(() => ads.registry.connections.size === 8, 5000, 'the 7 streams');
    const state = t.evaluate(ir()).get('curl/retry')!;
    expect(state).toMatchObject({ status: 'False', reason: 'Pending', proxies: 8, lacking: 7 });
    expect(state.message).toMatch(/^7 of 8 proxies of curl\/curl connected do not have this policy: (curl-x{57}… \(not ACKed\), ){4}curl-x{57}… \(not ACKed\) and 2 more$/);
    for (const m of many) m.s.close();
    await eventually(() => ads.registry.connections.size === 1, 5000, 'the 7 gone');
  });

  it('a delta stream is judged by the version of the set it was sent', async () => {
    const d = client.delta();
    streams.push(d);
    d.send({ node: node({ id: 'curl-d', namespace: 'curl', serviceAccount: 'curl' }), type_url: ROUTE, resource_names_subscribe: routeNames() });
    const r = await d.next();
    expect(r.names.length).toBeGreaterThan(0);
    expect(t.evaluate(ir()).get('curl/retry')).toMatchObject({ status: 'False', message: expect.stringContaining('curl-d (not ACKed)') });
    d.send({ type_url: ROUTE, response_nonce: r.nonce });
    await acked(2);
    expect(t.evaluate(ir()).get('curl/retry')).toMatchObject({ status: 'True', proxies: 2, message: expect.stringMatching(/^2 of 2 /) });
    // A change elsewhere in the mesh (a new service): both stay True, whatever they were sent since.
    pipeline.update(stateFromYaml(mesh(2, true, true)));
    expect(t.evaluate(ir()).get('curl/retry')).toMatchObject({ status: 'True', proxies: 2 });
    d.close();
  });
});
