/**
 * What a careless operator could once do to the manifests folder (issue 9): crash the server with a symlink
 * loop, stall every reload with one bad file, push a route configuration Envoy rejects with the same Service in
 * two files, or postpone every reload with steady edits. Each failure now stays with its file or object, is
 * named, and every other file's edits keep applying.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, unlinkSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pino from 'pino';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { compile } from '../src/compile/compile.js';
import { resourceToJson } from './helpers/xds-json.js';
import { DEFAULT_MESH_CONFIG, type MeshState } from '../src/model/mesh.js';
import { loadRetrySchema } from '../src/sources/crd.js';
import { FileSource, MAX_ERRORS_PER_FILE, MAX_MANIFEST_BYTES } from '../src/sources/files.js';
import { MAX_BLOCK_COLUMN, MAX_FLOW_DEPTH } from '../src/sources/yaml-depth.js';
import { checkVirtualHosts, SnapshotError } from '../src/xds/resources/snapshot.js';
import { ENDPOINT_SLICE } from '../src/pipeline/build.js';
import { Pipeline } from '../src/pipeline/pipeline.js';
import { SnapshotCache } from '../src/xds/resources/cache.js';
import { ENDPOINT } from '../src/xds/resources/types.js';
import { DEMO, startDemo } from './helpers/demo.js';
import { meshFromYaml } from './helpers/mesh.js';

let dir: string;
let source: FileSource;
let states: MeshState[];

const numRetries = (s: MeshState): number => (s.retries.find((r) => r.name === 'retry')!.spec as any).retryPolicy.numRetries;

/** Waits until a mesh with `predicate` has been published. */
function until(predicate: (s: MeshState) => boolean, ms = 5000): Promise<MeshState> {
  return new Promise((resolve, reject) => {
    const deadline = Date.now() + ms;
    const tick = (): void => {
      const s = states.at(-1);
      if (s && predicate(s)) resolve(s);
      else if (Date.now() > deadline) reject(new Error('the change was not applied'));
      else setTimeout(tick, 20);
    };
    tick();
  });
}

function editRetry(n: number): void {
  const file = path.join(dir, 'retry.yaml');
  writeFileSync(file, readFileSync(file, 'utf8').replace(/numRetries: \d+/, `numRetries: ${n}`));
}

const ALIAS_BOMB = ['a: &a ["x","x","x","x","x","x","x","x","x"]', ...'bcdefghi'.split('').map((k, i) => `${k}: &${k} [${Array(9).fill(`*${'abcdefghi'[i]}`).join(',')}]`)].join('\n') + '\n';

beforeEach(async () => {
  dir = mkdtempSync(path.join(os.tmpdir(), 'mesh-xds-robust-'));
  for (const f of ['httpbin.yaml', 'curl.yaml', 'mesh.yaml', 'retry.yaml']) writeFileSync(path.join(dir, f), readFileSync(path.join(DEMO, f)));
  states = [];
  source = new FileSource({ dir, meshName: 'mesh-xds', log: pino({ level: 'silent' }), retrySchema: loadRetrySchema(), onChange: (s) => states.push(s) });
  states.push(await source.start());
});

afterEach(() => {
  source.stop();
  rmSync(dir, { recursive: true, force: true });
});

describe('the folder source confines every failure to its file', () => {
  it('a manifest replaced by a symlink to itself is an error naming it (ELOOP); the process goes on and other edits apply', async () => {
    unlinkSync(path.join(dir, 'httpbin.yaml'));
    symlinkSync('httpbin.yaml', path.join(dir, 'httpbin.yaml'));
    editRetry(3);
    const s = await until((x) => numRetries(x) === 3);
    expect(source.errors).toEqual([expect.objectContaining({ file: 'httpbin.yaml', message: expect.stringContaining('ELOOP') })]);
    // Its last good objects are kept.
    expect(s.services.map((x) => x.name)).toContain('httpbin');
  });

  it('an alias bomb, a self-symlink added as a new file, a file over the size limit and a FIFO are each one error; the Retry edit still applies', async () => {
    writeFileSync(path.join(dir, 'bomb.yaml'), ALIAS_BOMB);
    symlinkSync('loop.yaml', path.join(dir, 'loop.yaml'));
    writeFileSync(path.join(dir, 'huge.yaml'), `# ${'x'.repeat(MAX_MANIFEST_BYTES)}\n`);
    execFileSync('mkfifo', [path.join(dir, 'pipe.yaml')]);
    editRetry(4);
    await until((x) => numRetries(x) === 4);
    const byFile = Object.fromEntries(source.errors.map((e) => [e.file, e]));
    expect(Object.keys(byFile).sort()).toEqual(['bomb.yaml', 'huge.yaml', 'loop.yaml', 'pipe.yaml']);
    expect(byFile['bomb.yaml']).toMatchObject({ line: 1, message: expect.stringContaining('YAML aliases expand too far') });
    expect(byFile['loop.yaml'].message).toContain('ELOOP');
    expect(byFile['huge.yaml'].message).toContain(`over the ${MAX_MANIFEST_BYTES}-byte limit`);
    expect(byFile['pipe.yaml'].message).toContain('not a regular file');
    // Removing the bad files clears their errors.
    for (const f of ['bomb.yaml', 'loop.yaml', 'huge.yaml', 'pipe.yaml']) unlinkSync(path.join(dir, f));
    editRetry(6);
    await until((x) => numRetries(x) === 6);
    expect(source.errors).toEqual([]);
  });

  it('an unreadable subdirectory is an error naming it, for a server that is not root; edits elsewhere still apply', () => {
    // As root every directory is readable: the check runs as user nobody in a subprocess.
    const sub = path.join(dir, 'private');
    mkdirSync(sub);
    writeFileSync(path.join(sub, 'extra.yaml'), 'apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: extra, namespace: curl}\n');
    chmodSync(dir, 0o777);
    for (const f of ['httpbin.yaml', 'curl.yaml', 'mesh.yaml', 'retry.yaml']) chmodSync(path.join(dir, f), 0o666);
    chmodSync(sub, 0o000);
    // The modules load first, as root: the checkout may be in a directory nobody cannot enter (a home directory,
    // mktemp -d). Privileges are dropped before the source reads the folder.
    const script = `
      import { FileSource } from ${JSON.stringify(path.join(import.meta.dirname, '../dist/src/sources/files.js'))};
      import { writeFileSync, readFileSync } from 'node:fs';
      import pino from 'pino';
      if (process.getuid() === 0) {
        process.setgroups([]);
        process.setgid(65534);
        process.setuid(65534);
      }
      const states = [];
      const s = new FileSource({ dir: ${JSON.stringify(dir)}, meshName: 'mesh-xds', log: pino({ level: 'silent' }), onChange: (x) => states.push(x) });
      states.push(await s.start());
      const f = ${JSON.stringify(path.join(dir, 'retry.yaml'))};
      writeFileSync(f, readFileSync(f, 'utf8').replace(/numRetries: \\d+/, 'numRetries: 8'));
      const deadline = Date.now() + 5000;
      while (Date.now() < deadline && states.at(-1).retries[0].spec.retryPolicy.numRetries !== 8) await new Promise((r) => setTimeout(r, 20));
      s.stop();
      console.log(JSON.stringify({ errors: s.errors, numRetries: states.at(-1).retries[0].spec.retryPolicy.numRetries }));
    `;
    const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], {
      encoding: 'utf8',
      cwd: path.join(import.meta.dirname, '..'),
    });
    chmodSync(sub, 0o755);
    expect(r.status, r.stderr).toBe(0);
    const out = JSON.parse(r.stdout);
    expect(out.numRetries).toBe(8);
    expect(out.errors).toEqual([expect.objectContaining({ file: 'private', message: expect.stringContaining('EACCES') })]);
  });

  it('edits written in place every 100 ms are applied while they go on (the debounce waits at most a second)', async () => {
    const started = states.length;
    let n = 10;
    const timer = setInterval(() => editRetry(n++), 100);
    await new Promise((r) => setTimeout(r, 2600));
    clearInterval(timer);
    // At least two meshes were published during 2.6 s of steady edits, each with a newer value.
    const during = states.slice(started).map(numRetries);
    expect(during.length).toBeGreaterThanOrEqual(2);
    expect(during).toEqual([...during].sort((a, b) => a - b));
  });
});

describe('a big object', () => {
  it('an EndpointSlice of 50,000 endpoints (3 MB) is read off the event loop, by the parsing worker, which is replaced after (the parse grew its heap); its endpoints and the Retry edit after it apply', async () => {
    writeFileSync(path.join(dir, 'big.yaml'), `${bigSlice(50_000).join('\n')}\n`);
    const s = await until((x) => x.endpointSlices.some((e) => e.name === 'httpbin-big'), 60_000);
    expect(s.endpointSlices.find((e) => e.name === 'httpbin-big')!.addresses).toHaveLength(50_000);
    editRetry(9);
    await until((x) => numRetries(x) === 9);
    // Parsed on the event loop, the file held it for 2 to 3 s (YAML costs about 0.7 s per MB): the worker parsed
    // it (the demo's own files are small and parsed inline), and was ended after, its heap over the recycle bound.
    expect(source.parserStats).toEqual({ started: 1, recycled: 1, outOfMemory: 0, timedOut: 0 });
  }, 120_000);

  it('the pipeline encodes its 50,000 endpoints a slice per turn of the event loop, to the bytes the one-shot encoding makes', async () => {
    writeFileSync(path.join(dir, 'big.yaml'), `${bigSlice(50_000).join('\n')}\n`);
    const state = await until((x) => x.endpointSlices.some((e) => e.name === 'httpbin-big'), 60_000);
    const log = pino({ level: 'silent' });
    const sliced = new Pipeline(new SnapshotCache(), log);
    const whole = new Pipeline(new SnapshotCache(), log);
    // Turns of the event loop while the sliced pipeline works (the one-shot update takes none).
    let turns = 0;
    let counting = true;
    const count = (): void => {
      if (!counting) return;
      turns++;
      setImmediate(count);
    };
    count();
    await sliced.submit(state);
    counting = false;
    const before = turns;
    whole.update(state);
    expect(turns).toBe(before);
    expect(turns).toBeGreaterThanOrEqual(50_000 / ENDPOINT_SLICE);
    const eds = (p: Pipeline) => p.preview('sidecar:curl/curl').get(ENDPOINT)!.resources.get('httpbin/httpbin|14001')!;
    expect(eds(sliced).version).toBe(eds(whole).version);
    expect(Buffer.from(eds(sliced).body)).toEqual(Buffer.from(eds(whole).body));
    expect(sliced.lastReport!.failed).toEqual([]);
  }, 120_000);
});

/** An EndpointSlice of httpbin with n endpoints, as lines of YAML. */
function bigSlice(n: number): string[] {
  const lines = ['apiVersion: discovery.k8s.io/v1', 'kind: EndpointSlice', 'metadata: {name: httpbin-big, namespace: httpbin, labels: {kubernetes.io/service-name: httpbin}}', 'addressType: IPv4', 'ports: [{name: http, port: 14001}]', 'endpoints:'];
  for (let i = 0; i < n; i++) lines.push(`- addresses: ["10.${100 + (i >> 16)}.${(i >> 8) & 255}.${i & 255}"]`, '  conditions: {ready: true}');
  return lines;
}

/** The process's resident memory, in MiB. */
const rssMb = (): number => process.memoryUsage().rss / 2 ** 20;

describe('files the parser cannot afford (issue 33)', () => {
  it('2 MB of nested [ or {, blocks nested 300 deep, and 5,000-deep [ and { (which made V8 abort the process) are each one error naming the file and line; nothing accepted is lost and the memory stays where it was', async () => {
    const before = rssMb();
    const MiB2 = 2 * 2 ** 20;
    writeFileSync(path.join(dir, 'nest-seq.yaml'), '['.repeat(MiB2));
    writeFileSync(path.join(dir, 'nest-map.json'), '{"a":'.repeat(MiB2 / 5));
    writeFileSync(path.join(dir, 'nest-block.yaml'), `apiVersion: v1\nkind: ConfigMap\n${Array.from({ length: 300 }, (_, i) => `${' '.repeat(i)}k${i}:`).join('\n')} 1\n`);
    // Small enough to be parsed on the main thread: there, past the stack's end, the first of each made the yaml
    // library overflow the stack and the second one's regular expression abort the process.
    writeFileSync(path.join(dir, 'small-seq.yaml'), '['.repeat(5_000));
    writeFileSync(path.join(dir, 'small-map.yaml'), '{'.repeat(5_000));
    editRetry(4);
    const s = await until((x) => numRetries(x) === 4, 30_000);
    const byFile = Object.fromEntries(source.errors.map((e) => [e.file, e]));
    expect(Object.keys(byFile).sort()).toEqual(['nest-block.yaml', 'nest-map.json', 'nest-seq.yaml', 'small-map.yaml', 'small-seq.yaml']);
    for (const f of ['nest-seq.yaml', 'nest-map.json', 'small-seq.yaml', 'small-map.yaml']) {
      expect(byFile[f]).toEqual({ file: f, line: 1, message: `nests flow collections ([ ], { }) more than ${MAX_FLOW_DEPTH} deep; not parsed` });
    }
    expect(byFile['nest-block.yaml']).toEqual({ file: 'nest-block.yaml', line: MAX_BLOCK_COLUMN + 4, message: expect.stringContaining(`more than ${MAX_BLOCK_COLUMN} columns in; not parsed`) });
    // The demo's objects are all still there.
    expect(s.services.map((x) => x.name).sort()).toEqual(['curl', 'httpbin']);
    expect(compile(s).policies.map((p) => [p.name, p.state])).toEqual([['retry', 'Accepted']]);
    // Refused before parsing: the 2 MB of [ once took the worker to 1.2 GB, and kept it there.
    expect(source.parserStats.outOfMemory).toBe(0);
    expect(rssMb() - before).toBeLessThan(256);
  }, 90_000);

  it('a file that needs more memory to parse than the worker may use is an error naming it; the worker is replaced, the memory goes back, and the next big file is read by a new worker', async () => {
    source.stop();
    // A lower bound than PARSE_HEAP_MB (512 MiB, for 4 MiB files) reaches the same end sooner.
    source = new FileSource({ dir, meshName: 'mesh-xds', log: pino({ level: 'silent' }), retrySchema: loadRetrySchema(), parseLimits: { heapMb: 64 }, onChange: (s) => states.push(s) });
    states.push(await source.start());
    const before = rssMb();
    // A million empty documents' worth (a quarter of one): no nesting, and about 1 KB of heap each to parse.
    writeFileSync(path.join(dir, 'docs.yaml'), '---\n'.repeat(2 ** 18));
    editRetry(3);
    const s = await until((x) => numRetries(x) === 3, 60_000);
    expect(source.errors).toEqual([
      { file: 'docs.yaml', message: 'needs more than the 64 MiB of memory a manifest may take to parse (repeated or nested far beyond a Kubernetes object); not read, its last good objects are kept' },
    ]);
    expect(s.services.map((x) => x.name).sort()).toEqual(['curl', 'httpbin']);
    expect(source.parserStats).toMatchObject({ started: 1, outOfMemory: 1 });
    // The worker's heap went with it (it held 64 MiB and more at its end).
    expect(rssMb() - before).toBeLessThan(128);
    // A big file after it is parsed by a new worker.
    writeFileSync(path.join(dir, 'big.yaml'), `${bigSlice(2_000).join('\n')}\n`);
    const t = await until((x) => x.endpointSlices.some((e) => e.name === 'httpbin-big'), 30_000);
    expect(t.endpointSlices.find((e) => e.name === 'httpbin-big')!.addresses).toHaveLength(2_000);
    expect(source.parserStats).toMatchObject({ started: 2, outOfMemory: 1 });
  }, 90_000);

  it('a parse past the time bound is an error naming the file; the worker is replaced', async () => {
    source.stop();
    source = new FileSource({ dir, meshName: 'mesh-xds', log: pino({ level: 'silent' }), parseLimits: { timeoutMs: 1 }, onChange: (s) => states.push(s) });
    states.push(await source.start());
    writeFileSync(path.join(dir, 'big.yaml'), `${bigSlice(2_000).join('\n')}\n`);
    editRetry(2);
    const s = await until((x) => numRetries(x) === 2, 30_000);
    expect(source.errors).toEqual([{ file: 'big.yaml', message: 'took more than 0.001 s to parse; not read, its last good objects are kept' }]);
    expect(s.endpointSlices.map((e) => e.name)).not.toContain('httpbin-big');
    expect(source.parserStats).toMatchObject({ started: 1, timedOut: 1 });
  });

  it('an alias bomb big enough for the worker and a 4 MB scalar are bounded too: the bomb is an error naming it, the scalar is read, and the worker that grew is replaced', async () => {
    const pad = `# ${'x'.repeat(70_000)}\n`;
    writeFileSync(path.join(dir, 'bomb.yaml'), pad + ALIAS_BOMB);
    const scalar = 'x'.repeat(MAX_MANIFEST_BYTES - 200);
    writeFileSync(path.join(dir, 'scalar.yaml'), `apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: big, namespace: curl, annotations: {note: "${scalar}"}}\n`);
    editRetry(6);
    const s = await until((x) => numRetries(x) === 6, 60_000);
    expect(source.errors).toEqual([expect.objectContaining({ file: 'bomb.yaml', message: expect.stringContaining('YAML aliases expand too far') })]);
    expect(s.serviceAccounts.map((a) => a.name)).toContain('big');
    expect(source.parserStats).toMatchObject({ recycled: 1, outOfMemory: 0 });
  }, 90_000);

  it(`a file of junk reports its first ${MAX_ERRORS_PER_FILE - 1} errors and how many more`, async () => {
    writeFileSync(path.join(dir, 'junk.yaml'), '['.repeat(90) + '\n'.repeat(3) + '{'.repeat(5));
    editRetry(7);
    await until((x) => numRetries(x) === 7);
    const errors = source.errors.filter((e) => e.file === 'junk.yaml');
    expect(errors).toHaveLength(MAX_ERRORS_PER_FILE);
    expect(errors.at(-1)!.message).toMatch(new RegExp(`^and \\d+ more errors in this file \\(the first ${MAX_ERRORS_PER_FILE - 1} are listed\\)$`));
  });
});

describe('an object defined in two files', () => {
  it('the same Service twice: an error naming both files and lines; the first file in path order wins; one virtual host', async () => {
    writeFileSync(path.join(dir, 'zz-copy.yaml'), readFileSync(path.join(dir, 'httpbin.yaml')));
    editRetry(2);
    const s = await until((x) => numRetries(x) === 2);
    expect(s.services.filter((x) => x.name === 'httpbin')).toHaveLength(1);
    const dup = source.errors.find((e) => e.object === 'Service httpbin/httpbin')!;
    expect(dup).toMatchObject({ file: 'zz-copy.yaml', message: expect.stringMatching(/is also defined in httpbin\.yaml:\d+, which is used/) });
    expect(dup.line).toBeGreaterThan(1);
    // One route configuration for httpbin's port, with one virtual host.
    const { builder } = meshFromYaml(`${readFileSync(path.join(dir, 'httpbin.yaml'), 'utf8')}\n---\n${readFileSync(path.join(dir, 'zz-copy.yaml'), 'utf8')}\n---\n${readFileSync(path.join(dir, 'curl.yaml'), 'utf8')}`);
    const rds = builder.build('sidecar:curl/curl').get('type.googleapis.com/envoy.config.route.v3.RouteConfiguration')!;
    const names = [...rds.resources.values()].map((r) => r.name);
    expect(names).toEqual(['curl.curl.svc.cluster.local:80', 'httpbin.httpbin.svc.cluster.local:14001']);
    expect([...rds.resources.values()].map((r: any) => (resourceToJson(r) as any).virtual_hosts.length)).toEqual([1, 1]);
  });

  it('the same Retry twice is not in conflict with itself: one copy is used, the other is an error', async () => {
    writeFileSync(path.join(dir, 'zz-retry.yaml'), readFileSync(path.join(dir, 'retry.yaml')));
    editRetry(2);
    const s = await until((x) => numRetries(x) === 2);
    expect(s.retries).toHaveLength(1);
    const ir = compile(s);
    expect(ir.policies.map((p) => [p.name, p.state])).toEqual([['retry', 'Accepted']]);
    expect(source.errors).toEqual([expect.objectContaining({ file: 'zz-retry.yaml', object: 'Retry curl/retry' })]);
  });
});

describe('before publishing', () => {
  it('a route configuration with one virtual host name or one domain twice is refused; compile keeps one of two Services of one name', () => {
    expect(() => checkVirtualHosts('rds-outbound.80', [{ name: 'a', domains: ['a', 'a:80'] }, { name: 'b', domains: ['b', 'a:80'] }])).toThrow(SnapshotError);
    expect(() => checkVirtualHosts('rds-outbound.80', [{ name: 'a', domains: ['a'] }, { name: 'a', domains: ['b'] }])).toThrow(/two virtual hosts named "a"/);
    const twice = compile({ ...meshState(), services: [SERVICE, SERVICE] });
    expect(twice.services.filter((s) => s.name === 'httpbin')).toHaveLength(1);
    expect(twice.diagnostics).toEqual([expect.objectContaining({ object: 'Service httpbin/httpbin', message: expect.stringContaining('defined more than once') })]);
  });
});

describe('the server at start-up', () => {
  it('an alias bomb in the folder is an error in /debug/mesh, not a stack trace; the rest of the mesh is served', async () => {
    const demo = await startDemo((d) => writeFileSync(path.join(d, 'bomb.yaml'), ALIAS_BOMB));
    try {
      const mesh = await fetch(`${demo.debug}/debug/mesh`).then((r) => r.json());
      expect(mesh.manifestErrors).toEqual([expect.objectContaining({ file: 'bomb.yaml', message: expect.stringContaining('YAML aliases expand too far') })]);
      expect(mesh.services.map((s: any) => s.name).sort()).toEqual(['curl', 'httpbin']);
      const metrics = await fetch(`${demo.debug}/metrics`).then((r) => r.text());
      expect(metrics).toMatch(/^mesh_xds_source_errors 1$/m);
    } finally {
      await demo.close();
    }
  });
});

const SERVICE = { namespace: 'httpbin', name: 'httpbin', clusterIP: '10.96.198.23', selector: { app: 'httpbin' }, ports: [{ name: 'http', port: 14001, targetPort: 14001, protocol: 'TCP' }] };
function meshState(): MeshState {
  return {
    meshName: 'mesh-xds',
    meshConfig: { ...DEFAULT_MESH_CONFIG, enableRetryPolicy: true },
    namespaces: [{ name: 'httpbin', labels: { 'flomesh.io/monitored-by': 'mesh-xds' } }],
    services: [],
    endpointSlices: [],
    pods: [],
    serviceAccounts: [],
    retries: [],
    routes: [],
  };
}
