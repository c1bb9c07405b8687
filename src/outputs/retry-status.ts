/**
 * Retry statuses, written back through the status subresource (as Contour's status updater: the pipeline
 * computes each policy's report, this writes it), only where it differs from what the object has or from what was
 * last written.
 */
import * as k8s from '@kubernetes/client-node';
import type { Logger } from 'pino';
import type { MeshIR, PolicyReport } from '../compile/ir.js';
import { explain } from '../sources/kubernetes.js';
import type { KubeObject } from '../sources/manifests.js';
import { asList, asMap } from '../model/plain.js';

/** A condition of a Retry's status, as the CRD has it. */
interface Condition {
  readonly type: string;
  readonly status: 'True' | 'False';
  readonly reason: string;
  readonly message: string;
  readonly observedGeneration?: number;
  readonly lastTransitionTime?: string;
}

/** A Retry's status subresource. */
export interface RetryStatus {
  readonly observedGeneration?: number;
  readonly conditions: readonly Condition[];
}

/**
 * The status a Retry should have for its report: the condition `Accepted`, `RetryAmplification` while the policy
 * lies on a call path over the mesh's bound, and `Pitfall` while a setting cannot do what it seems to (warnings:
 * it stays Accepted). Each condition keeps its
 * transition time while it stays the same.
 */
export function retryStatus(report: PolicyReport, generation: number | undefined, previous: unknown): RetryStatus {
  const observed = generation !== undefined ? { observedGeneration: generation } : {};
  const wanted: Condition[] = [
    {
      type: 'Accepted',
      status: report.state === 'Accepted' ? 'True' : 'False',
      reason: report.state,
      message: (report.messages.length ? report.messages.join('; ') : report.reason).slice(0, 32768),
      ...observed,
    },
    ...(['RetryAmplification', 'Pitfall'] as const).flatMap((type) => {
      const messages = (report.warnings ?? []).filter((w) => w.condition === type).map((w) => w.message);
      return messages.length ? [{ type, status: 'True' as const, reason: type === 'Pitfall' ? 'Pitfall' : 'OverBound', message: messages.join('; ').slice(0, 32768), ...observed }] : [];
    }),
  ];
  const before = asList(asMap(previous).conditions).map((c) => asMap(c) as Partial<Condition>);
  const now = new Date().toISOString().replace(/\.\d+Z$/, 'Z');
  return {
    ...observed,
    conditions: wanted.map((c) => {
      const prev = before.find((p) => p.type === c.type);
      const same = prev && prev.status === c.status && prev.reason === c.reason && prev.message === c.message && prev.observedGeneration === c.observedGeneration;
      return { ...c, lastTransitionTime: same && prev.lastTransitionTime ? prev.lastTransitionTime : now };
    }),
  };
}

/** A status without its transition times: what is compared and remembered. */
function signature(status: unknown): string {
  const s = asMap(status);
  return JSON.stringify({ ...s, conditions: asList(s.conditions).map((c) => ({ ...asMap(c), lastTransitionTime: undefined })) });
}

export class RetryStatusWriter {
  private readonly written = new Map<string, string>();
  writes = 0;

  constructor(
    private readonly kc: k8s.KubeConfig,
    private readonly log: Logger,
    /** The Retry as the source last saw it. */
    private readonly current: (namespace: string, name: string) => KubeObject | undefined,
  ) {}

  /** Writes each Retry's status where it differs from what the object has (or what was last written). */
  async write(ir: MeshIR): Promise<void> {
    const api = this.kc.makeApiClient(k8s.CustomObjectsApi);
    for (const report of ir.policies) {
      const obj = this.current(report.namespace, report.name);
      if (!obj) continue;
      const current = obj.status;
      const desired = retryStatus(report, obj.metadata?.generation, current);
      const key = `${report.namespace}/${report.name}`;
      const sig = signature(desired);
      if (signature(current) === sig || this.written.get(key) === sig) continue;
      try {
        await api.patchNamespacedCustomObjectStatus(
          { group: 'policy.flomesh.io', version: 'v1alpha1', namespace: report.namespace, plural: 'retries', name: report.name, body: { status: desired } },
          k8s.setHeaderOptions('Content-Type', k8s.PatchStrategy.MergePatch),
        );
        this.written.set(key, sig);
        this.writes++;
      } catch (err) {
        const e = err as { code?: number; body?: { message?: string }; message: string };
        this.log.warn({ retry: key, err: explain(e.code, e.body?.message ?? e.message, `patch retries/status ${key}`) }, 'cannot write Retry status');
      }
    }
  }
}
