/**
 * deploy/samples as a cluster runs them: the objects of a sample, its sidecar's bootstrap (the namespace's
 * ConfigMap) and arguments with the downward API filled in, and its init container's iptables script. The
 * sandbox runs exactly these, so its tests prove the samples too.
 */
import { readFileSync } from 'node:fs';
import { parseAllDocuments, parse } from 'yaml';
import { packagePath } from '../src/paths.js';

export type KubeObject = { apiVersion?: string; kind?: string; metadata?: { name?: string; namespace?: string; labels?: Record<string, string> }; [k: string]: any };

export function sampleObjects(file: string): KubeObject[] {
  return parseAllDocuments(readFileSync(packagePath('deploy/samples', file), 'utf8'))
    .map((d) => d.toJS() as KubeObject)
    .filter(Boolean);
}

function only<T>(list: T[], what: string): T {
  if (list.length !== 1) throw new Error(`deploy/samples: expected one ${what}, found ${list.length}`);
  return list[0];
}

/** The pod template of a sample's Deployment, and the Deployment's namespace. */
export function podTemplate(file: string): { namespace: string; labels: Record<string, string>; spec: any } {
  const dep = only(sampleObjects(file).filter((o) => o.kind === 'Deployment'), `Deployment in ${file}`);
  return { namespace: dep.metadata!.namespace!, labels: dep.spec.template.metadata.labels, spec: dep.spec.template.spec };
}

/**
 * The Envoy bootstrap the sidecars of a sample mount: the ConfigMap envoy-bootstrap (key bootstrap.yaml) of the
 * sample's namespace (a namespace of your own gets a copy of it: ConfigMaps are namespaced).
 */
export function sidecarBootstrap(file: string): string {
  const { namespace } = podTemplate(file);
  const cm = only(
    sampleObjects('envoy-bootstrap.yaml').filter((o) => o.kind === 'ConfigMap' && o.metadata?.namespace === namespace),
    `envoy-bootstrap ConfigMap for namespace ${namespace}`,
  );
  return cm.data['bootstrap.yaml'];
}

/** Every file of the namespace's envoy-bootstrap ConfigMap (the bootstrap and the SDS files it names). */
export function sidecarConfigFiles(file: string): Record<string, string> {
  const { namespace } = podTemplate(file);
  const cm = only(
    sampleObjects('envoy-bootstrap.yaml').filter((o) => o.kind === 'ConfigMap' && o.metadata?.namespace === namespace),
    `envoy-bootstrap ConfigMap for namespace ${namespace}`,
  );
  return cm.data;
}

/** Where the sidecar mounts each volume: volume name -> mountPath. */
export function sidecarMounts(file: string): Record<string, string> {
  const envoy = container(podTemplate(file).spec, 'envoy');
  return Object.fromEntries((envoy.volumeMounts ?? []).map((m: any) => [m.name, m.mountPath]));
}

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
  const envoy = container(podTemplate(file).spec, 'envoy');
  const env = containerEnv(envoy, pod);
  return (envoy.args as string[]).map((a) => expandArgs(a, env));
}

/** The sidecar's uid (securityContext.runAsUser), which the init script's rules exempt. */
export function sidecarUid(file: string): number {
  return container(podTemplate(file).spec, 'envoy').securityContext.runAsUser;
}

/** The init container's script (`sh -c` of its args), which installs the pod's traffic redirection. */
export function initScript(file: string): string {
  const init = container(podTemplate(file).spec, 'mesh-init', true);
  if (init.command?.join(' ') !== '/bin/sh -c' || init.args?.length !== 1) throw new Error(`deploy/samples/${file}: mesh-init must run /bin/sh -c SCRIPT`);
  return init.args[0];
}

/** The Retry of deploy/samples/retry.yaml, as text. */
export function sampleRetryText(): string {
  return readFileSync(packagePath('deploy/samples/retry.yaml'), 'utf8');
}

/** The node the sidecar adds to its bootstrap (`--config-yaml`), parsed. */
export function sidecarNode(args: string[]): { id: string; metadata: Record<string, string> } {
  const i = args.indexOf('--config-yaml');
  if (i < 0) throw new Error('the sidecar has no --config-yaml with its node');
  return parse(args[i + 1]).node;
}
