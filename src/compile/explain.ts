/**
 * Which Retry applies from a service account to a service, and why: the part of `policy explain` that the server
 * (/debug/explain, from what it sent) and the CLI (`policy explain -f`, offline) share. Pure, over the IR.
 */
import type { MeshIR } from './ir.js';

export function explainPair(ir: MeshIR, from: string, to: string) {
  const applied = ir.enableRetryPolicy ? ir.retries[from]?.[to] : undefined;
  const candidates = ir.policies
    .filter((p) => p.declared.source === from && p.declared.destinations.includes(to))
    .map((p) => ({ policy: `${p.namespace}/${p.name}`, state: p.state, reason: p.reason, appliesTo: p.appliesTo, warnings: p.warnings ?? [] }));
  const service = ir.services.find((s) => `${s.namespace}/${s.name}` === to);
  const why = !ir.enableRetryPolicy
    ? 'retry policies are disabled (featureFlags.enableRetryPolicy=false)'
    : applied
      ? `Retry ${applied.policy} applies${candidates.length > 1 ? ' (the oldest of several; the others are Conflicted)' : ''}`
      : 'no accepted Retry has this source and destination';
  return { applied, candidates, service, why };
}
