/**
 * The translation end to end: manifests in a folder -> the real server -> a real xDS client
 * (@grpc/grpc-js-xds) calling the httpbin service by its mesh name; attempts counted at the backend.
 */
import { afterAll, beforeAll, expect, it } from 'vitest';
import * as grpc from '@grpc/grpc-js';
import { XdsTestClient, eventually, startBackend, type Backend } from './helpers/grpc-xds.js';
import { setRetryPolicy, startDemo, useBackend, type DemoServer } from './helpers/demo.js';
import { ROUTE } from '../src/xds/resources/types.js';

const TARGET = 'xds:///httpbin.httpbin.svc.cluster.local:14001';
let backend: Backend;
let demo: DemoServer;
const clients: XdsTestClient[] = [];

beforeAll(async () => {
  backend = await startBackend(grpc.status.UNAVAILABLE);
  demo = await startDemo((dir) => useBackend(dir, backend.port, 'retryOn: unavailable\nnumRetries: 3\nretryBackoffBaseInterval: 10ms'));
});

afterAll(async () => {
  for (const c of clients) c.close();
  await demo?.close();
  await backend?.close();
});

function client(namespace: string, serviceAccount: string): XdsTestClient {
  const c = new XdsTestClient(TARGET, demo.ads, { nodeId: `${namespace}-${serviceAccount}-${clients.length}`, namespace, serviceAccount });
  clients.push(c);
  return c;
}

async function attempts(c: XdsTestClient): Promise<number> {
  const before = backend.attempts;
  expect(await c.call()).toBe(grpc.status.UNAVAILABLE);
  return backend.attempts - before;
}

it('curl/curl gets the Retry; other/other does not; a change applies live; the feature flag turns it off', async () => {
  const curl = client('curl', 'curl');
  expect(await attempts(curl)).toBe(4);
  const other = client('other', 'other');
  expect(await attempts(other)).toBe(1);
  const otherConn = [...demo.running.registry.connections].find((c) => c.identity.namespace === 'other')!;
  const otherRouteNonce = otherConn.status(ROUTE).sentNonce;
  expect(otherRouteNonce).toBeDefined();

  const conn = () => [...demo.running.registry.connections].find((c) => c.identity.namespace === 'curl')!;
  const id = conn().id;
  const before = conn().status(ROUTE).ackedVersion;
  setRetryPolicy(demo.dir, 'retryOn: unavailable\nnumRetries: 1\nretryBackoffBaseInterval: 10ms');
  await eventually(() => conn().status(ROUTE).ackedVersion !== before, 5000, 'the new route to be ACKed');
  expect(await attempts(curl)).toBe(2);
  expect(conn().id).toBe(id);

  const rds = conn().status(ROUTE).ackedVersion;
  demo.edit('mesh.yaml', (t) => t.replace('enableRetryPolicy: true', 'enableRetryPolicy: false'));
  await eventually(() => conn().status(ROUTE).ackedVersion !== rds, 5000, 'the route without retries to be ACKed');
  expect(await attempts(curl)).toBe(1);
  expect(conn().id).toBe(id);
  // other/other's routes never changed: nothing new was sent to it.
  expect(otherConn.status(ROUTE).sentNonce).toBe(otherRouteNonce);
});
