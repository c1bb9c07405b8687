/**
 * The echo server and client that stand in for the Gateway API mesh conformance suite's image (sandbox/echo), as
 * programs on loopback, read the way the suite reads them (conformance/utils/echo: ParseResponse's first-match
 * regular expressions, RequestBatch's blank-line split, compareRequest's checks). Where scripts/conformance/build.sh
 * has built echo-parse, the suite's own Go parser reads the same output and must agree.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { suiteProblems } from '../../sandbox/conformance.js';

const ROOT = path.resolve(__dirname, '../..');
const SERVER = path.join(ROOT, 'sandbox/echo/server.mjs');
const CLIENT = path.join(ROOT, 'sandbox/echo/client.mjs');
const GO_PARSE = path.join(ROOT, '.cache/conformance/echo-parse');
// echo-parse is built with the suite (in the background on a fresh machine: this file runs last and waits for it).
const suiteMissing = await suiteProblems(35 * 60_000, (line) => console.log(line));
if (suiteMissing.length) {
  const text = `the suite's own echo parser cannot run here:\n- ${suiteMissing.join('\n- ')}`;
  if (process.env.CI) throw new Error(`${text}\n(CI=true: .ci/run must build it)`);
  console.warn(`${text}\nIts comparison is skipped.`);
}

interface Parsed {
  Code: string;
  Hostname: string;
  Host: string;
  URL: string;
  Method: string;
  Protocol: string;
  RequestHeaders: Record<string, string[]>;
  ResponseHeaders: Record<string, string[]>;
}

/** utils/echo.ParseResponse, field for field: the first match of `Field=(.*)` anywhere in the output. */
function parseResponse(output: string): Parsed {
  const first = (field: string): string => new RegExp(`${field}=(.*)`).exec(output)?.[1] ?? '';
  const headers = (field: string, add: boolean): Record<string, string[]> => {
    const out: Record<string, string[]> = {};
    for (const m of output.matchAll(new RegExp(`${field}=(.*)`, 'g'))) {
      const at = m[1].indexOf(':');
      if (at < 0) continue;
      const key = canonical(m[1].slice(0, at));
      out[key] = add ? [...(out[key] ?? []), m[1].slice(at + 1)] : [m[1].slice(at + 1)];
    }
    return out;
  };
  return {
    Code: first('StatusCode'),
    Hostname: first('Hostname'),
    Host: first('Host'),
    URL: first('URL'),
    Method: first('Method'),
    Protocol: first('Proto'),
    RequestHeaders: headers('RequestHeader', true),
    ResponseHeaders: headers('ResponseHeader', false),
  };
}

/** Go's http.Header.Add/Set canonicalize the key. */
const canonical = (k: string): string => (/^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/.test(k) ? k.toLowerCase().replace(/(^|-)([a-z])/g, (_, d: string, c: string) => d + c.toUpperCase()) : k);

/** RequestBatch's parseMultipleResponses: blocks split by a blank line, kept when they have a Hostname or a code. */
function parseBatch(output: string): Parsed[] {
  return output
    .split('\n\n')
    .map((s) => s.trim())
    .filter(Boolean)
    .map(parseResponse)
    .filter((r) => r.Hostname !== '' || r.Code !== '');
}

/** compareRequest's request-header check: the key case-insensitively, the values joined with a comma. */
function requestHeader(r: Parsed, name: string): string | undefined {
  const hit = Object.entries(r.RequestHeaders).find(([k]) => k.toLowerCase() === name.toLowerCase());
  return hit?.[1].join(',');
}

function run(cmd: string, args: string[], env: NodeJS.ProcessEnv = {}): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(cmd, args, { env: { ...process.env, ...env }, timeout: 30_000 }, (err, stdout, stderr) =>
      resolve({ code: err ? ((err as NodeJS.ErrnoException & { code?: number }).code as unknown as number) : 0, stdout, stderr }),
    );
  });
}

const client = (...args: string[]) => run(CLIENT, args);

async function freePort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const port = (s.address() as net.AddressInfo).port;
  await new Promise((r) => s.close(r));
  return port;
}

let server: ChildProcess;
let serverLog = '';
let httpPort = 0;
let grpcPort = 0;
let tcpPort = 0;

beforeAll(async () => {
  [httpPort, grpcPort, tcpPort] = [await freePort(), await freePort(), await freePort()];
  // The manifests' args, with this test's ports (and the TLS port's certificate absent, as on the sandbox node).
  server = spawn(SERVER, [`--tcp=${tcpPort}`, `--port=${httpPort}`, `--grpc=${grpcPort}`, '--port=1', '--tls=1', '--crt=/nonexistent.crt', '--key=/nonexistent.key', '--version=v1'], {
    env: { ...process.env, HOSTNAME: 'echo-v1-5f7c9d-abcde' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  server.stderr!.on('data', (d) => (serverLog += d));
  while (!/Listening TCP/.test(serverLog)) {
    if (server.exitCode !== null) throw new Error(`echo server exited: ${serverLog}`);
    await new Promise((r) => setTimeout(r, 50));
  }
});

afterAll(() => {
  server?.kill();
});

describe('the echo pair as the mesh conformance suite reads it', () => {
  it('serves the ports of the manifests, and says why the TLS port without its certificate is not served', () => {
    expect(serverLog).toContain(`Listening HTTP/1.1 on ${httpPort}`);
    expect(serverLog).toContain(`Listening GRPC on ${grpcPort}`);
    expect(serverLog).toMatch(/port 1: TLS needs --crt and --key readable \(ENOENT.*nonexistent\.crt.*\); not served/);
  });

  it('one HTTP request: the code, the pod name, the request as the server saw it (Host header is the authority)', async () => {
    const r = await client(`http://127.0.0.1:${httpPort}/v2/example?animal=whale`, '--method=PUT', '-H', 'Version:two', '-H', 'Host:echo', '-H', 'X-Multi:a', '-H', 'x-multi:b');
    expect(r.code, r.stderr).toBe(0);
    const p = parseResponse(r.stdout);
    expect(p).toMatchObject({ Code: '200', Hostname: 'echo-v1-5f7c9d-abcde', Host: 'echo', URL: '/v2/example?animal=whale', Method: 'PUT', Protocol: 'HTTP/1.1' });
    expect(requestHeader(p, 'version')).toBe('two');
    expect(requestHeader(p, 'X-MULTI')).toBe('a,b');
    expect(requestHeader(p, 'Host')).toBeUndefined();
    expect(p.ResponseHeaders['Content-Type']).toEqual(['application/text']);
    // Istio's line shapes, which the regular expressions above would also accept in other places.
    expect(r.stdout).toMatch(/^\[0\] Url=http:\/\/127\.0\.0\.1:\d+\/v2\/example\?animal=whale\n/);
    expect(r.stdout).toContain('[0] StatusCode=200\n');
    expect(r.stdout).toContain('[0 body] RequestHeader=Version:two\n');
    expect(r.stdout.endsWith('\n\n')).toBe(true);
  });

  it('a batch (--count): one block per request, each with its code and pod name', async () => {
    const r = await client(`http://127.0.0.1:${httpPort}/`, '--count=45');
    expect(r.code, r.stderr).toBe(0);
    const batch = parseBatch(r.stdout);
    expect(batch).toHaveLength(45);
    expect(batch.every((b) => b.Code === '200' && b.Hostname === 'echo-v1-5f7c9d-abcde')).toBe(true);
    expect(new Set(r.stdout.match(/^\[(\d+)\] Url=/gm)).size).toBe(45);
  });

  it('the status the server is asked for (?codes=), and response headers (?headers=), are what the client prints', async () => {
    const r = await client(`http://127.0.0.1:${httpPort}/?codes=503&headers=X-Answer:42`);
    expect(r.code, r.stderr).toBe(0);
    const p = parseResponse(r.stdout);
    expect(p.Code).toBe('503');
    expect(p.ResponseHeaders['X-Answer']).toEqual(['42']);
    const bad = parseResponse((await client(`http://127.0.0.1:${httpPort}/?codes=700`)).stdout);
    expect(bad.Code).toBe('400');
    expect((await client(`http://127.0.0.1:${httpPort}/?codes=700`)).stdout).toContain('[0 body] codes error: invalid "700"');
  });

  it('a redirect is reported, not followed (Location among the response headers, no pod name)', async () => {
    const redirector = http.createServer((_, res) => {
      res.writeHead(302, { Location: 'http://example.org/replacement-prefix/lemon' });
      res.end();
    });
    await new Promise<void>((r) => redirector.listen(0, '127.0.0.1', r));
    try {
      const r = await client(`http://127.0.0.1:${(redirector.address() as net.AddressInfo).port}/original-prefix/lemon`, '-H', 'Host:echo');
      expect(r.code, r.stderr).toBe(0);
      const p = parseResponse(r.stdout);
      expect(p.Code).toBe('302');
      expect(p.ResponseHeaders.Location).toEqual(['http://example.org/replacement-prefix/lemon']);
      expect(p.Hostname).toBe('');
    } finally {
      redirector.close();
    }
  });

  it('gRPC (grpc://host:port): proto.EchoTestService/Echo, the code and pod name from the answer, metadata as request headers', async () => {
    const r = await client(`grpc://127.0.0.1:${grpcPort}`, '-H', 'X-Header-Set:set-overwrites-values', '-H', 'Host:echo:7070', '--count=5');
    expect(r.code, r.stderr).toBe(0);
    const batch = parseBatch(r.stdout);
    expect(batch).toHaveLength(5);
    for (const b of batch) {
      expect(b).toMatchObject({ Code: '200', Hostname: 'echo-v1-5f7c9d-abcde', Host: 'echo:7070', Protocol: 'GRPC' });
      expect(requestHeader(b, 'x-header-set')).toBe('set-overwrites-values');
    }
    expect(r.stdout).toContain('[0 body] Echo=HelloWorld\n');
    // Two values of one metadata key stay two (as grpc-go keeps them), so the suite joins them with a comma.
    const two = await client(`grpc://127.0.0.1:${grpcPort}`, '-H', 'x-header-add:first', '-H', 'x-header-add:second');
    expect(requestHeader(parseResponse(two.stdout), 'X-Header-Add')).toBe('first,second');
    expect(parseResponse(r.stdout).ResponseHeaders['Content-Type']).toEqual(['application/grpc']);
  });

  it('a request that fails makes the whole command fail: nothing on stdout, why on stderr, exit 255', async () => {
    const port = await freePort();
    const r = await client(`http://127.0.0.1:${port}/`, '--count=3');
    expect(r.code).toBe(255);
    expect(r.stdout).toBe('');
    expect(r.stderr).toMatch(/3\/3 requests had errors; first error: connect ECONNREFUSED/);
    const g = await client(`grpc://127.0.0.1:${port}`, '--timeout=2s');
    expect(g.code).toBe(255);
    expect(g.stderr).toMatch(/requests had errors; first error: rpc error: code = (UNAVAILABLE|DEADLINE_EXCEEDED)/);
  });

  it('--timeout bounds the whole set: a server that never answers ends the command', async () => {
    const silent = net.createServer(() => {});
    await new Promise<void>((r) => silent.listen(0, '127.0.0.1', r));
    try {
      const r = await client(`http://127.0.0.1:${(silent.address() as net.AddressInfo).port}/`, '--timeout=300ms', '--count=2');
      expect(r.code).toBe(255);
      expect(r.stderr).toMatch(/request set timed out after 300ms and only 0\/2 requests completed/);
    } finally {
      silent.close();
    }
  });

  it('a response body over 4 MiB is refused, not held', async () => {
    const big = http.createServer((_, res) => {
      res.writeHead(200);
      const chunk = Buffer.alloc(1 << 20, 'a');
      for (let i = 0; i < 6; i++) res.write(chunk);
      res.end();
    });
    await new Promise<void>((r) => big.listen(0, '127.0.0.1', r));
    try {
      const r = await client(`http://127.0.0.1:${(big.address() as net.AddressInfo).port}/`);
      expect(r.code).toBe(255);
      expect(r.stderr).toContain('response body over 4194304 bytes');
    } finally {
      big.close();
    }
  });

  it('bad input gets a specific error and exit 2: client and server flags', async () => {
    expect(await client()).toMatchObject({ code: 2, stderr: expect.stringContaining('accepts 1 arg(s), received 0') });
    expect(await client('http://echo/', '--bogus')).toMatchObject({ code: 2, stderr: expect.stringContaining('unknown flag --bogus') });
    expect(await client('http://echo/', '-H', 'NoColon')).toMatchObject({ code: 2, stderr: expect.stringContaining('invalid header format: "NoColon"') });
    expect(await client('http://echo/', '--count=100000')).toMatchObject({ code: 2, stderr: expect.stringContaining('--count: "100000" is not a whole number up to 10000') });
    expect(await client('ftp://echo/')).toMatchObject({ code: 2, stderr: expect.stringContaining('scheme ftp:// is not served') });
    expect(await run(SERVER, ['--port=99999'])).toMatchObject({ code: 2, stderr: expect.stringContaining('--port: "99999" is not a port') });
    expect(await run(SERVER, ['--istio-versionx=1'])).toMatchObject({ code: 2, stderr: expect.stringContaining('unknown flag --istio-versionx') });
  });

  it.skipIf(suiteMissing.length > 0)('the suite’s own Go parser (echo-parse, built by scripts/conformance/build.sh) reads the same', async () => {
    const outputs = [
      (await client(`http://127.0.0.1:${httpPort}/path?x=1`, '-H', 'Version:one', '-H', 'Host:echo', '--count=3')).stdout,
      (await client(`grpc://127.0.0.1:${grpcPort}`, '-H', 'x-header-add:header-val-1', '--count=2')).stdout,
    ];
    for (const out of outputs) {
      const go = await new Promise<{ Whole: Parsed; Batch: Parsed[] }>((resolve, reject) => {
        const p = execFile(GO_PARSE, [], (err, stdout) => (err ? reject(err) : resolve(JSON.parse(stdout))));
        p.stdin!.end(out);
      });
      const mine = parseResponse(out);
      expect(go.Whole).toMatchObject({ Code: mine.Code, Hostname: mine.Hostname, Host: mine.Host, URL: mine.URL, Method: mine.Method, Protocol: mine.Protocol });
      expect(go.Whole.RequestHeaders).toEqual(mine.RequestHeaders);
      expect(go.Batch.map((b) => [b.Code, b.Hostname])).toEqual(parseBatch(out).map((b) => [b.Code, b.Hostname]));
      expect(go.Batch.length).toBeGreaterThan(1);
    }
  });
});
