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
import { resourceToJson } from '../src/xds/resources/json.js';
import { DEFAULT_MESH_CONFIG, type MeshState } from '../src/model/mesh.js';
import { loadRetrySchema } from '../src/sources/crd.js';
import { FileSource, MAX_MANIFEST_BYTES } from '../src/sources/files.js';
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
  it('an EndpointSlice of 50,000 endpoints (3 MB) is read off the event loop: a probe is never held for a second; its endpoints and the Retry edit after it apply', async () => {
    const lines = bigSlice(50_000);
    let longest = 0;
    let last = performance.now();
    const probe = setInterval(() => {
      const now = performance.now();
      longest = Math.max(longest, now - last);
      last = now;
    }, 10);
    try {
      writeFileSync(path.join(dir, 'big.yaml'), `${lines.join('\n')}\n`);
      const s = await until((x) => x.endpointSlices.some((e) => e.name === 'httpbin-big'), 20_000);
      expect(s.endpointSlices.find((e) => e.name === 'httpbin-big')!.addresses).toHaveLength(50_000);
      editRetry(9);
      await until((x) => numRetries(x) === 9);
    } finally {
      clearInterval(probe);
    }
    // Parsed on the event loop, the file held it for 2 to 3 s (YAML costs about 0.7 s per MB).
    expect(longest).toBeLessThan(1_000);
  });

  it('the pipeline encodes its 50,000 endpoints a slice per turn of the event loop, to the bytes the one-shot encoding makes', async () => {
    writeFileSync(path.join(dir, 'big.yaml'), `${bigSlice(50_000).join('\n')}\n`);
    const state = await until((x) => x.endpointSlices.some((e) => e.name === 'httpbin-big'), 20_000);
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
  });
});

/** An EndpointSlice of httpbin with n endpoints, as lines of YAML. */
function bigSlice(n: number): string[] {
  const lines = ['apiVersion: discovery.k8s.io/v1', 'kind: EndpointSlice', 'metadata: {name: httpbin-big, namespace: httpbin, labels: {kubernetes.io/service-name: httpbin}}', 'addressType: IPv4', 'ports: [{name: http, port: 14001}]', 'endpoints:'];
  for (let i = 0; i < n; i++) lines.push(`- addresses: ["10.${100 + (i >> 16)}.${(i >> 8) & 255}.${i & 255}"]`, '  conditions: {ready: true}');
  return lines;
}

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
  };
}
