/**
 * The Retry CRD's schema check is ajv's code generated ahead (src/sources/retry-schema.generated.ts), so that
 * `mesh-xds validate` and the server need not load ajv and compile the CRD at every start: it must be the code
 * ajv compiles from the CRD as it is now, and check as the compiled schema does.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadRetrySchema, RETRY_CRD, retrySchemaModule } from '../src/sources/crd.js';
import { ROOT } from './helpers/cli.js';
import { tempDir } from './helpers/tmp.js';

const CRD = path.join(ROOT, 'deploy/crds', RETRY_CRD);
const GENERATED = path.join(ROOT, 'src/sources/retry-schema.generated.ts');

describe('the generated Retry schema check', () => {
  it("is ajv's code for the CRD as it is now", () => {
    const fresh = retrySchemaModule(readFileSync(CRD, 'utf8'));
    if (process.env.UPDATE_GOLDEN) writeFileSync(GENERATED, fresh);
    expect(readFileSync(GENERATED, 'utf8'), 'stale: UPDATE_GOLDEN=1 npx vitest run test/retry-schema.test.ts').toBe(fresh);
  });

  it('checks as the schema compiled from another copy of the CRD does (no generated code for it)', () => {
    const copy = path.join(tempDir('mesh-xds-crd-'), 'retry-crd-copy.yaml');
    writeFileSync(copy, `${readFileSync(CRD, 'utf8')}\n# a copy: another hash, compiled when loaded\n`);
    const compiled = loadRetrySchema(copy);
    const generated = loadRetrySchema();
    const objects: unknown[] = [
      { apiVersion: 'policy.flomesh.io/v1alpha1', kind: 'Retry', metadata: { name: 'r' }, spec: { source: { kind: 'ServiceAccount', name: 'curl', namespace: 'curl' }, destinations: [{ kind: 'Service', name: 'httpbin', namespace: 'httpbin' }], retryPolicy: { retryOn: '5xx', numRetries: 3 } } },
      { kind: 'Retry', spec: { source: { kind: 'SA', name: 'Curl!', namespace: '' }, destinations: [], retryPolicy: { retryOn: '', numRetries: -1, perTryTimeout: 5 } } },
      { kind: 'Retry' },
      { kind: 'Retry', spec: { source: 'x', destinations: [{}], retryPolicy: { retryOn: 'x'.repeat(300) } } },
    ];
    for (const o of objects) expect(generated(o)).toEqual(compiled(o));
    expect(generated(objects[1]).length).toBeGreaterThan(3);
  });
});
