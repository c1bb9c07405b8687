/**
 * Delta ADS over random sequences of snapshots: after the first sync a stream is synced from the changes between
 * two sets (computed part by part for unions, once per pair), not by going through every resource. Whatever the
 * path, a client that applies every response as Envoy does must hold exactly what it subscribes to, at the
 * snapshot's versions, and be sent nothing it already has (EDS after CDS aside: Envoy re-warms clusters).
 */
import { afterEach, beforeEach, expect, it } from 'vitest';
import { buildSnapshot, TypeSet, type Resource, type Snapshot } from '../src/xds/resources/snapshot.js';
import { CLUSTER, ENDPOINT, LISTENER, ROUTE } from '../src/xds/resources/types.js';
import { node, RawAdsClient, type AdsTestStream } from './helpers/ads-client.js';
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
        [ROUTE, TypeSet.of(ROUTE, routes)],
      ]),
    );
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
    for (;;) {
      let r;
      try {
        r = await this.s.next(150);
      } catch {
        return;
      }
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
