/**
 * Soak: policy edits and stream reconnects against one server (pipeline, cache, ADS on loopback), with
 * proxies that ACK everything; heap after a full GC at the start (after a warm-up) and at the end.
 * Then rounds of hostile clients, after which the heap must be back where it started.
 * Run: npm run build && npm run soak [-- EDITS RECONNECTS HOSTILE_ROUNDS]   (defaults 10000, 1000 and 5)
 */
import * as grpc from '@grpc/grpc-js';
import pino from 'pino';
import { Pipeline } from '../src/pipeline/pipeline.js';
import { SnapshotCache } from '../src/xds/resources/cache.js';
import { envoyRoot, loadEnvoyProtos } from '../src/xds/resources/protos.js';
import { ADS_SERVICE, AdsServer } from '../src/xds/protocol/server.js';
import { ProxyRegistry } from '../src/xds/protocol/status.js';
import { CLUSTER, ENDPOINT, LISTENER, ROUTE } from '../src/xds/resources/types.js';
import { hostileClients } from './hostile.js';
import { generateMesh, retryObject, type MeshSize } from './mesh-gen.js';

const EDITS = Number(process.argv[2] ?? 10_000);
const RECONNECTS = Number(process.argv[3] ?? 1_000);
const SIZE: MeshSize = { namespaces: 10, services: 100, pods: 300, serviceAccounts: 100, retries: 50 };
const gc = (globalThis as any).gc as () => void;
if (!gc) throw new Error('run with node --expose-gc (npm run soak does)');
const mb = (n: number): string => `${(n / 1024 / 1024).toFixed(1)} MB`;

function heap(): number {
  for (let i = 0; i < 3; i++) gc();
  return process.memoryUsage().heapUsed;
}

loadEnvoyProtos();
const log = pino({ level: 'silent' });
const cache = new SnapshotCache();
const registry = new ProxyRegistry();
const pipeline = new Pipeline(cache, log);
const server = new AdsServer({ cache, registry, log });
const port = await server.listen('127.0.0.1:0');
const base = generateMesh(SIZE);
pipeline.update(base);

const Req = envoyRoot().lookupType('envoy.service.discovery.v3.DiscoveryRequest');
const Res = envoyRoot().lookupType('envoy.service.discovery.v3.DiscoveryResponse');
const Client = grpc.makeGenericClientConstructor(ADS_SERVICE, 'ADS');
const encode = (o: object): Buffer => Buffer.from(Req.encode(Req.fromObject(o)).finish());

interface Proxy {
  client: grpc.Client;
  call: grpc.ClientDuplexStream<Buffer, Buffer>;
}

/** A proxy of identity `sa-i` on a connection of its own (as Envoy), subscribed to everything, ACKing every response. */
function proxy(i: number): Proxy {
  const client = new Client(`127.0.0.1:${port}`, grpc.credentials.createInsecure(), { 'grpc.use_local_subchannel_pool': 1 }) as any;
  const call = client.StreamAggregatedResources() as grpc.ClientDuplexStream<Buffer, Buffer>;
  const sa = i % SIZE.serviceAccounts;
  const node = { id: `soak-${i}`, user_agent_name: 'envoy', metadata: { fields: { namespace: { stringValue: `ns-${sa % SIZE.namespaces}` }, serviceAccount: { stringValue: `sa-${sa}` } } } };
  call.on('error', () => {});
  call.on('data', (buf: Buffer) => {
    const r: any = Res.decode(buf);
    const names = r.type_url === CLUSTER || r.type_url === LISTENER ? [] : undefined;
    call.write(encode({ type_url: r.type_url, version_info: r.version_info, response_nonce: r.nonce, ...(names ? { resource_names: names } : {}) }));
  });
  call.write(encode({ node, type_url: CLUSTER }));
  call.write(encode({ type_url: ENDPOINT, resource_names: base.services.slice(0, 20).map((s) => `${s.namespace}/${s.name}|8080`) }));
  call.write(encode({ type_url: LISTENER }));
  // The route configurations of the same services' ports (each ClusterIP service port has its own).
  call.write(encode({ type_url: ROUTE, resource_names: base.services.slice(0, 20).flatMap((s) => [80, 9090].map((port) => `${s.name}.${s.namespace}.svc.cluster.local:${port}`)) }));
  return { client, call };
}

function disconnect(p: Proxy): void {
  p.call.cancel();
  p.client.close();
}

const proxies = Array.from({ length: 20 }, (_, i) => proxy(i));
let edit = 0;
const editOnce = (): void => {
  const i = edit % SIZE.retries;
  const retries = [...base.retries];
  // Every edit is a value not seen before: a new route variant each time, never one to reuse.
  retries[i] = retryObject(i, SIZE, 1 + (edit % 7));
  (retries[i].spec as any).retryPolicy.perTryTimeout = `${1000 + edit}ms`;
  pipeline.update({ ...base, retries });
  edit++;
};
const settle = (): Promise<void> => new Promise((r) => setTimeout(r, 200));

async function reconnect(k: number, n: number): Promise<void> {
  disconnect(proxies[k]);
  proxies[k] = proxy(k + 100 * (n + 1));
  await new Promise((r) => proxies[k].call.once('data', r));
}

// Warm-up (every path taken, lazily sized caches of grpc-js and V8 filled), then the baseline.
for (let i = 0; i < 300; i++) {
  editOnce();
  await reconnect(i % proxies.length, 10_000 + i);
}
await settle();
const start = heap();
const t0 = performance.now();
let reconnects = 0;
for (let e = 0; e < EDITS; e++) {
  editOnce();
  if (e % Math.max(1, Math.floor(EDITS / RECONNECTS)) === 0 && reconnects < RECONNECTS) {
    await reconnect(reconnects % proxies.length, reconnects);
    reconnects++;
  }
  if (e % 50 === 0) await new Promise((r) => setImmediate(r));
}
await settle();
const end = heap();
const seconds = (performance.now() - t0) / 1000;
console.log(`${EDITS} policy edits and ${reconnects} stream reconnects in ${seconds.toFixed(1)} s (${SIZE.services} services, ${SIZE.serviceAccounts} identities, ${proxies.length} proxies ACKing)`);
console.log(`heap after GC: start ${mb(start)}, end ${mb(end)} (${(((end - start) / start) * 100).toFixed(1)}%); builder memo pieces ${pipeline.memoStats.pieces}; connections ${registry.connections.size}`);

// Then rounds of the hostile clients (bench/hostile.ts) beside the proxies: whatever they made the server hold
// (incomplete messages, inflations, refused streams) must be let go once they leave.
const ROUNDS = Number(process.argv[4] ?? 5);
let hostileMb = 0;
for (let r = 0; r < ROUNDS; r++) {
  const h = await hostileClients(`127.0.0.1:${port}`, { seconds: 3, partialStreams: 100, connections: 2, bombsPerSecond: 20, node: { id: 'soak-well-behaved', namespace: 'ns-0', serviceAccount: 'sa-0' } });
  hostileMb += h.writtenMb + (h.partialsSent * 4) + h.bombsSent * 4;
  if (h.wellBehaved.failed.length) console.log(`round ${r + 1}: the well-behaved client failed: ${h.wellBehaved.failed.slice(0, 3).join('; ')}`);
  editOnce();
}
await settle();
const after = heap();
console.log(`${ROUNDS} rounds of hostile clients (3 s each, about ${hostileMb} MB sent at the server): heap after GC ${mb(after)} (${(((after - start) / start) * 100).toFixed(1)}% from the start); incomplete messages held ${server.grpc.receiving} bytes`);
for (const p of proxies) disconnect(p);
await server.close(0);
const ok = end <= start * 1.1 && after <= start * 1.1 && server.grpc.receiving === 0;
console.log(ok ? 'OK: within 10%' : 'FAILED: heap grew more than 10%');
process.exit(ok ? 0 : 1);
