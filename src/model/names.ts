/** Kubernetes name rules, in one place (the CRD's patterns are checked against these in crd-schema.test.ts). */

/** RFC 1123 label: namespaces, Services, label values like the mesh name. At most 63 characters. */
export const DNS_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
/** RFC 1123 subdomain: most other object names (ServiceAccounts, Pods, Retries). At most 253 characters. */
export const DNS_SUBDOMAIN = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;
/** The looser form the Retry CRD (and FSM) accept for service account names. */
export const OBJECT_NAME = /^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$/;

export function isDnsLabel(s: string): boolean {
  return s.length <= 63 && DNS_LABEL.test(s);
}

export function isDnsSubdomain(s: string): boolean {
  return s.length <= 253 && DNS_SUBDOMAIN.test(s);
}

export function isObjectName(s: string): boolean {
  return s.length <= 253 && OBJECT_NAME.test(s);
}

/** FSM's injection annotation of namespaces and pods (`enabled` / `disabled`). */
export const SIDECAR_INJECTION_ANNOTATION = 'flomesh.io/sidecar-injection';
