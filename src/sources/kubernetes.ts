/**
 * The Kubernetes source: list+watch of Namespaces, Services, EndpointSlices, Pods, ServiceAccounts, Retries, the
 * MeshConfig and the Gateway API's HTTPRoutes and GRPCRoutes, with our own reflectors (client-node's informers stop
 * on error and do not relist): a failed watch is retried with backoff and a full relist, nothing is published until
 * every resource has listed once, and a relist replaces a cache whole, so a lost watch never yields a partial mesh.
 * The routes are optional: where their CRD is not installed (404), they count as listed and empty, and are listed
 * again with backoff until the CRD appears. Inputs only: what the control plane writes back (Retry and route
 * statuses, identity Secrets, the Lease) is in outputs/, which reads this source's caches.
 */
import http from 'node:http';
import https from 'node:https';
import * as k8s from '@kubernetes/client-node';
import type { Logger } from 'pino';
import type { MeshConfig, MeshState, RouteKind } from '../model/mesh.js';
import { GATEWAY_API_VERSION, MONITORED_BY_LABEL } from '../model/mesh.js';
import { loadKubeConfig } from './kubeconfig.js';
import { convertObjects, meshStateOf, type KubeObject, type Located } from './manifests.js';
import type { MeshSource } from './source.js';

export interface KubernetesSourceOptions {
  meshName: string;
  overrides?: Partial<MeshConfig>;
  /** The control plane's namespace (where the MeshConfig lives). */
  namespace: string;
  kubeconfig?: string;
  /** A ready KubeConfig (tests point it at a local fake API server). */
  kubeConfig?: k8s.KubeConfig;
  log: Logger;
  onChange: (state: MeshState) => void;
  debounceMs?: number;
  /** Backoff after a failed list or watch: first delay and cap (ms). */
  backoff?: { initialMs: number; maxMs: number };
  /** Seconds after which the API server ends a watch (it is then resumed from where it was). */
  watchTimeoutSeconds?: number;
}

/** A ServiceAccount of an enrolled namespace, with its uid (the owner of its identity Secret). */
export interface MeshAccount {
  readonly namespace: string;
  readonly name: string;
  readonly uid: string;
}

/** What an API server's refusal means for an operator (the status code and the server's own message). */
export function explain(status: number | undefined, message: string, what: string): string {
  if (status === 401) return `the API server refused the control plane's credentials (401 Unauthorized) on ${what}: the token may be revoked or expired; serving the last good mesh (${message})`;
  if (status === 403) return `RBAC forbids ${what} (403 Forbidden): ${message}`;
  return message;
}

interface ResourceDef {
  kind: string;
  apiVersion: string;
  /** Collection path for list and watch. */
  path: (ns: string) => string;
  /**
   * The CRD of an optional resource: a 404 on its list means the CRD is not installed, which is not an error: the
   * resource counts as listed and empty (the mesh is published without it) and is listed again with backoff.
   */
  optionalCrd?: string;
}

const RESOURCES: ResourceDef[] = [
  { kind: 'Namespace', apiVersion: 'v1', path: () => '/api/v1/namespaces' },
  { kind: 'Service', apiVersion: 'v1', path: () => '/api/v1/services' },
  { kind: 'EndpointSlice', apiVersion: 'discovery.k8s.io/v1', path: () => '/apis/discovery.k8s.io/v1/endpointslices' },
  { kind: 'Pod', apiVersion: 'v1', path: () => '/api/v1/pods' },
  { kind: 'ServiceAccount', apiVersion: 'v1', path: () => '/api/v1/serviceaccounts' },
  { kind: 'Retry', apiVersion: 'policy.flomesh.io/v1alpha1', path: () => '/apis/policy.flomesh.io/v1alpha1/retries' },
  { kind: 'MeshConfig', apiVersion: 'config.flomesh.io/v1alpha3', path: (ns) => `/apis/config.flomesh.io/v1alpha3/namespaces/${ns}/meshconfigs` },
  { kind: 'HTTPRoute', apiVersion: GATEWAY_API_VERSION, path: () => `/apis/${GATEWAY_API_VERSION}/httproutes`, optionalCrd: 'httproutes.gateway.networking.k8s.io' },
  { kind: 'GRPCRoute', apiVersion: GATEWAY_API_VERSION, path: () => `/apis/${GATEWAY_API_VERSION}/grpcroutes`, optionalCrd: 'grpcroutes.gateway.networking.k8s.io' },
];

class GoneError extends Error {}
/** 404 Not Found on a collection: for an optional resource, its CRD is not installed. */
class NotFoundError extends Error {}

/** One resource's list+watch loop and cache. */
class Reflector {
  objects = new Map<string, KubeObject>();
  synced = false;
  lists = 0;
  /** Why the last list or watch failed, until a list succeeds again (shown in /debug/mesh). */
  lastError?: string;
  /** An optional resource whose CRD is not installed (its last list was a 404). */
  absent = false;
  private stopped = false;
  private abort?: AbortController;
  private delay: number;

  constructor(
    private readonly def: ResourceDef,
    private readonly path: string,
    private readonly kc: k8s.KubeConfig,
    private readonly log: Logger,
    private readonly changed: () => void,
    private readonly backoff: { initialMs: number; maxMs: number },
    private readonly watchTimeoutSeconds: number,
  ) {
    this.delay = backoff.initialMs;
  }

  /** GET on the collection, through node:http(s) with the kubeconfig's TLS and auth applied. */
  private async request(query: Record<string, string>, signal?: AbortSignal): Promise<http.IncomingMessage> {
    const cluster = this.kc.getCurrentCluster();
    if (!cluster) throw new Error('no current cluster in the kubeconfig');
    const url = new URL(`${cluster.server.replace(/\/$/, '')}${this.path}`);
    for (const [k, v] of Object.entries(query)) url.searchParams.set(k, v);
    const opts: https.RequestOptions = { method: 'GET', headers: { accept: 'application/json' } };
    await this.kc.applyToHTTPSOptions(opts);
    const res = await new Promise<http.IncomingMessage>((resolve, reject) => {
      const req = (url.protocol === 'https:' ? https : http).request(url, { ...opts, signal }, resolve);
      req.on('error', reject);
      req.end();
    });
    if (res.statusCode === 410) {
      res.resume();
      throw new GoneError('410 Gone');
    }
    if (!res.statusCode || res.statusCode >= 300) {
      let body = '';
      for await (const c of res) body += c;
      let message = body.slice(0, 300);
      try {
        message = JSON.parse(body).message ?? message;
      } catch {
        /* not a Status */
      }
      const text = explain(res.statusCode, `${res.statusCode} ${res.statusMessage}: ${message}`, `${query.watch ? 'watch' : 'list'} ${this.path}`);
      throw res.statusCode === 404 ? new NotFoundError(text) : new Error(text);
    }
    return res;
  }

  private normalize(o: KubeObject): KubeObject {
    return { ...o, apiVersion: this.def.apiVersion, kind: this.def.kind };
  }

  private key(o: KubeObject): string {
    return `${o.metadata?.namespace ?? ''}/${o.metadata?.name ?? ''}`;
  }

  async run(): Promise<void> {
    while (!this.stopped) {
      try {
        const res = await this.request({});
        let text = '';
        for await (const c of res) text += c;
        const list = JSON.parse(text) as { items?: KubeObject[]; metadata?: { resourceVersion?: string } };
        this.objects = new Map((list.items ?? []).map((o) => [this.key(o), this.normalize(o)]));
        this.lists++;
        this.synced = true;
        this.lastError = undefined;
        if (this.absent) this.log.info({ resource: this.def.kind, crd: this.def.optionalCrd, objects: this.objects.size }, 'the CRD is installed now; following it');
        this.absent = false;
        this.delay = this.backoff.initialMs;
        this.changed();
        let rv: string = list.metadata?.resourceVersion ?? '';
        // Watch until the server ends it (then re-watch from where we were) or it fails (then relist).
        for (;;) {
          if (this.stopped) return;
          rv = await this.watch(rv);
        }
      } catch (err) {
        if (this.stopped) return;
        if (err instanceof NotFoundError && this.def.optionalCrd) {
          this.notInstalled();
          await new Promise((r) => setTimeout(r, this.delay));
          this.delay = Math.min(this.delay * 2, this.backoff.maxMs);
          continue;
        }
        const gone = err instanceof GoneError;
        if (!gone) this.lastError = `${(err as Error).message}${this.synced ? '; serving the last good mesh' : ''}`;
        this.log[gone ? 'info' : 'warn']({ resource: this.def.kind, err: (err as Error).message, retryInMs: gone ? 0 : this.delay }, gone ? 'watch expired (410 Gone); relisting' : 'list/watch failed; relisting after backoff');
        if (!gone) {
          await new Promise((r) => setTimeout(r, this.delay));
          this.delay = Math.min(this.delay * 2, this.backoff.maxMs);
        }
      }
    }
  }

  /**
   * An optional resource's CRD is not installed (or was deleted, with every object of its kind): listed and empty,
   * said once at info until it appears.
   */
  private notInstalled(): void {
    const had = this.objects.size;
    this.objects = new Map();
    this.lastError = undefined;
    this.lists++;
    if (!this.absent) {
      this.log.info(
        { resource: this.def.kind, crd: this.def.optionalCrd, retryInMs: this.delay },
        `the CRD ${this.def.optionalCrd} is not installed (or does not serve ${this.def.apiVersion}): the mesh is served without ${this.def.kind}s, which are picked up once it is`,
      );
    }
    this.absent = true;
    const first = !this.synced;
    this.synced = true;
    if (first || had) this.changed();
  }

  /** One watch request; resolves with the last resourceVersion when the server closes it normally. */
  private async watch(rv: string): Promise<string> {
    this.abort = new AbortController();
    const res = await this.request({ watch: 'true', resourceVersion: rv, allowWatchBookmarks: 'true', timeoutSeconds: String(this.watchTimeoutSeconds) }, this.abort.signal);
    res.setEncoding('utf8');
    let buffer = '';
    for await (const chunk of res as AsyncIterable<string>) {
      buffer += chunk;
      let nl: number;
      while ((nl = buffer.indexOf('\n')) >= 0) {
        const line = buffer.slice(0, nl).trim();
        buffer = buffer.slice(nl + 1);
        if (!line) continue;
        const event = JSON.parse(line) as { type: string; object: KubeObject & { code?: number; message?: string } };
        if (event.type === 'ERROR') {
          if (event.object?.code === 410) throw new GoneError(event.object.message ?? '410 Gone');
          throw new Error(`watch error: ${event.object?.message ?? JSON.stringify(event.object)}`);
        }
        const o = this.normalize(event.object);
        rv = (o.metadata?.resourceVersion as string | undefined) ?? rv;
        if (event.type === 'BOOKMARK') continue;
        if (event.type === 'DELETED') this.objects.delete(this.key(o));
        else this.objects.set(this.key(o), o);
        this.changed();
      }
    }
    return rv;
  }

  stop(): void {
    this.stopped = true;
    this.abort?.abort();
  }
}

export class KubernetesSource implements MeshSource {
  /** The kubeconfig in use (the writers of outputs/ use it too). */
  readonly kc: k8s.KubeConfig;
  private readonly reflectors: Reflector[];
  private timer?: NodeJS.Timeout;
  private resolveSynced?: (s: MeshState) => void;
  private started = false;

  constructor(private readonly opts: KubernetesSourceOptions) {
    this.kc = opts.kubeConfig ?? loadKubeConfig(opts.kubeconfig);
    const backoff = opts.backoff ?? { initialMs: 500, maxMs: 30_000 };
    // A random watch timeout (as client-go's reflector) spreads re-watches of many replicas over time.
    const watchTimeout = opts.watchTimeoutSeconds ?? 300 + Math.floor(Math.random() * 300);
    this.reflectors = RESOURCES.map((def) => new Reflector(def, def.path(opts.namespace), this.kc, opts.log, () => this.schedule(), backoff, watchTimeout));
  }

  private objects(kind: string): Map<string, KubeObject> {
    return this.reflectors[RESOURCES.findIndex((d) => d.kind === kind)]!.objects;
  }

  /** A Namespace as last listed or watched: its labels and annotations (the webhook's question). */
  namespace(name: string): { name: string; labels: Record<string, string>; annotations: Record<string, string> } | undefined {
    const n = this.objects('Namespace').get(`/${name}`);
    return n && { name, labels: { ...(n.metadata?.labels ?? {}) }, annotations: { ...((n.metadata?.annotations as Record<string, string> | undefined) ?? {}) } };
  }

  /** A Retry as last listed or watched (its status and generation: what a status write compares with). */
  retry(namespace: string, name: string): KubeObject | undefined {
    return this.objects('Retry').get(`${namespace}/${name}`);
  }

  /**
   * An HTTPRoute or GRPCRoute as last listed or watched (its generation and status: what a status write compares
   * with); undefined also where its CRD is not installed.
   */
  route(kind: RouteKind, namespace: string, name: string): KubeObject | undefined {
    return this.objects(kind).get(`${namespace}/${name}`);
  }

  /** The ServiceAccounts of the namespaces in the mesh, with their uids. */
  accounts(): MeshAccount[] {
    const enrolled = new Set([...this.objects('Namespace').values()].filter((n) => n.metadata?.labels?.[MONITORED_BY_LABEL] === this.opts.meshName).map((n) => n.metadata!.name!));
    return [...this.objects('ServiceAccount').values()]
      .filter((sa) => enrolled.has(sa.metadata?.namespace ?? '') && sa.metadata?.uid)
      .map((sa) => ({ namespace: sa.metadata!.namespace!, name: sa.metadata!.name!, uid: sa.metadata!.uid! }));
  }

  get synced(): boolean {
    return this.reflectors.every((r) => r.synced);
  }

  /** Resources whose last list or watch failed (they keep serving what they had). */
  get errors(): number {
    return this.reflectors.filter((r) => r.lastError).length;
  }

  info(): Record<string, unknown> {
    const resources = Object.fromEntries(
      RESOURCES.map((d, i) => {
        const r = this.reflectors[i];
        return [d.kind, { synced: r.synced, objects: r.objects.size, lists: r.lists, ...(r.absent ? { notInstalled: `CRD ${d.optionalCrd}` } : {}), ...(r.lastError ? { error: r.lastError } : {}) }];
      }),
    );
    return { source: 'kubernetes', synced: this.synced, resources };
  }

  /** Starts every reflector; resolves with the first mesh once every resource has listed. */
  start(): Promise<MeshState> {
    return new Promise((resolve) => {
      this.resolveSynced = resolve;
      for (const r of this.reflectors) void r.run();
    });
  }

  stop(): void {
    if (this.timer) clearTimeout(this.timer);
    for (const r of this.reflectors) r.stop();
  }

  private schedule(): void {
    if (!this.synced) return;
    if (!this.started) {
      this.started = true;
      this.resolveSynced?.(this.state());
      return;
    }
    if (this.timer) return;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      if (!this.synced) return;
      this.opts.onChange(this.state());
    }, this.opts.debounceMs ?? 100);
  }

  /** The mesh from the caches (every reflector has listed at least once). */
  state(): MeshState {
    const located: Located[] = this.reflectors.flatMap((r) => [...r.objects.values()].map((object) => ({ object, origin: {} })));
    const { objects, errors } = convertObjects(located);
    for (const e of errors) this.opts.log.warn({ object: e.object, field: e.field }, e.message);
    return meshStateOf(objects, this.opts.meshName, this.opts.overrides);
  }
}
