/** Two replicas on the same input agree on every version; a proxy moving between them is sent nothing new. */
import { afterAll, beforeAll, expect, it } from 'vitest';
import { RawAdsClient, node } from './helpers/ads-client.js';
import { startDemo, type DemoServer } from './helpers/demo.js';
import { eventually } from './helpers/grpc-xds.js';
import { CLUSTER, ENDPOINT, LISTENER, ROUTE } from '../src/xds/resources/types.js';

let a: DemoServer;
let b: DemoServer;
const clients: RawAdsClient[] = [];

beforeAll(async () => {
  [a, b] = await Promise.all([startDemo(), startDemo()]);
});

afterAll(async () => {
  for (const c of clients) c.close();
  await Promise.all([a?.close(), b?.close()]);
});

function client(server: DemoServer): RawAdsClient {
  const c = new RawAdsClient(server.ads);
  clients.push(c);
  return c;
}

it('produce the same snapshot versions', () => {
  const keys = [...a.running.cache.keys()].sort();
  expect(keys).toEqual(['sidecar:curl/curl', 'sidecar:httpbin/httpbin']);
  for (const k of keys) expect(b.running.cache.peek(k)!.version).toBe(a.running.cache.peek(k)!.version);
});

it('send nothing new to a SotW proxy that reconnects to the other replica', async () => {
  const sA = client(a).sotw();
  const who = node({ id: 'curl-1', namespace: 'curl', serviceAccount: 'curl' });
  const subscriptions: Record<string, string[]> = { [CLUSTER]: [], [ENDPOINT]: ['curl/curl|8080', 'httpbin/httpbin|14001'], [LISTENER]: [], [ROUTE]: ['rds-inbound.8080', 'httpbin.httpbin.svc.cluster.local:14001', 'curl.curl.svc.cluster.local:80'] };
  const versions: Record<string, string> = {};
  sA.send({ node: who, type_url: CLUSTER });
  for (const t of [ENDPOINT, LISTENER, ROUTE]) sA.send({ type_url: t, resource_names: subscriptions[t] });
  for (let i = 0; i < 4; i++) {
    const r = await sA.next();
    versions[r.type_url] = r.version_info;
    sA.send({ type_url: r.type_url, resource_names: subscriptions[r.type_url], version_info: r.version_info, response_nonce: r.nonce });
  }
  expect(Object.keys(versions).sort()).toEqual([CLUSTER, ENDPOINT, LISTENER, ROUTE].sort());
  sA.close();

  const sB = client(b).sotw();
  sB.send({ node: who, type_url: CLUSTER, version_info: versions[CLUSTER] });
  for (const t of [ENDPOINT, LISTENER, ROUTE]) sB.send({ type_url: t, resource_names: subscriptions[t], version_info: versions[t] });
  // Each request handled: its type counts as ACKed at the version the proxy holds. The server writes (and records)
  // what a request owes while it handles it, so nothing was sent if none is recorded. (Not a sentinel request: SotW
  // has one only in a type the stream does not take, and this one takes all four.)
  await eventually(() => b.running.registry.connections.size === 1 && [CLUSTER, ENDPOINT, LISTENER, ROUTE].every((t) => [...b.running.registry.connections][0]!.status(t).ackedVersion === versions[t]), 10_000, 'every type resumed');
  const conn = [...b.running.registry.connections][0]!;
  for (const t of [CLUSTER, ENDPOINT, LISTENER, ROUTE]) {
    expect(conn.status(t)).toMatchObject({ ackedVersion: versions[t], sentVersion: versions[t] });
    expect(conn.status(t).sentNonce, `a ${t} response was sent`).toBeUndefined();
  }
});

it('send nothing new to a delta proxy that reconnects with its initial_resource_versions', async () => {
  const dA = client(a).delta();
  const who = node({ id: 'curl-2', namespace: 'curl', serviceAccount: 'curl' });
  dA.send({ node: who, type_url: CLUSTER, resource_names_subscribe: ['*'] });
  const r = await dA.next();
  expect(r.names.length).toBeGreaterThan(0);
  dA.close();
  const dB = client(b).delta();
  dB.send({ node: who, type_url: CLUSTER, resource_names_subscribe: ['*'], initial_resource_versions: r.versions });
  expect(await dB.nothingOwed(LISTENER)).toBe(true);
});
