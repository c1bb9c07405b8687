/** `mesh-xds install`'s plan (what it applies, in which order, with which values) and its --set keys. */
import { describe, expect, it } from 'vitest';
import { installPlan, parseInstallSet } from '../src/cli/install.js';

describe('mesh-xds install', () => {
  it("--set takes the guide's flags verbatim, the fsm. prefix optional; an unknown key names the known ones", () => {
    expect(parseInstallSet('fsm.enablePermissiveTrafficPolicy=true')).toEqual([['traffic', 'enablePermissiveTrafficPolicyMode'], true]);
    expect(parseInstallSet('featureFlags.enableRetryPolicy=false')).toEqual([['featureFlags', 'enableRetryPolicy'], false]);
    expect(parseInstallSet('traffic.retryBudget.budgetPercent=12.5')).toEqual([['traffic', 'retryBudget', 'budgetPercent'], 12.5]);
    expect(() => parseInstallSet('traffic.retryBudget.minRetryConcurrency=lots')).toThrow(/expected a number/);
    expect(() => parseInstallSet('fsm.image.registry=x')).toThrow(/--set fsm\.image\.registry: unknown key; known: \[fsm\.\]enablePermissiveTrafficPolicy, .*\[fsm\.\]featureFlags\.enableRetryPolicy/);
    expect(() => parseInstallSet('fsm.featureFlags.enableRetryPolicy=yes')).toThrow(/expected true or false/);
    expect(() => parseInstallSet('enableRetryPolicy')).toThrow(/expected KEY=VALUE/);
  });

  it('applies deploy/ in order (namespace, CRDs, the rest, the webhook, the MeshConfig) with the --set values, image and replicas', () => {
    const plan = installPlan({ namespace: 'mesh-xds', sets: [parseInstallSet('fsm.featureFlags.enableRetryPolicy=true'), parseInstallSet('traffic.retryBudget.budgetPercent=10')], image: 'registry.example/mesh-xds:0.1.0', replicas: 3 });
    const kinds = plan.map((o) => o.kind);
    expect(kinds[0]).toBe('Namespace');
    expect(kinds.slice(1, 3)).toEqual(['CustomResourceDefinition', 'CustomResourceDefinition']);
    expect(kinds.slice(-2)).toEqual(['MutatingWebhookConfiguration', 'MeshConfig']);
    const dep = plan.find((o) => o.kind === 'Deployment') as any;
    expect(dep.spec.replicas).toBe(3);
    expect(dep.spec.template.spec.containers[0].image).toBe('registry.example/mesh-xds:0.1.0');
    expect((plan.at(-1) as any).spec).toEqual({ featureFlags: { enableRetryPolicy: true }, traffic: { enablePermissiveTrafficPolicyMode: true, retryBudget: { budgetPercent: 10 } } });
  });

  it('--namespace moves every reference to the control plane namespace', () => {
    const plan = installPlan({ namespace: 'mesh-system', sets: [] });
    const text = JSON.stringify(plan);
    expect(text).not.toMatch(/"namespace":"mesh-xds"/);
    expect(plan.find((o) => o.kind === 'Namespace')!.metadata.name).toBe('mesh-system');
    const webhook = plan.find((o) => o.kind === 'MutatingWebhookConfiguration') as any;
    expect(webhook.webhooks[0].clientConfig.service).toMatchObject({ name: 'mesh-xds', namespace: 'mesh-system', path: '/mutate-pod-creation' });
    expect(webhook.webhooks[0].namespaceSelector.matchExpressions[1].values).toContain('mesh-system');
    expect((plan.find((o) => o.kind === 'ClusterRoleBinding') as any).subjects[0].namespace).toBe('mesh-system');
  });
});
