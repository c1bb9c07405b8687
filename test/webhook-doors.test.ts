/**
 * The injection webhook under hostile clients (REFERENCE §16), over real HTTPS on loopback. The attacker speaks from
 * 127.0.0.1, the API server from 127.0.0.2 (another source address, as it is in a cluster): whatever the attacker
 * holds, the API server's reviews are answered. Bounds are lowered so the tests stay small; each test fails without
 * the bound it names (a share per source, a body deadline that fires at once, bytes held in all, connections).
 */
import https from 'node:https';
import net from 'node:net';
import tls from 'node:tls';
import pino from 'pino';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { MAX_CONTAINERS, type InjectOptions, type NamespaceFacts } from '../src/inject/inject.js';
import { InjectionWebhook, type WebhookBounds } from '../src/inject/webhook.js';
import { createCa, issue } from '../src/security/ca.js';
import { CredentialsHolder } from '../src/security/tls.js';

const OPTS: InjectOptions = { meshName: 'mesh-xds', controlPlaneNamespace: 'mesh-xds', trustDomain: 'cluster.local', mtls: true, version: '0.1.0' };
const ENROLLED: NamespaceFacts = { name: 'curl', labels: { 'flomesh.io/monitored-by': 'mesh-xds' }, annotations: { 'flomesh.io/sidecar-injection': 'enabled' } };
const ATTACKER = '127.0.0.1';
const API_SERVER = '127.0.0.2';

let credentials: CredentialsHolder;
let ca = '';
let webhook: InjectionWebhook | undefined;
let port = 0;
const sockets: tls.TLSSocket[] = [];

beforeAll(async () => {
  const mesh = await createCa('cluster.local');
  ca = mesh.cert;
  const serving = await issue(mesh, { trustDomain: 'cluster.local', namespace: 'mesh-xds', serviceAccount: 'mesh-xds', server: { dnsNames: ['mesh-xds.mesh-xds.svc'] } });
  credentials = new CredentialsHolder();
  credentials.set({ cert: Buffer.from(serving.cert), key: Buffer.from(serving.key), ca: Buffer.from(mesh.cert) });
});

afterEach(async () => {
  for (const s of sockets.splice(0)) s.destroy();
  await webhook?.close();
  webhook = undefined;
});

async function start(bounds: Partial<WebhookBounds>, namespaces = new Map([['curl', ENROLLED]])): Promise<InjectionWebhook> {
  webhook = new InjectionWebhook({ ...OPTS, credentials, bounds, namespace: async (n) => namespaces.get(n), log: pino({ level: 'silent' }) });
  port = await webhook.listen('127.0.0.1:0');
  return webhook;
}

const pod = (spec: Record<string, unknown> = {}, annotations?: Record<string, string>) => ({
  apiVersion: 'v1',
  kind: 'Pod',
  metadata: { generateName: 'curl-', namespace: 'curl', ...(annotations ? { annotations } : {}) },
  spec: { serviceAccountName: 'curl', containers: [{ name: 'curl', image: 'curl' }], ...spec },
});
const review = (object: unknown, namespace = 'curl'): string =>
  JSON.stringify({ apiVersion: 'admission.k8s.io/v1', kind: 'AdmissionReview', request: { uid: 'u-1', kind: { group: '', version: 'v1', kind: 'Pod' }, operation: 'CREATE', namespace, object } });

/** A review as the API server sends it, from `from`. */
function post(body: string, from = API_SERVER): Promise<{ status: number; text: string }> {
  return new Promise((resolve, reject) => {
    const req = https.request({ agent: false, host: '127.0.0.1', port, localAddress: from, servername: 'mesh-xds.mesh-xds.svc', ca, method: 'POST', path: '/mutate-pod-creation', headers: { 'content-type': 'application/json' } }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (c) => (text += c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, text }));
    });
    req.on('error', reject);
    req.end(body);
  });
}

/**
 * A hostile connection from the attacker's address: a TLS connection that sends `head` (request line and
 * headers) and then `body` bytes, and holds. Resolves once the handshake is done; `status` is the answer, if any.
 */
async function hold(head: string, body = Buffer.alloc(0)): Promise<{ socket: tls.TLSSocket; answer: Promise<string> }> {
  const socket = tls.connect({ socket: net.connect({ host: '127.0.0.1', port, localAddress: ATTACKER }), servername: 'mesh-xds.mesh-xds.svc', ca });
  sockets.push(socket);
  socket.on('error', () => {});
  let got = '';
  socket.on('data', (c: Buffer) => (got += c.toString()));
  const answer = new Promise<string>((r) => socket.on('close', () => r(got)));
  await new Promise<void>((resolve, reject) => {
    socket.once('secureConnect', () => resolve());
    socket.once('close', () => reject(new Error('closed before the handshake')));
  });
  socket.write(head);
  if (body.length) socket.write(body);
  return { socket, answer };
}
const headOf = (length: number): string => `POST /mutate-pod-creation HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: ${length}\r\n\r\n`;

/** Waits until `check` holds (polled), or fails saying what it waited for. */
async function until(what: string, check: () => boolean, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (!check()) {
    if (Date.now() > end) throw new Error(`timed out waiting: ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe('the webhook under hostile clients', () => {
  it("slow bodies from one source take only that source's share: the API server's reviews are answered", async () => {
    const w = await start({ inFlight: 16, bodyMs: 60_000 });
    // The attacker fills every slot with a review whose body never comes.
    for (let i = 0; i < 24; i++) await hold(headOf(1_000), Buffer.from('{'));
    await until('16 reviews held', () => w.held.reviews === 16);
    for (let i = 0; i < 5; i++) {
      const r = await post(review(pod()));
      expect(r.status).toBe(200);
      expect(JSON.parse(r.text).response.allowed).toBe(true);
    }
    expect(w.held.reviews).toBeLessThanOrEqual(16);
    // The first review took an attacker's slot; the attacker, holding the most, could not take it back.
    expect(w.held.evictions).toBeGreaterThanOrEqual(1);
  });

  it('a body not whole within its deadline is answered 408 at its deadline, not at a 30 s connection check', async () => {
    await start({ bodyMs: 300 });
    const { answer } = await hold(headOf(1_000), Buffer.from('{"a":'));
    // Without the webhook's own deadline, Node's requestTimeout fires at its next connection check (30 s): past this test's 10 s.
    expect(await answer).toMatch(/^HTTP\/1.1 408[^]*not whole within 0.3 s/);
  });

  it('headers sent a byte at a time are cut off within a second of their bound', async () => {
    await start({ headersMs: 500 });
    const { socket, answer } = await hold('POST /mutate-pod-creation HTTP/1.1\r\n');
    const drip = setInterval(() => socket.writable && socket.write('x'), 100);
    try {
      expect(await answer).toMatch(/^HTTP\/1.1 408|^$/);
      expect(socket.destroyed || socket.readableEnded).toBe(true);
    } finally {
      clearInterval(drip);
    }
  });

  it('bytes held in all stay under their bound; the heaviest source gives way to the API server', async () => {
    const w = await start({ bodyBytes: 1024 * 1024, maxBody: 512 * 1024, bodyMs: 60_000 });
    let most = 0;
    const watch = setInterval(() => (most = Math.max(most, w.held.bodyBytes)), 1);
    try {
      // Six bodies of 400 kB announced, 300 kB sent each: 2.4 MB if all were held; two fit.
      const held = [];
      for (let i = 0; i < 6; i++) held.push(await hold(headOf(400_000), Buffer.alloc(300_000, 0x20)));
      const refused = await Promise.all(held.slice(2).map((h) => h.answer));
      for (const r of refused) expect(r).toMatch(/^HTTP\/1.1 429[^]*bytes of reviews, its bound of 1048576/);
      expect(w.held.reviews).toBe(2);
      // The API server's review of 300 kB does not fit beside them: the attacker, holding the most, gives way.
      const big = review(pod({ containers: [{ name: 'curl', image: 'curl', env: [{ name: 'PAD', value: 'x'.repeat(300_000) }] }] }));
      const r = await post(big);
      expect(r.status).toBe(200);
      expect(w.held.evictions).toBe(1);
      expect(await held[0]!.answer).toMatch(/^HTTP\/1.1 503[^]*held 1048576 bytes of reviews and this client the most/);
      expect(w.held.bodyBytes).toBeLessThanOrEqual(1024 * 1024);
      expect(most).toBeLessThanOrEqual(1024 * 1024);
    } finally {
      clearInterval(watch);
    }
  });

  it("connections: one source's idle connections never keep the API server out", async () => {
    const w = await start({ connections: 32, idleMs: 60_000, handshakeMs: 60_000, headersMs: 60_000 });
    for (let i = 0; i < 48; i++) await hold('').catch(() => undefined);
    await until('the door full', () => w.held.connections === 32);
    const r = await post(review(pod()));
    expect(r.status).toBe(200);
    expect(w.held.connections).toBeLessThanOrEqual(32);
  });

  it('a pod too big to inject is denied before any work, and what it says is clipped', async () => {
    await start({});
    const probe = { httpGet: { path: '/h', port: 8080 } };
    const containers = Array.from({ length: 20_000 }, (_, i) => ({ name: `c${i}`, image: 'x', livenessProbe: probe, readinessProbe: probe, startupProbe: probe }));
    const r = await post(review(pod({ containers })));
    const denied = JSON.parse(r.text).response;
    expect(denied.allowed).toBe(false);
    expect(denied.status.message).toContain(`20000 containers (app and init); the sidecar is injected into pods of at most ${MAX_CONTAINERS}`);
    // A 3 MB annotation value is not copied into the denial.
    const loud = await post(review(pod({}, { 'flomesh.io/sidecar-injection': 'y'.repeat(3_000_000) })));
    const message: string = JSON.parse(loud.text).response.status.message;
    expect(message).toContain('is neither enabled nor disabled');
    expect(message.length).toBeLessThan(1_000);
    expect(message).toContain('(3000000 chars)');
  });

  it('pipelined reviews on connections that die leave no slot held (their responses never close)', async () => {
    const w = await start({});
    const body = review(pod());
    const one = `POST /mutate-pod-creation HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\n\r\n${body}`;
    // 20 connections, 50 pipelined reviews each, never reading the answers.
    const held = await Promise.all(Array.from({ length: 20 }, () => hold(one.repeat(50))));
    await until('reviews in flight', () => w.held.reviews > 0);
    for (const h of held) h.socket.destroy();
    await until('every slot released once the connections are gone', () => w.held.reviews === 0 && w.held.connections === 0);
    expect((await post(body)).status).toBe(200);
  });

  it('a review nesting arrays deeper than any Pod is refused before it is parsed', async () => {
    await start({});
    // 2,000,000 nested [ in a field the webhook never reads: JSON.parse held the event loop 4.5 s for it.
    const deep = review(pod({ extra: JSON.parse('0') })).replace('"extra":0', `"extra":${'['.repeat(2_000_000)}${']'.repeat(2_000_000)}`);
    const r = await post(deep, ATTACKER);
    expect(r.status).toBe(400);
    expect(r.text).toContain('it nests arrays and objects more than 100 deep');
    expect((await post(review(pod()))).status).toBe(200);
  });

  it("a connection in the middle of a review is never evicted for another's idle one", async () => {
    const w = await start({ connections: 8, bodyMs: 60_000, idleMs: 60_000, handshakeMs: 60_000, headersMs: 60_000 });
    // The API server's review, its body still coming, on one of 8 connections; 7 idle ones from 7 other sources.
    const api = tls.connect({ socket: net.connect({ host: '127.0.0.1', port, localAddress: API_SERVER }), servername: 'mesh-xds.mesh-xds.svc', ca });
    sockets.push(api);
    api.on('error', () => {});
    let answer = '';
    api.on('data', (c: Buffer) => (answer += c));
    await new Promise((r) => api.once('secureConnect', r));
    const body = review(pod());
    api.write(headOf(Buffer.byteLength(body)) + body.slice(0, 10));
    await until('the review in flight', () => w.held.reviews === 1);
    for (let i = 3; i < 10; i++) {
      const s = tls.connect({ socket: net.connect({ host: '127.0.0.1', port, localAddress: `127.0.0.${i}` }), servername: 'mesh-xds.mesh-xds.svc', ca });
      sockets.push(s);
      s.on('error', () => {});
      s.resume();
    }
    await until('the door full', () => w.held.connections === 8);
    // Newcomers from more sources: each takes an idle connection's place, never the review's.
    for (let i = 10; i < 30; i++) {
      const s = tls.connect({ socket: net.connect({ host: '127.0.0.1', port, localAddress: `127.0.0.${i}` }), servername: 'mesh-xds.mesh-xds.svc', ca });
      sockets.push(s);
      s.on('error', () => {});
      s.resume();
      await new Promise((r) => setTimeout(r, 20));
    }
    await until('the newcomers came and went', () => w.held.evictions >= 10);
    api.write(body.slice(10));
    await until('the review answered', () => answer.includes('AdmissionReview'));
    expect(answer).toMatch(/^HTTP\/1.1 200/);
  });
});
