/** The snapshot builder's promises: identical pieces shared, only affected proxies change, checks run. */
import pino from 'pino';
import { describe, expect, it } from 'vitest';
import { Pipeline } from '../src/pipeline/pipeline.js';
import { SnapshotCache } from '../src/xds/resources/cache.js';
import { CLUSTER, ENDPOINT, LISTENER, ROUTE } from '../src/xds/resources/types.js';
import { resourceToJson } from './helpers/xds-json.js';
import { generateMesh, isConsumerRoute, retryObject, routeObject } from '../bench/mesh-gen.js';
import type { TypeSet } from '../src/xds/resources/snapshot.js';

const SIZE = { namespaces: 3, services: 12, pods: 24, serviceAccounts: 12, retries: 4 };

function setup(): { cache: SnapshotCache; pipeline: Pipeline; state: ReturnType<typeof generateMesh> } {
  const cache = new SnapshotCache();
  const pipeline = new Pipeline(cache, pino({ level: 'silent' }));
  const state = generateMesh(SIZE);
  pipeline.update(state);
  return { cache, pipeline, state };
}

describe('snapshot builder', () => {
  it('shares identical resources between proxies, by reference', () => {
    const { cache, pipeline } = setup();
    const withPolicy = new Set(Object.keys(pipeline.ir!.retries));
    // Two identities of one namespace without Retry policies get the very same route configuration objects.
    const plain = pipeline.ir!.identities.filter((id) => !withPolicy.has(id) && id.startsWith('ns-1/'));
    expect(plain.length).toBeGreaterThanOrEqual(2);
    const [a, b] = plain.map((id) => cache.peek(`sidecar:${id}`)!);
    const svcRoutes = [...a.get(ROUTE)!.resources.keys()].filter((n) => n.endsWith('.svc.cluster.local:80'));
    expect(svcRoutes.length).toBeGreaterThan(1);
    for (const n of svcRoutes) expect(a.get(ROUTE)!.resources.get(n)).toBe(b.get(ROUTE)!.resources.get(n));
    expect(a.get(ENDPOINT)).toBe(b.get(ENDPOINT));
    expect(a.get(LISTENER)!.resources.get('outbound-listener')).toBe(b.get(LISTENER)!.resources.get('outbound-listener'));
    // The listener of each ClusterIP service port, too.
    const svcListeners = [...a.get(LISTENER)!.resources.keys()].filter((n) => /^[\d.]+_\d+$/.test(n));
    expect(svcListeners.length).toBeGreaterThan(1);
    for (const n of svcListeners) expect(a.get(LISTENER)!.resources.get(n)).toBe(b.get(LISTENER)!.resources.get(n));
    expect(a.get(CLUSTER)!.resources.get('ns-0/svc-0|8080')).toBe(b.get(CLUSTER)!.resources.get('ns-0/svc-0|8080'));
  });

  it('gives a new version only to the proxies a Retry change affects', () => {
    const { cache, pipeline, state } = setup();
    const before = new Map([...cache.keys()].map((k) => [k, cache.peek(k)!.version]));
    const retries = [...state.retries];
    retries[1] = retryObject(1, SIZE, 9);
    const report = pipeline.update({ ...state, retries });
    const changed = [...cache.keys()].filter((k) => cache.peek(k)!.version !== before.get(k));
    const source = (retries[1].spec as any).source;
    expect(changed).toEqual([`sidecar:${source.namespace}/${source.name}`]);
    expect(report.changed).toBe(1);
    // The destination's own route configuration carries the new retry policy; the others are the shared ones.
    const dst = (retries[1].spec as any).destinations[0];
    const mine = cache.peek(changed[0])!.get(ROUTE)!;
    const rds = mine.resources.get(`${dst.name}.${dst.namespace}.svc.cluster.local:80`)!;
    expect((resourceToJson(rds) as any).virtual_hosts[0].routes[0].route.retry_policy.num_retries).toEqual({ value: 9 });
    const plain = cache.peek(`sidecar:${pipeline.ir!.identities.find((id) => !(id in pipeline.ir!.retries))}`)!.get(ROUTE)!;
    const shared = [...mine.resources].filter(([n, r]) => plain.resources.get(n) === r);
    expect(shared.length).toBeGreaterThan(1);
  });

  it('an unchanged mesh changes nothing', () => {
    const { pipeline, state } = setup();
    expect(pipeline.update({ ...state }).changed).toBe(0);
  });
});

describe('producer routes (Gateway API)', () => {
  const ROUTED = { ...SIZE, routes: 10 };
  /** The chunk objects of a sidecar's route configurations (TypeSet.chunked's parts; the last is its own). */
  const chunksOf = (set: TypeSet): TypeSet[] => (set as unknown as { parts: TypeSet[] }).parts.slice(0, -1);

  it('are in the route configurations every sidecar shares: an edit makes one new chunk, the same object for all', () => {
    const cache = new SnapshotCache();
    const pipeline = new Pipeline(cache, pino({ level: 'silent' }));
    const state = generateMesh(ROUTED);
    pipeline.update(state);
    const edited = routeObject(0, ROUTED);
    expect(isConsumerRoute(0, ROUTED)).toBe(false);
    const name = `${(edited.spec as any).parentRefs[0].name}.${edited.namespace}.svc.cluster.local:80`;
    // The sidecars with no Retry and no consumer route: every one of them gets the producer route's rules.
    const consumers = new Set(Array.from({ length: 10 }, (_, i) => i).filter((i) => isConsumerRoute(i, ROUTED)).map((i) => routeObject(i, ROUTED).namespace));
    const plain = pipeline.ir!.identities.filter((id) => !(id in pipeline.ir!.retries) && !consumers.has(id.split('/')[0]!)).map((id) => `sidecar:${id}`);
    expect(plain.length).toBeGreaterThanOrEqual(3);
    const routesOf = (key: string): TypeSet => cache.peek(key)!.get(ROUTE)!;
    const rules = (key: string): unknown[] => (resourceToJson(routesOf(key).resources.get(name)!) as any).virtual_hosts[0].routes;
    expect(rules(plain[0]!).length).toBeGreaterThan(1);
    const first = chunksOf(routesOf(plain[0]!));
    const sameAs = (key: string, chunks: TypeSet[]): boolean => chunksOf(routesOf(key)).every((c, i) => c === chunks[i]);
    expect(plain.filter((key) => !sameAs(key, first))).toEqual([]);

    const routes = state.routes.map((r) => (r.name === edited.name && r.namespace === edited.namespace ? routeObject(0, ROUTED, 1) : r));
    pipeline.update({ ...state, routes });
    const after = chunksOf(routesOf(plain[0]!));
    // One chunk differs (the edited route's), and every such sidecar holds that very chunk object.
    expect(after.filter((c, i) => c !== first[i]).length).toBe(1);
    expect(plain.filter((key) => !sameAs(key, after))).toEqual([]);
    expect(rules(plain[1]!)).toEqual(rules(plain[0]!));
  });
});

describe('after a topology change', () => {
  it('route configurations and proxyless listeners follow: no stale piece is reused', () => {
    const { cache, pipeline, state } = setup();
    const withPolicy = Object.keys(pipeline.ir!.retries)[0];
    const plain = pipeline.ir!.identities.find((id) => !(id in pipeline.ir!.retries))!;
    const proxyless = `proxyless:${plain}`;
    cache.set(proxyless, pipeline.preview(proxyless));
    const extra = { namespace: 'ns-0', name: 'brand-new', clusterIP: '10.99.0.1', ports: [{ name: 'http', port: 80, targetPort: 8080, protocol: 'TCP' }] };
    pipeline.update({ ...state, services: [...state.services, extra] });
    for (const key of [`sidecar:${withPolicy}`, `sidecar:${plain}`]) {
      const rds: any = resourceToJson(cache.peek(key)!.get(ROUTE)!.resources.get('brand-new.ns-0.svc.cluster.local:80')!);
      expect(rds.virtual_hosts.map((v: any) => v.name), key).toEqual(['outbound_virtual-host|brand-new.ns-0.svc.cluster.local']);
      expect(cache.peek(key)!.get(LISTENER)!.resources.has('10.99.0.1_80')).toBe(true);
    }
    const preview = pipeline.preview(proxyless);
    expect(preview.get(LISTENER)!.resources.has('brand-new.ns-0.svc.cluster.local:80')).toBe(true);
  });
});

it('two ports of a service with the same target port share one cluster (no duplicate names)', () => {
  const { cache, pipeline, state } = setup();
  const svc = { ...state.services[0], ports: [{ name: 'http', port: 80, targetPort: 8080, protocol: 'TCP' }, { name: 'http-alt', port: 8080, targetPort: 8080, protocol: 'TCP' }] };
  const report = pipeline.update({ ...state, services: [svc, ...state.services.slice(1)] });
  expect(report.failed).toEqual([]);
  const snap = cache.peek(`sidecar:${pipeline.ir!.identities[0]}`)!;
  expect([...snap.get(CLUSTER)!.resources.keys()].filter((n) => n.startsWith('ns-0/svc-0|') && !n.endsWith('|local'))).toEqual(['ns-0/svc-0|8080']);
  const rds80: any = resourceToJson(snap.get(ROUTE)!.resources.get('svc-0.ns-0.svc.cluster.local:80')!);
  const rds8080: any = resourceToJson(snap.get(ROUTE)!.resources.get('svc-0.ns-0.svc.cluster.local:8080')!);
  for (const rds of [rds80, rds8080]) expect(rds.virtual_hosts[0].routes[0].route.cluster).toBe('ns-0/svc-0|8080');
});

it('a failure of the translation itself publishes nothing: proxies keep their last good snapshot', async () => {
  const { vi } = await import('vitest');
  const { SnapshotBuilder } = await import('../src/pipeline/build.js');
  const { cache, pipeline, state } = setup();
  const before = new Map([...cache.keys()].map((k) => [k, cache.peek(k)!.version]));
  const spy = vi.spyOn(SnapshotBuilder.prototype, 'update').mockImplementationOnce(() => {
    throw new Error('encoder exploded');
  });
  const report = pipeline.update({ ...state, services: state.services.slice(1) });
  spy.mockRestore();
  expect(report.failed).toEqual([{ key: '*', error: 'encoder exploded' }]);
  expect(new Map([...cache.keys()].map((k) => [k, cache.peek(k)!.version]))).toEqual(before);
  // The next good input is translated normally.
  expect(pipeline.update({ ...state, services: state.services.slice(1) }).failed).toEqual([]);
});
