/**
 * Retry amplification along call paths (compile/amplification.ts), offline (`mesh-xds policy amplification`) and
 * live (/debug/amplification, mesh_xds_retry_amplification_max): a chain of Retries multiplies its attempts, a
 * path that comes back is cut and marked, the worst time follows per-try timeouts and Envoy's backoff, and a dense
 * call graph is walked within a bound.
 */
import { execFile, spawnSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { allToAllState, allToAllYaml } from '../bench/amplification-worst.js';
import { amplification, amplificationResponse, backoffMs, MAX_ATTEMPTS, MAX_PATHS, MAX_RESPONSE_BYTES } from '../src/compile/amplification.js';
import { compile } from '../src/compile/compile.js';
import type { AppliedRetry } from '../src/compile/ir.js';
import { parseServeArgs } from '../src/config.js';
import { retryStatus } from '../src/outputs/retry-status.js';
import { startDemo } from './helpers/demo.js';
import { meshFromYaml } from './helpers/mesh.js';
import { tempDir } from './helpers/tmp.js';

const ROOT = path.join(import.meta.dirname, '..');
const CHAIN = path.join(import.meta.dirname, 'fixtures/amplification-chain.yaml');
const chainText = readFileSync(CHAIN, 'utf8');
/** The chain without d -> b: no cycle. */
const acyclic = chainText.slice(0, chainText.lastIndexOf('---'));

const cli = (...args: string[]) => spawnSync(process.execPath, [path.join(ROOT, 'bin/mesh-xds.js'), 'policy', 'amplification', ...args], { encoding: 'utf8', cwd: ROOT });

describe('retry amplification', () => {
  it('multiplies attempts along a chain of Retries; the worst time follows per-try timeouts and backoffs', () => {
    const { ir } = meshFromYaml(acyclic);
    expect(amplification(ir)).toEqual({
      paths: [
        {
          attempts: 24,
          // c -> d: 2 x 50 ms + 25 ms (Envoy's default base); b -> c: 3 x min(250, 125) + 10 + 20; a -> b: 4 x min(1 s, 405 ms) + 100 + 200 + 400.
          latency: '2.32s',
          cycle: false,
          hops: [
            { from: 'chain/a', to: 'chain/b', retry: 'chain/a-to-b', attempts: 4 },
            { from: 'chain/b', to: 'chain/c', retry: 'chain/b-to-c', attempts: 3 },
            { from: 'chain/c', to: 'chain/d', retry: 'chain/c-to-d', attempts: 2 },
          ],
        },
      ],
    });
  });

  it('cuts a path that comes back to an identity on it, and marks it; a cycle no caller enters is walked too', () => {
    const { paths } = amplification(meshFromYaml(chainText).ir);
    expect(paths).toHaveLength(1);
    expect(paths[0]).toMatchObject({ attempts: 48, latency: '2.32s', cycle: true });
    expect(paths[0]!.hops.map((h) => `${h.from}>${h.to}`)).toEqual(['chain/a>chain/b', 'chain/b>chain/c', 'chain/c>chain/d', 'chain/d>chain/b']);
    // Without a -> b, nothing enters the cycle b -> c -> d -> b: it is walked from b (d -> b has no per-try
    // timeout, so an attempt there lasts what b's path may).
    const cycle = amplification(meshFromYaml(chainText.replace(/kind: Retry\napiVersion: policy.flomesh.io\/v1alpha1\nmetadata: \{name: a-to-b[\s\S]*?---\n/, '')).ir).paths;
    expect(cycle.map((p) => [p.attempts, p.latency, p.cycle, p.hops.map((h) => h.from).join(',')])).toEqual([[12, '405ms', true, 'chain/b,chain/c,chain/d']]);
  });

  it('walks a chain of 2,000 Retries whole; its attempts saturate at the ceiling, and say so', () => {
    const n = 2_000;
    const docs = ['apiVersion: v1\nkind: Namespace\nmetadata: {name: long, labels: {flomesh.io/monitored-by: mesh-xds}}'];
    for (let i = 0; i <= n; i++) {
      docs.push(`apiVersion: v1\nkind: Service\nmetadata: {name: s${i}, namespace: long}\nspec: {clusterIP: 10.97.${i >> 8}.${i & 255}, selector: {app: s${i}}, ports: [{port: 80}]}`);
      docs.push(`apiVersion: v1\nkind: Pod\nmetadata: {name: p${i}, namespace: long, labels: {app: s${i}}}\nspec: {serviceAccountName: sa${i}, containers: [{name: app}]}\nstatus: {phase: Running, podIP: 10.3.${i >> 8}.${i & 255}}`);
      if (i < n) docs.push(`kind: Retry\napiVersion: policy.flomesh.io/v1alpha1\nmetadata: {name: r${i}, namespace: long}\nspec:\n  source: {kind: ServiceAccount, name: sa${i}, namespace: long}\n  destinations: [{kind: Service, name: s${i + 1}, namespace: long}]\n  retryPolicy: {retryOn: 5xx, numRetries: 1, perTryTimeout: 1s}`);
    }
    const report = amplification(meshFromYaml(docs.join('\n---\n'), { enableRetryPolicy: true }).ir);
    expect(report.truncated).toBeUndefined();
    expect(report.paths).toHaveLength(1);
    expect(report.paths[0]!.hops).toHaveLength(n);
    // 2^2000 once (Infinity); past a million, the path is saturated and followed one way to its end.
    expect(report.paths[0]).toMatchObject({ attempts: MAX_ATTEMPTS, saturated: true, cycle: false });
  });

  it('adds backoffs as Envoy caps them: 1, 2, 4, 8 times base, then 10 times base each', () => {
    const retry = { policy: 'x/y', spec: { backoffBaseInterval: { seconds: 0, nanos: 10_000_000 } } } as unknown as AppliedRetry;
    expect([1, 2, 3, 4, 5, 6].map((r) => backoffMs(retry, r))).toEqual([10, 30, 70, 150, 250, 350]);
    expect(backoffMs(retry, 2 ** 32 - 1)).toBe(10 * (15 + (2 ** 32 - 5) * 10));
  });

  it('a last hop with no per-try timeout is unbounded; the callers above it are bounded by their own', () => {
    const { paths } = amplification(meshFromYaml(acyclic.replace('perTryTimeout: 50ms, ', '')).ir);
    expect(paths.map((p) => [p.attempts, p.latency])).toEqual([[24, '3.82s']]);
    // Alone, c -> d has nothing to bound it.
    const alone = amplification(meshFromYaml(acyclic.replace('perTryTimeout: 50ms, ', '').replace(/kind: Retry\napiVersion: policy.flomesh.io\/v1alpha1\nmetadata: \{name: [ab]-to-[bc][\s\S]*?---\n/g, '')).ir).paths;
    expect(alone.map((p) => [p.attempts, p.latency])).toEqual([[2, 'unbounded']]);
  });

  it('knows no path while retries are off, and searches a dense call graph within its bounds, worst paths first', () => {
    expect(amplification(meshFromYaml(acyclic.replace('enableRetryPolicy: true', 'enableRetryPolicy: false')).ir).paths).toEqual([]);
    // Twelve identities each retrying to the services of all the others: 11! paths; the walk stops at its bound.
    const n = 12;
    const docs = ['apiVersion: v1\nkind: Namespace\nmetadata: {name: dense, labels: {flomesh.io/monitored-by: mesh-xds}}'];
    for (let i = 0; i < n; i++) {
      docs.push(`apiVersion: v1\nkind: Service\nmetadata: {name: s${i}, namespace: dense}\nspec: {clusterIP: 10.96.20.${i + 1}, selector: {app: s${i}}, ports: [{port: 80}]}`);
      docs.push(`apiVersion: v1\nkind: Pod\nmetadata: {name: p${i}, namespace: dense, labels: {app: s${i}}}\nspec: {serviceAccountName: sa${i}, containers: [{name: app}]}\nstatus: {phase: Running, podIP: 10.2.0.${i + 1}}`);
      const others = Array.from({ length: n }, (_, j) => j).filter((j) => j !== i);
      docs.push(
        `kind: Retry\napiVersion: policy.flomesh.io/v1alpha1\nmetadata: {name: r${i}, namespace: dense}\nspec:\n  source: {kind: ServiceAccount, name: sa${i}, namespace: dense}\n  destinations: [${others.map((j) => `{kind: Service, name: s${j}, namespace: dense}`).join(', ')}]\n  retryPolicy: {retryOn: 5xx, numRetries: 1}`,
      );
    }
    const { ir } = meshFromYaml(docs.join('\n---\n'), { enableRetryPolicy: true });
    const report = amplification(ir);
    expect(report.truncated).toBe(true);
    expect(report.paths).toHaveLength(MAX_PATHS);
    // Every path listed is a worst one: all twelve identities, 2^12 attempts.
    expect(new Set(report.paths.map((p) => `${p.attempts} ${p.hops.length}`))).toEqual(new Set(['4096 12']));
    // A cycle of three with numRetries 20 beside it (21^3 = 9,261 attempts), which nothing enters and which sorts
    // after the dense twelve: it is found first all the same (a depth-first walk ran out of steps before it).
    const three = ['a', 'b', 'c'].map((x, i) => [
      `apiVersion: v1\nkind: Service\nmetadata: {name: ${x}, namespace: zz}\nspec: {clusterIP: 10.96.30.${i + 1}, selector: {app: ${x}}, ports: [{port: 80}]}`,
      `apiVersion: v1\nkind: Pod\nmetadata: {name: ${x}, namespace: zz, labels: {app: ${x}}}\nspec: {serviceAccountName: ${x}, containers: [{name: app}]}\nstatus: {phase: Running, podIP: 10.3.0.${i + 1}}`,
      `kind: Retry\napiVersion: policy.flomesh.io/v1alpha1\nmetadata: {name: ${x}, namespace: zz}\nspec:\n  source: {kind: ServiceAccount, name: ${x}, namespace: zz}\n  destinations: [{kind: Service, name: ${'abc'[(i + 1) % 3]}, namespace: zz}]\n  retryPolicy: {retryOn: 5xx, numRetries: 20}`,
    ]);
    const both = amplification(meshFromYaml([...docs, 'apiVersion: v1\nkind: Namespace\nmetadata: {name: zz, labels: {flomesh.io/monitored-by: mesh-xds}}', ...three.flat()].join('\n---\n'), { enableRetryPolicy: true }).ir);
    expect(both.paths[0]).toMatchObject({ attempts: 9261, cycle: true, hops: [{ from: 'zz/a' }, { from: 'zz/b' }, { from: 'zz/c' }] });
    expect(both.paths.slice(1).every((p) => p.attempts === 4096)).toBe(true);
  });

  it('200 identities retrying (numRetries 10) to each other: a bounded answer, attempts saturated, the response within its size', () => {
    const heapBefore = process.memoryUsage().heapUsed;
    const state = allToAllState(200, 10);
    const ir = compile(state);
    const report = amplification(ir);
    // Once: 1.9e208 attempts, 1,000 paths of 200 hops, a 15-28 MB answer, 3.5 s and 859 MB.
    expect(report.truncated).toBe(true);
    expect(report.paths.length).toBeGreaterThan(0);
    expect(report.paths.length).toBeLessThanOrEqual(MAX_PATHS);
    expect(report.paths.every((p) => p.attempts === MAX_ATTEMPTS && p.saturated)).toBe(true);
    // Compile names the Retries of saturated paths in their status.
    const warned = ir.policies.filter((p) => p.warnings?.some((w) => w.condition === 'RetryAmplification'));
    expect(warned.length).toBeGreaterThan(0);
    expect(warned[0]!.warnings![0]!.message).toMatch(/^on a call path of at least 1000000 attempts at its last service for one request, over the mesh's bound of 10/);
    const body = `${JSON.stringify(amplificationResponse(report), null, 2)}\n`;
    expect(body.length).toBeLessThanOrEqual(MAX_RESPONSE_BYTES);
    // What the IR and both reports hold (the mesh has 39,800 Retry edges), generously.
    expect(process.memoryUsage().heapUsed - heapBefore).toBeLessThan(256 * 2 ** 20);
  });

  it("/debug/amplification's answer is bounded: the worst paths that fit, and how many more were left out", () => {
    // Long names make each path's hops three times longer: the 1,000 paths no longer fit in a megabyte.
    const namespace = `n${'x'.repeat(61)}`;
    const report = amplification(compile(allToAllState(200, 10, namespace)));
    // As the debug server writes it: indented by 2.
    const json = (x: unknown): string => `${JSON.stringify(x, null, 2)}\n`;
    expect(json(report).length).toBeGreaterThan(MAX_RESPONSE_BYTES);
    const response = amplificationResponse(report);
    expect(json(response).length).toBeLessThanOrEqual(MAX_RESPONSE_BYTES);
    expect(json(response).length).toBeGreaterThan(MAX_RESPONSE_BYTES - 4096);
    expect(response.omitted).toBeGreaterThan(0);
    expect(response.paths.length + response.omitted!).toBe(report.paths.length);
    expect(response.paths).toEqual(report.paths.slice(0, response.paths.length));
    expect(response.truncated).toBe(true);
    // A report that fits is answered as it is.
    const small = amplification(meshFromYaml(acyclic).ir);
    expect(amplificationResponse(small)).toBe(small);
  });

  it('is served live within its bounds for the 200 identities: /debug/amplification, the metric, and /healthz meanwhile', async () => {
    const demo = await startDemo((dir) => writeFileSync(path.join(dir, 'dense.yaml'), allToAllYaml(200, 10)));
    try {
      const res = await fetch(`${demo.debug}/debug/amplification`);
      const text = await res.text();
      expect(res.status).toBe(200);
      expect(text.length).toBeLessThanOrEqual(MAX_RESPONSE_BYTES);
      const body = JSON.parse(text);
      expect(body.truncated).toBe(true);
      expect(body.paths[0]).toMatchObject({ attempts: MAX_ATTEMPTS, saturated: true });
      const metrics = await fetch(`${demo.debug}/metrics`).then((r) => r.text());
      expect(metrics).toMatch(new RegExp(`^mesh_xds_retry_amplification_max ${MAX_ATTEMPTS}$`, 'm'));
      expect((await fetch(`${demo.debug}/healthz`)).status).toBe(200);
    } finally {
      await demo.close();
    }
  });

  it('mesh-xds policy amplification: a table, -o json exactly, and --max that fails naming each path over it', () => {
    const dir = tempDir('mesh-xds-amplification-');
    writeFileSync(path.join(dir, 'chain.yaml'), acyclic);
    const table = cli('-f', dir);
    expect(table.status, table.stderr).toBe(0);
    expect(table.stdout).toContain('chain/a -> chain/b (x4) -> chain/c (x3) -> chain/d (x2)');
    expect(table.stdout.split('\n')[1]).toMatch(/^24\s+2\.32s\s+chain\/a/);
    const json = cli('-f', path.join(dir, 'chain.yaml'), '-o', 'json');
    expect(JSON.parse(json.stdout)).toEqual(amplification(meshFromYaml(acyclic).ir));
    const over = cli('-f', dir, '--max', '10');
    expect(over.status).toBe(1);
    expect(over.stderr.trim().split('\n')).toEqual(['mesh-xds: 24 attempts (over --max 10): chain/a -> chain/b (x4) -> chain/c (x3) -> chain/d (x2)']);
    expect(cli('-f', dir, '--max', '24').status).toBe(0);
    expect(cli('--max', '3').status).toBe(2);
  });

  it('is served live: /debug/amplification and mesh_xds_retry_amplification_max follow an edit', async () => {
    const demo = await startDemo((dir) => writeFileSync(path.join(dir, 'chain.yaml'), acyclic));
    try {
      const body = await fetch(`${demo.debug}/debug/amplification`).then((r) => r.json());
      expect(body.paths[0]).toMatchObject({ attempts: 24, cycle: false });
      const metric = async (): Promise<number> => Number(/^mesh_xds_retry_amplification_max (\d+)/m.exec(await fetch(`${demo.debug}/metrics`).then((r) => r.text()))?.[1]);
      expect(await metric()).toBe(24);
      demo.edit('chain.yaml', (t) => t.replace('numRetries: 3', 'numRetries: 5'));
      for (let i = 0; i < 100 && (await metric()) !== 36; i++) await new Promise((r) => setTimeout(r, 50));
      expect(await metric()).toBe(36);
    } finally {
      await demo.close();
    }
  });

  it("warns each Retry on a path over the mesh's bound in its report and status (it stays Accepted); the bound is the mesh's", () => {
    const { ir } = meshFromYaml(acyclic);
    const byName = Object.fromEntries(ir.policies.map((p) => [p.name, p]));
    // Only the 24-attempt path crosses the default bound of 10: its three Retries are warned; none is rejected.
    expect(ir.policies.every((p) => p.state === 'Accepted')).toBe(true);
    expect(byName['a-to-b']!.warnings).toEqual([
      { condition: 'RetryAmplification', message: "on a call path of 24 attempts at its last service for one request, over the mesh's bound of 10: chain/a -> chain/b (x4) -> chain/c (x3) -> chain/d (x2)" },
    ]);
    expect(byName['c-to-d']!.warnings).toEqual(byName['a-to-b']!.warnings);
    const status = retryStatus(byName['a-to-b']!, 3, undefined);
    expect(status.conditions.map((c) => [c.type, c.status, c.reason])).toEqual([
      ['Accepted', 'True', 'Accepted'],
      ['RetryAmplification', 'True', 'OverBound'],
    ]);
    expect(status.conditions[1]!.message).toContain('chain/a -> chain/b (x4)');
    expect(byName['a-to-b']!.state).toBe('Accepted');
    // A bound of 24 (serve --max-retry-amplification 24): no warning, and the condition goes.
    const relaxed = meshFromYaml(acyclic, { maxRetryAmplification: 24 }).ir;
    expect(relaxed.policies.some((p) => p.warnings)).toBe(false);
    expect(retryStatus(relaxed.policies[0]!, 3, status).conditions.map((c) => c.type)).toEqual(['Accepted']);
    expect(parseServeArgs(['--manifests', '.', '--max-retry-amplification', '24']).overrides).toEqual({ maxRetryAmplification: 24 });
    expect(() => parseServeArgs(['--manifests', '.', '--max-retry-amplification', '0'])).toThrow(/--max-retry-amplification 0: a whole number of attempts, at least 1/);
  });

  it('policy explain shows the worst call path through the pair', async () => {
    const demo = await startDemo((dir) => writeFileSync(path.join(dir, 'chain.yaml'), acyclic));
    try {
      const body = await fetch(`${demo.debug}/debug/explain?from=chain/b&to=chain/c`).then((r) => r.json());
      expect(body.worstPath).toMatchObject({ attempts: 24, hops: [{ from: 'chain/a' }, { from: 'chain/b', to: 'chain/c' }, { from: 'chain/c' }] });
      // Not spawnSync: the server answering it runs in this process.
      const out = await new Promise<{ stdout: string }>((resolve, reject) =>
        execFile(process.execPath, [path.join(ROOT, 'bin/mesh-xds.js'), 'policy', 'explain', '--from', 'chain/b', '--to', 'chain/c', '--debug-url', demo.debug], (err, stdout) => (err ? reject(err) : resolve({ stdout }))),
      );
      expect(out.stdout).toContain('worst call path through it: 24 attempts, 2.32s: chain/a -> chain/b (x4) -> chain/c (x3) -> chain/d (x2)');
    } finally {
      await demo.close();
    }
  });

  it('names pitfalls in the status (condition Pitfall), validate and explain: huge numRetries, gRPC conditions on plain HTTP, a TCP-only service', () => {
    const text = acyclic
      .replace('numRetries: 3, retryBackoffBaseInterval: 100ms', 'numRetries: 4294967295, retryBackoffBaseInterval: 100ms')
      .replace('retryPolicy: {retryOn: 5xx, perTryTimeout: 250ms', 'retryPolicy: {retryOn: "unavailable,cancelled", perTryTimeout: 250ms')
      .replace("spec: {clusterIP: 10.96.10.4, selector: {app: d}, ports: [{name: http, port: 80, targetPort: 8080}]}", "spec: {clusterIP: 10.96.10.4, selector: {app: d}, ports: [{name: tcp-db, port: 5432, appProtocol: tcp}]}");
    const { ir } = meshFromYaml(text);
    const pitfalls = (name: string): string[] => (ir.policies.find((p) => p.name === name)!.warnings ?? []).filter((w) => w.condition === 'Pitfall').map((w) => w.message);
    expect(pitfalls('a-to-b')).toEqual([expect.stringMatching(/^retryPolicy\.numRetries: 4294967295 retries is more than any service needs/)]);
    expect(pitfalls('b-to-c')).toEqual([expect.stringMatching(/^retryPolicy\.retryOn: unavailable,cancelled are gRPC conditions, which never fire on Service chain\/c: its ports speak plain HTTP/)]);
    expect(pitfalls('c-to-d')).toEqual(['Service chain/d has only TCP ports: Envoy retries HTTP requests, so this Retry never applies to it']);
    expect(ir.policies.every((p) => p.state === 'Accepted')).toBe(true);
    // c -> d also lies on a path of 4294967296 x 3 x 2 attempts (computed in closed form, at once).
    const status = retryStatus(ir.policies.find((p) => p.name === 'c-to-d')!, 1, undefined);
    expect(status.conditions.map((c) => [c.type, c.reason])).toEqual([
      ['Accepted', 'Accepted'],
      ['RetryAmplification', 'OverBound'],
      ['Pitfall', 'Pitfall'],
    ]);
    // The guide's own Retry has none.
    expect(meshFromYaml(readFileSync(path.join(ROOT, 'deploy/demo/retry.yaml'), 'utf8') + '\n---\n' + readFileSync(path.join(ROOT, 'deploy/demo/httpbin.yaml'), 'utf8')).ir.policies.some((p) => p.warnings)).toBe(false);
    // validate: valid, with the warning at the field's line.
    const dir = tempDir('mesh-xds-pitfalls-');
    writeFileSync(path.join(dir, 'r.yaml'), 'kind: Retry\napiVersion: policy.flomesh.io/v1alpha1\nmetadata: {name: huge, namespace: curl}\nspec:\n  source: {kind: ServiceAccount, name: curl, namespace: curl}\n  destinations: [{kind: Service, name: httpbin, namespace: httpbin}]\n  retryPolicy:\n    retryOn: 5xx\n    numRetries: 4294967295\n');
    const v = spawnSync(process.execPath, [path.join(ROOT, 'bin/mesh-xds.js'), 'validate', '-f', path.join(dir, 'r.yaml'), '-o', 'json'], { encoding: 'utf8' });
    expect(v.status).toBe(0);
    expect(JSON.parse(v.stdout).objects).toEqual([
      { file: path.join(dir, 'r.yaml'), object: 'Retry curl/huge', line: 1, valid: true, problems: [{ field: 'spec.retryPolicy.numRetries', line: 9, message: expect.stringMatching(/^warning: retryPolicy\.numRetries: 4294967295 retries/) }] },
    ]);
  });
});
