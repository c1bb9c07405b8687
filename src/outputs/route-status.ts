/**
 * HTTPRoute and GRPCRoute statuses, as the Gateway API says: `status.parents[]`, one entry per Service parent with
 * `controllerName: flomesh.io/mesh-xds` and the conditions `Accepted` and `ResolvedRefs` (compile/routes.ts decides
 * them). Entries of other controllers (a Gateway parent's) are kept as they are; the patch carries the object's
 * resourceVersion, so a write that crossed another controller's is refused (409) and made again from what the
 * source sees next. Written by the leader, where it differs from what the object has or was last written, through
 * the writers' one token bucket.
 */
import * as k8s from '@kubernetes/client-node';
import type { Logger } from 'pino';
import type { MeshIR } from '../compile/ir.js';
import { ROUTE_CONTROLLER, type RouteReport } from '../compile/routes.js';
import { explain } from '../sources/kubernetes.js';
import type { KubeObject } from '../sources/manifests.js';
import type { RouteKind } from '../model/mesh.js';
import { asList, asMap, type Fields } from '../model/plain.js';
import type { StatusWriter, TokenBucket } from './retry-status.js';

const PLURAL: Record<RouteKind, string> = { HTTPRoute: 'httproutes', GRPCRoute: 'grpcroutes' };
/** The CRD's bound on `status.parents`. */
const MAX_PARENTS = 32;

const timeOf = (ms: number): string => new Date(ms).toISOString().replace(/\.\d+Z$/, 'Z');
const sameRef = (a: Fields, b: Fields): boolean => JSON.stringify(Object.entries(a).sort()) === JSON.stringify(Object.entries(b).sort());

/** The `status.parents` a route should have: others' entries as they are, ours from the report, transition times kept. */
export function routeParents(report: RouteReport, generation: number | undefined, previous: unknown, now: number): Fields[] {
  const before = asList(asMap(previous).parents).map(asMap);
  const others = before.filter((p) => p.controllerName !== ROUTE_CONTROLLER);
  const ours = report.parents.map((parent) => {
    const prev = before.find((p) => p.controllerName === ROUTE_CONTROLLER && sameRef(asMap(p.parentRef), parent.parentRef));
    const prevConditions = asList(prev?.conditions).map(asMap);
    return {
      parentRef: parent.parentRef,
      controllerName: ROUTE_CONTROLLER,
      conditions: parent.conditions.map((c) => {
        const was = prevConditions.find((p) => p.type === c.type);
        const kept = was && was.status === c.status && typeof was.lastTransitionTime === 'string' ? was.lastTransitionTime : undefined;
        return { ...c, message: c.message.slice(0, 32768), ...(generation !== undefined ? { observedGeneration: generation } : {}), lastTransitionTime: kept ?? timeOf(now) };
      }),
    };
  });
  return [...others, ...ours].slice(0, MAX_PARENTS);
}

/** JSON with every object's keys in order: the API server returns a custom object's fields sorted by name. */
const canonical = (v: unknown): unknown =>
  Array.isArray(v) ? v.map(canonical) : v !== null && typeof v === 'object' ? Object.fromEntries(Object.keys(v).sort().map((k) => [k, canonical((v as Fields)[k])])) : v;

/** A parents list without transition times, whatever order its fields come in: what is compared and remembered. */
function signature(parents: readonly unknown[]): string {
  return JSON.stringify(canonical(parents.map((p) => ({ ...asMap(p), conditions: asList(asMap(p).conditions).map((c) => ({ ...asMap(c), lastTransitionTime: undefined })) }))));
}

export class RouteStatusWriter implements StatusWriter {
  private readonly written = new Map<string, string>();
  writes = 0;

  constructor(
    private readonly kc: k8s.KubeConfig,
    private readonly log: Logger,
    /** The route as the source last saw it. */
    private readonly current: (kind: RouteKind, namespace: string, name: string) => KubeObject | undefined,
    private readonly bucket: TokenBucket,
    private readonly now: () => number = Date.now,
  ) {}

  leadership(): void {
    this.written.clear();
  }

  async write(ir: MeshIR, leader: () => boolean): Promise<void> {
    const api = this.kc.makeApiClient(k8s.CustomObjectsApi);
    const keys = new Set<string>();
    for (const report of ir.routeReports) {
      const key = `${report.kind} ${report.namespace}/${report.name}`;
      keys.add(key);
      const obj = this.current(report.kind, report.namespace, report.name);
      if (!obj) continue;
      // The generation the report was made from (the source may already hold a newer one, not compiled yet).
      const parents = routeParents(report, report.generation ?? obj.metadata?.generation, obj.status, this.now());
      const sig = signature(parents);
      if (signature(asList(asMap(obj.status).parents)) === sig || this.written.get(key) === `${obj.metadata?.resourceVersion}|${sig}`) continue;
      await this.bucket.take();
      if (!leader()) return;
      try {
        await api.patchNamespacedCustomObjectStatus(
          {
            group: 'gateway.networking.k8s.io',
            version: 'v1',
            namespace: report.namespace,
            plural: PLURAL[report.kind],
            name: report.name,
            body: { metadata: { resourceVersion: obj.metadata?.resourceVersion }, status: { parents } },
          },
          k8s.setHeaderOptions('Content-Type', k8s.PatchStrategy.MergePatch),
        );
        this.written.set(key, `${obj.metadata?.resourceVersion}|${sig}`);
        this.writes++;
      } catch (err) {
        const e = err as { code?: number; body?: { message?: string }; message: string };
        // 409: another writer came first; the source's next look at the object brings a pass that writes again.
        this.log[e.code === 409 ? 'debug' : 'warn']({ route: key, err: explain(e.code, e.body?.message ?? e.message, `patch ${PLURAL[report.kind]}/status ${report.namespace}/${report.name}`) }, 'cannot write route status');
      }
    }
    for (const key of this.written.keys()) if (!keys.has(key)) this.written.delete(key);
  }
}
