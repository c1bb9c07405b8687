/** The folder source on real files: parse, watch, debounce, errors that keep the last good objects. */
import { mkdtempSync, readFileSync, rmSync, writeFileSync, unlinkSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pino from 'pino';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { FileSource } from '../src/sources/files.js';
import { loadRetrySchema } from '../src/sources/crd.js';
import type { MeshState } from '../src/model/mesh.js';
import { DEMO } from './helpers/demo.js';

let dir: string;
let source: FileSource;
let states: MeshState[];

function next(ms = 3000): Promise<MeshState> {
  const n = states.length;
  return new Promise((resolve, reject) => {
    const until = Date.now() + ms;
    const tick = (): void => {
      if (states.length > n) resolve(states[states.length - 1]);
      else if (Date.now() > until) reject(new Error('no change picked up'));
      else setTimeout(tick, 20);
    };
    tick();
  });
}

beforeEach(() => {
  dir = mkdtempSync(path.join(os.tmpdir(), 'mesh-xds-files-'));
  for (const f of ['httpbin.yaml', 'curl.yaml', 'mesh.yaml', 'retry.yaml']) writeFileSync(path.join(dir, f), readFileSync(path.join(DEMO, f)));
  states = [];
  source = new FileSource({ dir, meshName: 'mesh-xds', log: pino({ level: 'silent' }), retrySchema: loadRetrySchema(), debounceMs: 50, onChange: (s) => states.push(s) });
});

afterEach(() => {
  source.stop();
  rmSync(dir, { recursive: true, force: true });
});

describe('folder source', () => {
  it('reads every manifest, with the mesh config and --set overrides', async () => {
    const s = await source.start();
    expect(s.namespaces.map((n) => n.name).sort()).toEqual(['curl', 'httpbin']);
    expect(s.services.map((x) => `${x.namespace}/${x.name}`).sort()).toEqual(['curl/curl', 'httpbin/httpbin']);
    expect(s.retries.map((r) => r.name)).toEqual(['retry']);
    expect(s.meshConfig.enableRetryPolicy).toBe(true);
  });

  it('picks up a change by itself', async () => {
    await source.start();
    writeFileSync(path.join(dir, 'retry.yaml'), readFileSync(path.join(dir, 'retry.yaml'), 'utf8').replace('numRetries: 5', 'numRetries: 2'));
    const s = await next();
    expect((s.retries[0].spec as any).retryPolicy.numRetries).toBe(2);
  });

  it('keeps the last good objects of a file that does not parse, and reports where', async () => {
    await source.start();
    writeFileSync(path.join(dir, 'retry.yaml'), 'kind: Retry\nmetadata: {name: retry\n  bad: [\n');
    const s = await next();
    expect((s.retries[0].spec as any).retryPolicy.numRetries).toBe(5);
    expect(source.errors[0]).toMatchObject({ file: 'retry.yaml', doc: 0 });
    expect(source.errors[0].line).toBeGreaterThan(0);
  });

  it("rejects a Retry that fails the CRD schema, naming file, document, the field's own line, object and field; keeps its last good version", async () => {
    await source.start();
    const text = readFileSync(path.join(dir, 'retry.yaml'), 'utf8');
    const extra = `apiVersion: v1\nkind: ConfigMap\nmetadata: {name: unrelated, namespace: curl}\n---\n`;
    writeFileSync(path.join(dir, 'retry.yaml'), extra + text.replace('numRetries: 5', 'numRetries: -3'));
    const s = await next();
    expect((s.retries[0].spec as any).retryPolicy.numRetries).toBe(5);
    expect(source.errors).toEqual([
      { file: 'retry.yaml', doc: 1, line: 23, object: 'Retry curl/retry', field: 'spec.retryPolicy.numRetries', message: 'must be >= 0 (Retry CRD schema)' },
    ]);
    // Fixed: the error goes and the new value is used.
    writeFileSync(path.join(dir, 'retry.yaml'), text.replace('numRetries: 5', 'numRetries: 7'));
    const s2 = await next();
    expect((s2.retries[0].spec as any).retryPolicy.numRetries).toBe(7);
    expect(source.errors).toEqual([]);
  });

  it('reports a bad object without losing the other objects of its file', async () => {
    await source.start();
    writeFileSync(path.join(dir, 'more.yaml'), 'apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: extra, namespace: curl}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: nope, namespace: curl}\nspec: {ports: [{port: 99999}]}\n');
    const s = await next();
    expect(s.serviceAccounts.map((a) => a.name)).toContain('extra');
    expect(s.services.map((a) => a.name)).not.toContain('nope');
    expect(source.errors[0]).toMatchObject({ file: 'more.yaml', doc: 1, object: 'Service curl/nope', field: 'spec.clusterIP' });
  });

  it("a Service on another Service's ClusterIP is an error naming both and their files; the first keeps the address", async () => {
    await source.start();
    const rogue = 'apiVersion: v1\nkind: Service\nmetadata: {name: rogue, namespace: httpbin}\nspec:\n  clusterIP: 10.96.198.23\n  ports: [{port: 14001}]\n';
    writeFileSync(path.join(dir, 'zz-rogue.yaml'), rogue);
    let s = await next();
    expect(s.services.map((x) => `${x.namespace}/${x.name}`).sort()).toEqual(['curl/curl', 'httpbin/httpbin']);
    expect(source.errors).toEqual([
      {
        file: 'zz-rogue.yaml',
        doc: 0,
        line: 1,
        object: 'Service httpbin/rogue',
        field: 'spec.clusterIP',
        message: 'spec.clusterIP 10.96.198.23 is already the address of Service httpbin/httpbin (httpbin.yaml:15), which keeps it (the first in path order); this Service is ignored until one of them changes its address',
      },
    ]);
    // Another address: both are served, the error is gone.
    writeFileSync(path.join(dir, 'zz-rogue.yaml'), rogue.replace('10.96.198.23', '10.96.198.24'));
    s = await next();
    expect(s.services.map((x) => `${x.namespace}/${x.name}`).sort()).toEqual(['curl/curl', 'httpbin/httpbin', 'httpbin/rogue']);
    expect(source.errors).toEqual([]);
  });

  it('drops the objects of a deleted file', async () => {
    await source.start();
    unlinkSync(path.join(dir, 'retry.yaml'));
    const s = await next();
    expect(s.retries).toEqual([]);
  });
});

describe('object names', () => {
  it('a name the API server would refuse is an error on that object only', async () => {
    const { convertObjects } = await import('../src/sources/manifests.js');
    const r = convertObjects([
      { object: { apiVersion: 'v1', kind: 'Service', metadata: { name: 'Web\nx', namespace: 'app' }, spec: { clusterIP: '10.0.0.1', ports: [{ port: 80 }] } }, origin: { file: 'a.yaml', doc: 0, line: 1 } },
      { object: { apiVersion: 'v1', kind: 'ServiceAccount', metadata: { name: 'ok', namespace: 'app' } }, origin: { file: 'a.yaml', doc: 1, line: 5 } },
    ]);
    expect(r.errors).toEqual([expect.objectContaining({ file: 'a.yaml', doc: 0, field: 'metadata.name' })]);
    expect(r.objects.serviceAccounts).toEqual([{ namespace: 'app', name: 'ok' }]);
  });
});
