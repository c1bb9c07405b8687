/**
 * ADS benchmark (issue 2): N simulated proxies as raw SotW ADS streams on loopback (one process of clients,
 * one server process). Measures the time until all have ACKed their initial config, the time from a change
 * (an endpoint added to a service every proxy uses) until all have ACKed it, and the server's RSS and CPU.
 * Run: npm run bench:ads -- 10000     (after npm run build)
 */
import { fork } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import { ADS_SERVICE } from '../src/xds/protocol/server.js';
import { envoyRoot } from '../src/xds/resources/protos.js';
import { CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET } from '../src/xds/resources/types.js';
import { CA_SECRET, IDENTITY_SECRET } from '../src/envoy/tls.js';

const N = Number(process.argv[2] ?? 2000);
// ADS_STREAMS_PER_CONNECTION=1 opens a connection per stream, as Envoy does; ADS_TLS=1 makes them mTLS.
const STREAMS_PER_CONNECTION = Number(process.env.ADS_STREAMS_PER_CONNECTION ?? 100);
const TLS = Boolean(process.env.ADS_TLS);
if (TLS && STREAMS_PER_CONNECTION !== 1) throw new Error('ADS_TLS needs ADS_STREAMS_PER_CONNECTION=1 (a certificate is one identity)');
// ADS_SDS=1 (with ADS_TLS): sidecar mTLS, the proxies subscribe to their two secrets over SDS too.
const SDS = Boolean(process.env.ADS_SDS);
if (SDS && !TLS) throw new Error('ADS_SDS needs ADS_TLS=1 (secrets go only to streams with a client certificate)');
const SIZE = { namespaces: 10, services: 10, pods: 50, serviceAccounts: 100, retries: 50 };
const mb = (n: number): string => `${(n / 1024 / 1024).toFixed(0)} MB`;

const here = path.dirname(fileURLToPath(import.meta.url));
const child = fork(path.join(here, 'ads-server.js'), [JSON.stringify(SIZE)], { stdio: 'inherit', execArgv: process.env.ADS_SERVER_NODE_OPTIONS ? process.env.ADS_SERVER_NODE_OPTIONS.split(' ') : [] });
const inbox: any[] = [];
let wake: (() => void) | undefined;
child.on('message', (m) => {
  inbox.push(m);
  wake?.();
});
async function receive(cmd: string, ms = 120_000): Promise<any> {
  const until = Date.now() + ms;
  for (;;) {
    const i = inbox.findIndex((m) => m.cmd === cmd);
    if (i >= 0) return inbox.splice(i, 1)[0];
    if (Date.now() > until) throw new Error(`timed out waiting for ${cmd}`);
    await new Promise<void>((r) => {
      wake = r;
      setTimeout(r, 200);
    });
  }
}

const ready = await receive('ready');
const Req = envoyRoot().lookupType('envoy.service.discovery.v3.DiscoveryRequest');
const Client = grpc.makeGenericClientConstructor(ADS_SERVICE, 'ADS');

/** The top-level string fields 1 (version_info), 4 (type_url) and 5 (nonce) of a DiscoveryResponse. */
function peek(buf: Buffer): { version: string; typeUrl: string; nonce: string } {
  const out = { version: '', typeUrl: '', nonce: '' };
  let i = 0;
  const varint = (): number => {
    let r = 0;
    let s = 1;
    for (;;) {
      const b = buf[i++];
      r += (b & 0x7f) * s;
      if (b < 0x80) return r;
      s *= 128;
    }
  };
  while (i < buf.length) {
    const tag = varint();
    const len = varint();
    if ((tag & 7) !== 2) throw new Error('unexpected wire type');
    const f = tag >>> 3;
    if (f === 1) out.version = buf.toString('utf8', i, i + len);
    else if (f === 4) out.typeUrl = buf.toString('utf8', i, i + len);
    else if (f === 5) out.nonce = buf.toString('utf8', i, i + len);
    i += len;
  }
  return out;
}

const names: Record<string, string[]> = { [CLUSTER]: [], [ENDPOINT]: ready.clusters, [LISTENER]: [], [ROUTE]: ready.routes, [SECRET]: [IDENTITY_SECRET, CA_SECRET] };
const encode = (o: object): Buffer => Buffer.from(Req.encode(Req.fromObject(o)).finish());
const clients: grpc.Client[] = [];
const calls: grpc.ClientDuplexStream<Buffer, Buffer>[] = [];

child.send({ cmd: 'expect', n: N });
await receive('ok');
const t0 = performance.now();
for (let i = 0; i < N; i++) {
  const id: string = ready.identities[i % ready.identities.length];
  if (i % STREAMS_PER_CONNECTION === 0) {
    // With mTLS a connection carries one identity: its streams are all of that one (STREAMS_PER_CONNECTION 1).
    const c = ready.certs?.[id];
    const creds = TLS ? grpc.credentials.createSsl(Buffer.from(c.ca), Buffer.from(c.key), Buffer.from(c.cert)) : grpc.credentials.createInsecure();
    clients.push(new Client(`127.0.0.1:${ready.port}`, creds, { 'grpc.use_local_subchannel_pool': 1 }));
  }
  const [namespace, serviceAccount] = id.split('/');
  const call = (clients[clients.length - 1] as any).StreamAggregatedResources() as grpc.ClientDuplexStream<Buffer, Buffer>;
  call.on('error', () => {});
  call.on('data', (buf: Buffer) => {
    const r = peek(buf);
    call.write(encode({ type_url: r.typeUrl, resource_names: names[r.typeUrl], version_info: r.version, response_nonce: r.nonce }));
  });
  const node = { id: `proxy-${i}`, user_agent_name: 'envoy', metadata: { fields: { namespace: { stringValue: namespace }, serviceAccount: { stringValue: serviceAccount } } } };
  call.write(encode({ node, type_url: CLUSTER }));
  for (const t of [ENDPOINT, LISTENER, ROUTE, ...(SDS ? [SECRET] : [])]) call.write(encode({ type_url: t, resource_names: names[t] }));
  calls.push(call);
  if (i % 500 === 499) await new Promise((r) => setImmediate(r));
}
const initial = await receive('initial-acked', 600_000);
console.log(`${N} streams (${clients.length} connections${TLS ? ', mTLS' : ''}), mesh of ${SIZE.services} services x 2 ports and ${ready.identities.length} identities`);
console.log(`initial config (CDS, EDS, LDS, RDS${SDS ? ', SDS' : ''}) ACKed by all: ${initial.ms.toFixed(0)} ms after the first stream opened (${(performance.now() - t0).toFixed(0)} ms client side); server CPU ${initial.cpuMs.toFixed(0)} ms, RSS ${mb(initial.rss)}`);

const changes: any[] = [];
for (let i = 0; i < 3; i++) {
  await new Promise((r) => setTimeout(r, 500));
  child.send({ cmd: 'change', i });
  changes.push(await receive('change-acked', 120_000));
}
if (SDS) {
  // One identity's certificate renewed: only its proxies are sent SDS.
  const per = calls.filter((_, i) => i % ready.identities.length === 0).length;
  await new Promise((r) => setTimeout(r, 500));
  child.send({ cmd: 'renew', n: per });
  const r = await receive('renew-acked', 120_000);
  console.log(`a renewal of ${ready.identities[0]}'s certificate: ACKed by its ${per} proxies in ${r.ms.toFixed(0)} ms; server CPU ${r.cpuMs.toFixed(0)} ms; RSS ${mb(r.rss)}`);
}
for (const [i, c] of changes.entries()) {
  console.log(
    `change ${i + 1} (one endpoint added; EDS pushed to all): ACKed by all ${N} in ${c.ms.toFixed(0)} ms (translate and write all: ${c.pushMs.toFixed(0)} ms); server CPU ${c.cpuMs.toFixed(0)} ms; RSS ${mb(c.rss)}`,
  );
}
// ADS_HOSTILE=SECONDS: then the hostile clients of bench/hostile.ts for that long, while the server's RSS and
// event-loop delay are sampled and one more change is pushed to every proxy.
const HOSTILE = Number(process.env.ADS_HOSTILE ?? 0);
if (HOSTILE) {
  const { hostileClients } = await import('./hostile.js');
  const [namespace, serviceAccount] = String(ready.identities[0]).split('/');
  child.send({ cmd: 'stats', reset: true });
  const base = await receive('stats');
  let rssMax = base.rss;
  let loopMax = 0;
  let receivingMax = 0;
  let sampling = true;
  const sampler = (async () => {
    while (sampling) {
      child.send({ cmd: 'stats' });
      const s = await receive('stats');
      rssMax = Math.max(rssMax, s.rss);
      loopMax = Math.max(loopMax, s.loopMaxMs);
      receivingMax = Math.max(receivingMax, s.receiving);
      await new Promise((r) => setTimeout(r, 250));
    }
  })();
  const attack = hostileClients(`127.0.0.1:${ready.port}`, { seconds: HOSTILE, partialStreams: 500, connections: 2, bombsPerSecond: 40, node: { id: 'well-behaved', namespace: namespace!, serviceAccount: serviceAccount! }, tls: TLS });
  await new Promise((r) => setTimeout(r, (HOSTILE * 1000) / 2));
  child.send({ cmd: 'change', i: 99 });
  const during = await receive('change-acked', 120_000);
  const h = await attack;
  sampling = false;
  await sampler;
  console.log(`hostile clients for ${HOSTILE} s beside the ${N} proxies: ${h.writtenMb} MB written after answers (${h.writerResets} resets), ${h.partialsSent} incomplete 4 MiB messages (refused: ${JSON.stringify(h.partialsRefused)}), ${h.bombsSent} gzip bombs (${h.bombsRefused} refused), ${h.handshakesDropped} TLS handshakes dropped; well-behaved streams ${h.wellBehaved.ok} ok, ${h.wellBehaved.failed.length} failed ${JSON.stringify(h.wellBehaved.failed.slice(0, 3))}`);
  console.log(`  server RSS ${mb(base.rss)} before, at most ${mb(rssMax)}; incomplete messages held at most ${mb(receivingMax)}; event loop held at most ${loopMax.toFixed(0)} ms; a change meanwhile ACKed by all ${N} in ${during.ms.toFixed(0)} ms`);
}
child.send({ cmd: 'stop' });
for (const c of calls) c.cancel();
for (const c of clients) c.close();
setTimeout(() => process.exit(0), 1500).unref();
