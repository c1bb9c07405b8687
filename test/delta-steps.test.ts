/**
 * Delta ADS over random sequences of snapshots: after the first sync a stream is synced from the changes between
 * two sets (computed part by part for unions and chunked sets, once per pair), not by going through every
 * resource. Whatever the path, a client that applies every response as Envoy does must hold exactly what it
 * subscribes to, at the snapshot's versions, and be sent nothing it already has (EDS after CDS aside: Envoy
 * re-warms clusters). The same sequences over SotW, where RDS and EDS responses carry only what the client lacks.
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { buildSnapshot, TypeSet, type Resource, type Snapshot } from '../src/xds/resources/snapshot.js';
import { CLUSTER, ENDPOINT, LISTENER, ROUTE, resourceType } from '../src/xds/resources/types.js';
import { decodeMessage } from './helpers/xds-json.js';
import { node, RawAdsClient, type AdsTestStream, type Response } from './helpers/ads-client.js';
import { apiListener, cluster, endpoints, route } from './helpers/fixtures.js';
import { startAds } from './helpers/server.js';

/** The snapshot key of the client's node (namespace and service account curl). */
const KEY = 'sidecar:curl/curl';

let env: Awaited<ReturnType<typeof startAds>>;
let client: RawAdsClient;
beforeEach(async () => {
  env = await startAds();
  client = new RawAdsClient(env.address);
});
afterEach(async () => {
  client.close();
  await env.server.close(100);
});

function rng(seed: number): () => number {
  let x = seed;
  return () => {
    x = (x * 1103515245 + 12345) % 2 ** 31;
    return x / 2 ** 31;
  };
}

/** A random mesh state: clusters (with endpoints) and listeners (with routes), each set in two parts. */
class Meshes {
  private readonly cache = new Map<string, Resource>();
  /** The shared parts, kept as the same objects while unchanged (as the translator shares them). */
  private shared?: { key: string; clusters: TypeSet; listeners: TypeSet };
  constructor(private readonly random: () => number) {}

  private once(key: string, make: () => Resource): Resource {
    let r = this.cache.get(key);
    if (!r) this.cache.set(key, (r = make()));
    return r;
  }

  /** Chunks kept as the same objects while their content is (as the translator keeps the service routes'). */
  private readonly chunks = new Map<string, TypeSet>();
  private chunk(c: TypeSet): TypeSet {
    const key = `${c.chunk!.index} ${c.version}`;
    return this.chunks.get(key) ?? this.chunks.set(key, c).get(key)!;
  }

  next(): Snapshot {
    const pick = (n: number, p: number): number[] => Array.from({ length: n }, (_, i) => i).filter(() => this.random() < p);
    const timeout = (i: number): number => 1 + Math.floor(this.random() * 2) + (i % 2);
    // Shared: c0..c7 and l0..l5, changed in one of three steps; own: c8..c11 and l6..l8 (a name may move over).
    if (!this.shared || this.random() < 0.35) {
      const cs = pick(8, 0.7).map((i) => ({ name: `c${i}`, t: timeout(i) }));
      const ls = pick(6, 0.7).map((i) => `l${i}`);
      this.shared = {
        key: JSON.stringify([cs, ls]),
        clusters: TypeSet.of(CLUSTER, cs.map((c) => this.once(`c ${c.name} ${c.t}`, () => cluster(c.name, { connect_timeout: { seconds: c.t } })))),
        listeners: TypeSet.of(LISTENER, ls.map((l) => this.once(`l ${l}`, () => apiListener(l, `r-${l}`)))),
      };
    }
    const sharedClusters = new Set(this.shared.clusters.resources.keys());
    const sharedListeners = new Set(this.shared.listeners.resources.keys());
    const own = pick(12, 0.3).map((i) => `c${i}`).filter((c) => !sharedClusters.has(c));
    const ownListeners = pick(9, 0.3).map((i) => `l${i}`).filter((l) => !sharedListeners.has(l));
    const clusters = TypeSet.union(CLUSTER, [this.shared.clusters, TypeSet.of(CLUSTER, own.map((c) => this.once(`c ${c} 1`, () => cluster(c, { connect_timeout: { seconds: 1 } }))))]);
    const listeners = TypeSet.union(LISTENER, [this.shared.listeners, TypeSet.of(LISTENER, ownListeners.map((l) => this.once(`l ${l}`, () => apiListener(l, `r-${l}`))))]);
    const port = 8000 + Math.floor(this.random() * 3);
    const eps = [...clusters.resources.keys()].map((c) => this.once(`e ${c} ${port}`, () => endpoints(c, port)));
    const routes = [...listeners.resources.keys()].map((l) => this.once(`r ${l} ${port % 2}`, () => route(`r-${l}`, l, [...clusters.resources.keys()][0] ?? 'none')));
    return buildSnapshot(
      new Map([
        [CLUSTER, clusters],
        [ENDPOINT, TypeSet.of(ENDPOINT, eps)],
        [LISTENER, listeners],
        // Route configurations in chunks, with one besides that no listener names (never subscribed).
        [ROUTE, TypeSet.chunked(ROUTE, TypeSet.chunks(ROUTE, routes, 3).map((c) => this.chunk(c)), TypeSet.of(ROUTE, [this.once('r extra', () => route('r-extra', 'extra', 'none'))]))],
      ]),
    );
  }
}

/** The next response, or undefined once none has come for a while. */
async function quietly(s: AdsTestStream): Promise<Response | undefined> {
  try {
    return await s.next(150);
  } catch {
    return undefined;
  }
}

/** A delta client as Envoy: wildcard CDS and LDS, EDS and RDS for what those name (plus one name that never exists). */
class Client {
  readonly held = new Map<string, Map<string, string>>([CLUSTER, ENDPOINT, LISTENER, ROUTE].map((t) => [t, new Map()]));
  readonly subscribed = new Map<string, Set<string>>([[ENDPOINT, new Set(['never'])], [ROUTE, new Set()]]);
  readonly problems: string[] = [];
  responses = 0;
  constructor(private readonly s: AdsTestStream) {
    s.send({ node: node({ id: 'n' }), type_url: CLUSTER });
    s.send({ type_url: LISTENER });
    s.send({ type_url: ENDPOINT, resource_names_subscribe: ['never'] });
  }

  /** Applies responses until none comes for a while, answering each as Envoy does. */
  async settle(): Promise<void> {
    for (let r; (r = await quietly(this.s)); ) {
      this.responses++;
      const held = this.held.get(r.type_url)!;
      for (const name of r.names) {
        if (held.get(name) === r.versions![name] && r.type_url !== ENDPOINT) this.problems.push(`${r.type_url} ${name} sent again at the version held`);
        held.set(name, r.versions![name]);
      }
      for (const name of r.removed ?? []) {
        if (!held.delete(name) && !this.subscribed.get(r.type_url)?.has(name)) this.problems.push(`${r.type_url} ${name} removed, neither held nor subscribed`);
      }
      this.s.send({ type_url: r.type_url, response_nonce: r.nonce });
      // What the clusters and listeners held name: subscribed to, and nothing else.
      if (r.type_url === CLUSTER) this.follow(ENDPOINT, new Set([...held.keys(), 'never']));
      if (r.type_url === LISTENER) this.follow(ROUTE, new Set([...held.keys()].map((l) => `r-${l}`)));
    }
  }

  private follow(type: string, want: Set<string>): void {
    const has = this.subscribed.get(type)!;
    const subscribe = [...want].filter((n) => !has.has(n));
    const unsubscribe = [...has].filter((n) => !want.has(n));
    if (!subscribe.length && !unsubscribe.length) return;
    this.subscribed.set(type, want);
    for (const n of unsubscribe) this.held.get(type)!.delete(n);
    this.s.send({ type_url: type, resource_names_subscribe: subscribe, resource_names_unsubscribe: unsubscribe });
  }
}

const versions = (set: TypeSet, only?: Set<string>): Record<string, string> =>
  Object.fromEntries([...set.resources.values()].filter((r) => !only || only.has(r.name)).map((r) => [r.name, r.version]));

for (const seed of [1, 2, 3]) {
  it(`holds exactly what the snapshot has for its subscription after each of 25 random changes (seed ${seed})`, async () => {
    const meshes = new Meshes(rng(seed));
    let snapshot = meshes.next();
    env.cache.set(KEY, snapshot);
    env.cache.markReady();
    const c = new Client(client.delta());
    for (let step = 0; step <= 25; step++) {
      if (step > 0) env.cache.set(KEY, (snapshot = meshes.next()));
      await c.settle();
      const at = `step ${step}`;
      expect({ at, held: Object.fromEntries(c.held.get(CLUSTER)!) }).toEqual({ at, held: versions(snapshot.get(CLUSTER)!) });
      expect({ at, held: Object.fromEntries(c.held.get(LISTENER)!) }).toEqual({ at, held: versions(snapshot.get(LISTENER)!) });
      expect({ at, held: Object.fromEntries(c.held.get(ENDPOINT)!) }).toEqual({ at, held: versions(snapshot.get(ENDPOINT)!, c.subscribed.get(ENDPOINT)) });
      expect({ at, held: Object.fromEntries(c.held.get(ROUTE)!) }).toEqual({ at, held: versions(snapshot.get(ROUTE)!, c.subscribed.get(ROUTE)) });
    }
    expect(c.problems).toEqual([]);
    expect(c.responses).toBeGreaterThan(40);
  }, 30_000);
}

/** A SotW client as Envoy: CDS and LDS replaced by each response; EDS and RDS per name, kept until unsubscribed. */
class SotwClient {
  /** Per type, name -> the resource as decoded (JSON). */
  readonly held = new Map<string, Map<string, string>>([CLUSTER, ENDPOINT, LISTENER, ROUTE].map((t) => [t, new Map()]));
  readonly subscribed = new Map<string, Set<string>>([[ENDPOINT, new Set(['never'])], [ROUTE, new Set()]]);
  private readonly last = new Map<string, { version_info: string; nonce: string }>();
  responses = 0;
  /** Responses of RDS or EDS that held fewer resources than subscribed and existing. */
  partial = 0;
  constructor(private readonly s: AdsTestStream) {
    s.send({ node: node({ id: 'n' }), type_url: CLUSTER });
    s.send({ type_url: LISTENER });
    s.send({ type_url: ENDPOINT, resource_names: ['never'] });
  }

  async settle(snapshot: () => Snapshot): Promise<void> {
    for (let r; (r = await quietly(this.s)); ) {
      this.responses++;
      const per = r.type_url === ENDPOINT || r.type_url === ROUTE;
      if (!per) this.held.set(r.type_url, new Map());
      const held = this.held.get(r.type_url)!;
      r.names.forEach((name, i) => held.set(name, JSON.stringify(r.resources[i])));
      if (per && r.names.length < [...this.subscribed.get(r.type_url)!].filter((n) => snapshot().get(r.type_url)!.resources.has(n)).length) this.partial++;
      this.last.set(r.type_url, { version_info: r.version_info, nonce: r.nonce });
      this.s.send({ type_url: r.type_url, version_info: r.version_info, response_nonce: r.nonce, resource_names: per ? [...this.subscribed.get(r.type_url)!] : [] });
      if (r.type_url === CLUSTER) this.follow(ENDPOINT, new Set([...held.keys(), 'never']));
      if (r.type_url === LISTENER) this.follow(ROUTE, new Set([...held.keys()].map((l) => `r-${l}`)));
    }
  }

  private follow(type: string, want: Set<string>): void {
    const has = this.subscribed.get(type)!;
    if (want.size === has.size && [...want].every((n) => has.has(n))) return;
    this.subscribed.set(type, want);
    for (const n of [...this.held.get(type)!.keys()]) if (!want.has(n)) this.held.get(type)!.delete(n);
    const last = this.last.get(type);
    this.s.send({ type_url: type, resource_names: [...want], ...(last ? { version_info: last.version_info, response_nonce: last.nonce } : {}) });
  }
}

const contents = (set: TypeSet, only?: Set<string>): Record<string, string> =>
  Object.fromEntries([...set.resources.values()].filter((r) => !only || only.has(r.name)).map((r) => [r.name, JSON.stringify(decodeMessage(resourceType(r.typeUrl)!.message, r.body))]));

describe('state of the world', () => {
  for (const seed of [1, 2]) {
    it(`holds exactly what the snapshot has for its subscription after each of 25 random changes, RDS and EDS sent as lacking (seed ${seed})`, async () => {
      const meshes = new Meshes(rng(seed));
      let snapshot = meshes.next();
      env.cache.set(KEY, snapshot);
      env.cache.markReady();
      const c = new SotwClient(client.sotw());
      for (let step = 0; step <= 25; step++) {
        if (step > 0) env.cache.set(KEY, (snapshot = meshes.next()));
        await c.settle(() => snapshot);
        const at = `step ${step}`;
        for (const type of [CLUSTER, LISTENER, ENDPOINT, ROUTE]) {
          expect({ at, type, held: Object.fromEntries(c.held.get(type)!) }).toEqual({ at, type, held: contents(snapshot.get(type)!, c.subscribed.get(type)) });
        }
      }
      expect(c.responses).toBeGreaterThan(40);
      expect(c.partial).toBeGreaterThan(0);
    }, 30_000);
  }
});

describe('chunked sets', () => {
  const routes = Array.from({ length: 40 }, (_, i) => route(`r-${i}`, `l${i}`, 'c'));
  it('looks a name up in its chunk, iterates in name order, and refuses what is not a chunk or a name twice', () => {
    const chunks = TypeSet.chunks(ROUTE, routes, 4);
    expect(chunks.map((c) => c.resources.size).reduce((a, b) => a + b)).toBe(40);
    const own = TypeSet.of(ROUTE, [route('own', 'x', 'c')]);
    const set = TypeSet.chunked(ROUTE, chunks, own);
    expect(set.resources.size).toBe(41);
    expect(set.resources.get('r-7')).toBe(routes[7]);
    expect(set.resources.get('own')?.name).toBe('own');
    expect(set.resources.has('r-40')).toBe(false);
    expect([...set.resources.keys()]).toEqual([...TypeSet.of(ROUTE, [...routes, ...own.resources.values()]).resources.keys()]);
    // A name in the rest that a chunk holds too.
    expect(() => TypeSet.chunked(ROUTE, chunks, TypeSet.of(ROUTE, [routes[3]]))).toThrow('two RDS resources named "r-3"');
    // A chunk out of place, and a resource in a chunk it does not hash to.
    expect(() => TypeSet.chunked(ROUTE, [chunks[1], chunks[0], chunks[2], chunks[3]], own)).toThrow('is not one');
    const wrong = routes.find((r) => !chunks[0].resources.has(r.name))!;
    expect(() => TypeSet.chunk(ROUTE, 0, 4, [wrong])).toThrow(`"${wrong.name}" is not of chunk 0 of 4`);
  });

  it('compares two chunked sets chunk by chunk: one chunk replaced is all that changed', () => {
    const chunks = TypeSet.chunks(ROUTE, routes, 4);
    const before = TypeSet.chunked(ROUTE, chunks, TypeSet.of(ROUTE, []));
    const changed = route('r-5', 'l5', 'other');
    const i = chunks.findIndex((c) => c.resources.has('r-5'));
    const after = TypeSet.chunked(
      ROUTE,
      chunks.map((c, j) => (j === i ? TypeSet.chunk(ROUTE, i, 4, [...[...c.resources.values()].filter((r) => r.name !== 'r-5'), changed]) : c)),
      TypeSet.of(ROUTE, []),
    );
    expect(after.version).not.toBe(before.version);
    expect(after.changesSince(before)).toEqual({ changed: [changed], gone: [] });
  });
});
