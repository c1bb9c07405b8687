/**
 * A local HTTP server that speaks the Kubernetes list/watch protocol for a few collections: resourceVersions,
 * watch streams with bookmarks, 410 Gone for expired versions, dropped connections, failing lists, and the
 * status subresource (merge patch). No API server can run on these machines; this is the next best thing.
 */
import http from 'node:http';
import net, { type AddressInfo } from 'node:net';
import { WebSocketServer } from 'ws';
import * as k8s from '@kubernetes/client-node';

interface Event {
  rv: number;
  collection: string;
  type: 'ADDED' | 'MODIFIED' | 'DELETED';
  object: any;
}

export class FakeKube {
  private rv = 100;
  private readonly objects = new Map<string, Map<string, any>>();
  private readonly history: Event[] = [];
  private readonly watchers = new Set<{ collection: string; res: http.ServerResponse }>();
  private compactedBefore = 0;
  private readonly failing = new Map<string, number>();
  readonly server = http.createServer((req, res) => this.handle(req, res));
  readonly lists = new Map<string, number>();
  readonly patches: { path: string; body: any }[] = [];
  port = 0;
  /** Where a pod port-forward leads (pod "ns/name" -> a local TCP port standing in for the pod's port). */
  readonly podPorts = new Map<string, number>();
  /** How many of the next port-forward requests get no answer at all (a stalled API server). */
  stallPortForwards = 0;
  private readonly stalled = new Set<net.Socket>();
  private readonly wss = new WebSocketServer({ noServer: true, handleProtocols: (protocols) => (protocols.has('v4.channel.k8s.io') ? 'v4.channel.k8s.io' : false) });

  async start(): Promise<void> {
    this.server.on('upgrade', (req, socket, head) => this.portForward(req, socket as net.Socket, head));
    await new Promise<void>((r) => this.server.listen(0, '127.0.0.1', r));
    this.port = (this.server.address() as AddressInfo).port;
  }

  kubeConfig(): k8s.KubeConfig {
    const kc = new k8s.KubeConfig();
    kc.loadFromOptions({
      clusters: [{ name: 'fake', server: `http://127.0.0.1:${this.port}`, skipTLSVerify: true }],
      users: [{ name: 'test', token: 'fake-token' }],
      contexts: [{ name: 'fake', cluster: 'fake', user: 'test' }],
      currentContext: 'fake',
    });
    return kc;
  }

  /**
   * The pod portforward subresource over a websocket (channel protocol v4): each stream's first frame holds
   * the port; then binary frames of [stream, ...data], stream 0 data, stream 1 errors.
   */
  private portForward(req: http.IncomingMessage, socket: net.Socket, head: Buffer): void {
    if (this.stallPortForwards > 0) {
      this.stallPortForwards--;
      this.stalled.add(socket);
      return;
    }
    const url = new URL(req.url ?? '/', 'http://x');
    const m = /^\/api\/v1\/namespaces\/([^/]+)\/pods\/([^/]+)\/portforward$/.exec(url.pathname);
    const target = m && this.podPorts.get(`${m[1]}/${m[2]}`);
    if (!m || !target) {
      socket.end('HTTP/1.1 404 Not Found\r\n\r\n');
      return;
    }
    const port = Number(url.searchParams.get('ports'));
    this.wss.handleUpgrade(req, socket, head, (ws) => {
      const portFrame = (stream: number): Buffer => Buffer.from([stream, port & 0xff, port >> 8]);
      ws.send(portFrame(0));
      ws.send(portFrame(1));
      const upstream = net.connect(target, '127.0.0.1');
      upstream.on('data', (d) => ws.send(Buffer.concat([Buffer.from([0]), d])));
      upstream.on('end', () => ws.close());
      upstream.on('error', () => ws.close());
      ws.on('message', (d: Buffer) => {
        if (d[0] === 0) upstream.write(d.subarray(1));
      });
      ws.on('close', () => upstream.destroy());
    });
  }

  close(): Promise<void> {
    for (const w of this.watchers) w.res.destroy();
    for (const c of this.wss.clients) c.terminate();
    for (const s of this.stalled) s.destroy();
    return new Promise((r) => {
      this.server.close(() => r());
      this.server.closeAllConnections();
    });
  }

  private coll(collection: string): Map<string, any> {
    let m = this.objects.get(collection);
    if (!m) this.objects.set(collection, (m = new Map()));
    return m;
  }

  /** Adds or replaces an object in a collection (e.g. `/api/v1/namespaces`) and tells the watchers. */
  apply(collection: string, object: any): void {
    const key = `${object.metadata.namespace ?? ''}/${object.metadata.name}`;
    const m = this.coll(collection);
    const type = m.has(key) ? 'MODIFIED' : 'ADDED';
    const rv = ++this.rv;
    const stored = { ...object, metadata: { generation: 1, ...object.metadata, resourceVersion: String(rv) } };
    m.set(key, stored);
    this.emit({ rv, collection, type, object: stored });
  }

  remove(collection: string, namespace: string | undefined, name: string): void {
    const m = this.coll(collection);
    const key = `${namespace ?? ''}/${name}`;
    const obj = m.get(key);
    if (!obj) return;
    m.delete(key);
    const rv = ++this.rv;
    this.emit({ rv, collection, type: 'DELETED', object: { ...obj, metadata: { ...obj.metadata, resourceVersion: String(rv) } } });
  }

  get(collection: string, namespace: string | undefined, name: string): any {
    return this.coll(collection).get(`${namespace ?? ''}/${name}`);
  }

  /** Ends every open watch (as an API server or load balancer does). */
  dropWatches(): void {
    for (const w of this.watchers) w.res.destroy();
    this.watchers.clear();
  }

  /** Forgets history: watches from an older resourceVersion get 410 Gone. */
  compact(): void {
    this.compactedBefore = this.rv;
  }

  /** The next `n` list requests on `collection` fail with 500. */
  failLists(collection: string, n: number): void {
    this.failing.set(collection, n);
  }

  /** Sends a bookmark to every watcher. */
  bookmark(): void {
    for (const w of this.watchers) w.res.write(`${JSON.stringify({ type: 'BOOKMARK', object: { metadata: { resourceVersion: String(this.rv) } } })}\n`);
  }

  private emit(e: Event): void {
    this.history.push(e);
    for (const w of this.watchers) if (w.collection === e.collection) w.res.write(`${JSON.stringify({ type: e.type, object: e.object })}\n`);
  }

  /** Leases (coordination.k8s.io), enough for leader election: get, create, update with resourceVersion checks. */
  readonly leases = new Map<string, any>();

  private lease(req: http.IncomingMessage, res: http.ServerResponse, m: RegExpExecArray): void {
    let body = '';
    req.on('data', (c) => (body += c));
    req.on('end', () => {
      const reply = (status: number, obj: unknown) => {
        res.writeHead(status, { 'content-type': 'application/json' });
        res.end(JSON.stringify(obj));
      };
      const key = `${m[1]}/${m[2] ?? JSON.parse(body || '{}').metadata?.name}`;
      const current = this.leases.get(key);
      if (req.method === 'GET') return current ? reply(200, current) : reply(404, { kind: 'Status', code: 404, message: 'not found' });
      const obj = JSON.parse(body);
      if (req.method === 'POST') {
        if (current) return reply(409, { kind: 'Status', code: 409, message: 'already exists' });
        this.leases.set(key, { ...obj, metadata: { ...obj.metadata, resourceVersion: String(++this.rv) } });
        return reply(201, this.leases.get(key));
      }
      if (req.method === 'PUT') {
        if (!current || current.metadata.resourceVersion !== obj.metadata?.resourceVersion) return reply(409, { kind: 'Status', code: 409, message: 'conflict' });
        this.leases.set(key, { ...obj, metadata: { ...obj.metadata, resourceVersion: String(++this.rv) } });
        return reply(200, this.leases.get(key));
      }
      reply(405, { kind: 'Status', code: 405 });
    });
  }

  private handle(req: http.IncomingMessage, res: http.ServerResponse): void {
    const leaseMatch = /^\/apis\/coordination\.k8s\.io\/v1\/namespaces\/([^/]+)\/leases(?:\/([^/?]+))?/.exec(req.url ?? '');
    if (leaseMatch) return this.lease(req, res, leaseMatch);
    const url = new URL(req.url ?? '/', 'http://x');
    const path = url.pathname;
    if (req.method === 'PATCH' && path.endsWith('/status')) {
      let body = '';
      req.on('data', (c) => (body += c));
      req.on('end', () => {
        const patch = JSON.parse(body);
        this.patches.push({ path, body: patch });
        // /apis/<g>/<v>/namespaces/<ns>/<plural>/<name>/status
        const m = /^(\/apis\/[^/]+\/[^/]+)\/namespaces\/([^/]+)\/([^/]+)\/([^/]+)\/status$/.exec(path);
        const collection = m && `${m[1]}/${m[3]}`;
        const obj = collection && this.get(collection, m[2], m[4]);
        if (!obj) {
          res.writeHead(404, { 'content-type': 'application/json' }).end(JSON.stringify({ kind: 'Status', code: 404 }));
          return;
        }
        this.apply(collection, { ...obj, status: patch.status });
        res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(this.get(collection, m[2], m[4])));
      });
      return;
    }
    const clusterScoped = /^(\/api\/v1\/[^/]+)\/([^/]+)$/.exec(path);
    if (req.method === 'PATCH' && clusterScoped) {
      let body = '';
      req.on('data', (c) => (body += c));
      req.on('end', () => {
        const patch = JSON.parse(body);
        this.patches.push({ path, body: patch });
        const obj = this.get(clusterScoped[1], undefined, clusterScoped[2]);
        if (!obj) {
          res.writeHead(404, { 'content-type': 'application/json' }).end(JSON.stringify({ kind: 'Status', code: 404 }));
          return;
        }
        this.apply(clusterScoped[1], mergePatch(obj, patch));
        res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(this.get(clusterScoped[1], undefined, clusterScoped[2])));
      });
      return;
    }
    if (req.method !== 'GET') {
      res.writeHead(405).end();
      return;
    }
    // Namespaced lists of a cluster-wide collection path are served from the same store.
    const collection = path;
    if (url.searchParams.get('watch') === 'true') {
      const from = Number(url.searchParams.get('resourceVersion') || '0');
      res.writeHead(200, { 'content-type': 'application/json', 'transfer-encoding': 'chunked' });
      if (from < this.compactedBefore) {
        res.end(`${JSON.stringify({ type: 'ERROR', object: { kind: 'Status', code: 410, reason: 'Expired', message: `too old resource version: ${from}` } })}\n`);
        return;
      }
      for (const e of this.history) if (e.collection === collection && e.rv > from) res.write(`${JSON.stringify({ type: e.type, object: e.object })}\n`);
      const w = { collection, res };
      this.watchers.add(w);
      req.on('close', () => this.watchers.delete(w));
      return;
    }
    this.lists.set(collection, (this.lists.get(collection) ?? 0) + 1);
    const failing = this.failing.get(collection) ?? 0;
    if (failing > 0) {
      this.failing.set(collection, failing - 1);
      res.writeHead(500, { 'content-type': 'application/json' }).end(JSON.stringify({ kind: 'Status', code: 500, message: 'etcd is sad' }));
      return;
    }
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ kind: 'List', apiVersion: 'v1', metadata: { resourceVersion: String(this.rv) }, items: [...this.coll(collection).values()] }));
  }
}

export const PATHS = {
  namespaces: '/api/v1/namespaces',
  services: '/api/v1/services',
  endpointSlices: '/apis/discovery.k8s.io/v1/endpointslices',
  pods: '/api/v1/pods',
  serviceAccounts: '/api/v1/serviceaccounts',
  retries: '/apis/policy.flomesh.io/v1alpha1/retries',
  meshConfigs: (ns: string) => `/apis/config.flomesh.io/v1alpha3/namespaces/${ns}/meshconfigs`,
};

/** JSON merge patch (RFC 7386): objects merge, null deletes, anything else replaces. */
function mergePatch(target: any, patch: any): any {
  if (patch === null || typeof patch !== 'object' || Array.isArray(patch)) return patch;
  const out = { ...(target && typeof target === 'object' ? target : {}) };
  for (const [k, v] of Object.entries(patch)) {
    if (v === null) delete out[k];
    else out[k] = mergePatch(out[k], v);
  }
  return out;
}
