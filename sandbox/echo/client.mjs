#!/usr/bin/env node
/* global AbortSignal */
// The echo client the Gateway API mesh conformance suite runs in each echo pod by pods/exec (`client <url> ...`), as
// Istio's echo 1.30 client behaves (docs/conformance/README.md):
//   client http://echo/path [--method=GET] [-H Name:value]... [--count=N] [--timeout=5s] [--qps=N] [-L] [--msg=M]
//   client grpc://echo:7070 [-H name:value]... [--count=N]
// It makes N requests (at most 20 at once; --timeout bounds the whole set), and prints, for request i, the lines of
// one block, then a blank line:
//   HTTP: [i] Url=<url>, [i] Header=K:V per header sent, [i] SourceIP=, [i] Latency=, [i] ActiveRequests=,
//         [i] StatusCode=<code>, [i] ResponseHeader=K:V (keys canonical, sorted), [i body] <line> per body line.
//   gRPC: [i] Latency=, [i] ActiveRequests=, [i body] <line> per line of the Echo answer, [i] ResponseHeader=k:v.
// A Host header sets the request's authority. Redirects are not followed unless -L. If any request fails, it prints
// nothing on stdout, says why on stderr and exits 255 (Istio's os.Exit(-1)); a bad flag exits 2.
import dns from 'node:dns/promises';
import http from 'node:http';
import https from 'node:https';
import process from 'node:process';
import { setTimeout } from 'node:timers';
import { URL } from 'node:url';
import grpc from '@grpc/grpc-js';
import { ECHO_SERVICE, canonicalKey, goDuration } from './common.mjs';

const MAX_COUNT = 10_000;
const MAX_CONCURRENT = 20;
const MAX_BODY = 4 * 1024 * 1024;

/** The flags, as Istio's cobra client reads them; throws a specific error for a bad one. */
export function parseClientArgs(argv) {
  const o = { url: undefined, method: '', headers: [], count: 1, timeoutMs: 5000, qps: 0, followRedirects: false, msg: 'HelloWorld', http2: false };
  const value = (i, name, inline) => {
    const v = inline ?? argv[i + 1];
    if (v === undefined) throw new Error(`flag ${name} needs a value`);
    return [v, inline === undefined ? 1 : 0];
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const m = /^(--[a-z0-9-]+|-[A-Za-z])(?:=(.*))?$/.exec(a);
    if (!m) {
      if (o.url !== undefined) throw new Error(`accepts 1 arg(s), received a second: ${JSON.stringify(a)}`);
      o.url = a;
      continue;
    }
    const [, name, inline] = m;
    if (name === '-L' || name === '--follow-redirects') o.followRedirects = inline === undefined || inline === 'true';
    else if (name === '--http2') o.http2 = inline === undefined || inline === 'true';
    else if (['-H', '--header', '--method', '--count', '--timeout', '--qps', '--msg'].includes(name)) {
      const [v, skip] = value(i, name, inline);
      i += skip;
      if (name === '-H' || name === '--header') {
        for (const h of v.split(',')) {
          const at = h.indexOf(':');
          if (at < 0) throw new Error(`invalid header format: ${JSON.stringify(h)} (want name:value)`);
          o.headers.push([h.slice(0, at), h.slice(at + 1).trim()]);
        }
      } else if (name === '--method') o.method = v;
      else if (name === '--msg') o.msg = v;
      else if (name === '--timeout') {
        const ms = goDuration(v);
        if (ms === undefined || ms <= 0) throw new Error(`--timeout: ${JSON.stringify(v)} is not a duration (like 5s, 500ms)`);
        o.timeoutMs = ms;
      } else {
        const n = Number(v);
        const max = name === '--count' ? MAX_COUNT : 100_000;
        if (!/^\d+$/.test(v) || n > max) throw new Error(`${name}: ${JSON.stringify(v)} is not a whole number up to ${max}`);
        if (name === '--count') o.count = n || 1;
        else o.qps = n;
      }
    } else throw new Error(`unknown flag ${name}`);
  }
  if (o.url === undefined) throw new Error('accepts 1 arg(s), received 0 (client <url> [flags])');
  if (!/^[a-z][a-z0-9+.-]*:\/\//i.test(o.url)) o.url = `http://${o.url}`;
  const scheme = o.url.slice(0, o.url.indexOf(':')).toLowerCase();
  if (!['http', 'https', 'grpc'].includes(scheme)) throw new Error(`scheme ${scheme}:// is not served by this client (http, https, grpc)`);
  o.scheme = scheme;
  return o;
}

/** Istio's splitPath: `http://echo:80/a?b` -> [`http://echo:80`, `/a?b`]. */
function splitPath(url) {
  const start = url.indexOf('://') + 3;
  const slash = url.indexOf('/', start);
  return slash < 0 ? [url, ''] : [url.slice(0, slash), url.slice(slash)];
}

const elapsed = (start) => {
  const ms = Number(process.hrtime.bigint() - start) / 1e6;
  return ms >= 1000 ? `${(ms / 1000).toFixed(6).replace(/\.?0+$/, '')}s` : `${ms.toFixed(3).replace(/\.?0+$/, '')}ms`;
};

let active = 0;

function httpRequest(o, id, signal) {
  const [base, path] = splitPath(o.url);
  const target = new URL(base);
  const host = o.headers.find(([k]) => canonicalKey(k) === 'Host')?.[1] ?? target.host;
  const sent = o.headers.filter(([k]) => canonicalKey(k) !== 'Host');
  let out = `[${id}] Url=${o.url}\n`;
  for (const [k, v] of sent) out += `[${id}] Header=${canonicalKey(k)}:${v}\n`;
  const start = process.hrtime.bigint();
  const lib = o.scheme === 'https' ? https : http;
  return new Promise((resolve, reject) => {
    const req = lib.request(
      {
        host: target.hostname.replace(/^\[(.*)\]$/, '$1'),
        port: target.port || (o.scheme === 'https' ? 443 : 80),
        method: o.method || 'GET',
        path: path || '/',
        headers: [['Host', host], ...sent.map(([k, v]) => [canonicalKey(k), v])].flat(),
        agent: false,
        signal,
        rejectUnauthorized: false,
      },
      (res) => {
        const chunks = [];
        let size = 0;
        res.on('data', (c) => {
          size += c.length;
          if (size > MAX_BODY) req.destroy(new Error(`response body over ${MAX_BODY} bytes`));
          else chunks.push(c);
        });
        res.on('error', reject);
        res.on('end', () => {
          out += `[${id}] SourceIP=${(req.socket?.localAddress ?? '').replace(/^::ffff:/, '')}\n`;
          out += `[${id}] Latency=${elapsed(start)}\n[${id}] ActiveRequests=${active}\n`;
          out += `[${id}] StatusCode=${res.statusCode}\n`;
          const headers = new Map();
          for (let i = 0; i + 1 < res.rawHeaders.length; i += 2) {
            const k = canonicalKey(res.rawHeaders[i]);
            if (k === 'Transfer-Encoding') continue; // Go's client keeps it out of the headers
            if (!headers.has(k)) headers.set(k, []);
            headers.get(k).push(res.rawHeaders[i + 1]);
          }
          for (const k of [...headers.keys()].sort()) for (const v of headers.get(k)) out += `[${id}] ResponseHeader=${k}:${v}\n`;
          for (const line of Buffer.concat(chunks).toString('utf8').split('\n')) if (line !== '') out += `[${id} body] ${line}\n`;
          const location = res.headers.location;
          if (o.followRedirects && res.statusCode >= 300 && res.statusCode < 400 && location) {
            const next = new URL(location, `${o.scheme}://${host}${path || '/'}`).toString();
            httpRequest({ ...o, url: next, scheme: next.slice(0, next.indexOf(':')), headers: sent }, id, signal).then(resolve, reject);
          } else resolve(out);
        });
      },
    );
    req.on('error', reject);
    req.end();
  });
}

async function grpcClient(o) {
  const address = o.url.slice(o.url.indexOf('://') + 3).replace(/\/.*$/, '');
  const m = /^(\[[^\]]+\]|[^:]+)(?::(\d+))?$/.exec(address);
  if (!m) throw new Error(`grpc address ${JSON.stringify(address)} is not host[:port]`);
  const hostName = m[1].replace(/^\[(.*)\]$/, '$1');
  // Names resolve from the hosts file here (getaddrinfo), then grpc-js dials the address; the authority stays the name.
  const { address: ip, family } = await dns.lookup(hostName);
  const port = m[2] ?? '443';
  const authority = o.headers.find(([k]) => k.toLowerCase() === 'host')?.[1] ?? address;
  const Client = grpc.makeGenericClientConstructor(ECHO_SERVICE, 'EchoTestService');
  return new Client(family === 6 ? `ipv6:[${ip}]:${port}` : `ipv4:${ip}:${port}`, grpc.credentials.createInsecure(), {
    'grpc.default_authority': authority,
    'grpc.service_config_disable_resolution': 1,
  });
}

function grpcRequest(o, client, id, deadline) {
  const md = new grpc.Metadata();
  for (const [k, v] of o.headers) if (k.toLowerCase() !== 'host') md.add(k.toLowerCase(), v);
  const start = process.hrtime.bigint();
  return new Promise((resolve, reject) => {
    let header = new grpc.Metadata();
    const call = client.Echo(o.msg, md, { deadline }, (err, message) => {
      if (err) return reject(new Error(`rpc error: code = ${grpc.status[err.code] ?? err.code} desc = ${err.details}`));
      let out = `[${id}] Latency=${elapsed(start)}\n[${id}] ActiveRequests=${active}\n`;
      for (const line of message.split('\n')) if (line !== '') out += `[${id} body] ${line}\n`;
      for (const [k, vs] of Object.entries(header.getMap())) for (const v of [vs].flat()) out += `[${id}] ResponseHeader=${k}:${v}\n`;
      resolve(out);
    });
    call.on('metadata', (m) => {
      header = m;
    });
  });
}

/** Runs the requests; resolves to the printed output, or rejects with the first error (as Istio's doForward). */
export async function runClient(o) {
  const deadline = Date.now() + o.timeoutMs;
  const abort = AbortSignal.timeout(o.timeoutMs);
  const client = o.scheme === 'grpc' ? await grpcClient(o) : undefined;
  const outputs = new Array(o.count);
  let next = 0;
  let failure;
  let failures = 0;
  const gap = o.qps > 0 ? 1000 / o.qps : 0;
  const worker = async () => {
    while (next < o.count && !failure) {
      const id = next++;
      if (gap) await new Promise((r) => setTimeout(r, gap * id - (Date.now() - (deadline - o.timeoutMs))));
      active++;
      try {
        outputs[id] = client ? await grpcRequest(o, client, id, deadline) : await httpRequest(o, id, abort);
      } catch (e) {
        failure ??= e;
        failures++;
      } finally {
        active--;
      }
    }
  };
  try {
    await Promise.all(Array.from({ length: Math.min(MAX_CONCURRENT, o.count) }, worker));
  } finally {
    client?.close();
  }
  if (failure) {
    const done = outputs.filter(Boolean).length;
    throw new Error(abort.aborted ? `request set timed out after ${o.timeoutMs}ms and only ${done}/${o.count} requests completed` : `${failures}/${o.count} requests had errors; first error: ${failure.message}`);
  }
  // fmt.Println of each request's block: the block's own last newline, then one more.
  return outputs.map((s) => `${s}\n`).join('');
}

if (process.argv[1]?.endsWith('/client.mjs')) {
  let o;
  try {
    o = parseClientArgs(process.argv.slice(2));
  } catch (e) {
    process.stderr.write(`Error: ${e.message}\n`);
    process.exit(2);
  }
  runClient(o).then(
    (text) => process.stdout.write(text),
    (e) => {
      process.stderr.write(`Error ${e.message}\n`);
      process.exit(255);
    },
  );
}
