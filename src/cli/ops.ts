/** Operator commands that talk to a running server (debug HTTP), to an Envoy admin, or to Kubernetes. */
import type { RouteFieldsJson } from '../compile/explain.js';
import { describePath, type AmplificationPath } from '../compile/amplification.js';
import { RESOURCE_TYPES } from '../xds/resources/types.js';
import { outputFormat, parseFlags, type Usage } from './args.js';
import { nearest, UnreachableError, UsageError } from './errors.js';
import { isDnsLabel, isObjectName } from '../model/names.js';
import { table } from './output.js';

const DEFAULT_DEBUG = 'http://127.0.0.1:9091';

/** A proxy as /debug/proxies shows it: the fields the CLI prints. */
interface ProxyJson {
  readonly nodeId: string;
  readonly namespace: string;
  readonly serviceAccount: string;
  readonly podName: string | null;
  readonly kind: string;
  readonly stream: string;
  readonly types: Readonly<Record<string, { readonly state: string; readonly lastNack: { readonly version: string; readonly error: string } | null }>>;
}

/** /debug/explain's answer: the fields the CLI prints. */
export interface ExplainJson {
  readonly error?: string;
  readonly worstPath: AmplificationPath | null;
  readonly retryBudget?: { readonly budgetPercent: number; readonly minRetryConcurrency: number } | null;
  readonly why: string;
  readonly serviceExists: boolean;
  readonly candidates: readonly { readonly policy: string; readonly state: string; readonly reason: string; readonly warnings?: readonly { readonly condition: string; readonly message: string }[] }[];
  readonly routes: readonly { readonly routeConfiguration: string; readonly virtualHost: { readonly name?: string; readonly routes?: readonly { readonly name?: string; readonly route?: { readonly retry_policy?: unknown } }[] } | null }[];
  /** Per HTTP port, each route and the policy that set its fields. */
  readonly fields?: readonly { readonly port: number; readonly routes: readonly RouteFieldsJson[] }[];
}

/** The debug server's base URL: --debug-url, else $MESH_XDS_DEBUG_URL, else the default; one that is not a URL is a usage error. */
function debugUrl(command: string, given: string | undefined): string {
  const base = given ?? process.env.MESH_XDS_DEBUG_URL ?? DEFAULT_DEBUG;
  const from = given !== undefined ? '--debug-url' : process.env.MESH_XDS_DEBUG_URL !== undefined ? 'MESH_XDS_DEBUG_URL' : 'the default';
  if (!URL.canParse(base) || !/^https?:$/.test(new URL(base).protocol)) throw new UsageError(`${command}: ${from} ${base}: not an http URL such as ${DEFAULT_DEBUG}`);
  return base;
}

async function getJson<T>(base: string, path: string): Promise<{ status: number; body: T }> {
  let res: Response;
  try {
    res = await fetch(new URL(path, base));
  } catch (e) {
    throw new UnreachableError(`cannot reach the mesh-xds debug server at ${base}: ${(e as Error).cause ?? (e as Error).message} (is mesh-xds serve running? its address: --debug-url URL)`);
  }
  try {
    return { status: res.status, body: (await res.json()) as T };
  } catch {
    throw new UnreachableError(`${base} did not answer as the mesh-xds debug server does (HTTP ${res.status}, not JSON): is --debug-url right?`);
  }
}

/** The first argument, a subcommand: one of `subs`, else a usage error naming them (and the nearest). */
function subcommand(command: string, sub: string | undefined, subs: string[], usage: string): string {
  if (sub !== undefined && subs.includes(sub)) return sub;
  if (sub === '--help' || sub === '-h') return 'help';
  const near = sub === undefined ? undefined : nearest(sub, subs);
  throw new UsageError(`${command}: ${sub === undefined ? 'which one?' : `unknown subcommand "${sub}"${near ? ` (did you mean ${near}?)` : ''};`} ${subs.join(' or ')}; usage: ${usage}`);
}

const PROXY_USAGE = 'mesh-xds proxy status [-o json] [--debug-url URL] | mesh-xds proxy get <stats|config_dump|clusters> <pod> -n <namespace> [--admin-url URL] [--filter TEXT]';

export async function proxyCommand(args: string[]): Promise<number> {
  const [sub, ...rest] = args;
  const which = subcommand('proxy', sub, ['status', 'get'], PROXY_USAGE);
  if (which === 'help') {
    process.stdout.write(`usage: ${PROXY_USAGE}\n`);
    return 0;
  }
  return which === 'status' ? proxyStatus(rest) : proxyGet(rest);
}

async function proxyStatus(args: string[]): Promise<number> {
  const u: Usage = { command: 'proxy status', usage: 'mesh-xds proxy status [-o json] [--debug-url URL]' };
  const parsed = parseFlags(u, args, { output: { type: 'string', short: 'o' }, 'debug-url': { type: 'string' } });
  if (!parsed) return 0;
  const json = outputFormat(u.command, parsed.values.output) === 'json';
  const { body } = await getJson<{ proxies?: ProxyJson[] }>(debugUrl(u.command, parsed.values['debug-url']), '/debug/proxies');
  const proxies = body.proxies ?? [];
  if (json) process.stdout.write(`${JSON.stringify(body, null, 2)}\n`);
  else {
    const state = (p: ProxyJson, t: string): string => p.types[t]?.state ?? 'NOT SENT';
    process.stdout.write(
      table(
        ['NODE', 'IDENTITY', 'POD', 'KIND', 'STREAM', ...RESOURCE_TYPES.map((t) => t.short)],
        proxies.map((p) => [p.nodeId, `${p.namespace}/${p.serviceAccount}`, p.podName ?? '-', p.kind, p.stream, ...RESOURCE_TYPES.map((t) => state(p, t.short))]),
      ),
    );
    for (const p of proxies) {
      for (const [t, s] of Object.entries(p.types)) if (s.lastNack) process.stdout.write(`${p.nodeId} ${t} NACK of ${s.lastNack.version}: ${s.lastNack.error}\n`);
    }
  }
  const synced = proxies.every((p) => Object.values(p.types).every((s) => s.state === 'SYNCED' || s.state === 'NOT SENT'));
  return synced ? 0 : 1;
}

const ADMIN_PATHS: Record<string, string> = { stats: '/stats', config_dump: '/config_dump', clusters: '/clusters' };

async function proxyGet(args: string[]): Promise<number> {
  const u: Usage = { command: 'proxy get', usage: 'mesh-xds proxy get <stats|config_dump|clusters> <pod> -n <namespace> [--admin-url URL] [--filter TEXT]', positionals: 2 };
  const parsed = parseFlags(u, args, { namespace: { type: 'string', short: 'n', default: 'default' }, 'admin-url': { type: 'string' }, filter: { type: 'string' } });
  if (!parsed) return 0;
  const [what, pod] = parsed.positionals;
  const namespace = parsed.values.namespace!;
  if (!what || !ADMIN_PATHS[what]) {
    const near = what === undefined ? undefined : nearest(what, Object.keys(ADMIN_PATHS));
    throw new UsageError(`proxy get: what to get: ${what === undefined ? '' : `not "${what}"${near ? ` (did you mean ${near}?)` : ''}, but `}one of ${Object.keys(ADMIN_PATHS).join(', ')}; usage: ${u.usage}`);
  }
  const filterText = parsed.values.filter;
  const adminUrl = parsed.values['admin-url'];
  if (adminUrl !== undefined && (!URL.canParse(adminUrl) || !/^https?:$/.test(new URL(adminUrl).protocol))) throw new UsageError(`proxy get: --admin-url ${adminUrl}: not an http URL such as http://127.0.0.1:15000`);
  let text: string;
  if (adminUrl) {
    try {
      const res = await fetch(new URL(ADMIN_PATHS[what], adminUrl));
      text = await res.text();
    } catch (e) {
      throw new UnreachableError(`cannot reach the Envoy admin at ${adminUrl}: ${(e as Error).cause ?? (e as Error).message}`);
    }
  } else {
    if (!pod) throw new UsageError('proxy get: name the pod (or give --admin-url for an Envoy reachable directly)');
    const { adminThroughPortForward } = await import('./portforward.js');
    try {
      text = await adminThroughPortForward(namespace, pod, ADMIN_PATHS[what]);
    } catch (e) {
      throw new UnreachableError(`cannot reach pod ${namespace}/${pod}'s Envoy admin (15000) through the Kubernetes API: ${(e as Error).message}`);
    }
  }
  const lines = text.split('\n').filter((l) => !filterText || l.includes(filterText));
  process.stdout.write(lines.join('\n').replace(/\n*$/, '\n'));
  return 0;
}

const POLICY_USAGE =
  'mesh-xds policy explain --from NS/SA --to NS/SVC [-f FILE_OR_DIR...] [-o json] [--debug-url URL] | mesh-xds policy amplification -f FILE_OR_DIR... [-o json] [--max N] | mesh-xds policy stats [NAME] [-n NS] [--paths] [--window 1m|5m|total] [-o json] [--debug-url URL]';

export async function policyCommand(args: string[]): Promise<number> {
  const [sub, ...rest] = args;
  const which = subcommand('policy', sub, ['explain', 'amplification', 'stats'], POLICY_USAGE);
  if (which === 'help') {
    process.stdout.write(`usage: ${POLICY_USAGE}\n`);
    return 0;
  }
  if (which === 'amplification') {
    const { amplificationCommand } = await import('./amplification.js');
    return amplificationCommand(rest);
  }
  if (which === 'stats') return policyStats(rest);
  return policyExplain(rest);
}

/** The window's numbers of /debug/retries: the fields the CLI prints. */
interface ObservedNumbersJson {
  readonly requests: number;
  readonly retries: number;
  readonly retriesSucceeded: number;
  readonly retriesExhausted: number;
  readonly retriesRefused: number;
  readonly retryRate: number | null;
  readonly attemptsPerRequest: number | null;
}
/** /debug/retries's answer: the fields the CLI prints. */
interface ObservedJson {
  readonly policies: readonly { readonly policy: string; readonly source: string; readonly destinations: readonly string[]; readonly proxiesReporting: number; readonly predictedAttemptsPerRequest: number; readonly windows: Readonly<Record<string, ObservedNumbersJson>> }[];
  readonly paths?: readonly { readonly source: string; readonly destination: string; readonly policy: string | null; readonly windows: Readonly<Record<string, ObservedNumbersJson>> }[];
  readonly pathsOmitted?: number;
  readonly bucketSeconds: number;
}

const WINDOW_NAMES = ['1m', '5m', 'total'];

/** `policy stats`: what each Retry did, from the sidecars' own counters summed by the running server. */
async function policyStats(args: string[]): Promise<number> {
  const u: Usage = { command: 'policy stats', usage: 'mesh-xds policy stats [NAME] [-n NS] [--paths] [--window 1m|5m|total] [-o json] [--debug-url URL]', positionals: 1 };
  const parsed = parseFlags(u, args, {
    namespace: { type: 'string', short: 'n' },
    paths: { type: 'boolean' },
    window: { type: 'string' },
    output: { type: 'string', short: 'o' },
    'debug-url': { type: 'string' },
  });
  if (!parsed) return 0;
  const v = parsed.values;
  const json = outputFormat(u.command, v.output) === 'json';
  const window = v.window ?? '5m';
  if (!WINDOW_NAMES.includes(window)) throw new UsageError(`${u.command}: --window ${window}: one of ${WINDOW_NAMES.join(', ')}`);
  const name = parsed.positionals[0];
  if (name !== undefined && !isObjectName(name)) throw new UsageError(`${u.command}: ${name}: not a Retry's name (a Kubernetes name)`);
  if (v.namespace !== undefined && !isDnsLabel(v.namespace)) throw new UsageError(`${u.command}: -n ${v.namespace}: not a namespace name`);
  if (name !== undefined && v.namespace === undefined) throw new UsageError(`${u.command}: ${name}: say its namespace with -n NS`);
  const base = debugUrl(u.command, v['debug-url']);
  const query = new URLSearchParams();
  if (name !== undefined) query.set('policy', `${v.namespace}/${name}`);
  else if (v.namespace !== undefined) query.set('namespace', v.namespace);
  if (v.paths) query.set('paths', '1');
  const answer = await getJson<ObservedJson & { error?: string }>(base, `/debug/retries?${query}`);
  if (answer.status !== 200) {
    process.stderr.write(`mesh-xds: ${u.command}: the server at ${base} answered HTTP ${answer.status}: ${answer.body.error ?? ''}\n`);
    return answer.status === 404 ? 1 : 3;
  }
  const body = answer.body;
  if (json) {
    process.stdout.write(`${JSON.stringify(body, null, 2)}\n`);
    return name !== undefined && !body.policies.length ? 1 : 0;
  }
  if (name !== undefined && !body.policies.length) {
    process.stderr.write(`mesh-xds: ${u.command}: no Retry ${v.namespace}/${name} is in force (see mesh-xds policy explain, or /debug/policies)\n`);
    return 1;
  }
  const pct = (x: number | null): string => (x === null ? '-' : `${Math.round(x * 1000) / 10}%`);
  const cells = (n: ObservedNumbersJson): string[] => [String(n.requests), String(n.retries), pct(n.retryRate), String(n.retriesSucceeded), String(n.retriesExhausted), String(n.retriesRefused), n.attemptsPerRequest === null ? '-' : String(n.attemptsPerRequest)];
  const heads = ['REQUESTS', 'RETRIES', 'RETRY RATE', 'SUCCEEDED', 'EXHAUSTED', 'REFUSED', 'ATTEMPTS/REQ'];
  const label = window === 'total' ? 'since each path began under its Retry' : `the last ${window === '1m' ? 'minute' : '5 minutes'} (to ${body.bucketSeconds} s)`;
  process.stdout.write(`What the Retries did, from the sidecars' own counters, over ${label}:\n`);
  process.stdout.write(
    body.policies.length
      ? table(['RETRY', 'SOURCE', 'DESTINATIONS', 'PROXIES', ...heads, 'PREDICTED WORST'], body.policies.map((p) => [p.policy, p.source, p.destinations.join(','), String(p.proxiesReporting), ...cells(p.windows[window]!), String(p.predictedAttemptsPerRequest)]))
      : 'no Retry in force\n',
  );
  if (body.paths) {
    process.stdout.write(`\nEvery source -> destination with numbers (with or without a Retry):\n`);
    process.stdout.write(body.paths.length ? table(['SOURCE', 'DESTINATION', 'RETRY', ...heads], body.paths.map((p) => [p.source, p.destination, p.policy ?? '(none)', ...cells(p.windows[window]!)])) : 'none yet\n');
    if (body.pathsOmitted) process.stdout.write(`(${body.pathsOmitted} more paths not shown: -o json lists the same; narrow with -n NS)\n`);
  }
  return 0;
}

/** `NS/NAME` of --from or --to, else a usage error saying what it should be. */
function ref(command: string, flag: string, value: string | undefined, what: string, example: string): string {
  if (value === undefined) throw new UsageError(`${command}: ${flag} is missing: give ${flag} NAMESPACE/${what}, e.g. ${flag} ${example}`);
  const m = /^([^/]+)\/([^/]+)$/.exec(value);
  if (!m || !isDnsLabel(m[1]) || !isObjectName(m[2])) throw new UsageError(`${command}: ${flag} ${value}: expected NAMESPACE/${what} (Kubernetes names), e.g. ${flag} ${example}`);
  return value;
}

async function policyExplain(args: string[]): Promise<number> {
  const u: Usage = { command: 'policy explain', usage: 'mesh-xds policy explain --from NS/SA --to NS/SVC [-f FILE_OR_DIR...] [-o json] [--debug-url URL]' };
  const parsed = parseFlags(u, args, {
    from: { type: 'string' },
    to: { type: 'string' },
    filename: { type: 'string', short: 'f', multiple: true },
    output: { type: 'string', short: 'o' },
    'debug-url': { type: 'string' },
  });
  if (!parsed) return 0;
  const v = parsed.values;
  const json = outputFormat(u.command, v.output) === 'json';
  const from = ref(u.command, '--from', v.from, 'SERVICEACCOUNT', 'curl/curl');
  const to = ref(u.command, '--to', v.to, 'SERVICE', 'httpbin/httpbin');
  let body: ExplainJson;
  if (v.filename?.length) {
    if (v['debug-url'] !== undefined) throw new UsageError(`${u.command}: -f and --debug-url: choose one (-f explains the manifests offline; --debug-url asks a running server)`);
    const { explainFiles } = await import('./explain.js');
    body = await explainFiles(u.command, v.filename, from, to);
  } else {
    const base = debugUrl(u.command, v['debug-url']);
    const answer = await getJson<ExplainJson>(base, `/debug/explain?from=${encodeURIComponent(from)}&to=${encodeURIComponent(to)}`);
    if (answer.status !== 200) {
      process.stderr.write(`mesh-xds: ${u.command}: the server at ${base} answered HTTP ${answer.status}: ${answer.body.error ?? ''}\n`);
      return answer.status === 400 ? 2 : answer.status === 503 ? 3 : 1;
    }
    body = answer.body;
  }
  if (json) process.stdout.write(`${JSON.stringify(body, null, 2)}\n`);
  else {
    process.stdout.write(`${from} -> ${to}: ${body.why}\n`);
    if (!body.serviceExists) process.stdout.write(`Service ${to} is not in the mesh\n`);
    if (body.retryBudget !== undefined) {
      const b = body.retryBudget;
      process.stdout.write(b ? `retry budget of ${to}'s clusters: retries in flight at most ${b.budgetPercent}% of active requests, at least ${b.minRetryConcurrency}\n` : `retry budget: none (retries limited by numRetries only)\n`);
    }
    if (body.worstPath) {
      const p = body.worstPath;
      process.stdout.write(`worst call path through it: ${p.attempts} attempts, ${p.latency}${p.cycle ? ', a cycle' : ''}: ${describePath(p)}\n`);
    }
    if (body.candidates.length) process.stdout.write(`\n${table(['RETRY', 'STATE', 'REASON'], body.candidates.map((c) => [c.policy, c.state, c.reason]))}`);
    for (const c of body.candidates) for (const w of c.warnings ?? []) process.stdout.write(`warning (${w.condition}) ${c.policy}: ${w.message}\n`);
    for (const p of body.fields ?? []) {
      process.stdout.write(`\nport ${p.port}:\n${table(['ROUTE', 'MATCH', 'RETRY SET BY', 'TIMEOUT SET BY'], p.routes.map((r) => [r.route, r.match, r.setBy.retry ?? '-', r.setBy.timeout ?? '-']))}`);
    }
    for (const r of body.routes) {
      process.stdout.write(`\n${r.routeConfiguration} ${r.virtualHost?.name ?? ''}\n`);
      for (const route of r.virtualHost?.routes ?? []) {
        const retry = route.route?.retry_policy;
        process.stdout.write(`  ${route.name ?? 'route'}: retry_policy: ${retry ? JSON.stringify(retry) : 'none'}\n`);
      }
    }
  }
  return 0;
}

const NAMESPACE_USAGE = 'mesh-xds namespace add|remove <namespace> [--mesh-name NAME] [--disable-sidecar-injection]';

export async function namespaceCommand(args: string[]): Promise<number> {
  const [sub, ...rest] = args;
  const which = subcommand('namespace', sub, ['add', 'remove'], NAMESPACE_USAGE);
  if (which === 'help') {
    process.stdout.write(`usage: ${NAMESPACE_USAGE}\n`);
    return 0;
  }
  const u: Usage = { command: `namespace ${which}`, usage: NAMESPACE_USAGE, positionals: 1 };
  const parsed = parseFlags(u, rest, { 'mesh-name': { type: 'string', default: 'mesh-xds' }, 'disable-sidecar-injection': { type: 'boolean', default: false } });
  if (!parsed) return 0;
  const [ns] = parsed.positionals;
  if (ns === undefined) throw new UsageError(`${u.command}: which namespace? usage: ${u.usage}`);
  if (!isDnsLabel(ns)) throw new UsageError(`${u.command}: ${ns}: not a Kubernetes namespace name (lowercase letters, digits and '-')`);
  const meshName = parsed.values['mesh-name']!;
  if (!isDnsLabel(meshName)) throw new UsageError(`${u.command}: --mesh-name ${meshName}: must be a Kubernetes label value`);
  if (which === 'remove' && rest.some((a) => a.startsWith('--disable-sidecar-injection') || a.startsWith('--mesh-name'))) {
    throw new UsageError(`${u.command}: --mesh-name and --disable-sidecar-injection are for namespace add`);
  }
  const { labelNamespace } = await import('./portforward.js');
  try {
    await labelNamespace(ns, which === 'add' ? meshName : null, !parsed.values['disable-sidecar-injection']);
  } catch (e) {
    throw new UnreachableError(`cannot update namespace ${ns} through the Kubernetes API: ${(e as Error).message}`);
  }
  process.stdout.write(which === 'add' ? `namespace ${ns} is in mesh ${meshName}\n` : `namespace ${ns} left the mesh\n`);
  return 0;
}
