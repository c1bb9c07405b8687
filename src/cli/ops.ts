/** Operator commands that talk to a running server (debug HTTP), to an Envoy admin, or to Kubernetes. */
import { describePath, type AmplificationPath } from '../compile/amplification.js';
import { RESOURCE_TYPES } from '../xds/resources/types.js';
import { flag, table, wantsJson, UsageError } from './output.js';

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
interface ExplainJson {
  readonly error?: string;
  readonly worstPath: AmplificationPath | null;
  readonly retryBudget?: { readonly budgetPercent: number; readonly minRetryConcurrency: number } | null;
  readonly why: string;
  readonly serviceExists: boolean;
  readonly candidates: readonly { readonly policy: string; readonly state: string; readonly reason: string; readonly warnings?: readonly { readonly condition: string; readonly message: string }[] }[];
  readonly routes: readonly { readonly routeConfiguration: string; readonly virtualHost: { readonly name?: string; readonly routes?: readonly { readonly route?: { readonly retry_policy?: unknown } }[] } | null }[];
}

async function getJson<T>(base: string, path: string): Promise<{ status: number; body: T }> {
  let res: Response;
  try {
    res = await fetch(new URL(path, base));
  } catch (e) {
    throw new UnreachableError(`cannot reach the mesh-xds debug server at ${base}: ${(e as Error).cause ?? (e as Error).message}`);
  }
  return { status: res.status, body: (await res.json()) as T };
}

class UnreachableError extends Error {}

async function run(fn: () => Promise<number>): Promise<number> {
  try {
    return await fn();
  } catch (e) {
    if (e instanceof UsageError) {
      process.stderr.write(`mesh-xds: ${e.message}\n`);
      return 2;
    }
    if (e instanceof UnreachableError) {
      process.stderr.write(`mesh-xds: ${e.message}\n`);
      return 3;
    }
    throw e;
  }
}

export function proxyCommand(args: string[]): Promise<number> {
  return run(async () => {
    const [sub, ...rest] = args;
    if (sub === 'status') return proxyStatus(rest);
    if (sub === 'get') return proxyGet(rest);
    throw new UsageError('usage: mesh-xds proxy status | proxy get <stats|config_dump|clusters> <pod> -n <namespace> [--admin-url URL] [--filter TEXT]');
  });
}

async function proxyStatus(args: string[]): Promise<number> {
  const base = flag(args, '--debug-url') ?? process.env.MESH_XDS_DEBUG_URL ?? DEFAULT_DEBUG;
  const { body } = await getJson<{ proxies?: ProxyJson[] }>(base, '/debug/proxies');
  const proxies = body.proxies ?? [];
  if (wantsJson(args)) process.stdout.write(`${JSON.stringify(body, null, 2)}\n`);
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
  const positional = args.filter((a, i) => !a.startsWith('-') && !['-n', '--namespace', '--admin-url', '--filter', '-o', '--output'].includes(args[i - 1]));
  const [what, pod] = positional;
  const namespace = flag(args, '-n', '--namespace') ?? 'default';
  if (!what || !ADMIN_PATHS[what]) throw new UsageError(`proxy get: what to get: one of ${Object.keys(ADMIN_PATHS).join(', ')}`);
  const filterText = flag(args, '--filter');
  const adminUrl = flag(args, '--admin-url');
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

export function policyCommand(args: string[]): Promise<number> {
  return run(async () => {
    const [sub, ...rest] = args;
    if (sub === 'amplification') {
      const { amplificationCommand } = await import('./amplification.js');
      return amplificationCommand(rest);
    }
    if (sub !== 'explain') throw new UsageError('usage: mesh-xds policy explain --from NS/SA --to NS/SVC [-o json] | policy amplification -f FILE_OR_DIR... [-o json] [--max N]');
    const from = flag(rest, '--from');
    const to = flag(rest, '--to');
    if (!from || !to) throw new UsageError('policy explain needs --from <namespace>/<serviceAccount> and --to <namespace>/<service>');
    const base = flag(rest, '--debug-url') ?? process.env.MESH_XDS_DEBUG_URL ?? DEFAULT_DEBUG;
    const { status, body } = await getJson<ExplainJson>(base, `/debug/explain?from=${encodeURIComponent(from)}&to=${encodeURIComponent(to)}`);
    if (status !== 200) {
      process.stderr.write(`mesh-xds: ${body.error}\n`);
      return status === 400 ? 2 : 1;
    }
    if (wantsJson(rest)) process.stdout.write(`${JSON.stringify(body, null, 2)}\n`);
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
      for (const r of body.routes) {
        const retry = r.virtualHost?.routes?.[0]?.route?.retry_policy;
        process.stdout.write(`\n${r.routeConfiguration} ${r.virtualHost?.name ?? ''}\n  retry_policy: ${retry ? JSON.stringify(retry) : 'none'}\n`);
      }
    }
    return 0;
  });
}

export function namespaceCommand(args: string[]): Promise<number> {
  return run(async () => {
    const [sub, ns] = args;
    if ((sub !== 'add' && sub !== 'remove') || !ns) throw new UsageError('usage: mesh-xds namespace add|remove <namespace> [--mesh-name NAME] [--disable-sidecar-injection]');
    const meshName = flag(args, '--mesh-name') ?? 'mesh-xds';
    const { labelNamespace } = await import('./portforward.js');
    try {
      await labelNamespace(ns, sub === 'add' ? meshName : null, !args.includes('--disable-sidecar-injection'));
    } catch (e) {
      throw new UnreachableError(`cannot update namespace ${ns} through the Kubernetes API: ${(e as Error).message}`);
    }
    process.stdout.write(sub === 'add' ? `namespace ${ns} is in mesh ${meshName}\n` : `namespace ${ns} left the mesh\n`);
    return 0;
  });
}
