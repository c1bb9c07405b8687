/**
 * Retry safety, parts 2 and 3 (docs/retry-safety.md): the mesh's retry budget (MeshConfig
 * spec.traffic.retryBudget -> the destination clusters' circuit breakers) and retries to another host (the
 * previous_hosts predicate on sidecars' routes), through the real builder and the real protos.
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { convertObjects } from '../src/sources/manifests.js';
import { snapshotToJson } from './helpers/xds-json.js';
import { meshFromYaml } from './helpers/mesh.js';

const DEMO = ['mesh.yaml', 'httpbin.yaml', 'curl.yaml', 'retry.yaml'].map((f) => readFileSync(path.join(import.meta.dirname, '../deploy/demo', f), 'utf8')).join('\n---\n');
const withBudget = (budget: string): string => DEMO.replace('    enablePermissiveTrafficPolicyMode: true', `    enablePermissiveTrafficPolicyMode: true\n    retryBudget: ${budget}`);

function meshConfigErrors(traffic: unknown): { field?: string; message: string }[] {
  return convertObjects([{ object: { apiVersion: 'config.flomesh.io/v1alpha3', kind: 'MeshConfig', metadata: { name: 'm', namespace: 'mesh-xds' }, spec: { traffic } }, origin: { file: 'm.yaml', doc: 0, line: 1 } }]).errors.map((e: any) => ({ field: e.field, message: e.message }));
}

/** What the curl sidecar gets: its clusters and routes as Envoy prints them. */
function curlSidecar(text: string, kind: 'sidecar' | 'proxyless' = 'sidecar'): { clusters: any[]; routes: any[] } {
  const { builder, errors } = meshFromYaml(text);
  expect(errors).toEqual([]);
  const json = snapshotToJson(builder.build(`${kind}:curl/curl`)) as Record<string, any[]>;
  return { clusters: json.CDS, routes: json.RDS };
}

describe('the retry budget', () => {
  it("is on by default at Envoy's own 20% and 3, in place of max_retries on the destination clusters only", () => {
    const { clusters } = curlSidecar(DEMO);
    const httpbin = clusters.find((c) => c.name === 'httpbin/httpbin|14001');
    expect(httpbin.circuit_breakers.thresholds).toEqual([
      {
        max_connections: 4294967295,
        max_pending_requests: 4294967295,
        max_requests: 4294967295,
        retry_budget: { budget_percent: { value: 20 }, min_retry_concurrency: 3 },
      },
    ]);
    // Every destination has it; the local app's cluster and the passthrough keep their unlimited max_retries.
    for (const c of clusters) {
      const t = c.circuit_breakers.thresholds[0];
      if (c.type === 'EDS') expect(t.retry_budget, c.name).toEqual({ budget_percent: { value: 20 }, min_retry_concurrency: 3 });
      else expect([c.name, t.max_retries, t.retry_budget]).toEqual([c.name, 4294967295, undefined]);
    }
    expect(clusters.filter((c) => c.type !== 'EDS').length).toBeGreaterThan(0);
  });

  it('spec.traffic.retryBudget sets it mesh-wide, or turns it off (enabled: false)', () => {
    const custom = curlSidecar(withBudget('{ budgetPercent: 12.5, minRetryConcurrency: 0 }')).clusters.find((c) => c.name === 'httpbin/httpbin|14001');
    expect(custom.circuit_breakers.thresholds[0].retry_budget).toEqual({ budget_percent: { value: 12.5 }, min_retry_concurrency: 0 });
    const off = curlSidecar(withBudget('{ enabled: false }')).clusters.find((c) => c.name === 'httpbin/httpbin|14001');
    expect(off.circuit_breakers.thresholds[0]).toMatchObject({ max_retries: 4294967295 });
    expect(off.circuit_breakers.thresholds[0].retry_budget).toBeUndefined();
  });

  it('a bad retryBudget is an error naming the field and why', () => {
    expect(meshConfigErrors({ retryBudget: { budgetPercent: 0 } })).toEqual([{ field: 'spec.traffic.retryBudget.budgetPercent', message: expect.stringContaining('greater than 0 and at most 100') }]);
    expect(meshConfigErrors({ retryBudget: { budgetPercent: 150 } })[0].field).toBe('spec.traffic.retryBudget.budgetPercent');
    expect(meshConfigErrors({ retryBudget: { minRetryConcurrency: 1.5 } })).toEqual([{ field: 'spec.traffic.retryBudget.minRetryConcurrency', message: expect.stringContaining('whole number') }]);
    expect(meshConfigErrors({ retryBudget: { budget: 20 } })).toEqual([{ field: 'spec.traffic.retryBudget.budget', message: expect.stringContaining('unknown field') }]);
    expect(meshConfigErrors({ retryBudget: { enabled: 'no' } })[0].field).toBe('spec.traffic.retryBudget.enabled');
    expect(meshConfigErrors({ retryBudget: 20 })[0].field).toBe('spec.traffic.retryBudget');
  });
});

describe('retries go to another host', () => {
  it("sidecars' retry policies avoid the hosts already tried (previous_hosts, 5 selections); proxyless clients get none", () => {
    const policy = curlSidecar(DEMO).routes.flatMap((r) => r.virtual_hosts).find((v) => v.name === 'outbound_virtual-host|httpbin.httpbin.svc.cluster.local').routes[0].route.retry_policy;
    expect(policy.retry_host_predicate).toEqual([{ name: 'envoy.retry_host_predicates.previous_hosts', typed_config: { '@type': 'type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate' } }]);
    expect(policy.host_selection_retry_max_attempts).toBe('5');
    expect(policy.num_retries).toBe(5);
    const proxyless = curlSidecar(DEMO, 'proxyless').routes.flatMap((r) => r.virtual_hosts).find((v) => v.name === 'outbound_virtual-host|httpbin.httpbin.svc.cluster.local').routes[0].route.retry_policy;
    expect(proxyless.num_retries).toBe(5);
    expect(proxyless.retry_host_predicate).toBeUndefined();
  });
});
