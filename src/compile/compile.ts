/**
 * MeshState -> MeshIR. Pure: resolves ports and endpoints, validates Retry policies, decides which one applies
 * to each (source identity, destination service) deterministically, and reports every policy's status.
 */
import { amplification, describePath, rememberAmplification } from './amplification.js';
import { retryPitfalls } from './pitfalls.js';
import { compileRoutes } from './routes.js';
import { rulesFor, ruleRetry } from './features.js';
import { asList, asMap } from '../model/plain.js';
import { DEFAULT_MAX_RETRY_AMPLIFICATION, DEFAULT_RETRY_BUDGET, MONITORED_BY_LABEL, byRef, lineOfField, refKey, type MeshState, type Pod, type EndpointSlice } from '../model/mesh.js';
import { parseRetrySpec, type RetrySpec } from '../policy/retry.js';
import type { AppliedRetry, Diagnostic, Endpoint, MeshIR, PolicyReport, PolicyWarning, PortIR, PortProtocol, PortRef, ServiceIR } from './ir.js';

const HTTP_PROTOCOLS = new Set(['http', 'http2', 'grpc', 'h2c', 'kubernetes.io/h2c', 'grpc-web']);
const HTTP2_PROTOCOLS = new Set(['http2', 'grpc', 'h2c', 'kubernetes.io/h2c']);
const TCP_PROTOCOLS = new Set(['tcp', 'tls', 'https', 'mongo', 'mysql', 'redis']);

/** OSM's rule: `appProtocol`, else the port name's prefix (`http-web`, `tcp-db`), else HTTP. */
export function portProtocol(p: { name?: string; appProtocol?: string; protocol: string }): PortProtocol | 'unsupported' {
  if (p.protocol && p.protocol !== 'TCP') return 'unsupported';
  const app = p.appProtocol?.toLowerCase();
  if (app) return HTTP_PROTOCOLS.has(app) ? 'http' : 'tcp';
  const prefix = p.name?.toLowerCase().split('-')[0];
  if (prefix && TCP_PROTOCOLS.has(prefix)) return 'tcp';
  return 'http';
}

function cmpEndpoint(a: Endpoint, b: Endpoint): number {
  return a.ip < b.ip ? -1 : a.ip > b.ip ? 1 : a.port - b.port;
}

function matches(selector: Readonly<Record<string, string>> | undefined, labels: Readonly<Record<string, string>>): boolean {
  if (!selector || Object.keys(selector).length === 0) return false;
  return Object.entries(selector).every(([k, v]) => labels[k] === v);
}

interface Topology {
  services: ServiceIR[];
  backing: Record<string, PortRef[]>;
  diagnostics: Diagnostic[];
}

function compileTopology(state: MeshState, meshNamespaces: Set<string>): Topology {
  const diagnostics: Diagnostic[] = [];
  const slicesBySvc = new Map<string, EndpointSlice[]>();
  for (const s of state.endpointSlices) {
    const key = `${s.namespace}/${s.service}`;
    if (!slicesBySvc.has(key)) slicesBySvc.set(key, []);
    slicesBySvc.get(key)!.push(s);
  }
  const podsByNs = new Map<string, Pod[]>();
  const podByRef = new Map<string, Pod>();
  for (const p of state.pods) {
    if (!podsByNs.has(p.namespace)) podsByNs.set(p.namespace, []);
    podsByNs.get(p.namespace)!.push(p);
    podByRef.set(refKey(p), p);
  }
  const podByIp = new Map<string, Pod>();
  for (const p of state.pods) if (p.ip) podByIp.set(`${p.namespace}/${p.ip}`, p);

  const services: ServiceIR[] = [];
  const backing: Record<string, PortRef[]> = {};
  const sorted = [...state.services].filter((s) => meshNamespaces.has(s.namespace)).sort(byRef);
  for (const [i, svc] of sorted.entries()) {
    // Two definitions of one Service (a source that does not dedupe): the first is used, never both.
    if (i > 0 && byRef(sorted[i - 1], svc) === 0) {
      diagnostics.push({ object: `Service ${refKey(svc)}`, message: 'is defined more than once; the first definition is used' });
      continue;
    }
    const host = `${svc.name}.${svc.namespace}.svc.cluster.local`;
    const slices = slicesBySvc.get(refKey(svc));
    const selected = slices ? [] : (podsByNs.get(svc.namespace) ?? []).filter((p) => matches(svc.selector, p.labels));
    const ports: PortIR[] = [];
    const backers: { pod: Pod | undefined; port: PortIR }[] = [];
    for (const sp of [...svc.ports].sort((a, b) => a.port - b.port)) {
      const protocol = portProtocol(sp);
      if (protocol === 'unsupported') {
        diagnostics.push({ object: `Service ${refKey(svc)}`, message: `port ${sp.port}: protocol ${sp.protocol} is not supported; skipped` });
        continue;
      }
      const endpoints: { ep: Endpoint; pod?: Pod }[] = [];
      if (slices) {
        for (const slice of slices) {
          const match = slice.ports.find((p) => (p.name ?? '') === (sp.name ?? '')) ?? (slice.ports.length === 1 && svc.ports.length === 1 ? slice.ports[0] : undefined);
          if (!match) continue;
          for (const a of slice.addresses) {
            if (!a.ready) continue;
            const pod = a.pod ? podByRef.get(refKey(a.pod)) : podByIp.get(`${svc.namespace}/${a.ip}`);
            endpoints.push({ ep: { ip: a.ip, port: match.port }, pod });
          }
        }
      } else {
        for (const pod of selected) {
          if (!pod.ip || !pod.ready) continue;
          const port = typeof sp.targetPort === 'number' ? sp.targetPort : pod.namedPorts[sp.targetPort];
          if (port === undefined) continue;
          endpoints.push({ ep: { ip: pod.ip, port }, pod });
        }
      }
      let targetPort: number | undefined = typeof sp.targetPort === 'number' ? sp.targetPort : endpoints[0]?.ep.port;
      if (targetPort === undefined) {
        targetPort = sp.port;
        diagnostics.push({
          object: `Service ${refKey(svc)}`,
          message: `port ${sp.port}: named targetPort "${sp.targetPort}" cannot be resolved without endpoints; using ${sp.port}`,
        });
      }
      const unique = new Map(endpoints.map((e) => [`${e.ep.ip}:${e.ep.port}`, e]));
      const port: PortIR = {
        ...(sp.name ? { name: sp.name } : {}),
        port: sp.port,
        dialPort: svc.clusterIP === undefined ? targetPort : sp.port,
        targetPort,
        protocol,
        http2: protocol === 'http' && HTTP2_PROTOCOLS.has(sp.appProtocol?.toLowerCase() ?? ''),
        cluster: `${svc.namespace}/${svc.name}|${targetPort}`,
        endpoints: [...unique.values()].map((e) => e.ep).sort(cmpEndpoint),
      };
      ports.push(port);
      for (const e of unique.values()) backers.push({ pod: e.pod, port });
    }
    const headless = svc.clusterIP === undefined;
    const service: ServiceIR = { namespace: svc.namespace, name: svc.name, host, clusterIP: svc.clusterIP, headless, ports };
    services.push(service);
    for (const b of backers) {
      // What a pod without a sidecar serves is reached in plaintext and does not retry on: not backed by its identity.
      if (!b.pod || b.pod.noSidecar) continue;
      const id = `${b.pod.namespace}/${b.pod.serviceAccount}`;
      const list = (backing[id] ??= []);
      if (!list.some((x) => x.service === refKey(service) && x.port === b.port.port)) list.push({ service: refKey(service), port: b.port.port });
    }
  }
  for (const list of Object.values(backing)) list.sort((a, b) => (a.service < b.service ? -1 : a.service > b.service ? 1 : a.port - b.port));
  return { services, backing, diagnostics };
}

interface Candidate {
  key: string;
  created: string;
  spec: RetrySpec;
}

function compilePolicies(
  state: MeshState,
  meshNamespaces: Set<string>,
  serviceKeys: Set<string>,
  identities: Set<string>,
): { reports: PolicyReport[]; retries: Record<string, Record<string, AppliedRetry>> } {
  const reports = new Map<string, PolicyReport>();
  const candidates: Candidate[] = [];
  const retries: Record<string, Record<string, AppliedRetry>> = {};
  const base = (r: MeshState['retries'][number]) => ({
    namespace: r.namespace,
    name: r.name,
    generation: r.generation,
    declared: declaredRefs(r.spec),
    appliesTo: [] as string[],
    ...(r.origin ? { origin: { file: r.origin.file, doc: r.origin.doc, line: r.origin.line } } : {}),
  });
  for (const r of [...state.retries].sort(byRef)) {
    const key = refKey(r);
    // Two definitions of one Retry (a source that does not dedupe): the first is used, not both.
    if (reports.has(key)) continue;
    const parsed = parseRetrySpec(r.spec);
    if (!parsed.ok) {
      reports.set(key, {
        ...base(r),
        state: 'Invalid',
        reason: `${parsed.problems.length} problem(s) in ${[...new Set(parsed.problems.map((p) => p.field))].join(', ')}`,
        messages: parsed.problems.map((p) => `${p.field}: ${p.message}`),
        problems: parsed.problems.map((p) => ({ ...p, ...(r.origin ? { line: lineOfField(r.origin, p.field) } : {}) })),
      });
      continue;
    }
    const notes = parsed.spec.skipped.map((p) => `${p.field}: ${p.message}`);
    const ignored = (reason: string): PolicyReport => ({ ...base(r), state: 'Ignored', reason, messages: [reason, ...notes], problems: [] });
    if (!meshNamespaces.has(r.namespace)) {
      reports.set(key, ignored(`namespace "${r.namespace}" is not in mesh "${state.meshName}" (label it ${MONITORED_BY_LABEL}=${state.meshName})`));
    } else if (!state.meshConfig.enableRetryPolicy) {
      reports.set(key, ignored('retry policies are disabled: mesh config featureFlags.enableRetryPolicy is false'));
    } else if (parsed.spec.destinations.length === 0) {
      reports.set(key, ignored('no destination of a supported kind (Service)'));
    } else {
      candidates.push({ key, created: r.creationTimestamp ?? '', spec: parsed.spec });
      reports.set(key, { ...base(r), state: 'Accepted', reason: 'applied', messages: notes, problems: [], source: '' });
    }
  }
  // Oldest creationTimestamp wins, then namespace/name: the same answer on every replica and every restart.
  candidates.sort((a, b) => (a.created !== b.created ? (a.created === '' ? 1 : b.created === '' ? -1 : a.created < b.created ? -1 : 1) : a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
  const lost = new Map<string, string[]>();
  for (const c of candidates) {
    const source = `${c.spec.source.namespace}/${c.spec.source.name}`;
    const won: string[] = [];
    for (const d of c.spec.destinations) {
      const dst = `${d.namespace}/${d.name}`;
      const forSource = (retries[source] ??= {});
      const existing = forSource[dst];
      if (existing) {
        if (!lost.has(c.key)) lost.set(c.key, []);
        lost.get(c.key)!.push(`conflicts with Retry ${existing.policy} (older) for ${source} -> Service ${dst}; ${existing.policy} applies`);
        continue;
      }
      forSource[dst] = { policy: c.key, spec: c.spec };
      won.push(dst);
    }
    const rep = reports.get(c.key)!;
    const notes = [...rep.messages, ...(lost.get(c.key) ?? [])];
    for (const dst of won) if (!serviceKeys.has(dst)) notes.push(`Service ${dst} is not in the mesh (yet); the policy applies once it is`);
    if (!identities.has(source)) notes.push(`no ServiceAccount or pod ${source} in the mesh (yet); the policy applies once it is`);
    reports.set(c.key, {
      ...rep,
      state: won.length ? 'Accepted' : 'Conflicted',
      reason: won.length ? (lost.has(c.key) ? 'applied to some destinations; others conflict' : 'applied') : lost.get(c.key)!.join('; '),
      messages: notes,
      source,
      appliesTo: won,
    });
  }
  return { reports: [...reports.values()], retries };
}

/** Source and Service destinations of a Retry spec as written, read leniently (even from an invalid spec). */
function declaredRefs(spec: unknown): PolicyReport['declared'] {
  const s = asMap(spec);
  const ref = (v: unknown): string | undefined => {
    const o = asMap(v);
    return typeof o.namespace === 'string' && typeof o.name === 'string' ? `${o.namespace}/${o.name}` : undefined;
  };
  const source = ref(s.source);
  const destinations = asList(s.destinations)
    .filter((d) => asMap(d).kind === 'Service')
    .map(ref)
    .filter((d): d is string => d !== undefined);
  return { ...(source ? { source } : {}), destinations };
}

export function meshNamespacesOf(state: MeshState): Set<string> {
  return new Set(state.namespaces.filter((n) => n.labels[MONITORED_BY_LABEL] === state.meshName).map((n) => n.name));
}

export function compileTopologyOnly(state: MeshState): Topology & { meshNamespaces: Set<string> } {
  const meshNamespaces = meshNamespacesOf(state);
  return { ...compileTopology(state, meshNamespaces), meshNamespaces };
}

/** The whole compile: topology, identities, policies. */
export function compile(state: MeshState, topology = compileTopologyOnly(state)): MeshIR {
  const { meshNamespaces } = topology;
  const identities = new Set<string>();
  for (const sa of state.serviceAccounts) if (meshNamespaces.has(sa.namespace)) identities.add(refKey(sa));
  for (const p of state.pods) if (meshNamespaces.has(p.namespace)) identities.add(`${p.namespace}/${p.serviceAccount}`);
  const serviceKeys = new Set(topology.services.map((s) => `${s.namespace}/${s.name}`));
  const { reports, retries } = compilePolicies(state, meshNamespaces, serviceKeys, identities);
  const routes = compileRoutes(state, meshNamespaces, topology.services);
  const ir: MeshIR = {
    meshName: state.meshName,
    enableRetryPolicy: state.meshConfig.enableRetryPolicy,
    retryBudget: state.meshConfig.retryBudget === undefined ? DEFAULT_RETRY_BUDGET : state.meshConfig.retryBudget,
    services: topology.services,
    identities: [...identities].sort(),
    retries,
    routes: routes.table,
    backing: topology.backing,
    policies: reports,
    routeReports: routes.reports,
    diagnostics: topology.diagnostics,
  };
  return withAmplificationWarnings(ir, state.meshConfig.maxRetryAmplification ?? DEFAULT_MAX_RETRY_AMPLIFICATION);
}

/**
 * The warnings of accepted Retries (they stay Accepted): each on a call path of more than `max` attempts, naming
 * the path; each whose settings cannot do what they seem to on a destination (retryPitfalls).
 */
function withAmplificationWarnings(ir: MeshIR, max: number): MeshIR {
  const report = amplification(ir);
  const warnings = new Map<string, PolicyWarning[]>();
  const warn = (policy: string, w: PolicyWarning): void => {
    const list = warnings.get(policy) ?? [];
    list.push(w);
    warnings.set(policy, list);
  };
  for (const p of report.paths) {
    // A saturated path makes a million attempts or more (amplification.ts): it is over any bound a mesh sets.
    if (p.attempts <= max && !p.saturated) break;
    const message = `on a call path of ${p.saturated ? `at least ${p.attempts}` : p.attempts} attempts at its last service for one request, over the mesh's bound of ${max}${p.cycle ? ' (a cycle)' : ''}: ${describePath(p)}`;
    // The three worst paths a Retry lies on are enough to act on.
    for (const policy of new Set(p.hops.map((h) => h.retry))) if ((warnings.get(policy)?.length ?? 0) < 3) warn(policy, { condition: 'RetryAmplification', message });
  }
  const services = new Map(ir.services.map((svc) => [`${svc.namespace}/${svc.name}`, svc]));
  for (const [identity, byService] of Object.entries(ir.retries)) {
    for (const [dst, applied] of Object.entries(byService)) {
      const service = services.get(dst);
      if (!service) continue;
      // A route's retry for the same caller and destination: the Retry wins (compile/features.ts); say so.
      const routes = new Set(service.ports.flatMap((port) => (rulesFor(ir, dst, port.port, identity.slice(0, identity.indexOf('/'))) ?? []).filter((r) => ruleRetry(r)).map((r) => r.from)));
      for (const from of routes) {
        warn(applied.policy, { condition: 'Pitfall', message: `${from} also sets retries for ${identity} -> Service ${dst}; this Retry is used instead (it names the caller), the route's retry and timeouts.backendRequest are not` });
      }
      for (const message of retryPitfalls(applied.spec, service)) {
        if (!warnings.get(applied.policy)?.some((w) => w.message === message)) warn(applied.policy, { condition: 'Pitfall', message });
      }
    }
  }
  const out = warnings.size ? { ...ir, policies: ir.policies.map((r) => (warnings.has(`${r.namespace}/${r.name}`) ? { ...r, warnings: warnings.get(`${r.namespace}/${r.name}`)! } : r)) } : ir;
  // The warnings change no edge: the report stands for the IR that carries them (the debug endpoint, the metric).
  rememberAmplification(out, report);
  return out;
}

