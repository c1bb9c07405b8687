/**
 * Kubernetes objects (as `kubectl apply` takes them) -> the mesh model. Parsing of YAML/JSON text lives here
 * too, so the folder source and the `validate` command read manifests the same way. Pure: no file I/O.
 */
import { LineCounter, parseAllDocuments } from 'yaml';
import {
  DEFAULT_MESH_CONFIG,
  type EndpointSlice,
  type MeshConfig,
  type MeshState,
  type Namespace,
  type Origin,
  type Pod,
  type RetryObject,
  type Service,
  type ServiceAccount,
} from '../model/mesh.js';
import { RETRY_API_VERSION } from '../policy/retry.js';

export interface KubeObject {
  apiVersion?: string;
  kind?: string;
  metadata?: { name?: string; namespace?: string; labels?: Record<string, string>; creationTimestamp?: string; generation?: number; uid?: string; [k: string]: unknown };
  spec?: any;
  [k: string]: unknown;
}

export interface Located {
  readonly object: KubeObject;
  readonly origin: Origin;
}

export interface ManifestError {
  readonly file: string;
  readonly doc?: number;
  readonly line?: number;
  readonly object?: string;
  readonly field?: string;
  readonly message: string;
}

/** Parses multi-document YAML (or JSON, a subset) into objects with file, document index and line. */
export function parseManifestText(text: string, file: string): { objects: Located[]; errors: ManifestError[] } {
  const lineCounter = new LineCounter();
  const docs = parseAllDocuments(text, { lineCounter, prettyErrors: true, uniqueKeys: true });
  const objects: Located[] = [];
  const errors: ManifestError[] = [];
  const list = Array.isArray(docs) ? docs : [docs];
  list.forEach((doc, i) => {
    const start = doc.contents?.range?.[0] ?? doc.range?.[0];
    const line = start !== undefined ? lineCounter.linePos(start).line : undefined;
    if (doc.errors.length) {
      for (const e of doc.errors) {
        errors.push({ file, doc: i, line: e.linePos?.[0]?.line ?? line, message: e.message.split('\n')[0] });
      }
      return;
    }
    const value = doc.toJS();
    if (value === null || value === undefined) return;
    // A `kind: List` (kubectl get -o yaml) holds items.
    const items: unknown[] = value?.kind === 'List' && Array.isArray(value.items) ? value.items : [value];
    for (const item of items) {
      if (typeof item !== 'object' || item === null || Array.isArray(item)) {
        errors.push({ file, doc: i, line, message: 'a document must be a Kubernetes object (a mapping with apiVersion and kind)' });
        continue;
      }
      objects.push({ object: item as KubeObject, origin: { file, doc: i, line } });
    }
  });
  return { objects, errors };
}

export interface MeshObjects {
  namespaces: Namespace[];
  services: Service[];
  endpointSlices: EndpointSlice[];
  pods: Pod[];
  serviceAccounts: ServiceAccount[];
  retries: RetryObject[];
  meshConfigs: { name: string; namespace?: string; config: Partial<MeshConfig> }[];
}

export function emptyObjects(): MeshObjects {
  return { namespaces: [], services: [], endpointSlices: [], pods: [], serviceAccounts: [], retries: [], meshConfigs: [] };
}

export const SUPPORTED_KINDS = ['Namespace', 'Service', 'Endpoints', 'EndpointSlice', 'Pod', 'ServiceAccount', 'Retry', 'MeshConfig'];

const DNS_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
const DNS_SUBDOMAIN = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;

class ObjectError extends Error {
  constructor(
    readonly field: string,
    message: string,
  ) {
    super(message);
  }
}

function need<T>(value: T | undefined | null, field: string, what: string): T {
  if (value === undefined || value === null || value === '') throw new ObjectError(field, `${what} is required`);
  return value;
}

function str(v: unknown, field: string): string {
  if (typeof v !== 'string' || !v) throw new ObjectError(field, 'must be a non-empty string');
  return v;
}

function num(v: unknown, field: string): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 1 || v > 65535) throw new ObjectError(field, `must be a port number (1-65535), got ${JSON.stringify(v)}`);
  return v;
}

function labelsOf(o: KubeObject): Record<string, string> {
  const l = o.metadata?.labels;
  return l && typeof l === 'object' ? Object.fromEntries(Object.entries(l).map(([k, v]) => [k, String(v)])) : {};
}

/** Namespace of a namespaced object: its own, or the default one (as `kubectl apply -n`). */
function nsOf(o: KubeObject, defaultNamespace: string): string {
  return o.metadata?.namespace ?? defaultNamespace;
}

function service(o: KubeObject, ns: string): Service {
  const spec = need(o.spec, 'spec', 'spec');
  const ports = need(spec.ports as unknown[] | undefined, 'spec.ports', 'spec.ports');
  if (!Array.isArray(ports) || ports.length === 0) throw new ObjectError('spec.ports', 'must be a non-empty list');
  const clusterIP = spec.clusterIP === 'None' ? undefined : typeof spec.clusterIP === 'string' && spec.clusterIP ? spec.clusterIP : undefined;
  if (spec.clusterIP !== 'None' && clusterIP === undefined) {
    throw new ObjectError('spec.clusterIP', 'is required here (a folder has no API server to allocate one); use "None" for a headless service');
  }
  return {
    namespace: ns,
    name: str(o.metadata?.name, 'metadata.name'),
    clusterIP,
    selector: spec.selector ?? undefined,
    ports: ports.map((p: any, i: number) => ({
      ...(p.name ? { name: String(p.name) } : {}),
      port: num(p.port, `spec.ports[${i}].port`),
      targetPort: p.targetPort === undefined ? p.port : typeof p.targetPort === 'number' ? num(p.targetPort, `spec.ports[${i}].targetPort`) : str(p.targetPort, `spec.ports[${i}].targetPort`),
      protocol: p.protocol ?? 'TCP',
      ...(p.appProtocol ? { appProtocol: String(p.appProtocol) } : {}),
    })),
  };
}

function endpointSlice(o: KubeObject, ns: string): EndpointSlice {
  const svc = o.metadata?.labels?.['kubernetes.io/service-name'];
  if (!svc) throw new ObjectError('metadata.labels', 'needs kubernetes.io/service-name (the Service it belongs to)');
  const eps: any[] = Array.isArray(o.endpoints) ? (o.endpoints as any[]) : [];
  return {
    namespace: ns,
    name: str(o.metadata?.name, 'metadata.name'),
    service: svc,
    ports: (Array.isArray(o.ports) ? (o.ports as any[]) : []).map((p, i) => ({
      ...(p.name ? { name: String(p.name) } : {}),
      port: num(p.port, `ports[${i}].port`),
      protocol: p.protocol ?? 'TCP',
    })),
    addresses: eps.flatMap((e, i) =>
      (Array.isArray(e.addresses) ? e.addresses : []).map((ip: unknown) => ({
        ip: str(ip, `endpoints[${i}].addresses`),
        ready: e.conditions?.ready !== false,
        ...(e.targetRef?.kind === 'Pod' && e.targetRef.name ? { pod: { namespace: e.targetRef.namespace ?? ns, name: e.targetRef.name } } : {}),
      })),
    ),
  };
}

/** core/v1 Endpoints, as one slice per subset. */
function endpoints(o: KubeObject, ns: string): EndpointSlice[] {
  const name = str(o.metadata?.name, 'metadata.name');
  const subsets: any[] = Array.isArray(o.subsets) ? (o.subsets as any[]) : [];
  return subsets.map((s, i) => ({
    namespace: ns,
    name: `${name}-${i}`,
    service: name,
    ports: (s.ports ?? []).map((p: any, j: number) => ({ ...(p.name ? { name: String(p.name) } : {}), port: num(p.port, `subsets[${i}].ports[${j}].port`), protocol: p.protocol ?? 'TCP' })),
    addresses: [
      ...(s.addresses ?? []).map((a: any) => ({ ip: str(a.ip, `subsets[${i}].addresses.ip`), ready: true, ...(a.targetRef?.kind === 'Pod' ? { pod: { namespace: a.targetRef.namespace ?? ns, name: a.targetRef.name } } : {}) })),
      ...(s.notReadyAddresses ?? []).map((a: any) => ({ ip: str(a.ip, `subsets[${i}].notReadyAddresses.ip`), ready: false })),
    ],
  }));
}

function pod(o: KubeObject, ns: string): Pod {
  const spec = o.spec ?? {};
  const status = (o.status ?? {}) as any;
  const namedPorts: Record<string, number> = {};
  for (const c of spec.containers ?? []) for (const p of c.ports ?? []) if (p.name && p.containerPort) namedPorts[p.name] = p.containerPort;
  const readyCond = (status.conditions ?? []).find((c: any) => c.type === 'Ready');
  return {
    namespace: ns,
    name: str(o.metadata?.name, 'metadata.name'),
    serviceAccount: spec.serviceAccountName ?? spec.serviceAccount ?? 'default',
    ...(status.podIP ? { ip: String(status.podIP) } : {}),
    labels: labelsOf(o),
    namedPorts,
    ready: readyCond ? readyCond.status === 'True' : status.phase === undefined || status.phase === 'Running',
  };
}

function meshConfig(o: KubeObject): Partial<MeshConfig> {
  const spec = o.spec ?? {};
  const out: { -readonly [K in keyof MeshConfig]?: MeshConfig[K] } = {};
  const flag = spec.featureFlags?.enableRetryPolicy;
  if (flag !== undefined) {
    if (typeof flag !== 'boolean') throw new ObjectError('spec.featureFlags.enableRetryPolicy', 'must be true or false');
    out.enableRetryPolicy = flag;
  }
  const perm = spec.traffic?.enablePermissiveTrafficPolicyMode;
  if (perm !== undefined) {
    if (typeof perm !== 'boolean') throw new ObjectError('spec.traffic.enablePermissiveTrafficPolicyMode', 'must be true or false');
    out.enablePermissiveTrafficPolicyMode = perm;
  }
  return out;
}

export interface ConvertResult {
  objects: MeshObjects;
  errors: ManifestError[];
  skipped: { origin: Origin; kind: string; name: string }[];
}

/** Kubernetes objects -> model objects. A bad object is reported and left out; the rest goes on. */
export function convertObjects(located: readonly Located[], defaultNamespace = 'default'): ConvertResult {
  const objects = emptyObjects();
  const errors: ManifestError[] = [];
  const skipped: ConvertResult['skipped'] = [];
  for (const { object: o, origin } of located) {
    const kind = o.kind ?? '';
    const ns = nsOf(o, defaultNamespace);
    const label = `${kind || '(no kind)'} ${o.metadata?.namespace ? `${ns}/` : ''}${o.metadata?.name ?? '(no name)'}`;
    try {
      if (!o.kind) throw new ObjectError('kind', 'is required');
      if (!o.apiVersion) throw new ObjectError('apiVersion', 'is required');
      if (!SUPPORTED_KINDS.includes(kind)) {
        skipped.push({ origin, kind, name: o.metadata?.name ?? '' });
        continue;
      }
      const name = str(o.metadata?.name, 'metadata.name');
      // What the API server would refuse never reaches translation (a name ends up in Envoy names and domains).
      const labelOnly = kind === 'Namespace' || kind === 'Service';
      if (name.length > (labelOnly ? 63 : 253) || !(labelOnly ? DNS_LABEL : DNS_SUBDOMAIN).test(name)) {
        throw new ObjectError('metadata.name', `"${name}" is not a valid ${kind} name (lowercase letters, digits and '-'${labelOnly ? '' : ", '.'"})`);
      }
      if (o.metadata?.namespace !== undefined && (typeof o.metadata.namespace !== 'string' || !DNS_LABEL.test(o.metadata.namespace))) {
        throw new ObjectError('metadata.namespace', `${JSON.stringify(o.metadata.namespace)} is not a valid namespace name`);
      }
      switch (kind) {
        case 'Namespace':
          objects.namespaces.push({ name, labels: labelsOf(o) });
          break;
        case 'Service':
          objects.services.push(service(o, ns));
          break;
        case 'EndpointSlice':
          objects.endpointSlices.push(endpointSlice(o, ns));
          break;
        case 'Endpoints':
          objects.endpointSlices.push(...endpoints(o, ns));
          break;
        case 'Pod':
          objects.pods.push(pod(o, ns));
          break;
        case 'ServiceAccount':
          objects.serviceAccounts.push({ namespace: ns, name });
          break;
        case 'Retry':
          if (o.apiVersion !== RETRY_API_VERSION) throw new ObjectError('apiVersion', `must be ${RETRY_API_VERSION}, got ${o.apiVersion}`);
          objects.retries.push({
            namespace: ns,
            name,
            creationTimestamp: o.metadata?.creationTimestamp,
            generation: o.metadata?.generation,
            uid: o.metadata?.uid,
            spec: o.spec,
            origin,
          });
          break;
        case 'MeshConfig':
          if (!String(o.apiVersion).startsWith('config.flomesh.io/')) throw new ObjectError('apiVersion', `must be config.flomesh.io/v1alpha3, got ${o.apiVersion}`);
          objects.meshConfigs.push({ name, namespace: o.metadata?.namespace, config: meshConfig(o) });
          break;
      }
    } catch (e) {
      if (!(e instanceof ObjectError)) throw e;
      errors.push({ file: origin.file ?? '', doc: origin.doc, line: origin.line, object: label, field: e.field, message: e.message });
    }
  }
  return { objects, errors, skipped };
}

/** `--set featureFlags.enableRetryPolicy=true` style overrides of the mesh config. */
export function parseSetFlag(expr: string): Partial<MeshConfig> {
  const m = /^([A-Za-z.]+)=(true|false)$/.exec(expr.trim());
  const keys: Record<string, keyof MeshConfig> = {
    'featureFlags.enableRetryPolicy': 'enableRetryPolicy',
    'fsm.featureFlags.enableRetryPolicy': 'enableRetryPolicy',
    'traffic.enablePermissiveTrafficPolicyMode': 'enablePermissiveTrafficPolicyMode',
    'fsm.enablePermissiveTrafficPolicy': 'enablePermissiveTrafficPolicyMode',
  };
  if (!m || !keys[m[1]]) {
    throw new Error(`--set ${expr}: expected one of ${Object.keys(keys).map((k) => `${k}=true|false`).join(', ')}`);
  }
  return { [keys[m[1]]]: m[2] === 'true' };
}

/** Assembles a MeshState. Mesh config: defaults, then MeshConfig objects (sorted by name), then overrides. */
export function meshStateOf(objects: MeshObjects, meshName: string, overrides: Partial<MeshConfig> = {}): MeshState {
  let config: MeshConfig = { ...DEFAULT_MESH_CONFIG };
  for (const mc of [...objects.meshConfigs].sort((a, b) => (a.name < b.name ? -1 : 1))) config = { ...config, ...mc.config };
  config = { ...config, ...overrides };
  return {
    meshName,
    meshConfig: config,
    namespaces: objects.namespaces,
    services: objects.services,
    endpointSlices: objects.endpointSlices,
    pods: objects.pods,
    serviceAccounts: objects.serviceAccounts,
    retries: objects.retries,
  };
}
