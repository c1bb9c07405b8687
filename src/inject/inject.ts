/**
 * Which pods get the sidecar, and the JSONPatch (RFC 6902) that gives it to one. Pure: the webhook (webhook.ts)
 * and `mesh-xds inject` call it with a pod and what is known of its namespace.
 */
import { MONITORED_BY_LABEL } from '../model/mesh.js';
import { asList, asMap, clip, type Fields } from '../model/plain.js';
import {
  HEALTH_PORT,
  IDENTITY_VOLUME,
  INIT_CONTAINER,
  appProbePath,
  type AppProbe,
  INJECTED_ANNOTATION,
  SIDECAR_CONTAINER,
  SIDECAR_INJECTION_ANNOTATION,
  SIDECAR_PORTS,
  identityVolume,
  initContainer,
  sidecarContainer,
  type Json,
  type SidecarTemplateOptions,
} from './template.js';

export interface InjectOptions extends SidecarTemplateOptions {
  meshName: string;
}

export interface NamespaceFacts {
  name: string;
  labels: Readonly<Record<string, string>>;
  annotations: Readonly<Record<string, string>>;
}

export type JsonPatchOp = { op: 'add' | 'replace'; path: string; value: Json };

export type Decision =
  | { inject: true; patch: JsonPatchOp[] }
  /** Left as it is, and why (logged and counted, never an error). */
  | { inject: false; skipped: string }
  /** Refused: the pod asks for the sidecar but cannot have it (kubectl prints the reason). */
  | { inject: false; denied: string };

/** A string field, or undefined. */
const str = (v: unknown): string | undefined => (typeof v === 'string' ? v : undefined);

const PROBE_KINDS = ['liveness', 'readiness', 'startup'] as const;

/**
 * Containers (app and init, together) a pod may have and still get the sidecar. Kubernetes sets no number; a pod of
 * hundreds is not a workload but a review built to cost the webhook (20,000 containers with probes: a 28.5 MB patch
 * and a 4.6 s stall), and is refused before any work is done on it.
 */
export const MAX_CONTAINERS = 100;

const ON = new Set(['enabled', 'true', 'yes']);
const OFF = new Set(['disabled', 'false', 'no']);

/** A JSON pointer segment (RFC 6901). */
const pointer = (s: string): string => s.replaceAll('~', '~0').replaceAll('/', '~1');

/**
 * The decision for a pod created in `ns`. The pod's annotation flomesh.io/sidecar-injection wins over its
 * namespace's; a pod already holding the sidecar (admitted twice, or by `mesh-xds inject`) is left alone.
 */
export function decide(pod: Fields, ns: NamespaceFacts, o: InjectOptions): Decision {
  const meta = asMap(pod.metadata);
  const spec = asMap(pod.spec);
  // What the pod says is clipped wherever it is quoted (a denial, a log line): a 3 MB annotation is not copied.
  const podName = clip(str(meta.name) ?? (str(meta.generateName) ? `${str(meta.generateName)}*` : '(unnamed)'), 253);
  const what = `pod ${clip(ns.name, 63)}/${podName}`;
  if (ns.name === o.controlPlaneNamespace) return { inject: false, skipped: `${what} is in the control plane's namespace` };
  if (ns.labels[MONITORED_BY_LABEL] !== o.meshName) return { inject: false, skipped: `namespace ${clip(ns.name, 63)} is not in mesh ${o.meshName} (label ${MONITORED_BY_LABEL})` };
  const annotations = asMap(meta.annotations);
  const podSays = str(annotations[SIDECAR_INJECTION_ANNOTATION]);
  if (podSays !== undefined && !ON.has(podSays) && !OFF.has(podSays)) {
    return { inject: false, denied: `${what}: annotation ${SIDECAR_INJECTION_ANNOTATION}: "${clip(podSays, 64)}" is neither enabled nor disabled` };
  }
  const nsSays = ns.annotations[SIDECAR_INJECTION_ANNOTATION];
  if (podSays !== undefined ? OFF.has(podSays) : !ON.has(nsSays ?? '')) {
    return { inject: false, skipped: podSays !== undefined ? `${what} opts out (${SIDECAR_INJECTION_ANNOTATION}: ${podSays})` : `namespace ${clip(ns.name, 63)} does not ask for injection (annotation ${SIDECAR_INJECTION_ANNOTATION}: ${clip(nsSays ?? 'absent', 64)})` };
  }
  if (spec.hostNetwork === true) return { inject: false, skipped: `${what} uses the host's network` };
  const containers = asList(spec.containers).map(asMap);
  const inits = asList(spec.initContainers).map(asMap);
  if (containers.length + inits.length > MAX_CONTAINERS) {
    return { inject: false, denied: `${what}: ${containers.length + inits.length} containers (app and init); the sidecar is injected into pods of at most ${MAX_CONTAINERS}` };
  }
  if (annotations[INJECTED_ANNOTATION] !== undefined || containers.some((c) => c.name === SIDECAR_CONTAINER)) {
    return { inject: false, skipped: `${what} already has the sidecar` };
  }
  if (inits.some((c) => c.name === INIT_CONTAINER)) return { inject: false, denied: `${what}: an init container is already named ${INIT_CONTAINER}, the sidecar's` };
  const volumes = asList(spec.volumes).map(asMap);
  if (o.mtls && volumes.some((v) => v.name === IDENTITY_VOLUME)) return { inject: false, denied: `${what}: a volume is already named ${IDENTITY_VOLUME}, the sidecar's` };
  for (const c of [...containers, ...inits]) {
    for (const p of asList(c.ports).map(asMap)) {
      if ((SIDECAR_PORTS as readonly unknown[]).includes(p.containerPort)) {
        return { inject: false, denied: `${what}: container ${clip(str(c.name) ?? '', 63)} uses port ${clip(String(p.containerPort), 16)}, which the sidecar takes (${SIDECAR_PORTS.join(', ')})` };
      }
    }
  }
  const serviceAccount = str(spec.serviceAccountName) ?? str(spec.serviceAccount) ?? 'default';

  const patch: JsonPatchOp[] = [];
  // The app's HTTP probes go to the sidecar's health port, which forwards them to the app on loopback.
  const probes: AppProbe[] = [];
  containers.forEach((c, i) => {
    for (const kind of PROBE_KINDS) {
      const get = asMap(asMap(c[`${kind}Probe`]).httpGet);
      if (!Object.keys(get).length || (get.scheme !== undefined && get.scheme !== 'HTTP') || get.host !== undefined) continue;
      const port = typeof get.port === 'number' ? get.port : asList(c.ports).map(asMap).find((p) => p.name === get.port)?.containerPort;
      if (typeof port !== 'number') continue;
      const path = appProbePath(str(c.name) ?? `container-${i}`, kind);
      probes.push({ path, port, target: str(get.path) ?? '/' });
      patch.push({ op: 'replace', path: `/spec/containers/${i}/${kind}Probe/httpGet`, value: { ...(get as Record<string, Json>), path, port: HEALTH_PORT, scheme: 'HTTP' } });
    }
  });
  const t: InjectOptions = { ...o, probes };
  const append = (path: string, list: unknown[], value: Json): void => {
    if (list.length || spec[path] !== undefined) patch.push({ op: 'add', path: `/spec/${path}/-`, value });
    else patch.push({ op: 'add', path: `/spec/${path}`, value: [value] });
  };
  // The init container first, so that the pod's other init containers already have their traffic redirected.
  if (inits.length) patch.push({ op: 'add', path: '/spec/initContainers/0', value: initContainer(t) });
  else patch.push({ op: 'add', path: '/spec/initContainers', value: [initContainer(t)] });
  append('containers', containers, sidecarContainer(t));
  if (o.mtls) append('volumes', volumes, identityVolume(serviceAccount));
  const injected = `${SIDECAR_CONTAINER} (${o.envoyImage ?? sidecarContainer(t).image}), ${INIT_CONTAINER}${o.mtls ? `, ${IDENTITY_VOLUME}` : ''}; by mesh-xds ${o.version}`;
  if (meta.annotations === undefined) patch.push({ op: 'add', path: '/metadata/annotations', value: { [INJECTED_ANNOTATION]: injected } });
  else patch.push({ op: 'add', path: `/metadata/annotations/${pointer(INJECTED_ANNOTATION)}`, value: injected });
  return { inject: true, patch };
}

/** Applies a patch of `decide` to a copy of the pod (`mesh-xds inject`, the tests). Only the ops decide makes. */
export function applyPatch(pod: Fields, patch: readonly JsonPatchOp[]): Fields {
  const out = structuredClone(pod) as Record<string, unknown>;
  for (const op of patch) {
    const parts = op.path.split('/').slice(1).map((s) => s.replaceAll('~1', '/').replaceAll('~0', '~'));
    const last = parts.pop()!;
    let at: Record<string, unknown> | unknown[] = out;
    for (const p of parts) {
      const next: unknown = Array.isArray(at) ? at[Number(p)] : at[p];
      if (typeof next !== 'object' || next === null) throw new Error(`patch ${op.path}: ${p} is missing`);
      at = next as Record<string, unknown> | unknown[];
    }
    if (Array.isArray(at)) {
      if (last === '-') at.push(op.value);
      else at.splice(Number(last), op.op === 'replace' ? 1 : 0, op.value);
    } else at[last] = op.value;
  }
  return out;
}
