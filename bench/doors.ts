/**
 * The webhook's reproductions of REFERENCE §16, against the webhook alone in a process (bench/webhook-child.ts),
 * each for a few seconds, beside the API server: a client on another source address (127.0.0.2) sending a real
 * review every 100 ms with the API server's 10 s timeout, whose every review must be answered 200.
 * - slowloris: 300 connections from 127.0.0.1 announcing a 4 MiB body and sending it a byte a second, reopened;
 * - big bodies: 256 connections each sending 4 MiB - 1 of a body, then holding, reopened;
 * - big pods: six reviews at once of 20,000 containers x 3 probes (3.1 MB), over and over;
 * - a loud pod: a 3 MB annotation value, whose denial and log line must not carry it.
 * Reports what the API server got, the webhook's RSS before and at most, and the log bytes per loud review.
 * Used by `npm run fuzz:inputs` (a phase) and on its own: `npm run bench:doors [SECONDS]`.
 */
import { fork, spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import https from 'node:https';
import net from 'node:net';
import path from 'node:path';
import tls from 'node:tls';
import { fileURLToPath } from 'node:url';

export interface WebhookAttackReport {
  attack: string;
  /** The API server's reviews: answered 200, else by status (or error), and the slowest answer. */
  apiServer: { ok: number; other: Record<string, number>; maxMs: number };
  /** What the attacker opened and sent. */
  attacker: { connections: number; requests: number; bytesMb: number };
  rssBeforeMb: number;
  rssMaxMb: number;
  /** The loud pod: bytes of the denial and of the log per review. */
  denialBytes?: number;
  logBytesPerReview?: number;
}

const ATTACKER = '127.0.0.1';
const API_SERVER = '127.0.0.2';
const here = path.dirname(fileURLToPath(import.meta.url));

const rssMb = (pid: number): number => Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))![1]) / 1024;

const review = (object: unknown, uid = 'u'): string =>
  JSON.stringify({ apiVersion: 'admission.k8s.io/v1', kind: 'AdmissionReview', request: { uid, kind: { group: '', version: 'v1', kind: 'Pod' }, operation: 'CREATE', namespace: 'curl', object } });
const pod = (spec: Record<string, unknown> = {}, annotations?: Record<string, string>) => ({
  apiVersion: 'v1',
  kind: 'Pod',
  metadata: { generateName: 'curl-', namespace: 'curl', ...(annotations ? { annotations } : {}) },
  spec: { serviceAccountName: 'curl', containers: [{ name: 'curl', image: 'curl', readinessProbe: { httpGet: { path: '/r', port: 80 } } }], ...spec },
});

/** The API server: a review every 100 ms from API_SERVER, each with a 10 s timeout, until stdin closes; prints {ok, other, maxMs}. */
const REVIEWER = `
import https from 'node:https';
const [port, ca, body] = process.argv.slice(1);
let open = true; const out = { ok: 0, other: {}, maxMs: 0 }; const answers = [];
process.stdin.on('end', () => (open = false)); process.stdin.resume();
const post = () => new Promise((resolve) => {
  const t0 = performance.now();
  const done = (status) => { out.maxMs = Math.max(out.maxMs, performance.now() - t0); if (status === '200') out.ok++; else out.other[status] = (out.other[status] ?? 0) + 1; resolve(); };
  const req = https.request({ agent: false, host: '127.0.0.1', port: Number(port), localAddress: '${API_SERVER}', servername: 'mesh-xds.mesh-xds.svc', ca, method: 'POST', path: '/mutate-pod-creation', headers: { 'content-type': 'application/json' }, timeout: 10000 }, (res) => { res.resume(); res.on('end', () => done(String(res.statusCode))); });
  req.on('timeout', () => req.destroy(new Error('timeout')));
  req.on('error', (e) => done(e.code ?? e.message));
  req.end(body);
});
while (open) { answers.push(post()); await new Promise((r) => setTimeout(r, 100)); }
await Promise.all(answers);
console.log(JSON.stringify(out));
`;

/** One review posted from `from`, answered within `timeoutMs` (the API server's webhook timeout) or counted as failed. */
function post(port: number, ca: string, body: string, from: string, timeoutMs = 10_000): Promise<{ status: string; text: string; ms: number }> {
  const t0 = performance.now();
  return new Promise((resolve) => {
    const req = https.request({ agent: false, host: '127.0.0.1', port, localAddress: from, servername: 'mesh-xds.mesh-xds.svc', ca, method: 'POST', path: '/mutate-pod-creation', headers: { 'content-type': 'application/json' }, timeout: timeoutMs }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (c) => (text += c));
      res.on('end', () => resolve({ status: String(res.statusCode), text, ms: performance.now() - t0 }));
    });
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', (e) => resolve({ status: (e as NodeJS.ErrnoException).code ?? e.message, text: '', ms: performance.now() - t0 }));
    req.end(body);
  });
}

/** A raw TLS connection from the attacker's address; resolves when the handshake is done (or the connection ends). */
function raw(port: number, ca: string): Promise<tls.TLSSocket> {
  return new Promise((resolve) => {
    const sock = tls.connect({ socket: net.connect({ host: '127.0.0.1', port, localAddress: ATTACKER }), servername: 'mesh-xds.mesh-xds.svc', ca });
    sock.on('error', () => {});
    sock.resume();
    sock.once('secureConnect', () => resolve(sock));
    sock.once('close', () => resolve(sock));
  });
}

async function startWebhook(): Promise<{ child: ChildProcess; port: number; ca: string; logBytes: () => number }> {
  const child = fork(path.join(here, 'webhook-child.js'), [], { stdio: ['ignore', 'pipe', 'inherit', 'ipc'] });
  let logBytes = 0;
  child.stdout!.on('data', (d: Buffer) => (logBytes += d.length));
  const { port, ca } = await new Promise<{ port: number; ca: string }>((resolve, reject) => {
    child.once('message', (m) => resolve(m as { port: number; ca: string }));
    child.once('exit', (code) => reject(new Error(`the webhook exited (${code})`)));
  });
  return { child, port, ca, logBytes: () => logBytes };
}

/** Runs `attack` for `seconds` beside the API server's reviews, sampling the webhook's RSS. */
async function underAttack(name: string, seconds: number, attack: (port: number, ca: string, running: () => boolean, report: WebhookAttackReport) => Promise<void>): Promise<WebhookAttackReport> {
  const w = await startWebhook();
  try {
    const report: WebhookAttackReport = { attack: name, apiServer: { ok: 0, other: {}, maxMs: 0 }, attacker: { connections: 0, requests: 0, bytesMb: 0 }, rssBeforeMb: rssMb(w.child.pid!), rssMaxMb: 0 };
    report.rssMaxMb = report.rssBeforeMb;
    const until = performance.now() + seconds * 1000;
    const running = (): boolean => performance.now() < until;
    const sampler = setInterval(() => (report.rssMaxMb = Math.max(report.rssMaxMb, rssMb(w.child.pid!))), 100);
    // The API server is a process of its own, so that what the attacker costs this one is not counted against it.
    const apiServer = spawn(process.execPath, ['--input-type=module', '-e', REVIEWER, String(w.port), w.ca, review(pod())], { stdio: ['pipe', 'pipe', 'inherit'] });
    let answered = '';
    apiServer.stdout!.on('data', (d) => (answered += d));
    const reviews = (async () => {
      while (running()) await new Promise((r) => setTimeout(r, 100));
      apiServer.stdin!.end();
      await new Promise((r) => apiServer.on('exit', r));
      Object.assign(report.apiServer, JSON.parse(answered));
    })();
    // The attack starts a moment before the API server's first review, and stops with it.
    await Promise.all([attack(w.port, w.ca, running, report), reviews]);
    clearInterval(sampler);
    if (name === 'loud pod') report.logBytesPerReview = Math.round(w.logBytes() / Math.max(1, report.attacker.requests));
    return report;
  } finally {
    w.child.kill();
  }
}

export async function webhookDoors(seconds = 5): Promise<WebhookAttackReport[]> {
  const reports: WebhookAttackReport[] = [];
  reports.push(
    await underAttack('slowloris', seconds, async (port, ca, running, report) => {
      const one = async (): Promise<void> => {
        while (running()) {
          const sock = await raw(port, ca);
          report.attacker.connections++;
          if (sock.destroyed) continue;
          sock.write(`POST /mutate-pod-creation HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: ${4 * 1024 * 1024}\r\n\r\n`);
          report.attacker.requests++;
          while (running() && !sock.destroyed) {
            sock.write('{');
            await new Promise((r) => setTimeout(r, 1000));
          }
          sock.destroy();
        }
      };
      await Promise.all(Array.from({ length: 300 }, one));
    }),
  );
  reports.push(
    await underAttack('big bodies', seconds, async (port, ca, running, report) => {
      const body = Buffer.alloc(4 * 1024 * 1024 - 1, 0x20);
      const one = async (): Promise<void> => {
        while (running()) {
          const sock = await raw(port, ca);
          report.attacker.connections++;
          if (sock.destroyed) continue;
          sock.write(`POST /mutate-pod-creation HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: ${4 * 1024 * 1024}\r\n\r\n`);
          sock.write(body);
          report.attacker.requests++;
          report.attacker.bytesMb += 4;
          while (running() && !sock.destroyed) await new Promise((r) => setTimeout(r, 100));
          sock.destroy();
        }
      };
      await Promise.all(Array.from({ length: 256 }, one));
    }),
  );
  reports.push(
    await underAttack('big pods', seconds, async (port, ca, running, report) => {
      const probe = { httpGet: { path: '/h', port: 8080 } };
      const big = review(pod({ containers: Array.from({ length: 20_000 }, (_, i) => ({ name: `c${i}`, image: 'x', livenessProbe: probe, readinessProbe: probe, startupProbe: probe })) }));
      report.attacker.bytesMb = big.length / 1024 / 1024;
      const one = async (): Promise<void> => {
        while (running()) {
          await post(port, ca, big, ATTACKER);
          report.attacker.requests++;
        }
      };
      await Promise.all(Array.from({ length: 6 }, one));
    }),
  );
  reports.push(
    await underAttack('loud pod', seconds, async (port, ca, running, report) => {
      const loud = review(pod({}, { 'flomesh.io/sidecar-injection': 'y'.repeat(3_000_000) }));
      while (running()) {
        const r = await post(port, ca, loud, ATTACKER);
        report.attacker.requests++;
        report.denialBytes = Math.max(report.denialBytes ?? 0, r.text.length);
      }
    }),
  );
  return reports;
}

/** The webhook held, under every attack: the API server's reviews all answered 200, its memory under the ceiling. */
export const WEBHOOK_RSS_CEILING_MB = 400;
export const webhookHeld = (r: WebhookAttackReport): boolean => Object.keys(r.apiServer.other).length === 0 && r.apiServer.ok > 0 && r.rssMaxMb < WEBHOOK_RSS_CEILING_MB;

if (process.argv[1]?.endsWith('doors.js')) {
  const reports = await webhookDoors(Number(process.argv[2] ?? 5));
  for (const r of reports) console.log(JSON.stringify(r));
  const ok = reports.every(webhookHeld);
  console.log(ok ? 'OK: every review of the API server answered 200 under each attack' : 'FAILED');
  process.exit(ok ? 0 : 1);
}
