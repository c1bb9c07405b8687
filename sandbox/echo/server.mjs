#!/usr/bin/env node
// The echo server of the Gateway API mesh conformance suite's pods, as this machine runs it: the image
// registry.k8s.io/gateway-api/conformance/echo-advanced (Istio's echo app, `server`) maps here (sandbox/node.ts IMAGES).
// It answers as Istio's echo 1.30 does, in the lines the suite parses (docs/conformance/README.md):
//   HTTP (--port, HTTP/1.1 and h2c on the same port): a text body of ServiceVersion=, ServicePort=, Host=, URL=,
//     Cluster=, IstioVersion=, Method=, Proto=, IP=, Alpn=, one RequestHeader=Key:Value per header value (keys in Go's
//     canonical form, sorted), Hostname=; `?codes=503:1,200:1`, `?headers=k:v,...` and `?delay=100ms` as Istio's.
//   gRPC (--grpc, h2c): proto.EchoTestService/Echo; the message holds RequestHeader= per metadata value, Host= (the
//     authority), StatusCode=200, ServiceVersion=, ServicePort=, IP=, Proto=GRPC, Echo=<message>, Hostname=.
//   TCP (--tcp): the fields first, then the bytes it reads, echoed.
// Hostname is HOSTNAME from the environment (the pod's name, as a container runtime sets it), else the machine's.
// Usage: server [--port=N]... [--grpc=N]... [--tcp=N]... [--tls=N]... [--crt=F --key=F] [--version=V] [--cluster=C]
//   [--istio-version=V]; each flag also takes a comma list (cobra's IntSlice). Defaults as Istio's: --port=8080
//   --grpc=7070 --tcp=9090. A --tls port needs --crt and --key readable; without them it is not served (said on stderr):
//   the image carries /cert.crt and /cert.key, this machine does not, and no mesh test calls that port.
import { readFileSync } from 'node:fs';
import http from 'node:http';
import http2 from 'node:http2';
import https from 'node:https';
import net from 'node:net';
import os from 'node:os';
import process from 'node:process';
import { setTimeout } from 'node:timers';
import { URL } from 'node:url';
import { ECHO_SERVICE, canonicalKey, goDuration } from './common.mjs';

const LISTS = ['port', 'grpc', 'tcp', 'tls'];
const STRINGS = ['crt', 'key', 'version', 'cluster', 'istio-version'];

/** The flags, as cobra reads them (`--name=value` or `--name value`); an unknown or malformed one throws. */
export function parseServerArgs(argv) {
  const seen = {};
  const out = { crt: '', key: '', version: '', cluster: '', 'istio-version': '' };
  for (let i = 0; i < argv.length; i++) {
    const m = /^--([a-z-]+)(?:=(.*))?$/.exec(argv[i]);
    if (!m) throw new Error(`unexpected argument ${JSON.stringify(argv[i])} (flags are --name=value)`);
    const [, name, inline] = m;
    if (!LISTS.includes(name) && !STRINGS.includes(name)) throw new Error(`unknown flag --${name} (known: ${[...LISTS, ...STRINGS].map((f) => `--${f}`).join(', ')})`);
    const value = inline ?? argv[++i];
    if (value === undefined) throw new Error(`flag --${name} needs a value`);
    if (STRINGS.includes(name)) out[name] = value;
    else {
      for (const p of value.split(',')) {
        const n = Number(p);
        if (!/^\d+$/.test(p) || n < 1 || n > 65535) throw new Error(`--${name}: ${JSON.stringify(p)} is not a port (1-65535)`);
        (seen[name] ??= []).push(n);
      }
    }
  }
  // Istio's defaults; a list flag given replaces its default (cobra's IntSlice).
  return { ...out, port: seen.port ?? [8080], grpc: seen.grpc ?? [7070], tcp: seen.tcp ?? [9090], tls: seen.tls ?? [] };
}

const hostname = () => process.env.HOSTNAME || os.hostname();
const peerIp = (addr) => (addr ?? '').replace(/^::ffff:/, '');

/** The body Istio's HTTP handler writes (addResponsePayload), from Node's request. */
export function httpPayload(req, { port, version, cluster, istioVersion }) {
  const lines = [
    `ServiceVersion=${version}`,
    `ServicePort=${port}`,
    `Host=${req.headers[':authority'] ?? req.headers.host ?? ''}`,
    `URL=${req.url}`,
    `Cluster=${cluster}`,
    `IstioVersion=${istioVersion}`,
    `Method=${req.method}`,
    `Proto=HTTP/${req.httpVersionMajor === 2 ? '2.0' : req.httpVersion}`,
    `IP=${peerIp(req.socket?.remoteAddress)}`,
    `Alpn=${req.socket?.alpnProtocol || ''}`,
  ];
  // Go's r.Header: each value apart, keys canonical, Host and HTTP/2 pseudo-headers not among them.
  const headers = new Map();
  const raw = req.rawHeaders;
  for (let i = 0; i + 1 < raw.length; i += 2) {
    const key = canonicalKey(raw[i]);
    if (key.startsWith(':') || key === 'Host') continue;
    if (!headers.has(key)) headers.set(key, []);
    headers.get(key).push(raw[i + 1]);
  }
  for (const key of [...headers.keys()].sort()) for (const v of headers.get(key)) lines.push(`RequestHeader=${key}:${v}`);
  lines.push(`Hostname=${hostname()}`);
  return `${lines.join('\n')}\n`;
}

/** `?codes=code[:slices][,...]`: the status to answer with, drawn as Istio draws it; 400 with why when malformed. */
export function pickCode(spec, random = Math.random) {
  if (!spec) return { code: 200 };
  const flavors = [];
  for (const part of spec.split(',')) {
    const [c, s, extra] = part.split(':');
    const code = Number(c);
    const slices = s === undefined ? 1 : Number(s);
    if (extra !== undefined || !/^\d+$/.test(c) || code < 200 || code >= 600) return { code: 400, error: `codes error: invalid ${JSON.stringify(part)} (want code or code:count, code 200-599)` };
    if (s !== undefined && (!/^\d+$/.test(s) || slices < 0)) return { code: 400, error: `codes error: invalid count ${JSON.stringify(s)}` };
    flavors.push({ code, slices });
  }
  const total = flavors.reduce((a, f) => a + f.slices, 0);
  if (total === 0) return { code: flavors[flavors.length - 1].code };
  let slice = Math.floor(random() * total);
  for (const f of flavors) {
    if (slice < f.slices) return { code: f.code };
    slice -= f.slices;
  }
  return { code: flavors[flavors.length - 1].code };
}

const MAX_DELAY_MS = 60_000;

function handler(facts) {
  return async (req, res) => {
    const query = new URL(req.url ?? '/', 'http://x').searchParams;
    const errors = [];
    const delay = query.get('delay');
    if (delay) {
      const ms = goDuration(delay);
      if (ms === undefined) errors.push(`error delaying response error: invalid duration ${JSON.stringify(delay)}`);
      else await new Promise((r) => setTimeout(r, Math.min(ms, MAX_DELAY_MS)));
    }
    for (const h of (query.get('headers') ?? '').split(',').filter(Boolean)) {
      const parts = h.split(':');
      if (parts.length !== 2) errors.push(`response headers error: invalid ${JSON.stringify(h)} (want name:value)`);
      else res.setHeader(parts[0], parts[1]);
    }
    const { code, error } = pickCode(query.get('codes') ?? '');
    if (error) errors.push(error);
    const body = errors.map((e) => `${e}\n`).join('') + httpPayload(req, facts);
    res.setHeader('Content-Type', 'application/text');
    res.setHeader('Content-Length', Buffer.byteLength(body));
    res.writeHead(code);
    res.end(body);
  };
}

/** HTTP/1.1 and h2c (prior knowledge) on one port, as Istio's h2c handler serves both. */
function serveHttp(port, facts, tls) {
  const handle = handler(facts);
  const h1 = tls ? https.createServer(tls, handle) : http.createServer(handle);
  h1.keepAliveTimeout = 60_000;
  if (tls) return new Promise((resolve, reject) => h1.once('error', reject).listen(port, () => resolve(h1)));
  const h2 = http2.createServer({}, handle);
  const front = net.createServer((sock) => {
    sock.once('data', (first) => {
      sock.pause();
      sock.unshift(first);
      (first.subarray(0, 3).toString('latin1') === 'PRI' ? h2 : h1).emit('connection', sock);
      sock.resume();
    });
    sock.on('error', () => sock.destroy());
  });
  return new Promise((resolve, reject) => front.once('error', reject).listen(port, () => resolve(front)));
}

/** Headers grpc-go keeps out of a call's metadata (its reserved ones). */
const GRPC_RESERVED = new Set(['content-type', 'te', 'grpc-timeout', 'grpc-encoding', 'grpc-message-type', 'grpc-status', 'grpc-message']);

/**
 * The message Istio's gRPC Echo handler answers with, from the request's raw HTTP/2 headers (each value apart, as
 * grpc-go's metadata keeps them: Node's joined header object would merge two `x-a` headers into one value).
 */
export function grpcPayload({ rawHeaders, peer, message }, { port, version, cluster, istioVersion }) {
  const lines = [];
  for (let i = 0; i + 1 < rawHeaders.length; i += 2) {
    const key = rawHeaders[i].toLowerCase();
    const value = rawHeaders[i + 1];
    if (key === ':authority') lines.push(`Host=${value}`);
    else if (key.startsWith(':') || key.endsWith('-bin') || GRPC_RESERVED.has(key)) continue;
    lines.push(`RequestHeader=${key}:${value}`);
  }
  lines.push(`StatusCode=200`, `ServiceVersion=${version}`, `ServicePort=${port}`);
  if (cluster) lines.push(`Cluster=${cluster}`);
  lines.push(`IP=${peerIp(peer)}`);
  if (istioVersion) lines.push(`IstioVersion=${istioVersion}`);
  lines.push(`Proto=GRPC`, `Echo=${message}`, `Hostname=${hostname()}`);
  return `${lines.join('\n')}\n`;
}

/** A request message's most bytes (Echo's is a short string; gRPC's own default limit is 4 MiB). */
const MAX_GRPC_MESSAGE = 4 * 1024 * 1024;

/** The unary call proto.EchoTestService/Echo over HTTP/2 (h2c), as gRPC frames it; other methods: UNIMPLEMENTED. */
function serveGrpc(port, facts) {
  const server = http2.createServer();
  const fail = (stream, code, message) => stream.respond({ ':status': 200, 'content-type': 'application/grpc', 'grpc-status': String(code), 'grpc-message': encodeURIComponent(message) }, { endStream: true });
  server.on('stream', (stream, headers, _flags, rawHeaders) => {
    stream.on('error', () => stream.destroy());
    if (headers[':path'] !== ECHO_SERVICE.Echo.path) return fail(stream, 12, `method ${headers[':path']} is not served (only ${ECHO_SERVICE.Echo.path})`);
    const chunks = [];
    let size = 0;
    stream.on('data', (c) => {
      size += c.length;
      if (size > MAX_GRPC_MESSAGE + 5) {
        fail(stream, 8, `request message over ${MAX_GRPC_MESSAGE} bytes`);
        stream.destroy();
      } else chunks.push(c);
    });
    stream.on('end', () => {
      if (stream.destroyed) return;
      const buf = Buffer.concat(chunks);
      let message;
      try {
        if (buf.length < 5 || buf[0] !== 0 || buf.readUInt32BE(1) !== buf.length - 5) throw new Error('one uncompressed length-prefixed message expected');
        message = ECHO_SERVICE.Echo.requestDeserialize(buf.subarray(5));
      } catch (e) {
        return fail(stream, 13, `malformed request: ${e.message}`);
      }
      const out = ECHO_SERVICE.Echo.responseSerialize(grpcPayload({ rawHeaders, peer: stream.session?.socket?.remoteAddress, message }, facts));
      const prefix = Buffer.alloc(5);
      prefix.writeUInt32BE(out.length, 1);
      stream.respond({ ':status': 200, 'content-type': 'application/grpc' }, { waitForTrailers: true });
      stream.on('wantTrailers', () => stream.sendTrailers({ 'grpc-status': '0' }));
      stream.end(Buffer.concat([prefix, out]));
    });
  });
  return new Promise((resolve, reject) => server.once('error', reject).listen(port, () => resolve(server)));
}

function serveTcp(port, facts) {
  const server = net.createServer((sock) => {
    let first = true;
    sock.on('data', (chunk) => {
      if (first) sock.write(`ServiceVersion=${facts.version}\nServicePort=${port}\nIP=${peerIp(sock.remoteAddress)}\nHostname=${hostname()}\n`);
      first = false;
      sock.write(chunk);
    });
    sock.on('end', () => sock.end());
    sock.on('error', () => sock.destroy());
  });
  return new Promise((resolve, reject) => server.once('error', reject).listen(port, () => resolve(server)));
}

/** Starts every listener the flags name; resolves to the servers (closable) once all listen. */
export async function startServer(opts, log = (s) => process.stderr.write(`${s}\n`)) {
  const facts = (port) => ({ port, version: opts.version, cluster: opts.cluster, istioVersion: opts['istio-version'] });
  const started = [];
  for (const port of opts.port) {
    let tls;
    if (opts.tls.includes(port)) {
      try {
        tls = { cert: readFileSync(opts.crt), key: readFileSync(opts.key), ALPNProtocols: ['http/1.1'] };
      } catch (e) {
        log(`port ${port}: TLS needs --crt and --key readable (${e.message}); not served`);
        continue;
      }
    }
    started.push(await serveHttp(port, facts(port), tls));
    log(`Listening HTTP${tls ? 'S' : ''}/1.1 on ${port}`);
  }
  for (const port of opts.grpc) {
    started.push(await serveGrpc(port, facts(port)));
    log(`Listening GRPC on ${port}`);
  }
  for (const port of opts.tcp) {
    if (opts.port.includes(port)) continue;
    started.push(await serveTcp(port, facts(port)));
    log(`Listening TCP on ${port}`);
  }
  return started;
}

export function stopServers(servers) {
  for (const s of servers) s.close();
}

if (import.meta.url === `file://${process.argv[1]}` || process.argv[1]?.endsWith('/server.mjs')) {
  let opts;
  try {
    opts = parseServerArgs(process.argv.slice(2));
  } catch (e) {
    process.stderr.write(`server: ${e.message}\n`);
    process.exit(2);
  }
  startServer(opts).catch((e) => {
    process.stderr.write(`server: ${e.message}\n`);
    process.exit(1);
  });
}
