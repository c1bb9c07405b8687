/**
 * The xDS core end to end with a real xDS client (@grpc/grpc-js-xds): the retry policy we serve is the one
 * the client applies, counted at the backend.
 */
import { afterAll, beforeAll, expect, it } from 'vitest';
import * as grpc from '@grpc/grpc-js';
import { startAds } from './helpers/server.js';
import { XdsTestClient, eventually, startBackend, type Backend } from './helpers/grpc-xds.js';
import { retryPolicy, simpleSnapshot } from './helpers/fixtures.js';
import { ROUTE } from '../src/xds/resources/types.js';
import { syncState } from '../src/xds/protocol/status.js';

let env: Awaited<ReturnType<typeof startAds>>;
let backend: Backend;
let client: XdsTestClient;
const KEY = 'proxyless:curl/curl';

beforeAll(async () => {
  env = await startAds();
  backend = await startBackend(grpc.status.UNAVAILABLE);
  env.cache.set(KEY, simpleSnapshot({ port: backend.port, listener: 'echo', retry: retryPolicy(3) }));
  env.cache.markReady();
  client = new XdsTestClient('xds:///echo', env.address, { nodeId: 'e2e-1', namespace: 'curl', serviceAccount: 'curl' });
});

afterAll(async () => {
  client?.close();
  await backend?.close();
  await env?.server.close(100);
});

async function attemptsOfOneCall(): Promise<number> {
  const before = backend.attempts;
  expect(await client.call()).toBe(grpc.status.UNAVAILABLE);
  return backend.attempts - before;
}

it('applies the served retry policy, follows a live change, and keeps the last good one after a NACK', async () => {
  expect(await attemptsOfOneCall()).toBe(4);
  const conn = () => [...env.registry.connections][0];
  const connId = conn().id;
  expect(conn().identity.kind).toBe('proxyless');

  // num_retries 1 on the live stream: 2 attempts, same stream.
  env.cache.set(KEY, simpleSnapshot({ port: backend.port, listener: 'echo', retry: retryPolicy(1) }));
  const v1 = env.cache.peek(KEY)!.get(ROUTE)!.version;
  await eventually(() => conn().status(ROUTE).ackedVersion === v1, 5000, 'ACK of the new route');
  expect(await attemptsOfOneCall()).toBe(2);
  expect(conn().id).toBe(connId);
  expect(env.registry.connections.size).toBe(1);

  // num_retries 0: valid for Envoy, rejected by gRPC clients. The client NACKs, the server records it.
  env.cache.set(KEY, simpleSnapshot({ port: backend.port, listener: 'echo', retry: retryPolicy(0) }));
  const bad = env.cache.peek(KEY)!.get(ROUTE)!.version;
  await eventually(() => conn().status(ROUTE).lastNack?.version === bad, 5000, 'NACK');
  expect(conn().status(ROUTE).lastNack!.error).toMatch(/num_retries|retry/i);
  expect(syncState(conn().status(ROUTE))).toBe('NACKED');
  expect(conn().status(ROUTE).ackedVersion).toBe(v1);
  // The client keeps the last good config: still 2 attempts.
  expect(await attemptsOfOneCall()).toBe(2);
});
