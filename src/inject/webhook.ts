/**
 * The mutating admission webhook (FSM's path, /mutate-pod-creation) over HTTPS: an AdmissionReview v1 in, the
 * same with the sidecar's JSONPatch (or a refusal, or nothing) out. Every pod of the mesh passes it (the webhook's
 * failurePolicy is Fail), so what a client can make it hold is bounded, each client (source address: the API server
 * presents no identity) getting a fair share (src/doors/shares.ts), and the API server's reviews are answered
 * within its 10 s timeout whatever another client does (docs/security.md, "Doors and their bounds"):
 * - connections: 1,024 open, 5 s to finish the TLS handshake, 5 s to send a request's headers, 5 s idle between
 *   requests; the bounds are checked every second (Node's default, 30 s, let a slow client outlive them);
 * - reviews: 256 in flight, each body at most 4 MiB (a Pod in an AdmissionReview is far smaller; the API server's
 *   own limit for an object is 3 MiB), 64 MiB held in all, whole within 5 s of its headers;
 * - when one of these is full, the client holding the most gives way (its connection closed or its review
 *   answered 503), so a slow or greedy client costs its own share only;
 * - the pod: at most MAX_CONTAINERS containers and a patch of at most 1 MiB, else denied before any work; what the
 *   pod says is clipped wherever it is quoted.
 * It reveals the sidecar template only (images, the control plane's Service): nothing of the mesh's config.
 */
import https from 'node:https';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import type { Logger } from 'pino';
import { FairShare, sourceOf } from '../doors/shares.js';
import { asMap, clip, type Fields } from '../model/plain.js';
import type { CredentialsHolder } from '../security/tls.js';
import { decide, type InjectOptions, type NamespaceFacts } from './inject.js';

export const WEBHOOK_PATH = '/mutate-pod-creation';

/** The webhook's bounds (tests lower them). */
export const WEBHOOK_BOUNDS = {
  /** Bytes of one AdmissionReview. */
  maxBody: 4 * 1024 * 1024,
  /** Bytes of review bodies held at once, all clients together. */
  bodyBytes: 64 * 1024 * 1024,
  /** Reviews in flight at once (headers in, not yet answered). */
  inFlight: 256,
  /** Connections open at once (handshaking, idle or in a review). */
  connections: 1_024,
  /** From a review's headers to its whole body. */
  bodyMs: 5_000,
  /** To finish the TLS handshake; to send a request's headers; idle between requests on a kept-alive connection. */
  handshakeMs: 5_000,
  headersMs: 5_000,
  idleMs: 5_000,
  /** Bytes of the JSONPatch answered (a sidecar for a pod of MAX_CONTAINERS containers is a few tens of kB). */
  maxPatch: 1024 * 1024,
};
export type WebhookBounds = typeof WEBHOOK_BOUNDS;

export type AdmissionResult = 'injected' | 'skipped' | 'denied' | 'ignored' | 'bad_request';

export interface WebhookOptions extends InjectOptions {
  credentials: CredentialsHolder;
  /** Bounds other than WEBHOOK_BOUNDS (tests). */
  bounds?: Partial<WebhookBounds>;
  /** The namespace's labels and annotations (undefined: not known), from the source's cache: never an API call per review. */
  namespace(name: string): Promise<NamespaceFacts | undefined>;
  log: Logger;
  /** Each review's outcome (metrics). */
  onResult?(result: AdmissionResult): void;
  /** What the mesh's config says now of the sidecar (its stats flush interval), read at each review. */
  mesh?(): Pick<InjectOptions, 'statsFlushSeconds'>;
}

class BadRequest extends Error {}

/** Nesting a review may have ([ and { inside each other); a Pod's deepest, its managed fields, is about 20. */
const MAX_NESTING = 100;

/**
 * Whether JSON bytes nest deeper than `max`, found by one pass over the bytes before parsing: 2,000,000 nested `[`
 * in a field the webhook never reads cost JSON.parse 4.5 s of the event loop a review.
 */
export function nestsDeeper(body: Buffer, max = MAX_NESTING): boolean {
  let depth = 0;
  let inString = false;
  for (let i = 0; i < body.length; i++) {
    const c = body[i]!;
    if (inString) {
      if (c === 0x5c) i++;
      else if (c === 0x22) inString = false;
    } else if (c === 0x22) inString = true;
    else if (c === 0x5b || c === 0x7b) {
      if (++depth > max) return true;
    } else if (c === 0x5d || c === 0x7d) depth--;
  }
  return false;
}

/** The review's request, checked: what this webhook reads of it. */
function parseReview(text: string): { uid: string; kind: string; operation: string; namespace: string; object: Fields; apiVersion: string } {
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch (e) {
    throw new BadRequest(`the body is not JSON: ${(e as Error).message}`);
  }
  const review = asMap(body);
  if (review.kind !== 'AdmissionReview' || (review.apiVersion !== 'admission.k8s.io/v1' && review.apiVersion !== 'admission.k8s.io/v1beta1')) {
    throw new BadRequest(`expected an AdmissionReview of admission.k8s.io/v1, got kind ${JSON.stringify(review.kind)} apiVersion ${JSON.stringify(review.apiVersion)}`);
  }
  const req = asMap(review.request);
  if (typeof req.uid !== 'string' || !req.uid) throw new BadRequest('request.uid is missing');
  const object = asMap(req.object);
  if (req.object === undefined || Object.keys(object).length === 0) throw new BadRequest('request.object is missing');
  return {
    uid: req.uid,
    apiVersion: review.apiVersion,
    kind: typeof asMap(req.kind).kind === 'string' ? (asMap(req.kind).kind as string) : '',
    operation: typeof req.operation === 'string' ? req.operation : '',
    namespace: typeof req.namespace === 'string' ? req.namespace : typeof asMap(object.metadata).namespace === 'string' ? (asMap(object.metadata).namespace as string) : '',
    object,
  };
}

export class InjectionWebhook {
  private server?: https.Server;
  private unwatch?: () => void;
  private readonly bounds: WebhookBounds;
  /** Connections, reviews in flight and the bytes of their bodies, each shared fairly by source address. */
  private readonly connections: FairShare<Socket>;
  private readonly reviews: FairShare<IncomingMessage>;
  private readonly bodies: FairShare<IncomingMessage>;
  /** Connections in the middle of a review: never evicted for a newcomer's connection. */
  private readonly busy = new WeakSet<Socket>();
  /** Why an evicted review was refused (answered by its own handler). */
  private readonly evicted = new WeakMap<IncomingMessage, string>();

  constructor(private readonly o: WebhookOptions) {
    const b = (this.bounds = { ...WEBHOOK_BOUNDS, ...o.bounds });
    this.connections = new FairShare({ total: b.connections }, (socket) => socket.destroy(), (socket) => this.busy.has(socket));
    const evict = (what: string) => (req: IncomingMessage) => {
      this.evicted.set(req, what);
      req.emit('evicted');
    };
    this.reviews = new FairShare({ total: b.inFlight }, evict(`the webhook had ${b.inFlight} reviews in flight and this client the most`));
    this.bodies = new FairShare({ total: b.bodyBytes }, evict(`the webhook held ${b.bodyBytes} bytes of reviews and this client the most`));
  }

  /** What the doors hold now (tests, metrics). */
  get held(): { connections: number; reviews: number; bodyBytes: number; evictions: number } {
    return { connections: this.connections.used, reviews: this.reviews.used, bodyBytes: this.bodies.used, evictions: this.connections.evictions + this.reviews.evictions + this.bodies.evictions };
  }

  /** The AdmissionReview answered for a request body (exported for tests of the decision path). */
  async review(text: string): Promise<{ response: Fields; result: AdmissionResult; apiVersion: string }> {
    const req = parseReview(text);
    const answer = (result: AdmissionResult, response: Fields) => ({ response: { uid: req.uid, ...response }, result, apiVersion: req.apiVersion });
    if (req.kind !== 'Pod' || req.operation !== 'CREATE') return answer('ignored', { allowed: true });
    const ns = await this.o.namespace(req.namespace).catch((e: Error) => {
      throw new Error(`cannot read namespace ${clip(req.namespace, 63)}: ${e.message}`);
    });
    if (!ns) return answer('denied', { allowed: false, status: { code: 403, message: `mesh-xds: namespace ${clip(req.namespace, 63)} is not known to the control plane yet; try again` } });
    const d = decide(req.object, ns, { ...this.o, ...this.o.mesh?.() });
    if (d.inject) {
      const patch = JSON.stringify(d.patch);
      if (patch.length > this.bounds.maxPatch) {
        return answer('denied', { allowed: false, status: { code: 403, reason: 'Forbidden', message: `mesh-xds sidecar injection: the pod's patch would be ${patch.length} bytes, over the webhook's bound of ${this.bounds.maxPatch}` } });
      }
      return answer('injected', { allowed: true, patchType: 'JSONPatch', patch: Buffer.from(patch).toString('base64') });
    }
    if ('denied' in d) return answer('denied', { allowed: false, status: { code: 403, reason: 'Forbidden', message: `mesh-xds sidecar injection: ${d.denied}` } });
    this.o.log.debug({ reason: d.skipped }, 'pod admitted without a sidecar');
    return answer('skipped', { allowed: true });
  }

  private handle(req: IncomingMessage, res: ServerResponse): void {
    const b = this.bounds;
    const socket = req.socket;
    const reply = (status: number, body: string, type = 'text/plain; charset=utf-8', close = false): void => {
      if (res.headersSent) return;
      res.writeHead(status, { 'content-type': type, 'content-length': Buffer.byteLength(body), ...(close ? { connection: 'close' } : {}) });
      res.end(body);
    };
    /** Refuses the review and closes its connection once the answer is out: what the client still sends is not read. */
    const refuse = (status: number, body: string): void => {
      this.o.onResult?.('bad_request');
      done();
      req.pause();
      reply(status, body, undefined, true);
      res.once('finish', () => socket.destroySoon());
      setTimeout(() => socket.destroy(), 1_000).unref();
    };
    const path = (req.url ?? '').split('?')[0];
    if (path !== WEBHOOK_PATH) return reply(404, `not found: the webhook is at ${WEBHOOK_PATH}\n`);
    if (req.method !== 'POST') return reply(405, 'POST an AdmissionReview\n');
    const client = sourceOf(socket);
    const announced = Number(req.headers['content-length'] ?? 0);
    let finished = false;
    const done = (): void => {
      if (finished) return;
      finished = true;
      clearTimeout(deadline);
      socket.off('close', done);
      this.busy.delete(tcp);
      this.reviews.release(req);
      this.bodies.release(req);
    };
    let deadline: NodeJS.Timeout | undefined = undefined;
    // Released when the response or the connection closes: a pipelined request whose connection died never sees its
    // response's 'close' (254 of 256 slots were held for good that way).
    res.on('close', done);
    socket.once('close', done);
    // The connections' share holds the TCP socket under the TLS one (its `_parent`; Node has no public link).
    const tcp = (socket as Socket & { _parent?: Socket })._parent ?? socket;
    this.busy.add(tcp);
    if (announced > b.maxBody) return refuse(413, `an AdmissionReview of at most ${b.maxBody} bytes\n`);
    if (!this.reviews.admit(req, client)) return refuse(429, `the webhook has ${this.reviews.used} reviews in flight, its bound of ${b.inFlight}, and this client holds no less than the others; try again\n`);
    // The body's bytes are held from the start as announced (the API server says how long its body is).
    if (!this.bodies.admit(req, client, Math.max(announced, 0))) return refuse(429, `the webhook holds ${this.bodies.used} bytes of reviews, its bound of ${b.bodyBytes}; try again\n`);
    req.once('evicted', () => refuse(503, `mesh-xds: ${this.evicted.get(req) ?? 'evicted'}; try again\n`));
    deadline = setTimeout(() => refuse(408, `the AdmissionReview was not whole within ${b.bodyMs / 1000} s of its headers\n`), b.bodyMs);
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (c: Buffer) => {
      if (finished) return;
      size += c.length;
      if (size > b.maxBody) return refuse(413, `an AdmissionReview of at most ${b.maxBody} bytes\n`);
      if (size > announced && !this.bodies.resize(req, size)) return;
      chunks.push(c);
    });
    req.on('end', () => {
      if (finished) return;
      clearTimeout(deadline);
      const body = Buffer.concat(chunks);
      if (nestsDeeper(body)) return refuse(400, `mesh-xds: malformed AdmissionReview: it nests arrays and objects more than ${MAX_NESTING} deep\n`);
      this.review(body.toString('utf8')).then(
        ({ response, result, apiVersion }) => {
          this.o.onResult?.(result);
          if (result === 'denied') this.o.log.info({ reason: clip(String(asMap(response.status).message ?? ''), 1024) }, 'pod refused');
          reply(200, JSON.stringify({ apiVersion, kind: 'AdmissionReview', response }), 'application/json');
        },
        (e: Error) => {
          this.o.onResult?.('bad_request');
          if (e instanceof BadRequest) return reply(400, `mesh-xds: malformed AdmissionReview: ${clip(e.message, 1024)}\n`);
          this.o.log.warn({ err: clip(e.message, 1024) }, 'admission review failed');
          reply(500, `mesh-xds: ${clip(e.message, 1024)}\n`);
        },
      );
    });
  }

  /** Listens on HOST:PORT (port 0: any) once the serving certificate is known; resolves with the port. */
  async listen(address: string): Promise<number> {
    const creds = await new Promise<{ cert: Buffer; key: Buffer }>((resolve) => {
      let first = true;
      this.unwatch = this.o.credentials.watch((c) => {
        if (first) {
          first = false;
          resolve(c);
        } else this.server?.setSecureContext({ cert: c.cert, key: c.key });
      });
    });
    const b = this.bounds;
    const server = (this.server = https.createServer(
      {
        cert: creds.cert,
        key: creds.key,
        handshakeTimeout: b.handshakeMs,
        headersTimeout: b.headersMs,
        // The body has its own deadline (handle); this one is the backstop, past every review's.
        requestTimeout: b.headersMs + b.bodyMs + 1_000,
        keepAliveTimeout: b.idleMs,
        // Node checks the two timeouts above only this often (30 s by default): every second, they hold.
        connectionsCheckingInterval: 1_000,
      },
      (req, res) => this.handle(req, res),
    ));
    // Each TCP connection counts for its source from its first byte (the handshake included).
    server.on('connection', (socket: Socket) => {
      if (!this.connections.admit(socket, sourceOf(socket))) return socket.destroy();
      socket.once('close', () => this.connections.release(socket));
    });
    server.on('tlsClientError', () => {});
    const m = /^(.*):(\d+)$/.exec(address)!;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(Number(m[2]), m[1].replace(/^\[|\]$/g, ''), () => resolve());
    });
    return (server.address() as AddressInfo).port;
  }

  async close(): Promise<void> {
    this.unwatch?.();
    const s = this.server;
    if (!s) return;
    s.closeAllConnections();
    await new Promise((r) => s.close(r));
  }
}
