/**
 * The CLI's output through a pipe (issue 33): a command whose output is far over a pipe's 64 KiB is read whole
 * by the command after `|`, even a slow one, and a reader that closes early (`| head`) ends the command quietly
 * with a non-zero code. Real child processes of bin/mesh-xds.js in a real bash pipeline.
 */
import { spawn } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { ROOT } from './helpers/cli.js';
import { tempDir } from './helpers/tmp.js';

const BIN = path.join(ROOT, 'bin/mesh-xds.js');
const PIPE_BYTES = 64 * 1024;

/** `mesh-xds ARGS | READER` in bash: what the reader printed, mesh-xds's stderr and its exit code (PIPESTATUS[0]). */
function pipeline(args: string[], reader: string): Promise<{ out: string; err: string; code: number }> {
  // mesh-xds's stderr goes to fd 3, so that the test sees it apart from the reader's output.
  const script = `"$0" "$@" 2>&3 | ${reader}; echo "\${PIPESTATUS[0]}" >&4`;
  const child = spawn('bash', ['-c', script, process.execPath, BIN, ...args], { cwd: ROOT, stdio: ['ignore', 'pipe', 'inherit', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  let code = '';
  child.stdout!.on('data', (d) => (out += d));
  child.stdio[3]!.on('data', (d) => (err += d));
  child.stdio[4]!.on('data', (d) => (code += d));
  return new Promise((resolve) => child.on('close', () => resolve({ out, err, code: Number(code.trim()) })));
}

const SLOW_READER = '(sleep 0.5; cat)';

let dir: string;
beforeAll(() => {
  dir = tempDir('mesh-xds-pipe-');
  // 60 Deployments to inject: the issue's `inject -f F | kubectl apply -f -` got 9 of 40.
  const deployments = Array.from(
    { length: 60 },
    (_, i) =>
      `apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: app-${i}, namespace: apps}\nspec:\n  replicas: 1\n  selector: {matchLabels: {app: app-${i}}}\n  template:\n    metadata: {labels: {app: app-${i}}}\n    spec:\n      serviceAccountName: app-${i}\n      containers:\n      - name: app\n        image: example/app:1\n        ports: [{containerPort: 8080}]\n`,
  );
  writeFileSync(path.join(dir, 'deployments.yaml'), deployments.join('---\n'));
  // A chain of 800 Retries: its one call path, in JSON, is far over 64 KiB.
  const n = 800;
  const docs = ['apiVersion: v1\nkind: Namespace\nmetadata: {name: long, labels: {flomesh.io/monitored-by: mesh-xds}}', 'apiVersion: config.flomesh.io/v1alpha3\nkind: MeshConfig\nmetadata: {name: m, namespace: mesh-xds}\nspec: {featureFlags: {enableRetryPolicy: true}}'];
  for (let i = 0; i <= n; i++) {
    docs.push(`apiVersion: v1\nkind: Service\nmetadata: {name: s${i}, namespace: long}\nspec: {clusterIP: 10.97.${i >> 8}.${i & 255}, selector: {app: s${i}}, ports: [{port: 80}]}`);
    docs.push(`apiVersion: v1\nkind: Pod\nmetadata: {name: p${i}, namespace: long, labels: {app: s${i}}}\nspec: {serviceAccountName: sa${i}, containers: [{name: app}]}\nstatus: {phase: Running, podIP: 10.3.${i >> 8}.${i & 255}}`);
    if (i < n) docs.push(`kind: Retry\napiVersion: policy.flomesh.io/v1alpha1\nmetadata: {name: r${i}, namespace: long}\nspec:\n  source: {kind: ServiceAccount, name: sa${i}, namespace: long}\n  destinations: [{kind: Service, name: s${i + 1}, namespace: long}]\n  retryPolicy: {retryOn: 5xx, numRetries: 1, perTryTimeout: 1s}`);
  }
  writeFileSync(path.join(dir, 'chain.yaml'), docs.join('\n---\n'));
  // 500 files of one Retry each, for validate -o json of a folder.
  mkdirSync(path.join(dir, 'retries'));
  for (let i = 0; i < 500; i++) {
    writeFileSync(
      path.join(dir, 'retries', `retry-${i}.yaml`),
      `kind: Retry\napiVersion: policy.flomesh.io/v1alpha1\nmetadata: {name: r${i}, namespace: curl}\nspec:\n  source: {kind: ServiceAccount, name: c${i}, namespace: curl}\n  destinations: [{kind: Service, name: httpbin, namespace: httpbin}]\n  retryPolicy: {retryOn: 5xx, numRetries: 2, perTryTimeout: 1s}\n`,
    );
  }
});

describe('the CLI through a pipe', () => {
  it('inject -f of 60 Deployments: every one reaches a slow reader, exit 0', async () => {
    const r = await pipeline(['inject', '-f', path.join(dir, 'deployments.yaml')], SLOW_READER);
    expect(r.err).toBe('');
    expect(r.code).toBe(0);
    expect(r.out.length).toBeGreaterThan(PIPE_BYTES);
    const { parseAllDocuments } = await import('yaml');
    const docs = parseAllDocuments(r.out).map((d) => d.toJS() as { metadata: { name: string }; spec: { template: { spec: { containers: { name: string }[] } } } });
    expect(docs.map((d) => d.metadata.name)).toEqual(Array.from({ length: 60 }, (_, i) => `app-${i}`));
    // Each whole, down to the last: the sidecar injected in all of them.
    for (const d of docs) expect(d.spec.template.spec.containers.length).toBeGreaterThan(1);
  });

  it('policy amplification -o json of a big graph is whole JSON through | cat', async () => {
    const r = await pipeline(['policy', 'amplification', '-f', path.join(dir, 'chain.yaml'), '-o', 'json'], 'cat');
    expect(r.code).toBe(0);
    expect(r.out.length).toBeGreaterThan(PIPE_BYTES);
    const report = JSON.parse(r.out) as { paths: { hops: unknown[] }[] };
    expect(report.paths[0]!.hops).toHaveLength(800);
  });

  it('validate -o json of a folder of 500 files is whole JSON through a slow reader', async () => {
    const r = await pipeline(['validate', '-f', path.join(dir, 'retries'), '-o', 'json'], SLOW_READER);
    expect(r.code).toBe(0);
    expect(r.out.length).toBeGreaterThan(PIPE_BYTES);
    const out = JSON.parse(r.out) as { objects: { object: string }[] };
    for (let i = 0; i < 500; i++) expect(out.objects.map((o) => o.object)).toContain(`Retry curl/r${i}`);
  });

  it('a reader that closes early (| head -c 100): a quiet exit, non-zero, no stack trace', async () => {
    const r = await pipeline(['inject', '-f', path.join(dir, 'deployments.yaml')], 'head -c 100 >/dev/null');
    expect(r.code).toBe(141);
    expect(r.err).toBe('');
  });
});

describe('standard input', () => {
  it('`inject -f -` holds no more of its input than the server reads of a file (4 MiB): a bigger one is refused, naming the bound', async () => {
    const child = spawn(process.execPath, [BIN, 'inject', '-f', '-'], { cwd: ROOT, stdio: ['pipe', 'pipe', 'pipe'] });
    let err = '';
    child.stderr.on('data', (d) => (err += d));
    child.stdin.on('error', () => {});
    // 6 MiB, written in pieces; the command stops reading after the bound.
    const piece = Buffer.alloc(256 * 1024, 0x61);
    for (let i = 0; i < 24 && !child.stdin.destroyed; i++) child.stdin.write(piece);
    child.stdin.end();
    const code = await new Promise<number | null>((resolve) => child.on('close', resolve));
    expect(code).toBe(1);
    expect(err.trim()).toBe('mesh-xds: inject: -f -: bigger than 4 MiB, which the server does not read either');
  });
});
