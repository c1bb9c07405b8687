/**
 * The TLS front of the ADS port: it terminates TLS with the serving credentials (swapped on rotation for new
 * connections), bounds connections and handshakes, and hands each connection to the gRPC server.
 */
import tls from 'node:tls';
import type { Logger } from 'pino';
import type { ServingCredentials, TlsServing } from '../../security/tls.js';

/** A handshake must be done within this (Node's default is 120 s: a slow-handshake flood held sockets that long). */
const HANDSHAKE_TIMEOUT_MS = 10_000;
const WARN_EVERY_MS = 10_000;

export interface TlsFrontBounds {
  /** Connections open at once; more are closed as they arrive. */
  readonly maxConnections?: number;
  /** A connection closed before gRPC saw it: too many, or its handshake failed. */
  readonly refused?: (reason: 'too_many_connections' | 'tls_handshake_failed') => void;
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

  constructor(
    serving: TlsServing,
    private readonly log: Logger,
    private readonly bounds: TlsFrontBounds = {},
  ) {
    this.ready = new Promise((r) => (this.markReady = r));
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
    this.server = tls.createServer(options, accept);
    if (this.bounds.maxConnections) this.server.maxConnections = this.bounds.maxConnections;
    this.server.on('drop', () => this.bounds.refused?.('too_many_connections'));
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
