/**
 * The guide's workloads as a cluster runs them: the plain manifests of deploy/samples/guide, injected with the
 * sidecar template (src/inject) exactly as the webhook injects them; the sidecar's args with the downward API
 * filled in, its init container's iptables script, the SDS files of its identity Secret. The sandbox runs exactly
 * these, so its tests prove the template.
 */
import { readFileSync } from 'node:fs';
import { parseAllDocuments, parse } from 'yaml';
import { applyPatch, decide } from '../src/inject/inject.js';
import { IDENTITY_MOUNT, IDENTITY_VOLUME, INIT_CONTAINER, SIDECAR_CONTAINER, SIDECAR_INJECTION_ANNOTATION, identitySdsFiles, type SidecarTemplateOptions } from '../src/inject/template.js';
import { MONITORED_BY_LABEL } from '../src/model/mesh.js';
import { packagePath } from '../src/paths.js';

export type KubeObject = { apiVersion?: string; kind?: string; metadata?: { name?: string; namespace?: string; labels?: Record<string, string> }; [k: string]: any };

/** The template as the control plane of the sandboxes injects it: mTLS, its Service in namespace mesh-xds. */
export const SANDBOX_TEMPLATE: SidecarTemplateOptions & { meshName: string } = { meshName: 'mesh-xds', controlPlaneNamespace: 'mesh-xds', trustDomain: 'cluster.local', mtls: true, version: 'sandbox' };

/** The objects of deploy/samples/guide/FILE. */
export function sampleObjects(file: string): KubeObject[] {
  return parseAllDocuments(readFileSync(packagePath('deploy/samples/guide', file), 'utf8'))
    .map((d) => d.toJS() as KubeObject)
    .filter(Boolean);
}

function only<T>(list: T[], what: string): T {
  if (list.length !== 1) throw new Error(`deploy/samples/guide: expected one ${what}, found ${list.length}`);
  return list[0];
}

/**
 * The pod template of a sample's Deployment with the sidecar injected, and its namespace: the guide applies
 * `httpbin.yaml` with `-n httpbin`, `curl.yaml` with `-n curl` (the app's name).
 */
export function podTemplate(file: string): { namespace: string; labels: Record<string, string>; spec: any } {
  const dep = only(sampleObjects(file).filter((o) => o.kind === 'Deployment'), `Deployment in ${file}`);
  const namespace = dep.metadata!.name!;
  const pod = { metadata: { name: dep.metadata!.name, ...dep.spec.template.metadata }, spec: dep.spec.template.spec };
  const d = decide(pod, { name: namespace, labels: { [MONITORED_BY_LABEL]: SANDBOX_TEMPLATE.meshName }, annotations: { [SIDECAR_INJECTION_ANNOTATION]: 'enabled' } }, SANDBOX_TEMPLATE);
  if (!d.inject) throw new Error(`deploy/samples/guide/${file}: not injected: ${'denied' in d ? d.denied : d.skipped}`);
  const injected = applyPatch(pod, d.patch) as { metadata: { labels: Record<string, string> }; spec: any };
  return { namespace, labels: injected.metadata.labels, spec: injected.spec };
}

/** The sidecar's bootstrap, as its `--config-yaml` holds it (node included, not yet expanded). */
export function sidecarBootstrap(file: string): any {
  const args: string[] = container(podTemplate(file).spec, SIDECAR_CONTAINER).args;
  return parse(args[args.indexOf('--config-yaml') + 1]);
}

/** The SDS files of the identity Secret (which the control plane writes beside the certificate). */
export function sidecarConfigFiles(): Record<string, string> {
  return identitySdsFiles(SANDBOX_TEMPLATE);
}

/** Where the sidecar mounts each volume: volume name -> mountPath. */
export function sidecarMounts(file: string): Record<string, string> {
  const envoy = container(podTemplate(file).spec, SIDECAR_CONTAINER);
  return Object.fromEntries((envoy.volumeMounts ?? []).map((m: any) => [m.name, m.mountPath]));
}

export { IDENTITY_MOUNT, IDENTITY_VOLUME };

export interface PodFacts {
  name: string;
  namespace: string;
  serviceAccount: string;
  ip?: string;
}

/** Kubernetes' `$(VAR)` expansion of container args (`$$` escapes a dollar; unknown variables stay as written). */
export function expandArgs(arg: string, env: Readonly<Record<string, string>>): string {
  return arg.replace(/\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)/g, (m, v: string | undefined) => (m === '$$' ? '$' : (env[v!] ?? m)));
}

const FIELD_REFS: Record<string, (p: PodFacts) => string | undefined> = {
  'metadata.name': (p) => p.name,
  'metadata.namespace': (p) => p.namespace,
  'spec.serviceAccountName': (p) => p.serviceAccount,
  'status.podIP': (p) => p.ip,
};

/** A container's environment as the downward API fills it for this pod. */
export function containerEnv(container: any, pod: PodFacts): Record<string, string> {
  const env: Record<string, string> = {};
  for (const e of container.env ?? []) {
    if (typeof e.value === 'string') env[e.name] = expandArgs(e.value, env);
    const ref = e.valueFrom?.fieldRef?.fieldPath;
    if (ref) {
      const get = FIELD_REFS[ref];
      const v = get?.(pod);
      if (v === undefined) throw new Error(`downward API field ${ref} (env ${e.name}) is not available here`);
      env[e.name] = v;
    }
  }
  return env;
}

export function container(spec: any, name: string, init = false): any {
  return only(((init ? spec.initContainers : spec.containers) ?? []).filter((c: any) => c.name === name), `${init ? 'init ' : ''}container ${name}`);
}

/** The sidecar container's args for this pod, expanded as the kubelet would. */
export function sidecarArgs(file: string, pod: PodFacts): string[] {
  const envoy = container(podTemplate(file).spec, SIDECAR_CONTAINER);
  const env = containerEnv(envoy, pod);
  return (envoy.args as string[]).map((a) => expandArgs(a, env));
}

/** The sidecar's uid (securityContext.runAsUser), which the init script's rules exempt. */
export function sidecarUid(file: string): number {
  return container(podTemplate(file).spec, SIDECAR_CONTAINER).securityContext.runAsUser;
}

/** The init container's script (`sh -c` of its args), which installs the pod's traffic redirection. */
export function initScript(file: string): string {
  const init = container(podTemplate(file).spec, INIT_CONTAINER, true);
  if (init.command?.join(' ') !== '/bin/sh -c' || init.args?.length !== 1) throw new Error(`${INIT_CONTAINER} must run /bin/sh -c SCRIPT`);
  return init.args[0];
}

/** The Retry of deploy/samples/retry.yaml, as text. */
export function sampleRetryText(): string {
  return readFileSync(packagePath('deploy/samples/retry.yaml'), 'utf8');
}

/** The node of the sidecar's bootstrap (`--config-yaml`), parsed. */
export function sidecarNode(args: string[]): { id: string; metadata: Record<string, string> } {
  const i = args.indexOf('--config-yaml');
  if (i < 0) throw new Error('the sidecar has no --config-yaml with its node');
  return parse(args[i + 1]).node;
}
