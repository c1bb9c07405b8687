import { describe, expect, it } from 'vitest';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { parse } from 'yaml';
import { DNS_LABEL, OBJECT_NAME } from '../src/model/names.js';
import { RETRY_ON_CONDITIONS, parseRetrySpec } from '../src/policy/retry.js';
import { loadRetrySchema } from '../src/sources/crd.js';

const check = loadRetrySchema();
const guide = {
  apiVersion: 'policy.flomesh.io/v1alpha1',
  kind: 'Retry',
  metadata: { name: 'retry', namespace: 'curl' },
  spec: {
    source: { kind: 'ServiceAccount', name: 'curl', namespace: 'curl' },
    destinations: [{ kind: 'Service', name: 'httpbin', namespace: 'httpbin' }],
    retryPolicy: { retryOn: '5xx', perTryTimeout: '1s', numRetries: 5, retryBackoffBaseInterval: '1s' },
  },
};
const withPolicy = (p: object): object => ({ ...guide, spec: { ...guide.spec, retryPolicy: { ...guide.spec.retryPolicy, ...p } } });

describe('Retry CRD schema', () => {
  it("accepts the guide's Retry", () => {
    expect(check(guide)).toEqual([]);
    expect(check(withPolicy({ retryOn: '503, 502,unavailable', perTryTimeout: '1m30s' }))).toEqual([]);
  });

  it('rejects bad ones, naming the field', () => {
    expect(check(withPolicy({ retryOn: '' }))[0].field).toBe('spec.retryPolicy.retryOn');
    // Durations and retryOn conditions are CEL rules (x-kubernetes-validations), which only the API server runs
    // (test/kube-api.test.ts); the folder source gives the same verdict through the semantic check (policy/retry.ts).
    expect(check(withPolicy({ perTryTimeout: 1 }))[0].field).toBe('spec.retryPolicy.perTryTimeout');
    expect(parseRetrySpec((withPolicy({ perTryTimeout: '1 sec' }) as { spec: unknown }).spec)).toMatchObject({ ok: false, problems: [{ field: 'spec.retryPolicy.perTryTimeout' }] });
    expect(check(withPolicy({ numRetries: -1 }))[0]).toMatchObject({ field: 'spec.retryPolicy.numRetries', message: 'must be >= 0' });
    expect(check(withPolicy({ numRetries: 4294967296 }))[0].field).toBe('spec.retryPolicy.numRetries');
    expect(check({ ...guide, spec: { ...guide.spec, destinations: [] } })[0].field).toBe('spec.destinations');
    expect(check({ ...guide, spec: { ...guide.spec, source: { kind: 'Pod', name: 'x', namespace: 'y' } } })).toEqual([
      { field: 'spec.source.kind', message: 'must be one of ServiceAccount' },
    ]);
    const { retryPolicy: _r, ...noPolicy } = guide.spec;
    expect(check({ ...guide, spec: noPolicy })).toEqual([{ field: 'spec.retryPolicy', message: 'is required' }]);
  });

  it("lists in its retryOn rule exactly the conditions the server accepts, and names the bad one in its message", () => {
    const crd = parse(readFileSync(path.join(import.meta.dirname, '../deploy/crds/retries.policy.flomesh.io.yaml'), 'utf8'));
    const retryOn = crd.spec.versions[0].schema.openAPIV3Schema.properties.spec.properties.retryPolicy.properties.retryOn;
    const [rule] = retryOn['x-kubernetes-validations'];
    const lists = [rule.rule, rule.messageExpression].map((cel: string) => /in \[([^\]]*)\]/.exec(cel)![1].split(', ').map((c) => c.replace(/'/g, '')));
    for (const list of lists) expect([...list].sort()).toEqual([...RETRY_ON_CONDITIONS].sort());
    expect(rule.messageExpression.startsWith(`'unknown retryOn condition "' + `)).toBe(true);
  });

  it('names its fields with the same patterns the server uses', () => {
    const crd = parse(readFileSync(path.join(import.meta.dirname, '../deploy/crds/retries.policy.flomesh.io.yaml'), 'utf8'));
    const spec = crd.spec.versions[0].schema.openAPIV3Schema.properties.spec.properties;
    expect(spec.source.properties.name.pattern).toBe(OBJECT_NAME.source);
    expect(spec.source.properties.namespace.pattern).toBe(DNS_LABEL.source);
    expect(spec.destinations.items.properties.name.pattern).toBe(DNS_LABEL.source);
    expect(spec.destinations.items.properties.namespace.pattern).toBe(DNS_LABEL.source);
  });
});
