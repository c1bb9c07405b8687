/**
 * Fuzzing what clients and operators feed the server: `mesh-xds serve` as a process on a copy of the demo
 * folder, then random and mutated ADS (SotW and delta) and CSDS requests, raw HTTP/2 requests to the gRPC layer
 * (random headers, length prefixes that lie, compressed junk, streams reset or connections dropped midway), and
 * random mutations of the manifests
 * (truncation, junk, alias bombs, duplicates, symlink loops, oversized files, deletions), while /healthz is
 * probed every 50 ms. Then, with `doors`, a phase per door of issue 33: the folder (files the parser cannot
 * afford: nesting 2 MB deep, a million documents' worth, an alias bomb for the worker) and retry amplification
 * (dense Retry graphs, up to every identity retrying to every other). The server must stay up and answer every probe; after the bad input is removed, a good
 * edit must be applied. Seeded and reproducible.
 * Run: npm run build && npm run fuzz:inputs [-- ITERATIONS [SEED]]   (the test suite runs a short one)
 */
import { spawn, type ChildProcess } from 'node:child_process';
import http2 from 'node:http2';
import zlib from 'node:zlib';
import { cpSync, lstatSync, mkdtempSync, readFileSync, rmSync, symlinkSync, unlinkSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { packagePath } from '../src/paths.js';
import { CSDS_SERVICE } from '../src/xds/protocol/csds.js';
import { envoyRoot, loadEnvoyProtos } from '../src/xds/resources/protos.js';
import { ADS_SERVICE } from '../src/xds/protocol/server.js';
import { RESOURCE_TYPES } from '../src/xds/resources/types.js';
import { rng } from '../sandbox/random-mesh.js';
import { MAX_ATTEMPTS, MAX_PATHS, MAX_RESPONSE_BYTES } from '../src/compile/amplification.js';
import { allToAllYaml } from './amplification-worst.js';
import { webhookDoors, webhookHeld } from './doors.js';
import { hostileClients, type HostileOptions, type HostileReport } from './hostile.js';

export interface FuzzReport {
  iterations: number;
  seed: number;
  adsRequests: number;
  csdsRequests: number;
  rawRequests: number;
  fileMutations: number;
  healthProbes: number;
  healthMaxMs: number;
  healthFailures: string[];
  serverExited: string | null;
  goodEditApplied: boolean;
  /** The hostile clients' phase: what they did, and the server's RSS before and at most during it. */
  hostile?: HostileReport & { rssBeforeMb: number; rssMaxMb: number };
  /** The folder's door: hostile files written, those that must be an error and were named so, and the RSS. */
  folder?: { files: string[]; expected: string[]; named: string[]; applied: boolean; rssBeforeMb: number; rssMaxMb: number; rssAfterMb: number; answerMaxMs: number };
  /** The amplification door: each dense graph served, and what /debug/amplification answered for it. */
  amplification?: { identities: number; numRetries: number; served: boolean; paths: number; worst: number; saturated: boolean; truncated: boolean; bytes: number; rssMaxMb: number; answerMaxMs: number }[];
}

/** Which of issue 33's door phases run after the random requests (npm run fuzz:inputs runs both). */
export interface DoorPhases {
  folder?: boolean;
  /**
   * Dense Retry graphs served one after another (each all-to-all, 12 to `maxIdentities` identities: 12 with numRetries 1
   * already have 11! paths and 4,096 attempts; past 20, attempts saturate).
   */
  amplification?: { graphs: number; maxIdentities: number };
}

/** YAML aliases that expand to 9^9 strings (the parser's maxAliasCount refuses it). */
const ALIAS_BOMB = ['a: &a ["x","x","x","x","x","x","x","x","x"]', ...'bcdefghi'.split('').map((k, i) => `${k}: &${k} [${Array(9).fill(`*${'abcdefghi'[i]}`).join(',')}]`)].join('\n');

/** How hard the hostile phase pushes (bench/hostile.ts); none: no hostile phase. */
export type HostileLoad = Pick<HostileOptions, 'seconds' | 'partialStreams' | 'connections' | 'bombsPerSecond' | 'windowStreams' | 'idleStreams' | 'from'>;

/** Probes a URL every 50 ms until stdin closes; prints {probes, maxMs, failures}. */
const PROBER = `
const url = process.argv[1];
let open = true, probes = 0, maxMs = 0; const failures = [];
process.stdin.on('end', () => (open = false)); process.stdin.resume();
await fetch(url).then((r) => r.text()); // warm-up: the first fetch of a process loads its HTTP client
while (open) {
  const t0 = performance.now();
  try { const r = await fetch(url, { signal: AbortSignal.timeout(2000) }); if (r.status !== 200) failures.push('status ' + r.status); await r.text(); }
  catch (e) { failures.push(e.message); }
  maxMs = Math.max(maxMs, performance.now() - t0); probes++;
  await new Promise((r) => setTimeout(r, 50));
}
console.log(JSON.stringify({ probes, maxMs, failures }));
`;

const REGEXES = ['(', '(a+)+$', '(a|aa)*b', '.*', '(?=x)', '[', 'curl-.*', '\\', '(((((((((a)))))))))', 'x{1000}{1000}', '', 'a'.repeat(5000)];

export async function fuzzInputs(iterations: number, seed = 1, hostile?: HostileLoad, doors: DoorPhases = {}): Promise<FuzzReport> {
  loadEnvoyProtos();
  const random = rng(seed);
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(random() * xs.length)];
  const int = (n: number): number => Math.floor(random() * n);
  const str = (n: number): string => Array.from({ length: n }, () => String.fromCharCode(32 + int(95))).join('');
  const bytes = (n: number): Buffer => Buffer.from(Array.from({ length: n }, () => int(256)));

  const dir = mkdtempSync(path.join(os.tmpdir(), 'mesh-xds-fuzz-'));
  cpSync(packagePath('deploy/demo'), dir, { recursive: true });
  const originals = new Map(['httpbin.yaml', 'curl.yaml', 'mesh.yaml', 'retry.yaml'].map((f) => [f, readFileSync(path.join(dir, f), 'utf8')]));
  const report: FuzzReport = { iterations, seed, adsRequests: 0, csdsRequests: 0, rawRequests: 0, fileMutations: 0, healthProbes: 0, healthMaxMs: 0, healthFailures: [], serverExited: null, goodEditApplied: false };

  const child: ChildProcess = spawn(process.execPath, [packagePath('bin/mesh-xds.js'), 'serve', '--manifests', dir, '--ads-address', '127.0.0.1:0', '--debug-address', '127.0.0.1:0'], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  let stopping = false;
  const keep = (d: Buffer): void => {
    out = (out + d).slice(-200_000);
  };
  child.stdout!.on('data', keep);
  child.stderr!.on('data', keep);
  child.on('exit', (code, signal) => {
    if (!stopping) report.serverExited ??= `exit ${code ?? signal}: ${out.slice(-3000)}`;
  });
  const listening = await new Promise<{ ads: string; debug: string }>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no "listening" line:\n${out}`)), 20_000);
    const check = (): void => {
      const line = out.split('\n').find((l) => l.includes('"msg":"listening"'));
      if (line) {
        clearTimeout(timer);
        resolve(JSON.parse(line));
      }
    };
    child.stdout!.on('data', check);
    check();
  });
  const debug = `http://${listening.debug}`;
  const adsAddress = listening.ads;

  // Probing starts once the server is ready (loading the mesh at start-up is not what is measured).
  for (let t = 0; t < 200 && (await fetch(`${debug}/readyz`).then((r) => r.status, () => 0)) !== 200; t++) await new Promise((r) => setTimeout(r, 50));
  // The prober is a process of its own, so that what this one does (building requests) is not counted.
  const prober = spawn(process.execPath, ['--input-type=module', '-e', PROBER, `${debug}/healthz`], { stdio: ['pipe', 'pipe', 'inherit'] });
  let proberOut = '';
  prober.stdout!.on('data', (d) => (proberOut += d));
  await new Promise((r) => setTimeout(r, 100));

  const Ads = grpc.makeGenericClientConstructor(ADS_SERVICE, 'ADS');
  const Csds = grpc.makeGenericClientConstructor(CSDS_SERVICE, 'CSDS');
  const ads = new Ads(adsAddress, grpc.credentials.createInsecure()) as any;
  const csds = new Csds(adsAddress, grpc.credentials.createInsecure()) as any;
  const root = envoyRoot();
  const sotwReq = root.lookupType('envoy.service.discovery.v3.DiscoveryRequest');
  const deltaReq = root.lookupType('envoy.service.discovery.v3.DeltaDiscoveryRequest');
  const typeUrls = [...RESOURCE_TYPES.map((t) => t.typeUrl), 'type.googleapis.com/bogus', ''];
  const streams: grpc.ClientDuplexStream<Buffer, Buffer>[] = [];

  const randomNode = (): object => {
    const fields: Record<string, object> = {};
    if (random() < 0.9) fields.namespace = { stringValue: pick(['curl', 'httpbin', 'other', 'BAD NS', str(int(300))]) };
    if (random() < 0.9) fields.serviceAccount = { stringValue: pick(['curl', 'httpbin', '', str(int(300))]) };
    return { id: random() < 0.1 ? str(int(5000)) : `fuzz-${int(20)}`, user_agent_name: pick(['envoy', 'grpc', '']), metadata: { fields } };
  };
  const names = (): string[] => Array.from({ length: int(random() < 0.1 ? 3000 : 5) }, () => (random() < 0.5 ? pick(['httpbin/httpbin|14001', 'rds-outbound.14001', '*', 'outbound-listener']) : str(int(random() < 0.05 ? 2000 : 30))));
  const adsRequest = (delta: boolean): Buffer => {
    const common = { type_url: pick(typeUrls), response_nonce: random() < 0.5 ? '' : str(int(20)), ...(random() < 0.3 ? { node: randomNode() } : {}) };
    const msg = delta
      ? deltaReq.fromObject({ ...common, resource_names_subscribe: names(), resource_names_unsubscribe: random() < 0.3 ? names() : [], initial_resource_versions: random() < 0.2 ? { [str(10)]: str(int(100)) } : {} })
      : sotwReq.fromObject({ ...common, version_info: str(int(20)), resource_names: names(), ...(random() < 0.1 ? { error_detail: { code: 3, message: str(int(10000)) } } : {}) });
    const buf = Buffer.from((delta ? deltaReq : sotwReq).encode(msg).finish());
    const r = random();
    if (r < 0.1) return bytes(int(200));
    if (r < 0.2) return buf.subarray(0, int(buf.length + 1));
    if (r < 0.3) {
      const m = Buffer.from(buf);
      for (let i = 0; i < 1 + int(4); i++) if (m.length) m[int(m.length)] = int(256);
      return m;
    }
    return buf;
  };

  const fileMutation = (): void => {
    const file = pick([...originals.keys(), 'extra.yaml']);
    const p = path.join(dir, file);
    const text = originals.get(file) ?? originals.get('retry.yaml')!;
    try {
      if (present(p)) unlinkSync(p);
    } catch {
      /* already gone */
    }
    switch (int(8)) {
      case 0:
        writeFileSync(p, text.slice(0, int(text.length)));
        break;
      case 1:
        writeFileSync(p, text.slice(0, int(text.length)) + str(int(50)) + text.slice(int(text.length)));
        break;
      case 2:
        writeFileSync(p, 'a: &a ["x","x","x","x","x","x","x","x","x"]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: [*c,*c,*c,*c,*c,*c,*c,*c,*c]\n');
        break;
      case 3:
        writeFileSync(p, `${text}\n---\n${text}`);
        break;
      case 4:
        symlinkSync(path.basename(p), p);
        break;
      case 5:
        writeFileSync(p, `# ${'x'.repeat(5 * 1024 * 1024)}\n`);
        break;
      case 6:
        break; // deleted
      default:
        writeFileSync(p, text.replace(/: [^\n]+/, `: ${pick(['-1', '"5xx,bogus"', '{', 'null', '[]', str(10)])}`));
    }
    report.fileMutations++;
  };

  // Raw HTTP/2: what no gRPC library sends. A connection is kept for a few requests, or dropped midway.
  let session: http2.ClientHttp2Session | undefined;
  const frame = (payload: Buffer, flag = 0, length = payload.length): Buffer => {
    const prefix = Buffer.alloc(5);
    prefix[0] = flag;
    prefix.writeUInt32BE(length >>> 0, 1);
    return Buffer.concat([prefix, payload]);
  };
  const rawRequest = (): void => {
    if (!session || session.destroyed || random() < 0.1) {
      session?.destroy();
      session = http2.connect(`http://${adsAddress}`);
      session.on('error', () => {});
    }
    const headers: http2.OutgoingHttpHeaders = {
      ':method': random() < 0.9 ? 'POST' : pick(['GET', 'PUT']),
      ':path': pick([...Object.values(ADS_SERVICE).map((m) => m.path), ...Object.values(CSDS_SERVICE).map((m) => m.path), '/', `/${str(int(40))}`]),
    };
    if (random() < 0.9) headers['content-type'] = pick(['application/grpc', 'application/grpc+proto', 'text/plain', 'application/grpcx']);
    if (random() < 0.3) headers['grpc-encoding'] = pick(['gzip', 'deflate', 'identity', 'snappy', str(int(20))]);
    if (random() < 0.2) headers['grpc-timeout'] = pick(['1m', '50m', '0n', '99999999H', '123456789S', 'bogus', '']);
    let req: http2.ClientHttp2Stream;
    try {
      req = session.request(headers);
    } catch {
      return; // the session is going away
    }
    req.on('error', () => {});
    req.on('data', () => {});
    const parts: Buffer[] = [];
    for (let k = int(4); k >= 0; k--) {
      const r = random();
      if (r < 0.4) parts.push(frame(adsRequest(random() < 0.5)));
      else if (r < 0.55) parts.push(frame(zlib.gzipSync(adsRequest(random() < 0.5)), 1));
      else if (r < 0.65) parts.push(frame(bytes(int(100)), 1));
      else if (r < 0.75) parts.push(frame(bytes(int(50)), int(256), pick([0xffffffff, 5 * 1024 * 1024, int(1000)])));
      else if (r < 0.85) parts.push(frame(zlib.gzipSync(Buffer.alloc(8 * 1024 * 1024)), 1));
      else parts.push(bytes(int(30)));
    }
    let body = Buffer.concat(parts);
    if (random() < 0.2) body = body.subarray(0, int(body.length + 1));
    // Written in pieces that cut prefixes and messages anywhere.
    for (let at = 0; at < body.length; ) {
      const n = 1 + int(Math.max(1, body.length - at));
      req.write(body.subarray(at, at + n));
      at += n;
    }
    const end = random();
    if (end < 0.6) req.end();
    else if (end < 0.8) setTimeout(() => req.close(pick([http2.constants.NGHTTP2_CANCEL, http2.constants.NGHTTP2_PROTOCOL_ERROR, http2.constants.NGHTTP2_NO_ERROR])), int(50));
    else if (end < 0.9) setTimeout(() => session?.destroy(), int(50));
    // Otherwise left open: the server must not care.
    report.rawRequests++;
  };

  for (let i = 0; i < iterations && !report.serverExited; i++) {
    const op = random();
    if (op < 0.55) {
      const delta = random() < 0.5;
      if (streams.length < 20 || random() < 0.1) {
        const call = delta ? ads.DeltaAggregatedResources() : ads.StreamAggregatedResources();
        call.on('error', () => {});
        call.on('data', () => {});
        streams.push(call);
      }
      const call = pick(streams);
      try {
        call.write(adsRequest(delta));
      } catch {
        /* the stream was ended by the server */
      }
      report.adsRequests++;
    } else if (op < 0.75) {
      const matcher = random() < 0.5 ? { node_id: { safe_regex: { regex: pick(REGEXES) + (random() < 0.3 ? str(int(10)) : '') } } } : { node_id: { [pick(['exact', 'prefix', 'suffix', 'contains'])]: str(int(20)), ignore_case: random() < 0.5 } };
      const request = { node_matchers: Array.from({ length: int(random() < 0.05 ? 100 : 3) }, () => matcher), exclude_resource_contents: random() < 0.5 };
      if (random() < 0.5) await new Promise<void>((resolve) => csds.FetchClientStatus(request, { deadline: Date.now() + 5000 }, () => resolve()));
      else {
        const call = csds.StreamClientStatus();
        call.on('error', () => {});
        call.on('data', () => {});
        call.write(request);
        call.end();
      }
      report.csdsRequests++;
    } else if (op < 0.85) rawRequest();
    else fileMutation();
    if (i % 10 === 0) await new Promise((r) => setTimeout(r, 10));
  }

  const rss = async (): Promise<number> => {
    const text = await fetch(`${debug}/metrics`).then((r) => r.text(), () => '');
    return Number(/^mesh_xds_process_process_resident_memory_bytes (\d+)/m.exec(text)?.[1] ?? 0) / 1024 / 1024;
  };
  /** Samples the server's RSS, and how long /metrics takes to answer, every 200 ms while `work` runs; the most of each. */
  const sampled = async <T>(work: () => Promise<T>): Promise<{ result: T; rssMaxMb: number; answerMaxMs: number }> => {
    let rssMaxMb = await rss();
    let answerMaxMs = 0;
    let sampling = true;
    const sampler = (async () => {
      while (sampling) {
        const t0 = performance.now();
        rssMaxMb = Math.max(rssMaxMb, await rss());
        answerMaxMs = Math.max(answerMaxMs, performance.now() - t0);
        await new Promise((r) => setTimeout(r, 200));
      }
    })();
    const result = await work();
    sampling = false;
    await sampler;
    return { result, rssMaxMb, answerMaxMs };
  };
  /** The demo's files as they were (the random mutations undone), and nothing else the fuzz wrote. */
  const restore = (retries = 5): void => {
    for (const f of ['extra.yaml', ...originals.keys()]) {
      const p = path.join(dir, f);
      if (present(p)) unlinkSync(p);
    }
    for (const [f, text] of originals) writeFileSync(path.join(dir, f), f === 'retry.yaml' ? text.replace('numRetries: 5', `numRetries: ${retries}`) : text);
  };
  /** Waits until the server has applied the demo's Retry with `retries` (the reload that read everything before it). */
  const applied = async (retries: number, ms: number): Promise<boolean> => {
    for (const deadline = Date.now() + ms; !report.serverExited && Date.now() < deadline; ) {
      const policies = await fetch(`${debug}/debug/policies`).then((r) => (r.ok ? r.json() : { policies: [] }), () => ({ policies: [] }));
      if (policies.policies.some((p: any) => p.name === 'retry' && p.state === 'Accepted' && p.retryPolicy?.num_retries === retries)) return true;
      await new Promise((r) => setTimeout(r, 100));
    }
    return false;
  };

  // Then the hostile clients, all at once, while a well-behaved client keeps syncing and the RSS is sampled.
  if (hostile && !report.serverExited) {
    const rssBeforeMb = await rss();
    let rssMaxMb = rssBeforeMb;
    let sampling = true;
    const sampler = (async () => {
      while (sampling) {
        rssMaxMb = Math.max(rssMaxMb, await rss());
        await new Promise((r) => setTimeout(r, 200));
      }
    })();
    const h = await hostileClients(adsAddress, { ...hostile, node: { id: 'well-behaved', namespace: 'curl', serviceAccount: 'curl' } });
    sampling = false;
    await sampler;
    report.hostile = { ...h, rssBeforeMb, rssMaxMb };
  }

  // The bad input goes; a good edit must be applied.
  restore(9);
  report.goodEditApplied = await applied(9, 10_000);
  prober.stdin!.end();
  await new Promise((r) => prober.on('exit', r));
  const probed = JSON.parse(proberOut);
  report.healthProbes = probed.probes;
  report.healthMaxMs = probed.maxMs;
  report.healthFailures = probed.failures;

  // The door phases come after the prober's (a mesh of dense Retry graphs costs the pipeline a turn of the event
  // loop to build, whatever the amplification does): each samples how long the server takes to answer /metrics.
  // The folder's door: files the parser cannot afford, beside the demo's (restored). Each that must be refused is
  // an error naming it in /debug/mesh; the demo's Retry edit after them applies; the worker's memory comes back.
  if (doors.folder && !report.serverExited) {
    restore();
    const shapes: Record<string, { text: string; error: boolean }> = {
      'nest-seq.yaml': { text: '['.repeat(2 ** 20 + int(2 ** 20)), error: true },
      'nest-map.json': { text: '{"a":'.repeat(2 ** 18 + int(2 ** 18)), error: true },
      'nest-block.yaml': { text: `${Array.from({ length: 250 + int(250) }, (_, i) => `${' '.repeat(i)}k${i}:`).join('\n')} 1\n`, error: true },
      'pair-seq.yaml': { text: '['.repeat(4_000 + int(4_000)), error: true },
      'pair-map.yaml': { text: '{'.repeat(4_000 + int(4_000)), error: true },
      'bomb.yaml': { text: `# ${'x'.repeat(70_000)}\n${ALIAS_BOMB}\n`, error: true },
      'many-docs.yaml': { text: '---\n'.repeat(2 ** 16 + int(2 ** 17)), error: false },
      'junk.yaml': { text: str(100_000 + int(100_000)), error: false },
    };
    const files = Object.keys(shapes);
    for (let i = files.length - 1; i > 0; i--) {
      const j = int(i + 1);
      [files[i], files[j]] = [files[j]!, files[i]!];
    }
    const rssBeforeMb = await rss();
    const { result, rssMaxMb, answerMaxMs } = await sampled(async () => {
      for (const f of files) writeFileSync(path.join(dir, f), shapes[f]!.text);
      restore(6);
      return applied(6, 120_000);
    });
    const mesh = await fetch(`${debug}/debug/mesh`).then((r) => (r.ok ? r.json() : {}), () => ({}));
    const erring = new Set(((mesh as { manifestErrors?: { file: string }[] }).manifestErrors ?? []).map((e) => e.file));
    const expected = files.filter((f) => shapes[f]!.error).sort();
    await new Promise((r) => setTimeout(r, 500));
    report.folder = { files, expected, named: expected.filter((f) => erring.has(f)), applied: result, rssBeforeMb, rssMaxMb, rssAfterMb: await rss(), answerMaxMs };
    for (const f of files) unlinkSync(path.join(dir, f));
  }

  // The amplification door: dense Retry graphs (every identity retrying to every other), one after another; what
  // /debug/amplification answers for each stays within its bounds.
  if (doors.amplification && !report.serverExited) {
    restore();
    report.amplification = [];
    for (let g = 0; g < doors.amplification.graphs && !report.serverExited; g++) {
      const identities = 12 + int(doors.amplification.maxIdentities - 11);
      const numRetries = 1 + int(10);
      const namespace = `dense${g}`;
      const { result, rssMaxMb, answerMaxMs } = await sampled(async () => {
        writeFileSync(path.join(dir, 'dense.yaml'), allToAllYaml(identities, numRetries, namespace));
        for (const deadline = Date.now() + 120_000; !report.serverExited && Date.now() < deadline; ) {
          const res = await fetch(`${debug}/debug/amplification`).catch(() => undefined);
          const text = res?.ok ? await res.text() : '';
          const body = text ? JSON.parse(text) : { paths: [] };
          if (body.paths[0]?.hops[0]?.from.startsWith(`${namespace}/`)) return { text, body };
          await new Promise((r) => setTimeout(r, 200));
        }
        return undefined;
      });
      const worst = result?.body.paths[0];
      report.amplification.push({
        identities,
        numRetries,
        served: Boolean(result),
        paths: result?.body.paths.length ?? 0,
        worst: worst?.attempts ?? 0,
        saturated: Boolean(worst?.saturated),
        truncated: Boolean(result?.body.truncated),
        bytes: result?.text.length ?? 0,
        rssMaxMb,
        answerMaxMs,
      });
    }
    unlinkSync(path.join(dir, 'dense.yaml'));
  }

  for (const s of streams) s.cancel();
  session?.destroy();
  ads.close();
  csds.close();
  stopping = true;
  child.kill('SIGTERM');
  await new Promise((r) => (child.exitCode !== null ? r(null) : child.on('exit', r)));
  rmSync(dir, { recursive: true, force: true });
  return report;
}

/** The path exists, as a file or as a (possibly dangling or looping) symlink. */
function present(p: string): boolean {
  return lstatSync(p, { throwIfNoEntry: false }) !== undefined;
}

/** What docs/xds-server.md promises the server stays under, hostile clients included (deploy/ gives it 1 GiB). */
export const RSS_CEILING_MB = 512;

if (process.argv[1]?.endsWith('fuzz-inputs.js')) {
  const iterations = Number(process.argv[2] ?? 2000);
  const seed = Number(process.argv[3] ?? Date.now() % 100000);
  // FUZZ_HOSTILE_SECONDS=0 leaves the hostile phase out.
  const seconds = Number(process.env.FUZZ_HOSTILE_SECONDS ?? 10);
  // The hostile clients speak from 127.0.0.2, the well-behaved proxy from 127.0.0.1: a client of its own.
  // FUZZ_DOORS=0 leaves the folder and amplification phases out.
  // The graphs stay small by default: a mesh of 200 identities retrying to each other costs the pipeline (not the
  // amplification, 50 ms) seconds of the event loop to build its 200 sidecars' 39,800 routes (FUZZ_AMPLIFICATION_IDENTITIES=200).
  const doors: DoorPhases = process.env.FUZZ_DOORS === '0' ? {} : { folder: true, amplification: { graphs: 3, maxIdentities: Number(process.env.FUZZ_AMPLIFICATION_IDENTITIES ?? 24) } };
  const r = await fuzzInputs(iterations, seed, seconds ? { seconds, partialStreams: 500, connections: 2, bombsPerSecond: 40, windowStreams: Number(process.env.FUZZ_WINDOW_STREAMS ?? 2_000), idleStreams: Number(process.env.FUZZ_IDLE_STREAMS ?? 2_000), from: '127.0.0.2' } : undefined, doors);
  console.log(JSON.stringify(r, null, 2));
  const hostileOk = !r.hostile || (r.hostile.wellBehaved.failed.length === 0 && r.hostile.rssMaxMb < RSS_CEILING_MB);
  // The webhook's door (bench/doors.ts): REFERENCE §16's attacks, each beside the API server's reviews.
  const webhook = seconds ? await webhookDoors(Math.min(seconds, 5)) : [];
  for (const w of webhook) console.log(JSON.stringify(w));
  const webhookOk = webhook.every(webhookHeld);
  // Refused or parsed off the event loop, with the parsing worker's memory given back.
  const folderOk = !r.folder || (r.folder.applied && r.folder.named.length === r.folder.expected.length && r.folder.rssAfterMb < r.folder.rssBeforeMb + 128 && r.folder.answerMaxMs < 100);
  const amplificationOk = (r.amplification ?? []).every((a) => a.served && a.bytes <= MAX_RESPONSE_BYTES && a.paths <= MAX_PATHS && a.worst <= MAX_ATTEMPTS && a.saturated === (a.numRetries + 1) ** a.identities >= MAX_ATTEMPTS);
  const ok = !r.serverExited && r.healthFailures.length === 0 && r.goodEditApplied && r.healthMaxMs < 100 && hostileOk && webhookOk && folderOk && amplificationOk;
  console.log(ok ? `OK: ${iterations} iterations (seed ${seed}), /healthz max ${r.healthMaxMs.toFixed(1)} ms` : 'FAILED');
  process.exit(ok ? 0 : 1);
}
