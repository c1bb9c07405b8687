/** SPIFFE identities of the mesh: `spiffe://<trust-domain>/ns/<namespace>/sa/<service account>` (pure). */
import { isDnsLabel, isObjectName } from '../model/names.js';

export interface WorkloadId {
  readonly trustDomain: string;
  readonly namespace: string;
  readonly serviceAccount: string;
}

export const DEFAULT_TRUST_DOMAIN = 'cluster.local';

export function spiffeId(trustDomain: string, namespace: string, serviceAccount: string): string {
  return `spiffe://${trustDomain}/ns/${namespace}/sa/${serviceAccount}`;
}

/** Reads a workload SPIFFE id; undefined when it is not one of the mesh's shape. */
export function parseSpiffeId(uri: string): WorkloadId | undefined {
  const m = /^spiffe:\/\/([a-z0-9._-]+)\/ns\/([^/]+)\/sa\/([^/]+)$/.exec(uri);
  if (!m || !isDnsLabel(m[2]) || !isObjectName(m[3])) return undefined;
  return { trustDomain: m[1], namespace: m[2], serviceAccount: m[3] };
}

/** A trust domain as SPIFFE allows it: lowercase letters, digits, dots, dashes and underscores. */
export function isTrustDomain(s: string): boolean {
  return /^[a-z0-9._-]{1,255}$/.test(s);
}

/** Whether `id` is on an allow list of SPIFFE ids, each exact or a prefix ending in `*`. */
export function allowed(id: string, list: readonly string[]): boolean {
  return list.some((p) => (p.endsWith('*') ? id.startsWith(p.slice(0, -1)) : id === p));
}
