import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import * as grpc from '@grpc/grpc-js';
import { RawAdsClient, node, type AdsTestStream } from './helpers/ads-client.js';
import { startAds } from './helpers/server.js';
import { eventually } from './helpers/grpc-xds.js';
import { apiListener, cluster, endpoints, route, simpleSnapshot } from './helpers/fixtures.js';
import { buildSnapshot } from '../src/xds/resources/snapshot.js';
import { CLUSTER, ENDPOINT, LISTENER, ROUTE } from '../src/xds/resources/types.js';
import { syncState } from '../src/xds/protocol/status.js';
import { envoyRoot } from '../src/xds/resources/protos.js';
import { lenField, withoutField } from '../src/xds/resources/wire.js';
import type protobuf from 'protobufjs';

const KEY = 'sidecar:curl/curl';
let env: Awaited<ReturnType<typeof startAds>>;
let client: RawAdsClient;
const streams: AdsTestStream[] = [];

function open(delta = false): AdsTestStream {
  const s = delta ? client.delta() : client.sotw();
  streams.push(s);
  return s;
}

beforeEach(async () => {
  env = await startAds();
  client = new RawAdsClient(env.address);
});

afterEach(async () => {
  for (const s of streams.splice(0)) s.close();
  client.close();
  await env.server.close(100);
});

function ready(snapshot = simpleSnapshot()): void {
  env.cache.set(KEY, snapshot);
  env.cache.markReady();
}

describe('stream identity', () => {
  it('refuses a node without namespace and service account, saying which', async () => {
    ready();
    const s = open();
    s.send({ node: node({ namespace: undefined, serviceAccount: undefined }), type_url: LISTENER });
    await expect(s.next()).rejects.toMatchObject({ code: grpc.status.INVALID_ARGUMENT });
    expect(s.error?.details).toMatch(/node\.metadata\.namespace and node\.metadata\.serviceAccount/);
  });
});

describe('repeated nodes', () => {
  const message = (delta: boolean): protobuf.Type =>
    envoyRoot().lookupType(delta ? 'envoy.service.discovery.v3.DeltaDiscoveryRequest' : 'envoy.service.discovery.v3.DiscoveryRequest');

  it('withoutField drops every occurrence of a field and leaves the rest to decode as before', () => {
    const t = message(false);
    const full = Buffer.from(t.encode(t.fromObject({ node: node(), type_url: CLUSTER, resource_names: ['a', 'b'], version_info: 'v1' })).finish());
    const twice = Buffer.concat([full, lenField(2, Buffer.from(t.lookupType('envoy.config.core.v3.Node').encode({ id: 'x' }).finish()))]);
    const stripped: any = t.decode(withoutField(twice, 2));
    expect(stripped.node).toBeNull();
    expect([stripped.type_url, stripped.resource_names, stripped.version_info]).toEqual([CLUSTER, ['a', 'b'], 'v1']);
    const bare = Buffer.from(t.encode(t.fromObject({ type_url: CLUSTER })).finish());
    expect(withoutField(bare, 2)).toBe(bare);
    // Bytes that cannot be walked are left to the decoder, which reports them.
    const cut = full.subarray(0, full.length - 1);
    expect(withoutField(cut, 2)).toBe(cut);
  });

  for (const delta of [false, true]) {
    it(`decodes the node of the first request only (${delta ? 'delta' : 'SotW'}): a later one, even malformed, is skipped`, async () => {
      ready();
      const s = open(delta);
      s.send({ node: node(), type_url: LISTENER });
      const r = await s.next();
      // An ACK that repeats a node whose bytes are not a Node at all (a Struct field cut short).
      const garbage = lenField(message(delta).fields.node.id, Buffer.from([0x2a, 0x05, 0x0a, 0x03]));
      s.sendBytes(delta ? { type_url: LISTENER, response_nonce: r.nonce } : { type_url: LISTENER, version_info: r.version_info, response_nonce: r.nonce }, garbage);
      expect(await s.nothingOwed(CLUSTER)).toBe(true);
      expect(s.error).toBeUndefined();
      expect(syncState([...env.registry.connections][0].status(LISTENER))).toBe('SYNCED');
    });
  }
});

describe('state of the world', () => {
  it('serves nothing before the inputs are ready, then the full state', async () => {
    const s = open();
    s.send({ node: node(), type_url: LISTENER });
    // The request is handled (the stream is open) before the inputs are: anything it were answered would come first.
    await eventually(() => env.registry.connections.size === 1, 10_000, 'the stream to open');
    ready();
    const r = await s.next();
    expect(r.type_url).toBe(LISTENER);
    expect(r.names).toEqual(['l1']);
    expect(r.version_info).toBe(env.cache.peek(KEY)!.get(LISTENER)!.version);
    expect(await s.nothingOwed(CLUSTER)).toBe(true);
  });

  it('treats an empty first request and "*" as wildcard, other names as named', async () => {
    ready(buildSnapshot([cluster('a'), cluster('b'), endpoints('a', 1), endpoints('b', 2)]));
    const legacy = open();
    legacy.send({ node: node(), type_url: CLUSTER });
    expect((await legacy.next()).names).toEqual(['a', 'b']);
    const star = open();
    star.send({ node: node({ id: 'n2' }), type_url: CLUSTER, resource_names: ['*'] });
    expect((await star.next()).names).toEqual(['a', 'b']);
    const named = open();
    named.send({ node: node({ id: 'n3' }), type_url: CLUSTER, resource_names: ['b'] });
    expect((await named.next()).names).toEqual(['b']);
    const eds = open();
    eds.send({ node: node({ id: 'n4' }), type_url: ENDPOINT, resource_names: ['a'] });
    expect((await eds.next()).names).toEqual(['a']);
  });

  it('does not answer an ACK, and records it', async () => {
    ready();
    const s = open();
    s.send({ node: node(), type_url: ROUTE, resource_names: ['r1'] });
    const r = await s.next();
    expect(r.names).toEqual(['r1']);
    s.send({ type_url: ROUTE, resource_names: ['r1'], version_info: r.version_info, response_nonce: r.nonce });
    expect(await s.nothingOwed(CLUSTER)).toBe(true);
    const st = [...env.registry.connections][0].status(ROUTE);
    expect(st.ackedVersion).toBe(r.version_info);
    expect(syncState(st)).toBe('SYNCED');
  });

  it('records a NACK with its error and never resends the same content', async () => {
    ready();
    const s = open();
    s.send({ node: node(), type_url: ROUTE, resource_names: ['r1'] });
    const r = await s.next();
    s.send({
      type_url: ROUTE,
      resource_names: ['r1'],
      version_info: '',
      response_nonce: r.nonce,
      error_detail: { code: 3, message: 'retry_policy: num_retries must be > 0' },
    });
    expect(await s.nothingOwed(CLUSTER)).toBe(true);
    const conn = [...env.registry.connections][0];
    expect(conn.status(ROUTE).lastNack).toMatchObject({ version: r.version_info, error: 'retry_policy: num_retries must be > 0' });
    expect(syncState(conn.status(ROUTE))).toBe('NACKED');
    // A new content is sent.
    env.cache.set(KEY, simpleSnapshot({ port: 9999, listener: 'l1', retry: { retry_on: 'unavailable' } }));
    const r2 = await s.next();
    expect(r2.type_url).toBe(ROUTE);
    expect(r2.version_info).not.toBe(r.version_info);
  });

  it('ignores a request whose nonce is not the latest', async () => {
    ready(buildSnapshot([cluster('a'), cluster('b'), endpoints('a', 1), endpoints('b', 2)]));
    const s = open();
    s.send({ node: node(), type_url: ENDPOINT, resource_names: ['a'] });
    const first = await s.next();
    env.cache.set(KEY, buildSnapshot([cluster('a'), cluster('b'), endpoints('a', 3), endpoints('b', 2)]));
    const second = await s.next();
    expect(second.nonce).not.toBe(first.nonce);
    // A late request carrying the old nonce, asking for more names: ignored whole.
    s.send({ type_url: ENDPOINT, resource_names: ['a', 'b'], version_info: first.version_info, response_nonce: first.nonce });
    expect(await s.nothingOwed(LISTENER)).toBe(true);
    // The same request with the latest nonce is honored: the client is sent what it lacks.
    s.send({ type_url: ENDPOINT, resource_names: ['a', 'b'], version_info: second.version_info, response_nonce: second.nonce });
    expect((await s.next()).names).toEqual(['b']);
  });

  it('sends RDS and EDS resources a client lacks only, under the version of all it then holds; LDS and CDS whole', async () => {
    const mesh = (b: number) => buildSnapshot([cluster('a'), cluster('b'), cluster('c'), endpoints('a', 1), endpoints('b', b), endpoints('c', 3)]);
    ready(mesh(2));
    const s = open();
    s.send({ node: node(), type_url: ENDPOINT, resource_names: ['a', 'b'] });
    const first = await s.next();
    expect(first.names).toEqual(['a', 'b']);
    // One more name subscribed: that one alone.
    s.send({ type_url: ENDPOINT, resource_names: ['a', 'b', 'c'], version_info: first.version_info, response_nonce: first.nonce });
    const grown = await s.next();
    expect(grown.names).toEqual(['c']);
    s.send({ type_url: ENDPOINT, resource_names: ['a', 'b', 'c'], version_info: grown.version_info, response_nonce: grown.nonce });
    expect(await s.nothingOwed(LISTENER)).toBe(true);
    // One resource changed: that one alone.
    env.cache.set(KEY, mesh(9));
    const changed = await s.next();
    expect(changed.names).toEqual(['b']);
    // Its version is that of all three: a client subscribing afresh is sent all three under it, and one that
    // reconnects holding it is sent nothing.
    const fresh = open();
    fresh.send({ node: node({ id: 'fresh' }), type_url: ENDPOINT, resource_names: ['c', 'a', 'b'] });
    const all = await fresh.next();
    expect(all.names).toEqual(['a', 'b', 'c']);
    expect(all.version_info).toBe(changed.version_info);
    const again = open();
    again.send({ node: node({ id: 'again' }), type_url: ENDPOINT, resource_names: ['a', 'b', 'c'], version_info: changed.version_info });
    expect(await again.nothingOwed(LISTENER)).toBe(true);
    // CDS is a full-state type: always sent whole.
    s.send({ node: node(), type_url: CLUSTER });
    const clusters = await s.next();
    expect(clusters.names).toEqual(['a', 'b', 'c']);
  });

  it('answers unsubscribe with nothing and a resubscribe with the resource again', async () => {
    ready();
    const s = open();
    s.send({ node: node(), type_url: ROUTE, resource_names: ['r1'] });
    const r = await s.next();
    s.send({ type_url: ROUTE, resource_names: [], version_info: r.version_info, response_nonce: r.nonce });
    expect(await s.nothingOwed(CLUSTER)).toBe(true);
    s.send({ type_url: ROUTE, resource_names: ['r1'], version_info: r.version_info, response_nonce: r.nonce });
    expect((await s.next()).names).toEqual(['r1']);
  });

  it('sends an empty LDS when every listener is deleted', async () => {
    ready();
    const s = open();
    s.send({ node: node(), type_url: LISTENER });
    const r = await s.next();
    expect(r.names).toEqual(['l1']);
    s.send({ type_url: LISTENER, version_info: r.version_info, response_nonce: r.nonce });
    env.cache.set(KEY, buildSnapshot([cluster('c1'), endpoints('c1', 1)]));
    const r2 = await s.next();
    expect(r2.type_url).toBe(LISTENER);
    expect(r2.names).toEqual([]);
  });

  it('pushes in ADS order, resends EDS after a cluster change, and removes clusters last', async () => {
    ready(simpleSnapshot({ clusters: ['c1', 'c2'] }));
    const s = open();
    const acked: Record<string, string> = {};
    const ack = (r: { type_url: string; names: string[]; version_info: string; nonce: string }, names?: string[]): void => {
      acked[r.type_url] = r.version_info;
      s.send({ type_url: r.type_url, resource_names: names ?? [], version_info: r.version_info, response_nonce: r.nonce });
    };
    s.send({ node: node(), type_url: CLUSTER });
    const c = await s.next();
    ack(c);
    s.send({ type_url: ENDPOINT, resource_names: ['c1', 'c2'] });
    ack(await s.next(), ['c1', 'c2']);
    s.send({ type_url: LISTENER });
    ack(await s.next());
    s.send({ type_url: ROUTE, resource_names: ['r1'] });
    ack(await s.next(), ['r1']);

    // Route now points at c2, c1 goes away, listener and endpoints change too (and a route r2 appears). Nothing came
    // before the change: the next four responses are its own, one of each type.
    env.cache.set(
      KEY,
      buildSnapshot([cluster('c2', { connect_timeout: { seconds: 2 } }), endpoints('c2', 7), apiListener('l1', 'r1'), apiListener('l2', 'r1'), route('r1', 'l1', 'c2'), route('r2', 'l2', 'c2')]),
    );
    const order: string[] = [];
    const cds = await s.next();
    order.push(cds.type_url);
    // c1 is kept until the listener and route updates are settled.
    expect(cds.names).toEqual(['c1', 'c2']);
    const eds = await s.next();
    order.push(eds.type_url);
    expect(eds.names).toEqual(['c1', 'c2'].filter((n) => eds.names.includes(n)));
    const lds = await s.next();
    order.push(lds.type_url);
    const rds = await s.next();
    order.push(rds.type_url);
    expect(order).toEqual([CLUSTER, ENDPOINT, LISTENER, ROUTE]);
    ack(cds);
    ack(eds, ['c1', 'c2']);
    ack(lds);
    // RDS alone unanswered, c1's removal waits. The proof: RDS answered and grown by r2 has r2 alone come back, and
    // no removal before it (RDS unanswered again, the removal still waits).
    ack(rds, ['r1', 'r2']);
    const grown = await s.next();
    expect([grown.type_url, grown.names]).toEqual([ROUTE, ['r2']]);
    ack(grown, ['r1', 'r2']);
    const removal = await s.next();
    expect(removal.type_url).toBe(CLUSTER);
    expect(removal.names).toEqual(['c2']);
  });

  it('resends EDS (unchanged) after a cluster changes, for Envoy cluster warming: the endpoints of the changed cluster only', async () => {
    const mesh = (timeout: number) => buildSnapshot([cluster('c1', { connect_timeout: { seconds: timeout } }), cluster('c2'), endpoints('c1', 8080), endpoints('c2', 8081)]);
    ready(mesh(1));
    const s = open();
    s.send({ node: node(), type_url: CLUSTER });
    const c = await s.next();
    s.send({ type_url: CLUSTER, version_info: c.version_info, response_nonce: c.nonce });
    s.send({ type_url: ENDPOINT, resource_names: ['c1', 'c2'] });
    const e = await s.next();
    expect(e.names).toEqual(['c1', 'c2']);
    s.send({ type_url: ENDPOINT, resource_names: ['c1', 'c2'], version_info: e.version_info, response_nonce: e.nonce });
    // Nothing more before the change: the responses after it are exactly CDS, then EDS under the version held.
    env.cache.set(KEY, mesh(5));
    const c2 = await s.next();
    expect(c2.type_url).toBe(CLUSTER);
    expect(c2.names).toEqual(['c1', 'c2']);
    s.send({ type_url: CLUSTER, version_info: c2.version_info, response_nonce: c2.nonce });
    // Envoy re-warms c1 (changed), not c2: c1's endpoints again, under the version the client holds.
    const e2 = await s.next();
    expect(e2.type_url).toBe(ENDPOINT);
    expect(e2.names).toEqual(['c1']);
    expect(e2.version_info).toBe(e.version_info);
    expect(e2.nonce).not.toBe(e.nonce);
    s.send({ type_url: ENDPOINT, resource_names: ['c1', 'c2'], version_info: e2.version_info, response_nonce: e2.nonce });
    expect(await s.nothingOwed(LISTENER)).toBe(true);
  });

  it('treats a nonce on the first request of a stream as a fresh request, not a stale one', async () => {
    ready();
    const s = open();
    s.send({ node: node(), type_url: ROUTE, resource_names: ['r1'], response_nonce: 'from-another-stream' });
    expect((await s.next()).names).toEqual(['r1']);
  });

  it('sends nothing to a client that reconnects with the version it has', async () => {
    ready();
    const s = open();
    s.send({ node: node(), type_url: LISTENER });
    const r = await s.next();
    s.close();
    const again = open();
    again.send({ node: node(), type_url: LISTENER, version_info: r.version_info });
    expect(await again.nothingOwed(CLUSTER)).toBe(true);
    const other = open();
    other.send({ node: node({ id: 'x' }), type_url: LISTENER, version_info: 'some-old-version' });
    expect((await other.next()).version_info).toBe(r.version_info);
  });
});

describe('delta', () => {
  it('subscribes, unsubscribes, removes, and honors initial_resource_versions', async () => {
    ready(buildSnapshot([cluster('a'), cluster('b'), endpoints('a', 1), endpoints('b', 2)]));
    const s = open(true);
    s.send({ node: node(), type_url: ENDPOINT, resource_names_subscribe: ['a'] });
    const r1 = await s.next();
    expect(r1.names).toEqual(['a']);
    expect(r1.removed).toEqual([]);
    s.send({ type_url: ENDPOINT, response_nonce: r1.nonce });
    s.send({ type_url: ENDPOINT, resource_names_subscribe: ['b', 'missing'] });
    const r2 = await s.next();
    expect(r2.names).toEqual(['b']);
    expect(r2.removed).toEqual(['missing']);
    s.send({ type_url: ENDPOINT, response_nonce: r2.nonce });
    s.send({ type_url: ENDPOINT, resource_names_unsubscribe: ['a'] });
    expect(await s.nothingOwed(ENDPOINT)).toBe(true);
    // b is deleted from the mesh: removed; a (unsubscribed) changes: not sent.
    env.cache.set(KEY, buildSnapshot([cluster('a'), endpoints('a', 9)]));
    const r3 = await s.next();
    expect(r3.names).toEqual([]);
    expect(r3.removed).toEqual(['b']);

    // Reconnect, claiming a's current version and an old version of nothing else: only what differs comes.
    const cur = env.cache.peek(KEY)!.get(CLUSTER)!.resources.get('a')!.version;
    const d = open(true);
    d.send({ node: node(), type_url: CLUSTER, initial_resource_versions: { a: cur, gone: 'v0' } });
    const r4 = await d.next();
    expect(r4.names).toEqual([]);
    expect(r4.removed).toEqual(['gone']);
    expect(r4.system_version_info).toBe(env.cache.peek(KEY)!.get(CLUSTER)!.version);
  });

  it('after a cluster changes, resends the endpoints of that cluster only (the one Envoy re-warms)', async () => {
    ready(buildSnapshot([cluster('a'), cluster('b'), endpoints('a', 1), endpoints('b', 2)]));
    const s = open(true);
    s.send({ node: node(), type_url: CLUSTER });
    const c = await s.next();
    expect(c.names).toEqual(['a', 'b']);
    s.send({ type_url: CLUSTER, response_nonce: c.nonce });
    s.send({ type_url: ENDPOINT, resource_names_subscribe: ['a', 'b'] });
    const e = await s.next();
    expect(e.names).toEqual(['a', 'b']);
    s.send({ type_url: ENDPOINT, response_nonce: e.nonce });
    expect(await s.nothingOwed(ENDPOINT)).toBe(true);
    env.cache.set(KEY, buildSnapshot([cluster('a'), cluster('b', { connect_timeout: { seconds: 5 } }), endpoints('a', 1), endpoints('b', 2)]));
    const c2 = await s.next();
    expect([c2.type_url, c2.names]).toEqual([CLUSTER, ['b']]);
    const e2 = await s.next();
    expect([e2.type_url, e2.names]).toEqual([ENDPOINT, ['b']]);
    s.send({ type_url: CLUSTER, response_nonce: c2.nonce });
    s.send({ type_url: ENDPOINT, response_nonce: e2.nonce });
    expect(await s.nothingOwed(ENDPOINT)).toBe(true);
  });

  it('records a delta NACK without resending', async () => {
    ready();
    const s = open(true);
    s.send({ node: node(), type_url: LISTENER, resource_names_subscribe: ['*'] });
    const r = await s.next();
    expect(r.names).toEqual(['l1']);
    s.send({ type_url: LISTENER, response_nonce: r.nonce, error_detail: { code: 3, message: 'bad listener' } });
    expect(await s.nothingOwed(CLUSTER)).toBe(true);
    const conn = [...env.registry.connections][0];
    expect(conn.status(LISTENER).lastNack?.error).toBe('bad listener');
    expect(conn.stream).toBe('delta');
  });
});
