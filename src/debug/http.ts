/**
 * The debug and health HTTP server: read-only views of what each proxy was sent and said, the policies and
 * their status, health, readiness and metrics. Loopback by default.
 */
import http from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import type { Logger } from 'pino';
import { amplificationOf, amplificationResponse } from '../compile/amplification.js';
import { explainPair } from '../compile/explain.js';
import { FairShare, sourceOf } from '../doors/shares.js';
import type { MeshIR } from '../compile/ir.js';
import { asList, asMap } from '../model/plain.js';
import { outboundRouteName, outboundVirtualHostName, serviceRouteName } from '../envoy/common.js';
import { envoyRetryPolicy } from '../envoy/routes.js';
import { envoyRoot } from '../xds/resources/protos.js';
import type { SnapshotCache } from '../xds/resources/cache.js';
import { toProto3Json } from '../xds/resources/json.js';
import { proxyKey, type ProxyKind } from '../xds/protocol/node.js';
import { shownBody, type Resource, type Snapshot } from '../xds/resources/snapshot.js';
import { type ProxyConnection, type ProxyRegistry } from '../xds/protocol/status.js';
import { RESOURCE_TYPES, ROUTE } from '../xds/resources/types.js';
import type { Metrics } from './metrics.js';
import type { ObservedView, ViewOptions } from '../observed/retries.js';
import { loadUiAssets, serveAsset, UiEvents, type Asset } from './ui.js';

export interface DebugSources {
  cache: SnapshotCache;
  registry: ProxyRegistry;
  metrics: Metrics;
  log: Logger;
  ir: () => MeshIR | undefined;
  preview: (key: string) => Snapshot;
  /** What the sidecars' retry counters say, per Retry and path. */
  observed?: (opts?: ViewOptions) => ObservedView;
  /** Sources synced and ADS serving. */
  ready: () => boolean;
  /** Extra state for /debug/mesh (manifest errors, last build). */
  meshInfo?: () => Record<string, unknown>;
}

const ENDPOINTS: Record<string, string> = {
  '/debug/proxies': 'every connected proxy: identity, stream, and per type the version sent, ACKed, last NACK and state',
  '/debug/config_dump?proxy=<node id>': "a proxy's resources as Envoy's /config_dump prints them (also ?namespace=&serviceAccount=[&kind=proxyless])",
  '/debug/policies': 'every Retry with its status, and for accepted ones the identities, services and Envoy retry_policy; every HTTPRoute and GRPCRoute with a Service parent, its status per parent and the service ports it attaches to',
  '/debug/explain?from=<ns>/<sa>&to=<ns>/<svc>': 'which Retry applies from an identity to a service, and the routes it yields',
  '/ui': 'the page for people: the mesh as a graph with its Retries and worst call paths, policies, proxies and their sync state, live',
  '/debug/events': 'server-sent events telling an open page what changed (mesh, proxies)',
  '/debug/mesh': 'the translated mesh: services, identities, the identities behind each service, diagnostics, manifest errors, last build',
  '/debug/amplification': 'the worst call paths of Retries in force with their worst-case attempts and time, worst first (at most 1 MiB; `omitted` counts the rest)',
  '/debug/retries': 'what the retries did: the sidecars\' own counters, summed per Retry (and per source -> destination, with or without one) over the last 1 and 5 minutes and since it applies, beside the predicted worst case',
  '/healthz': 'the process is alive',
  '/readyz': 'sources synced and ADS serving',
  '/metrics': 'Prometheus metrics',
};

function sortProxies(list: Iterable<ProxyConnection>): ProxyConnection[] {
  return [...list].sort((a, b) => (a.identity.nodeId < b.identity.nodeId ? -1 : a.identity.nodeId > b.identity.nodeId ? 1 : a.id - b.id));
}

/**
 * Envoy's ConfigDump for a snapshot, encoded with the admin protos and printed in proto3 JSON. For a connected
 * proxy, `sent` limits each type to the resources it was sent, with the version it was sent.
 */
export function configDump(snapshot: Snapshot, sent: ReadonlyMap<string, { version?: string; names: Iterable<string> }> = new Map()): unknown {
  const root = envoyRoot();
  // Secrets as Envoy's own dump shows them: the private key redacted.
  const any = (r: Resource) => ({ type_url: r.typeUrl, value: shownBody(r) });
  const list = (url: string) => {
    const all = [...(snapshot.get(url)?.resources.values() ?? [])];
    const held = sent.get(url)?.names;
    const names = held && new Set(held);
    return names ? all.filter((r) => names.has(r.name)) : all;
  };
  const version = (url: string) => sent.get(url)?.version ?? snapshot.get(url)?.version ?? '';
  // One section per registered type, in ADS order, shaped as the registry says Envoy holds it.
  const configs = RESOURCE_TYPES.map(({ typeUrl, dump }) => {
    const t = root.lookupType(dump.message);
    const section = dump.section(version(typeUrl), list(typeUrl).map((r) => ({ name: r.name, any: any(r) })));
    return { type_url: `type.googleapis.com/${dump.message}`, value: t.encode(t.fromObject(section)).finish() };
  });
  const type = root.lookupType('envoy.admin.v3.ConfigDump');
  return toProto3Json(type, type.decode(type.encode(type.fromObject({ configs })).finish()));
}

/**
 * /debug/retries: `?policy=<ns>/<name>` or `?namespace=<ns>` narrow the policies (and the paths, by their source);
 * `?paths=1` adds every path (source -> destination) with numbers, with or without a Retry, `?paths=retries` those a
 * Retry is in force on; at most OBSERVED_PATHS_SHOWN of them, by name (`pathsOmitted` counts the rest).
 */
export function observedResponse(observed: (opts: ViewOptions) => ObservedView, url: URL): unknown {
  const policy = url.searchParams.get('policy');
  const ns = url.searchParams.get('namespace');
  const which = url.searchParams.get('paths');
  const view = observed({ paths: !which ? 'none' : which === 'retries' ? 'retries' : 'all', maxPaths: OBSERVED_PATHS_SHOWN, ...(ns ? { sourceNamespace: ns } : {}) });
  const { paths, ...rest } = view;
  return {
    ...rest,
    policies: view.policies.filter((p) => (!policy || p.policy === policy) && (!ns || p.policy.startsWith(`${ns}/`))),
    ...(which ? { paths } : {}),
  };
}
const OBSERVED_PATHS_SHOWN = 5_000;

function policiesView(ir: MeshIR | undefined): unknown[] {
  if (!ir) return [];
  return ir.policies.map((p) => {
    if (p.state !== 'Accepted' || !p.source) return p;
    const mine = Object.entries(ir.retries[p.source] ?? {}).filter(([, a]) => a.policy === `${p.namespace}/${p.name}`);
    const spec = mine[0]?.[1].spec;
    const policy = spec ? envoyRetryPolicy(spec, { proxyless: false }) : undefined;
    let envoy: unknown = null;
    if (policy) {
      const t = envoyRoot().lookupType('envoy.config.route.v3.RetryPolicy');
      envoy = toProto3Json(t, t.decode(t.encode(t.fromObject(policy)).finish()));
    }
    return { ...p, identities: [p.source], services: mine.map(([dst]) => dst), retryPolicy: envoy, enabled: ir.enableRetryPolicy };
  });
}

/** Endpoints for probes and Prometheus, served to anyone who reaches the port: they reveal no configuration. */
const OPEN = new Set(['/healthz', '/readyz', '/metrics']);

/**
 * A Host header that names this host (`localhost`, a loopback address), with or without a port. A browser sends the
 * name it resolved: a page of another site whose name an attacker points at 127.0.0.1 (DNS rebinding) would send
 * its own, and is refused, so no web page can read the debug endpoints through a browser on this host.
 */
export function isLoopbackHost(host: string | undefined): boolean {
  const h = (host ?? '').toLowerCase().replace(/:\d+$/, '');
  return h === 'localhost' || h === '[::1]' || /^127\.\d+\.\d+\.\d+$/.test(h);
}

/** A connection from this host (the pod's own network namespace: `kubectl port-forward` arrives there). */
export function isLoopback(address: string | undefined): boolean {
  const a = address?.replace(/^::ffff:/, '') ?? '';
  return a === '::1' || /^127\.\d+\.\d+\.\d+$/.test(a);
}

/** Endpoints whose answer grows with the mesh or the number of proxies: served a few at a time. */
const EXPENSIVE = new Set(['/debug/retries', '/debug/proxies', '/debug/policies', '/debug/mesh', '/debug/config_dump', '/debug/explain', '/debug/amplification']);

/**
 * At most `max` expensive requests at once and `queue` waiting; beyond that the answer is 429. Each one starts
 * on a later turn of the event loop than its arrival, so a burst of them is sorted (served, queued or refused)
 * before any runs, and health checks and ADS are served in between.
 */
export class Limiter {
  private active = 0;
  private readonly waiting: (() => void)[] = [];
  constructor(
    readonly max: number,
    readonly queue: number,
  ) {}

  /** Resolves true once a slot is held (release it), or false at once when the queue is full. */
  acquire(): Promise<boolean> {
    if (this.active < this.max) {
      this.active++;
      return new Promise((resolve) => setImmediate(() => resolve(true)));
    }
    if (this.waiting.length >= this.queue) return Promise.resolve(false);
    return new Promise((resolve) => this.waiting.push(() => resolve(true)));
  }

  release(): void {
    const next = this.waiting.shift();
    if (next) setImmediate(next);
    else this.active--;
  }
}

/** Connections the debug port holds at once. */
const DEBUG_CONNECTIONS = 256;

export class DebugServer {
  readonly server: http.Server;
  readonly limiter = new Limiter(2, 16);
  /** Open pages' live feed. */
  readonly events = new UiEvents();
  /** Connections, shared fairly by source address (when full, the source holding the most loses one). */
  readonly connections = new FairShare<Socket>({ total: DEBUG_CONNECTIONS }, (socket) => socket.destroy(), (socket) => this.busy.has(socket));
  /** Connections in the middle of a request (a probe, a scrape): never evicted for a newcomer. */
  private readonly busy = new WeakSet<Socket>();
  private readonly assets: ReadonlyMap<string, Asset>;

  constructor(private readonly src: DebugSources) {
    const ui = loadUiAssets();
    this.assets = ui.assets;
    // The page is not needed to serve: without its files the rest of the debug port works.
    if (ui.missing.length) src.log.warn({ missing: ui.missing }, 'the page (/ui) is not installed whole');
    const proxies = (): void => this.events.changed('proxies');
    src.registry.observe({ connected: proxies, disconnected: proxies, acked: proxies, nacked: proxies });
    // Bounded like the webhook (docs/security.md, "Doors and their bounds"): 5 s to send a request's headers, 10 s
    // for the whole request, 5 s idle, checked every second; 256 connections shared fairly by source address (the
    // kubelet's probes and Prometheus' scrapes are not kept out by one greedy client).
    this.server = http.createServer({ headersTimeout: 5_000, requestTimeout: 10_000, keepAliveTimeout: 5_000, connectionsCheckingInterval: 1_000 }, (req, res) => {
      const socket = req.socket;
      this.busy.add(socket);
      res.once('close', () => this.busy.delete(socket));
      this.handle(req, res).catch((err) => {
        src.log.error({ err: (err as Error).message, url: req.url }, 'debug request failed');
        if (!res.headersSent) this.json(res, 500, { error: (err as Error).message });
        else res.end();
      });
    });
    this.server.on('connection', (socket: Socket) => {
      if (!this.connections.admit(socket, sourceOf(socket))) return socket.destroy();
      socket.once('close', () => this.connections.release(socket));
    });
  }

  listen(address: string): Promise<number> {
    const i = address.lastIndexOf(':');
    const host = address.slice(0, i).replace(/^\[|\]$/g, '');
    const port = Number(address.slice(i + 1));
    return new Promise((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(port, host, () => resolve((this.server.address() as AddressInfo).port));
    });
  }

  /** A new mesh was translated: open pages fetch it again. */
  meshChanged(): void {
    this.events.changed('mesh');
  }

  close(): Promise<void> {
    this.events.close();
    return new Promise((resolve) => {
      this.server.close(() => resolve());
      this.server.closeAllConnections();
    });
  }

  private json(res: http.ServerResponse, status: number, body: unknown): void {
    res.writeHead(status, { 'content-type': 'application/json' });
    res.end(`${JSON.stringify(body, (_k, v) => (typeof v === 'bigint' ? v.toString() : v), 2)}\n`);
  }

  private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://localhost');
    if (req.method !== 'GET' && req.method !== 'HEAD') return this.json(res, 405, { error: 'read-only: use GET' });
    // What reveals proxies, their configuration or the policies is for whoever may enter the control plane's own
    // network namespace: loopback, i.e. `kubectl port-forward` (Kubernetes RBAC: pods/portforward in its
    // namespace) or a shell on its host. Probes and Prometheus reach the open endpoints over the pod IP.
    if (!OPEN.has(url.pathname) && !isLoopback(req.socket.remoteAddress)) {
      this.src.registry.emit('refused', 'debug_not_loopback');
      return this.json(res, 403, {
        error: `${url.pathname} reveals proxies, their configuration or the policies: it is served to loopback clients only. Reach it through kubectl port-forward -n <control plane namespace> deploy/mesh-xds 9091, then http://127.0.0.1:9091${url.pathname}. Open to all: ${[...OPEN].join(', ')}`,
      });
    }
    if (!OPEN.has(url.pathname) && !isLoopbackHost(req.headers.host)) {
      this.src.registry.emit('refused', 'debug_not_loopback');
      return this.json(res, 403, { error: `${url.pathname} is served for Host localhost or a loopback address only (this request said ${JSON.stringify(req.headers.host ?? '')})` });
    }
    if (!EXPENSIVE.has(url.pathname)) return this.route(url, req, res);
    if (!(await this.limiter.acquire())) {
      res.setHeader('retry-after', '1');
      return this.json(res, 429, { error: `busy: ${this.limiter.max} debug requests are being answered and ${this.limiter.queue} wait; try again` });
    }
    try {
      return await this.route(url, req, res);
    } finally {
      this.limiter.release();
    }
  }

  private async route(url: URL, req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const src = this.src;
    switch (url.pathname) {
      case '/healthz':
        res.writeHead(200, { 'content-type': 'text/plain' });
        return void res.end('ok\n');
      case '/readyz': {
        const ready = src.ready();
        res.writeHead(ready ? 200 : 503, { 'content-type': 'text/plain' });
        return void res.end(ready ? 'ready\n' : 'not ready: sources not synced or ADS not serving\n');
      }
      case '/metrics':
        res.writeHead(200, { 'content-type': src.metrics.registry.contentType });
        return void res.end(await src.metrics.registry.metrics());
      case '/':
      case '/debug':
      case '/debug/': {
        if ((req.headers.accept ?? '').includes('application/json')) return this.json(res, 200, { endpoints: ENDPOINTS });
        res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
        const rows = Object.entries(ENDPOINTS)
          .map(([p, d]) => `<li><a href="${p.split('?')[0]}">${p.replace(/</g, '&lt;')}</a>: ${d}</li>`)
          .join('\n');
        return void res.end(`<!doctype html><title>mesh-xds debug</title><h1>mesh-xds</h1><ul>\n${rows}\n</ul>\n`);
      }
      case '/ui':
      case '/ui/':
      case '/ui/app.js':
      case '/ui/app.css':
      case '/ui/cytoscape.min.js': {
        const a = this.assets.get(url.pathname === '/ui/' ? '/ui' : url.pathname);
        if (!a) return this.json(res, 404, { error: `${url.pathname} is not installed` });
        return serveAsset(req, res, a);
      }
      case '/debug/events':
        if (!this.events.open(req, res)) {
          res.setHeader('retry-after', '5');
          return this.json(res, 429, { error: `${this.events.max} pages are open already` });
        }
        return;
      case '/debug/proxies':
        return this.json(res, 200, { proxies: sortProxies(src.registry.connections).map((c) => c.view()) });
      case '/debug/policies':
        // The Retries, and the Gateway API mesh routes with their status per Service parent.
      {
        // The routes: at most 5,000 listed (each report is bounded: 20 problems, clipped), `routesOmitted` the rest.
        const routes = (src.ir()?.routeReports ?? []).filter((r) => r.parents.length);
        return this.json(res, 200, { policies: policiesView(src.ir()), routes: routes.slice(0, 5_000), routesOmitted: Math.max(0, routes.length - 5_000) });
      }
      case '/debug/mesh': {
        const ir = src.ir();
        return this.json(res, 200, {
          ready: src.ready(),
          meshName: ir?.meshName,
          enableRetryPolicy: ir?.enableRetryPolicy,
          identities: ir?.identities ?? [],
          services: ir?.services ?? [],
          // Identity -> the service ports its pods serve.
          backing: ir?.backing ?? {},
          diagnostics: ir?.diagnostics ?? [],
          ...(src.meshInfo?.() ?? {}),
        });
      }
      case '/debug/amplification': {
        const ir = src.ir();
        if (!ir || !src.ready()) return this.json(res, 503, { error: 'not ready: no mesh yet' });
        // Bounded: a dense call graph's paths once made 28 MB here (issue 33).
        return this.json(res, 200, amplificationResponse(amplificationOf(ir)));
      }
      case '/debug/retries': {
        if (!src.observed) return this.json(res, 404, { error: 'this server does not read sidecar metrics' });
        return this.json(res, 200, observedResponse(src.observed, url));
      }
      case '/debug/config_dump':
        return this.configDump(url, res);
      case '/debug/explain':
        return this.explain(url, res);
      default:
        return this.json(res, 404, { error: `no such endpoint ${url.pathname}`, endpoints: Object.keys(ENDPOINTS) });
    }
  }

  private explain(url: URL, res: http.ServerResponse): void {
    const from = url.searchParams.get('from') ?? '';
    const to = url.searchParams.get('to') ?? '';
    const ir = this.src.ir();
    if (!/^[^/]+\/[^/]+$/.test(from) || !/^[^/]+\/[^/]+$/.test(to)) return this.json(res, 400, { error: 'give ?from=<namespace>/<serviceAccount>&to=<namespace>/<service>' });
    if (!ir || !this.src.ready()) return this.json(res, 503, { error: 'not ready: no mesh yet' });
    const { applied, candidates, service, why, fields } = explainPair(ir, from, to);
    const [ns, sa] = from.split('/');
    const routes: unknown[] = [];
    if (service) {
      const key = proxyKey({ kind: 'sidecar', namespace: ns, serviceAccount: sa });
      const snap = this.src.cache.peek(key) ?? this.src.preview(key);
      const rds = envoyRoot().lookupType('envoy.config.route.v3.RouteConfiguration');
      for (const port of service.ports.filter((p) => p.protocol === 'http')) {
        // A ClusterIP service's own route configuration, or its port's (headless services).
        const held = snap.get(ROUTE)?.resources;
        const r = held?.get(serviceRouteName(service.host, port.dialPort)) ?? held?.get(outboundRouteName(port.dialPort));
        if (!r) continue;
        const rc = asMap(toProto3Json(rds, rds.decode(r.body)));
        const vh = asList(rc.virtual_hosts).find((v) => asMap(v).name === outboundVirtualHostName(service.host));
        routes.push({ routeConfiguration: r.name, virtualHost: vh ?? null });
      }
    }
    // The worst call path of Retries in force that goes from this identity to this service.
    const worstPath = amplificationOf(ir).paths.find((p) => p.hops.some((h) => h.from === from && h.to === to)) ?? null;
    return this.json(res, 200, {
      from,
      to,
      worstPath,
      serviceExists: Boolean(service),
      retryPoliciesEnabled: ir.enableRetryPolicy,
      // The mesh's retry budget, on the destination's clusters (null: none; docs/retry-safety.md#retry-budget).
      retryBudget: ir.retryBudget,
      applied: applied ? { policy: applied.policy } : null,
      why,
      candidates,
      fields,
      routes,
    });
  }

  private configDump(url: URL, res: http.ServerResponse): void {
    const src = this.src;
    const nodeId = url.searchParams.get('proxy');
    if (nodeId) {
      const conn = src.registry.byNodeId(nodeId);
      if (!conn) return this.json(res, 404, { error: `no connected proxy with node id "${nodeId}"`, connected: sortProxies(src.registry.connections).map((c) => c.identity.nodeId) });
      const snapshot = src.cache.peek(conn.key);
      if (!snapshot) return this.json(res, 404, { error: `proxy "${nodeId}" has no snapshot yet` });
      const sent = new Map([...conn.types].map(([t, s]) => [t, { version: s.sentVersion, names: s.names }]));
      return this.json(res, 200, configDump(snapshot, sent));
    }
    const namespace = url.searchParams.get('namespace');
    const serviceAccount = url.searchParams.get('serviceAccount');
    if (!namespace || !serviceAccount) {
      return this.json(res, 400, { error: 'give ?proxy=<node id>, or ?namespace=<ns>&serviceAccount=<sa>[&kind=sidecar|proxyless]' });
    }
    const kind = (url.searchParams.get('kind') ?? 'sidecar') as ProxyKind;
    if (kind !== 'sidecar' && kind !== 'proxyless') return this.json(res, 400, { error: 'kind must be sidecar or proxyless' });
    if (!src.ready()) return this.json(res, 503, { error: 'not ready: no mesh yet' });
    const key = proxyKey({ kind, namespace, serviceAccount });
    return this.json(res, 200, configDump(src.cache.peek(key) ?? src.preview(key)));
  }
}

