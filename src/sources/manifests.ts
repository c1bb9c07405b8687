/**
 * Kubernetes objects (as `kubectl apply` takes them) -> the mesh model. Parsing of YAML/JSON text lives here
 * too, so the folder source and the `validate` command read manifests the same way. Pure: no file I/O.
 */
import { LineCounter, isMap, isNode, isScalar, isSeq, parseAllDocuments, type Document, type Node as YamlNode } from 'yaml';
import {
  DEFAULT_MESH_CONFIG,
  type EndpointSlice,
  type MeshConfig,
  type RetryBudget,
  DEFAULT_RETRY_BUDGET,
  STATS_FLUSH,
  type MeshState,
  type Namespace,
  type Origin,
  type Pod,
  type RetryObject,
  type RouteObject,
  ROUTE_KINDS,
  GATEWAY_API_VERSION,
  type Service,
  type ServiceAccount,
} from '../model/mesh.js';
import { isDnsLabel, isDnsSubdomain, SIDECAR_INJECTION_ANNOTATION } from '../model/names.js';
import { asList, asMap } from '../model/plain.js';
import { RETRY_API_VERSION } from '../policy/retry.js';
import { parseGoDuration } from '../policy/duration.js';
import { nestingProblem } from './yaml-depth.js';

export interface KubeObject {
  apiVersion?: string;
  kind?: string;
  metadata?: { name?: string; namespace?: string; labels?: Record<string, string>; creationTimestamp?: string; generation?: number; uid?: string; [k: string]: unknown };
  spec?: unknown;
  [k: string]: unknown;
}

/** A YAML node's key as written (a scalar's value) and where it starts. */
const keyOf = (key: unknown): { value?: unknown; at?: number } => (isScalar(key) ? { value: key.value, at: key.range?.[0] } : {});

export interface Located {
  readonly object: KubeObject;
  readonly origin: Origin;
  /** The line of a field of the object (`spec.ports[0].port`), or of its nearest ancestor written in the file. */
  readonly lineOf?: (field: string) => number | undefined;
  /** The lines of every field under `field` (`spec` -> {'spec.retryPolicy.retryOn': 17, ...}). */
  readonly linesUnder?: (field: string) => Record<string, number>;
}

/** `spec.destinations[0].kind` -> ['spec', 'destinations', 0, 'kind']. */
export function fieldPath(field: string): (string | number)[] {
  return field
    .split(/\.|(?=\[)/)
    .filter(Boolean)
    .map((s) => (/^\[\d+\]$/.test(s) ? Number(s.slice(1, -1)) : s));
}

/** The YAML node of a value, walking map keys and sequence indexes; the lines of the keys on the way. */
function walk(root: unknown, path: readonly (string | number)[], line: (offset: number) => number, onKey?: (path: string, line: number) => void, prefix = ''): number | undefined {
  let node = root as YamlNode | null | undefined;
  let best: number | undefined;
  for (const seg of path) {
    if (isMap(node)) {
      const pair = node.items.find((p) => keyOf(p.key).value === seg);
      if (!pair) return best;
      const at = keyOf(pair.key).at;
      if (at !== undefined) best = line(at);
      node = pair.value as YamlNode;
    } else if (isSeq(node) && typeof seg === 'number') {
      const item = node.items[seg] as YamlNode | undefined;
      if (!item) return best;
      if (item.range) best = line(item.range[0]);
      node = item;
    } else return best;
  }
  if (onKey) collect(node, line, onKey, prefix);
  return best;
}

/** Every field path under a node with the line of its key (`spec.retryPolicy.retryOn` -> 17). */
function collect(node: unknown, line: (offset: number) => number, out: (path: string, line: number) => void, prefix: string): void {
  if (isMap(node)) {
    for (const p of node.items) {
      const { value: key, at } = keyOf(p.key);
      if (key === undefined || at === undefined) continue;
      const path = prefix ? `${prefix}.${key}` : String(key);
      out(path, line(at));
      collect(p.value, line, out, path);
    }
  } else if (isSeq(node)) {
    node.items.forEach((item, i) => {
      const path = `${prefix}[${i}]`;
      const range = isNode(item) ? item.range : undefined;
      if (range) out(path, line(range[0]));
      collect(item, line, out, path);
    });
  }
}


export interface ManifestError {
  readonly file: string;
  readonly doc?: number;
  readonly line?: number;
  readonly object?: string;
  readonly field?: string;
  readonly message: string;
}

/** YAML aliases a document may expand (the yaml library's own default): more is an alias bomb. */
const MAX_ALIAS_COUNT = 100;

/**
 * Parses multi-document YAML (or JSON, a subset) into objects with file, document index and line. Never
 * throws: a document that cannot be read (syntax, an alias bomb, nesting too deep) is an error with its line.
 */
export function parseManifestText(text: string, file: string): { objects: Located[]; errors: ManifestError[] } {
  const lineCounter = new LineCounter();
  const objects: Located[] = [];
  const errors: ManifestError[] = [];
  let list: Document.Parsed[];
  // Nesting the parser could not survive is refused before it starts (yaml-depth.ts).
  const deep = nestingProblem(text);
  if (deep) return { objects, errors: [{ file, line: deep.line, message: deep.message }] };
  try {
    const docs = parseAllDocuments(text, { lineCounter, prettyErrors: true, uniqueKeys: true });
    list = Array.isArray(docs) ? docs : [docs];
  } catch (e) {
    return { objects, errors: [{ file, message: `cannot parse: ${(e as Error).message}` }] };
  }
  const lineAt = (offset: number): number => lineCounter.linePos(offset).line;
  list.forEach((doc, i) => {
    const start = doc.contents?.range?.[0] ?? doc.range?.[0];
    const line = start !== undefined ? lineAt(start) : undefined;
    if (doc.errors.length) {
      for (const e of doc.errors) {
        errors.push({ file, doc: i, line: e.linePos?.[0]?.line ?? line, message: e.message.split('\n')[0] });
      }
      return;
    }
    let value: unknown;
    try {
      value = doc.toJS({ maxAliasCount: MAX_ALIAS_COUNT });
    } catch (e) {
      const bomb = /alias/i.test((e as Error).message);
      errors.push({ file, doc: i, line, message: bomb ? `YAML aliases expand too far (more than ${MAX_ALIAS_COUNT}): ${(e as Error).message}` : `cannot read the document: ${(e as Error).message}` });
      return;
    }
    if (value === null || value === undefined) return;
    // A `kind: List` (kubectl get -o yaml) holds items.
    const isList = asMap(value).kind === 'List' && Array.isArray(asMap(value).items);
    const items = isList ? asList(asMap(value).items) : [value];
    items.forEach((item, j) => {
      const base = isList ? ['items', j] : [];
      const itemLine = isList ? (walk(doc.contents, base, lineAt) ?? line) : line;
      if (typeof item !== 'object' || item === null || Array.isArray(item)) {
        errors.push({ file, doc: i, line: itemLine, message: 'a document must be a Kubernetes object (a mapping with apiVersion and kind)' });
        return;
      }
      objects.push({
        object: item as KubeObject,
        origin: { file, doc: i, line: itemLine },
        lineOf: (field) => walk(doc.contents, [...base, ...fieldPath(field)], lineAt) ?? itemLine,
        linesUnder: (field) => {
          const out: Record<string, number> = {};
          walk(doc.contents, [...base, ...fieldPath(field)], lineAt, (p, l) => (out[p] = l), field);
          return out;
        },
      });
    });
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
  routes: RouteObject[];
  meshConfigs: { name: string; namespace?: string; config: Partial<MeshConfig> }[];
}

export function emptyObjects(): MeshObjects {
  return { namespaces: [], services: [], endpointSlices: [], pods: [], serviceAccounts: [], retries: [], routes: [], meshConfigs: [] };
}

export const SUPPORTED_KINDS = ['Namespace', 'Service', 'Endpoints', 'EndpointSlice', 'Pod', 'ServiceAccount', 'Retry', 'MeshConfig', ...ROUTE_KINDS];


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

/** How messages name an object: `Kind namespace/name` (`Kind name` when it sets no namespace). */
export function objectLabel(o: KubeObject): string {
  return `${o.kind || '(no kind)'} ${o.metadata?.namespace ? `${o.metadata.namespace}/` : ''}${o.metadata?.name ?? '(no name)'}`;
}

/** Namespace of a namespaced object: its own, or the default one (as `kubectl apply -n`). */
function nsOf(o: KubeObject, defaultNamespace: string): string {
  return o.metadata?.namespace ?? defaultNamespace;
}

function service(o: KubeObject, ns: string): Service {
  const spec = asMap(need(o.spec, 'spec', 'spec'));
  const ports = need(spec.ports, 'spec.ports', 'spec.ports');
  if (!Array.isArray(ports) || ports.length === 0) throw new ObjectError('spec.ports', 'must be a non-empty list');
  const clusterIP = spec.clusterIP === 'None' ? undefined : typeof spec.clusterIP === 'string' && spec.clusterIP ? spec.clusterIP : undefined;
  if (spec.clusterIP !== 'None' && clusterIP === undefined) {
    throw new ObjectError('spec.clusterIP', 'is required here (a folder has no API server to allocate one); use "None" for a headless service');
  }
  const selector = spec.selector === undefined || spec.selector === null ? undefined : Object.fromEntries(Object.entries(asMap(spec.selector)).map(([k, v]) => [k, String(v)]));
  return {
    namespace: ns,
    name: str(o.metadata?.name, 'metadata.name'),
    clusterIP,
    selector,
    ports: ports.map((item: unknown, i: number) => {
      const p = asMap(item);
      const portNo = num(p.port, `spec.ports[${i}].port`);
      return {
        ...(p.name ? { name: String(p.name) } : {}),
        port: portNo,
        targetPort: p.targetPort === undefined ? portNo : typeof p.targetPort === 'number' ? num(p.targetPort, `spec.ports[${i}].targetPort`) : str(p.targetPort, `spec.ports[${i}].targetPort`),
        protocol: typeof p.protocol === 'string' ? p.protocol : 'TCP',
        ...(p.appProtocol ? { appProtocol: String(p.appProtocol) } : {}),
      };
    }),
  };
}

/** The pod an address names (`targetRef` of kind Pod), if it names one. */
function podRef(targetRef: unknown, ns: string): { pod?: { namespace: string; name: string } } {
  const ref = asMap(targetRef);
  return ref.kind === 'Pod' && ref.name ? { pod: { namespace: typeof ref.namespace === 'string' ? ref.namespace : ns, name: String(ref.name) } } : {};
}

function endpointSlice(o: KubeObject, ns: string): EndpointSlice {
  const svc = o.metadata?.labels?.['kubernetes.io/service-name'];
  if (!svc) throw new ObjectError('metadata.labels', 'needs kubernetes.io/service-name (the Service it belongs to)');
  return {
    namespace: ns,
    name: str(o.metadata?.name, 'metadata.name'),
    service: svc,
    ports: asList(o.ports).map((item, i) => {
      const p = asMap(item);
      return { ...(p.name ? { name: String(p.name) } : {}), port: num(p.port, `ports[${i}].port`), protocol: typeof p.protocol === 'string' ? p.protocol : 'TCP' };
    }),
    addresses: asList(o.endpoints).flatMap((item, i) => {
      const e = asMap(item);
      return asList(e.addresses).map((ip) => ({
        ip: str(ip, `endpoints[${i}].addresses`),
        ready: asMap(e.conditions).ready !== false,
        ...podRef(e.targetRef, ns),
      }));
    }),
  };
}

/** core/v1 Endpoints, as one slice per subset. */
function endpoints(o: KubeObject, ns: string): EndpointSlice[] {
  const name = str(o.metadata?.name, 'metadata.name');
  return asList(o.subsets).map((item, i) => {
    const s = asMap(item);
    return {
      namespace: ns,
      name: `${name}-${i}`,
      service: name,
      ports: asList(s.ports).map((pi, j) => {
        const p = asMap(pi);
        return { ...(p.name ? { name: String(p.name) } : {}), port: num(p.port, `subsets[${i}].ports[${j}].port`), protocol: typeof p.protocol === 'string' ? p.protocol : 'TCP' };
      }),
      addresses: [
        ...asList(s.addresses).map((a) => ({ ip: str(asMap(a).ip, `subsets[${i}].addresses.ip`), ready: true, ...podRef(asMap(a).targetRef, ns) })),
        ...asList(s.notReadyAddresses).map((a) => ({ ip: str(asMap(a).ip, `subsets[${i}].notReadyAddresses.ip`), ready: false })),
      ],
    };
  });
}

function pod(o: KubeObject, ns: string): Pod {
  const spec = asMap(o.spec);
  const status = asMap(o.status);
  const namedPorts: Record<string, number> = {};
  for (const c of asList(spec.containers)) {
    for (const item of asList(asMap(c).ports)) {
      const p = asMap(item);
      if (p.name && typeof p.containerPort === 'number') namedPorts[String(p.name)] = p.containerPort;
    }
  }
  const readyCond = asList(status.conditions).map(asMap).find((c) => c.type === 'Ready');
  const account = spec.serviceAccountName ?? spec.serviceAccount;
  return {
    namespace: ns,
    name: str(o.metadata?.name, 'metadata.name'),
    serviceAccount: typeof account === 'string' && account ? account : 'default',
    ...(status.podIP ? { ip: String(status.podIP) } : {}),
    labels: labelsOf(o),
    namedPorts,
    ready: readyCond ? readyCond.status === 'True' : status.phase === undefined || status.phase === 'Running',
    ...(asMap(o.metadata?.annotations)[SIDECAR_INJECTION_ANNOTATION] === 'disabled' || spec.hostNetwork === true ? { noSidecar: true as const } : {}),
  };
}

function meshConfig(o: KubeObject): Partial<MeshConfig> {
  const spec = asMap(o.spec);
  const out: { -readonly [K in keyof MeshConfig]?: MeshConfig[K] } = {};
  const flag = asMap(spec.featureFlags).enableRetryPolicy;
  if (flag !== undefined) {
    if (typeof flag !== 'boolean') throw new ObjectError('spec.featureFlags.enableRetryPolicy', 'must be true or false');
    out.enableRetryPolicy = flag;
  }
  const perm = asMap(spec.traffic).enablePermissiveTrafficPolicyMode;
  if (perm !== undefined) {
    if (typeof perm !== 'boolean') throw new ObjectError('spec.traffic.enablePermissiveTrafficPolicyMode', 'must be true or false');
    out.enablePermissiveTrafficPolicyMode = perm;
  }
  const budget = asMap(spec.traffic).retryBudget;
  if (budget !== undefined) out.retryBudget = retryBudget(budget);
  const flush = asMap(spec.observability).statsFlushInterval;
  if (flush !== undefined) out.statsFlushSeconds = statsFlushSeconds(flush);
  return out;
}

/** `spec.observability.statsFlushInterval`: a duration of whole seconds from 1s to 60s. */
function statsFlushSeconds(v: unknown): number {
  const at = 'spec.observability.statsFlushInterval';
  const d = typeof v === 'string' ? parseGoDuration(v) : { error: `must be a duration such as "5s", got ${JSON.stringify(v)}` };
  if ('error' in d) throw new ObjectError(at, d.error);
  const { minSeconds: min, maxSeconds: max } = STATS_FLUSH;
  if (d.nanos % 1_000_000_000n !== 0n || d.nanos < BigInt(min) * 1_000_000_000n || d.nanos > BigInt(max) * 1_000_000_000n) {
    throw new ObjectError(at, `must be whole seconds from ${min}s to ${max}s (how often each sidecar sends its counters), got ${JSON.stringify(v)}`);
  }
  return Number(d.nanos / 1_000_000_000n);
}

/** `spec.traffic.retryBudget`: {enabled, budgetPercent, minRetryConcurrency}, each optional (defaults: on, 20, 3). */
function retryBudget(v: unknown): RetryBudget | null {
  const at = 'spec.traffic.retryBudget';
  if (v === null || typeof v !== 'object' || Array.isArray(v)) throw new ObjectError(at, 'must be a mapping of enabled, budgetPercent, minRetryConcurrency');
  const b = asMap(v);
  for (const k of Object.keys(b)) if (!['enabled', 'budgetPercent', 'minRetryConcurrency'].includes(k)) throw new ObjectError(`${at}.${k}`, 'unknown field (known: enabled, budgetPercent, minRetryConcurrency)');
  if (b.enabled !== undefined && typeof b.enabled !== 'boolean') throw new ObjectError(`${at}.enabled`, 'must be true or false');
  if (b.enabled === false) return null;
  const pct = b.budgetPercent ?? DEFAULT_RETRY_BUDGET.budgetPercent;
  if (typeof pct !== 'number' || !Number.isFinite(pct) || pct <= 0 || pct > 100) throw new ObjectError(`${at}.budgetPercent`, `must be a number greater than 0 and at most 100 (a percentage of the active requests), got ${JSON.stringify(pct)}`);
  const min = b.minRetryConcurrency ?? DEFAULT_RETRY_BUDGET.minRetryConcurrency;
  if (typeof min !== 'number' || !Number.isInteger(min) || min < 0 || min > 4294967295) throw new ObjectError(`${at}.minRetryConcurrency`, `must be a whole number from 0 to 4294967295, got ${JSON.stringify(min)}`);
  return { budgetPercent: pct, minRetryConcurrency: min };
}

export interface ConvertResult {
  objects: MeshObjects;
  errors: ManifestError[];
  skipped: { origin: Origin; kind: string; name: string }[];
}

/** Kubernetes objects -> model objects. A bad object is reported and left out; the rest goes on. */
export function convertObjects(locatedObjects: readonly Located[], defaultNamespace = 'default'): ConvertResult {
  const objects = emptyObjects();
  const errors: ManifestError[] = [];
  const skipped: ConvertResult['skipped'] = [];
  for (const located of locatedObjects) {
    const { object: o, origin } = located;
    const kind = o.kind ?? '';
    const ns = nsOf(o, defaultNamespace);
    const label = objectLabel(o);
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
      if (!(labelOnly ? isDnsLabel(name) : isDnsSubdomain(name))) {
        throw new ObjectError('metadata.name', `"${name}" is not a valid ${kind} name (lowercase letters, digits and '-'${labelOnly ? '' : ", '.'"})`);
      }
      if (o.metadata?.namespace !== undefined && (typeof o.metadata.namespace !== 'string' || !isDnsLabel(o.metadata.namespace))) {
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
            // Where each field was written, so the policy's status can point at the bad field's own line.
            origin: { ...origin, ...(located.linesUnder ? { fieldLines: located.linesUnder('spec') } : {}) },
          });
          break;
        case 'HTTPRoute':
        case 'GRPCRoute':
          if (o.apiVersion !== GATEWAY_API_VERSION) throw new ObjectError('apiVersion', `must be ${GATEWAY_API_VERSION}, got ${o.apiVersion}`);
          objects.routes.push({
            kind: kind as RouteObject['kind'],
            namespace: ns,
            name,
            creationTimestamp: o.metadata?.creationTimestamp,
            generation: o.metadata?.generation,
            uid: o.metadata?.uid,
            spec: o.spec,
            origin: { ...origin, ...(located.linesUnder ? { fieldLines: located.linesUnder('spec') } : {}) },
          });
          break;
        case 'MeshConfig':
          if (!String(o.apiVersion).startsWith('config.flomesh.io/')) throw new ObjectError('apiVersion', `must be config.flomesh.io/v1alpha3, got ${o.apiVersion}`);
          objects.meshConfigs.push({ name, namespace: o.metadata?.namespace, config: meshConfig(o) });
          break;
      }
    } catch (e) {
      if (!(e instanceof ObjectError)) throw e;
      errors.push({ file: origin.file ?? '', doc: origin.doc, line: located.lineOf?.(e.field) ?? origin.line, object: label, field: e.field, message: e.message });
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
    routes: objects.routes,
  };
}
