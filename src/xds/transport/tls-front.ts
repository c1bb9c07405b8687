/**
 * The TLS front of the ADS port: it terminates TLS with the serving credentials (swapped on rotation for new
 * connections), bounds connections and handshakes, and hands each connection to the gRPC server.
 *
 * Connections are shared fairly by source address (src/doors/shares.ts): when the port is full, the source holding
 * the most loses one. A connection whose client proved no identity (no certificate, or one the mesh does not
 * accept) can only be told why its streams are refused: such connections are few (ANONYMOUS.total, and
 * ANONYMOUS.perSource from one address) and short-lived (ANONYMOUS.lifetimeMs), where each cost 56 KB for as long as
 * the client liked (18,500 of them: 1.1 GB).
 */
import type net from 'node:net';
import tls from 'node:tls';
import type { Logger } from 'pino';
import { FairShare, sourceOf } from '../../doors/shares.js';
import type { ServingCredentials, TlsServing } from '../../security/tls.js';

/** A handshake must be done within this (Node's default is 120 s: a slow-handshake flood held sockets that long). */
const HANDSHAKE_TIMEOUT_MS = 10_000;
const WARN_EVERY_MS = 10_000;

/** Connections that proved no identity: how many in all and from one source, and how long each may stay. */
export const ANONYMOUS = { total: 256, perSource: 16, lifetimeMs: 5_000 };

export type TlsRefusal = 'too_many_connections' | 'tls_handshake_failed' | 'anonymous_connection';

export interface TlsFrontBounds {
  /** Connections open at once, handshakes included, shared fairly by source address. */
  readonly maxConnections?: number;
  /** Anonymous connections (default ANONYMOUS; tests lower them). */
  readonly anonymous?: Partial<typeof ANONYMOUS>;
  /** The identity a connection's certificate proves (undefined: none, the connection is anonymous). */
  readonly identify?: (socket: tls.TLSSocket) => string | undefined;
  /** A connection closed before gRPC saw it (too many, its handshake failed) or after (anonymous, refused or aged). */
  readonly refused?: (reason: TlsRefusal) => void;
}

/**
 * The TLS listener in front of the gRPC server. It requests a client certificate without refusing the handshake,
 * and hands the connection to gRPC, whose calls read what it proved off their connection's socket: refusing
 * later, per stream, is what lets a refusal say why (no certificate, another CA, expired), which a failed
 * handshake cannot tell the client or the log.
 */
export class TlsFront {
  private server?: tls.Server;
  private current?: ServingCredentials;
  private readonly ready: Promise<void>;
  private markReady!: () => void;
  private readonly unwatch: () => void;
  /** Failed handshakes since the last warning (a handshake flood must not become a log flood). */
  private failures = 0;
  private lastWarning = -Infinity;
  private readonly connections: FairShare<net.Socket>;
  private readonly anonymous: FairShare<net.Socket>;
  private readonly anonymousMs: number;

  constructor(
    serving: TlsServing,
    private readonly log: Logger,
    private readonly bounds: TlsFrontBounds = {},
  ) {
    this.ready = new Promise((r) => (this.markReady = r));
    const drop = (socket: net.Socket, reason: TlsRefusal): void => {
      bounds.refused?.(reason);
      socket.destroy();
    };
    this.connections = new FairShare({ total: bounds.maxConnections ?? Infinity }, (socket) => drop(socket, 'too_many_connections'));
    const anon = { ...ANONYMOUS, ...bounds.anonymous };
    this.anonymousMs = anon.lifetimeMs;
    this.anonymous = new FairShare({ total: anon.total, perClient: anon.perSource }, (socket) => drop(socket, 'anonymous_connection'));
    this.unwatch = serving.credentials.watch((c) => this.update(c));
  }

  private options(): tls.SecureContextOptions {
    const c = this.current!;
    return { ca: c.ca, cert: c.cert, key: c.key };
  }

  private update(next: ServingCredentials): void {
    if (this.server) {
      try {
        this.server.setSecureContext({ ca: next.ca, cert: next.cert, key: next.key });
      } catch (e) {
        this.log.error({ err: (e as Error).message }, 'the new certificate, key or CA is not usable; serving the previous one');
        return;
      }
    }
    this.current = next;
    this.markReady();
  }

  /** Listens on host:port (0: any free port) once a certificate is there; each connection goes to `accept`. */
  async listen(host: string, port: number, accept: (socket: tls.TLSSocket) => void): Promise<number> {
    await this.ready;
    const options = { ...this.options(), requestCert: true, rejectUnauthorized: false, ALPNProtocols: ['h2'], minVersion: 'TLSv1.2' as const, handshakeTimeout: HANDSHAKE_TIMEOUT_MS };
    // Each call reads what the handshake proved from its own connection's socket (ServerCall.tls).
    this.server = tls.createServer(options, (socket) => {
      if (this.bounds.identify && this.bounds.identify(socket) === undefined) {
        const source = sourceOf(socket);
        if (!this.anonymous.admit(socket, source)) {
          this.bounds.refused?.('anonymous_connection');
          return socket.destroy();
        }
        const end = setTimeout(() => {
          this.bounds.refused?.('anonymous_connection');
          socket.destroy();
        }, this.anonymousMs).unref();
        socket.once('close', () => {
          clearTimeout(end);
          this.anonymous.release(socket);
        });
      }
      accept(socket);
    });
    // Each TCP connection counts for its source from its first byte (the handshake included).
    this.server.on('connection', (socket: net.Socket) => {
      if (!this.connections.admit(socket, sourceOf(socket))) {
        this.bounds.refused?.('too_many_connections');
        return socket.destroy();
      }
      socket.once('close', () => this.connections.release(socket));
    });
    this.server.on('tlsClientError', (err, socket) => this.handshakeFailed(err, socket));
    return new Promise((resolve, reject) => {
      this.server!.once('error', reject);
      this.server!.listen(port, host, () => resolve((this.server!.address() as { port: number }).port));
    });
  }

  /** Counted each; a warning at most every WARN_EVERY_MS, saying how many failed since the last one. */
  private handshakeFailed(err: Error, socket: tls.TLSSocket): void {
    this.bounds.refused?.('tls_handshake_failed');
    this.failures++;
    const now = performance.now();
    if (now - this.lastWarning < WARN_EVERY_MS) return;
    this.log.warn({ peer: `${socket.remoteAddress}:${socket.remotePort}`, err: err.message, failed: this.failures }, `TLS handshake failed (${this.failures} since the last such warning; at most one every ${WARN_EVERY_MS / 1000} s, all counted in mesh_xds_connections_refused_total)`);
    this.failures = 0;
    this.lastWarning = now;
  }

  close(): void {
    this.unwatch();
    this.server?.close();
  }
}
