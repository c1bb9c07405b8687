/**
 * The mutating admission webhook (FSM's path, /mutate-pod-creation) over HTTPS: an AdmissionReview v1 in, the
 * same with the sidecar's JSONPatch (or a refusal, or nothing) out. What it holds is bounded: a body of at most
 * 4 MiB (a Pod in an AdmissionReview is far smaller; the API server's own limit for an object is 3 MiB), 10 s to
 * send it, 256 reviews at a time; past that a client gets 413, 408 or 429 and the rest of the server is unaffected.
 * It reveals the sidecar template only (images, the control plane's Service): nothing of the mesh's config.
 */
import https from 'node:https';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Logger } from 'pino';
import { asMap, type Fields } from '../model/plain.js';
import type { CredentialsHolder } from '../security/tls.js';
import { decide, type InjectOptions, type NamespaceFacts } from './inject.js';

export const WEBHOOK_PATH = '/mutate-pod-creation';
const MAX_BODY = 4 * 1024 * 1024;
const MAX_IN_FLIGHT = 256;

export type AdmissionResult = 'injected' | 'skipped' | 'denied' | 'ignored' | 'bad_request';

export interface WebhookOptions extends InjectOptions {
  credentials: CredentialsHolder;
  /** The namespace's labels and annotations (undefined: it does not exist); may ask the API server. */
  namespace(name: string): Promise<NamespaceFacts | undefined>;
  log: Logger;
  /** Each review's outcome (metrics). */
  onResult?(result: AdmissionResult): void;
}

class BadRequest extends Error {}

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
  private inFlight = 0;
  private unwatch?: () => void;

  constructor(private readonly o: WebhookOptions) {}

  /** The AdmissionReview answered for a request body (exported for tests of the decision path). */
  async review(text: string): Promise<{ response: Fields; result: AdmissionResult; apiVersion: string }> {
    const req = parseReview(text);
    const answer = (result: AdmissionResult, response: Fields) => ({ response: { uid: req.uid, ...response }, result, apiVersion: req.apiVersion });
    if (req.kind !== 'Pod' || req.operation !== 'CREATE') return answer('ignored', { allowed: true });
    const ns = await this.o.namespace(req.namespace).catch((e: Error) => {
      throw new Error(`cannot read namespace ${req.namespace}: ${e.message}`);
    });
    if (!ns) return answer('denied', { allowed: false, status: { code: 403, message: `mesh-xds: namespace ${req.namespace} is not known to the control plane yet; try again` } });
    const d = decide(req.object, ns, this.o);
    if (d.inject) return answer('injected', { allowed: true, patchType: 'JSONPatch', patch: Buffer.from(JSON.stringify(d.patch)).toString('base64') });
    if ('denied' in d) return answer('denied', { allowed: false, status: { code: 403, reason: 'Forbidden', message: `mesh-xds sidecar injection: ${d.denied}` } });
    this.o.log.debug({ reason: d.skipped }, 'pod admitted without a sidecar');
    return answer('skipped', { allowed: true });
  }

  private handle(req: IncomingMessage, res: ServerResponse): void {
    const reply = (status: number, body: string, type = 'text/plain; charset=utf-8'): void => {
      if (res.headersSent) return;
      res.writeHead(status, { 'content-type': type, 'content-length': Buffer.byteLength(body) });
      res.end(body);
    };
    const path = (req.url ?? '').split('?')[0];
    if (path !== WEBHOOK_PATH) return reply(404, `not found: the webhook is at ${WEBHOOK_PATH}\n`);
    if (req.method !== 'POST') return reply(405, 'POST an AdmissionReview\n');
    if (Number(req.headers['content-length'] ?? 0) > MAX_BODY) {
      this.o.onResult?.('bad_request');
      reply(413, `an AdmissionReview of at most ${MAX_BODY} bytes\n`);
      req.destroy();
      return;
    }
    if (this.inFlight >= MAX_IN_FLIGHT) {
      reply(429, `more than ${MAX_IN_FLIGHT} reviews at once\n`);
      req.destroy();
      return;
    }
    this.inFlight++;
    let done = false;
    const finish = (): void => {
      if (!done) this.inFlight--;
      done = true;
    };
    res.on('close', finish);
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (c: Buffer) => {
      size += c.length;
      if (size > MAX_BODY) {
        this.o.onResult?.('bad_request');
        reply(413, `an AdmissionReview of at most ${MAX_BODY} bytes\n`);
        req.destroy();
        return;
      }
      chunks.push(c);
    });
    req.on('end', () => {
      if (size > MAX_BODY) return;
      this.review(Buffer.concat(chunks).toString('utf8')).then(
        ({ response, result, apiVersion }) => {
          this.o.onResult?.(result);
          if (result === 'denied') this.o.log.info({ reason: asMap(response.status).message }, 'pod refused');
          reply(200, JSON.stringify({ apiVersion, kind: 'AdmissionReview', response }), 'application/json');
        },
        (e: Error) => {
          this.o.onResult?.('bad_request');
          if (e instanceof BadRequest) return reply(400, `mesh-xds: malformed AdmissionReview: ${e.message}\n`);
          this.o.log.warn({ err: e.message }, 'admission review failed');
          reply(500, `mesh-xds: ${e.message}\n`);
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
    const server = (this.server = https.createServer({ cert: creds.cert, key: creds.key, requestTimeout: 10_000, headersTimeout: 10_000, handshakeTimeout: 10_000 }, (req, res) => this.handle(req, res)));
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
