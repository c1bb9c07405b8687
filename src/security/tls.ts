/**
 * mTLS for the ADS port: the server's certificate (from a TLS Secret's files, watched for rotation, or issued by
 * the server itself from the mesh CA and renewed before expiry), client certificates requested, and each peer
 * verified against the mesh CA by `PeerVerifier`, which names why a peer is refused and which identity it proved.
 */
import { X509Certificate } from 'node:crypto';
import tls from 'node:tls';
import * as grpc from '@grpc/grpc-js';
import type { Logger } from 'pino';
import { peerOf } from '../xds/grpc.js';
import { issue, notAfter, readCaDir, type KeyPair } from './ca.js';
import { parseSpiffeId, spiffeId, type WorkloadId } from './spiffe.js';

/** Why a peer is refused (the reason label of `mesh_xds_streams_refused_total`). */
export type PeerRefusal = 'no_client_certificate' | 'untrusted_certificate' | 'expired_certificate' | 'bad_certificate';

export type PeerCheck = { ok: true; id: WorkloadId; spiffe: string; notAfter: Date } | { ok: false; reason: PeerRefusal; message: string };

const CLIENT_AUTH = '1.3.6.1.5.5.7.3.2';

const pemBlocks = (pem: string): string[] => pem.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? [];

/** Checks a client certificate against the mesh CA (as the TLS layer would) and reads its SPIFFE id. */
export class PeerVerifier {
  private roots: X509Certificate[] = [];

  constructor(private readonly trustDomain: string) {}

  /** The CA certificates (PEM, one or more: several while the CA rotates). */
  setCa(pem: string): void {
    const roots = pemBlocks(pem).map((b) => new X509Certificate(b));
    if (!roots.length) throw new Error('no certificate in the CA file');
    this.roots = roots;
  }

  /**
   * OpenSSL verifies the chain against the CA during the handshake; when it refused, this says why (no certificate,
   * another CA, expired). Either way the certificate must then be a client certificate with exactly one SPIFFE id
   * of this trust domain.
   */
  check(peer: PeerTls | undefined, now = new Date()): PeerCheck {
    const leaf = peer?.cert;
    if (!leaf) {
      return { ok: false, reason: 'no_client_certificate', message: 'no client certificate: this server requires one issued by the mesh CA (mesh-xds ca issue)' };
    }
    const subject = leaf.subject.replace(/\n/g, ', ');
    if (!peer.authorized) {
      if (!this.roots.some((ca) => leaf.checkIssued(ca) && leaf.verify(ca.publicKey))) {
        return { ok: false, reason: 'untrusted_certificate', message: `the client certificate (${subject}, issued by ${leaf.issuer.replace(/\n/g, ', ')}) is not signed by the mesh CA` };
      }
      if (now < new Date(leaf.validFrom)) return { ok: false, reason: 'expired_certificate', message: `the client certificate (${subject}) is not valid before ${new Date(leaf.validFrom).toISOString()}` };
      if (now > new Date(leaf.validTo)) return { ok: false, reason: 'expired_certificate', message: `the client certificate (${subject}) expired at ${new Date(leaf.validTo).toISOString()}` };
      if (!leaf.keyUsage?.includes(CLIENT_AUTH)) return notForClients(leaf, subject);
      return { ok: false, reason: 'untrusted_certificate', message: `the client certificate (${subject}) failed TLS verification: ${peer.error ?? 'unknown reason'}` };
    }
    // Verified at the handshake; a stream opened later on the same connection may outlive it.
    if (now > new Date(leaf.validTo)) return { ok: false, reason: 'expired_certificate', message: `the client certificate (${subject}) expired at ${new Date(leaf.validTo).toISOString()}` };
    if (leaf.ca) return { ok: false, reason: 'bad_certificate', message: `the client certificate (${subject}) is a CA certificate` };
    // Only a certificate issued for client authentication proves a client (a serving certificate does not).
    if (!leaf.keyUsage?.includes(CLIENT_AUTH)) return notForClients(leaf, subject);
    const uris = (leaf.subjectAltName ?? '').split(', ').filter((s) => s.startsWith('URI:')).map((s) => s.slice(4));
    const ids = uris.map(parseSpiffeId).filter((x) => x !== undefined);
    if (uris.length !== 1 || ids.length !== 1) {
      return { ok: false, reason: 'bad_certificate', message: `the client certificate (${subject}) must have exactly one URI SAN spiffe://${this.trustDomain}/ns/<namespace>/sa/<service account>; it has ${uris.length ? uris.join(', ') : 'none'}` };
    }
    const id = ids[0]!;
    if (id.trustDomain !== this.trustDomain) {
      return { ok: false, reason: 'untrusted_certificate', message: `the client certificate's ${uris[0]} is not in the trust domain ${this.trustDomain}` };
    }
    return { ok: true, id, spiffe: uris[0]!, notAfter: new Date(leaf.validTo) };
  }
}

const USAGES: Record<string, string> = { '1.3.6.1.5.5.7.3.1': 'serverAuth', [CLIENT_AUTH]: 'clientAuth' };

function notForClients(leaf: X509Certificate, subject: string): PeerCheck {
  const usages = leaf.keyUsage?.map((u) => USAGES[u] ?? u).join(', ');
  return { ok: false, reason: 'bad_certificate', message: `the client certificate (${subject}) is not for client authentication (extended key usage: ${usages || 'none'}; clientAuth is required)` };
}

/** What the TLS handshake of a connection established about its client. */
export interface PeerTls {
  /** The client certificate, if it sent one. */
  readonly cert?: X509Certificate;
  /** Whether OpenSSL verified it against the CA. */
  readonly authorized: boolean;
  readonly error?: string;
}

/**
 * The TLS listener in front of the gRPC server: it terminates TLS with the provider's certificate (swapped on
 * rotation for new connections), requests a client certificate without refusing the handshake, records what
 * each connection proved, and hands the connection to gRPC. Refusing later, per stream, is what lets a refusal
 * say why (no certificate, another CA, expired), which a failed handshake cannot tell the client or the log.
 */
export class TlsFront {
  private server?: tls.Server;
  private readonly peers = new Map<string, PeerTls>();
  private ca?: Buffer;
  private identity?: grpc.experimental.IdentityCertificateUpdate;
  private readonly ready: Promise<void>;
  private markReady!: () => void;
  private readonly onCa = (u: grpc.experimental.CaCertificateUpdate | null): void => {
    if (u) this.ca = u.caCertificate;
    this.update();
  };
  private readonly onIdentity = (u: grpc.experimental.IdentityCertificateUpdate | null): void => {
    if (u) this.identity = u;
    this.update();
  };

  /** Failed handshakes since the last warning (a handshake flood must not become a log flood). */
  private failures = 0;
  private lastWarning = -Infinity;

  constructor(
    private readonly serving: TlsServing,
    private readonly log: Logger,
    private readonly bounds: TlsFrontBounds = {},
  ) {
    this.ready = new Promise((r) => (this.markReady = r));
    serving.provider.addCaCertificateListener(this.onCa);
    serving.provider.addIdentityCertificateListener(this.onIdentity);
  }

  private options(): tls.SecureContextOptions {
    return { ca: this.ca, cert: this.identity!.certificate, key: this.identity!.privateKey };
  }

  private update(): void {
    if (!this.ca || !this.identity) return;
    if (this.server) {
      try {
        this.server.setSecureContext(this.options());
      } catch (e) {
        this.log.error({ err: (e as Error).message }, 'the new certificate, key or CA is not usable; serving the previous one');
        return;
      }
    }
    this.markReady();
  }

  /** Listens on host:port (0: any free port) once a certificate is there; each connection goes to `accept`. */
  async listen(host: string, port: number, accept: (socket: tls.TLSSocket) => void): Promise<number> {
    await this.ready;
    const options = { ...this.options(), requestCert: true, rejectUnauthorized: false, ALPNProtocols: ['h2'], minVersion: 'TLSv1.2' as const, handshakeTimeout: HANDSHAKE_TIMEOUT_MS };
    this.server = tls.createServer(options, (socket) => {
      const key = peerOf(socket);
      this.peers.set(key, { cert: socket.getPeerX509Certificate(), authorized: socket.authorized, error: socket.authorizationError ? String(socket.authorizationError) : undefined });
      socket.on('close', () => this.peers.delete(key));
      accept(socket);
    });
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
    this.log.warn({ peer: peerOf(socket), err: err.message, failed: this.failures }, `TLS handshake failed (${this.failures} since the last such warning; at most one every ${WARN_EVERY_MS / 1000} s, all counted in mesh_xds_connections_refused_total)`);
    this.failures = 0;
    this.lastWarning = now;
  }

  /** The handshake's findings for a gRPC call's peer (`call.getPeer()`). */
  peer(address: string): PeerTls | undefined {
    return this.peers.get(address);
  }

  close(): void {
    this.serving.provider.removeCaCertificateListener(this.onCa);
    this.serving.provider.removeIdentityCertificateListener(this.onIdentity);
    this.server?.close();
  }
}

/** A handshake must be done within this (Node's default is 120 s: a slow-handshake flood held sockets that long). */
const HANDSHAKE_TIMEOUT_MS = 10_000;
const WARN_EVERY_MS = 10_000;

export interface TlsFrontBounds {
  /** Connections open at once; more are closed as they arrive. */
  readonly maxConnections?: number;
  /** A connection closed before gRPC saw it: too many, or its handshake failed. */
  readonly refused?: (reason: 'too_many_connections' | 'tls_handshake_failed') => void;
}

/** Credentials and peer verification of a TLS server; `close` stops watching files or renewing. */
export interface TlsServing {
  /** The serving certificate and key, and the CA of clients, as they change. */
  readonly provider: grpc.experimental.CertificateProvider;
  readonly verifier: PeerVerifier;
  close(): void;
}

/** A certificate provider whose CA and identity are pushed by its owner. */
class PushedCertificates implements grpc.experimental.CertificateProvider {
  private ca?: grpc.experimental.CaCertificateUpdate;
  private identity?: grpc.experimental.IdentityCertificateUpdate;
  private readonly caListeners = new Set<grpc.experimental.CaCertificateUpdateListener>();
  private readonly idListeners = new Set<grpc.experimental.IdentityCertificateUpdateListener>();

  set(ca: string, pair: KeyPair): void {
    this.ca = { caCertificate: Buffer.from(ca) };
    this.identity = { certificate: Buffer.from(pair.cert), privateKey: Buffer.from(pair.key) };
    for (const l of this.caListeners) l(this.ca);
    for (const l of this.idListeners) l(this.identity);
  }
  addCaCertificateListener(l: grpc.experimental.CaCertificateUpdateListener): void {
    this.caListeners.add(l);
    // Later, as FileWatcherCertificateProvider does, so that a listener is never called before it was added.
    queueMicrotask(() => this.ca && this.caListeners.has(l) && l(this.ca));
  }
  removeCaCertificateListener(l: grpc.experimental.CaCertificateUpdateListener): void {
    this.caListeners.delete(l);
  }
  addIdentityCertificateListener(l: grpc.experimental.IdentityCertificateUpdateListener): void {
    this.idListeners.add(l);
    queueMicrotask(() => this.identity && this.idListeners.has(l) && l(this.identity));
  }
  removeIdentityCertificateListener(l: grpc.experimental.IdentityCertificateUpdateListener): void {
    this.idListeners.delete(l);
  }
}

/**
 * TLS from a directory laid out as a Kubernetes TLS Secret (tls.crt, tls.key, ca.crt), re-read every
 * `refreshMs` so that rotated files are used for new connections without a restart.
 */
export function tlsFromDir(dir: string, trustDomain: string, log: Logger, refreshMs = 5_000): TlsServing {
  const provider = new grpc.experimental.FileWatcherCertificateProvider({
    certificateFile: `${dir}/tls.crt`,
    privateKeyFile: `${dir}/tls.key`,
    caCertificateFile: `${dir}/ca.crt`,
    refreshIntervalMs: refreshMs,
  });
  const verifier = new PeerVerifier(trustDomain);
  const onCa = (u: grpc.experimental.CaCertificateUpdate | null): void => {
    if (!u) return void log.error({ dir }, `cannot read ${dir}/ca.crt: clients cannot be verified`);
    try {
      verifier.setCa(u.caCertificate.toString());
    } catch (e) {
      log.error({ dir, err: (e as Error).message }, `${dir}/ca.crt is not usable; keeping the previous CA`);
    }
  };
  provider.addCaCertificateListener(onCa);
  return {
    provider,
    verifier,
    close: () => provider.removeCaCertificateListener(onCa),
  };
}

export interface SelfIssuedOptions {
  readonly trustDomain: string;
  /** The control plane's namespace and service account (its SPIFFE id). */
  readonly namespace: string;
  readonly serviceAccount: string;
  readonly dnsNames: readonly string[];
  readonly ipAddresses?: readonly string[];
  readonly ttlMs?: number;
}

/**
 * TLS with a serving certificate the server issues itself from the mesh CA in `caDir` (ca.crt, ca.key), for its
 * Service's DNS names and its own SPIFFE id, renewed when two thirds of its life have passed. The folder is read
 * again every `refreshMs`: a new CA (ca.crt holding the new signing CA first, then any CA still trusted during the
 * rotation; ca.key the new key) is trusted at once, a serving certificate is issued from it, and `onCa` is told.
 */
export async function tlsFromCa(caDir: string, o: SelfIssuedOptions, log: Logger, onCa?: (ca: KeyPair) => void, refreshMs = 5_000): Promise<TlsServing> {
  let ca = readCaDir(caDir);
  const verifier = new PeerVerifier(o.trustDomain);
  verifier.setCa(ca.cert);
  const provider = new PushedCertificates();
  const ttlMs = o.ttlMs ?? 24 * 3_600_000;
  let timer: NodeJS.Timeout | undefined;
  let closed = false;
  const renew = async (): Promise<void> => {
    if (timer) clearTimeout(timer);
    try {
      const pair = await issue(ca, { trustDomain: o.trustDomain, namespace: o.namespace, serviceAccount: o.serviceAccount, ttlMs, server: { dnsNames: o.dnsNames, ipAddresses: o.ipAddresses } });
      provider.set(ca.cert, pair);
      log.info({ spiffe: spiffeId(o.trustDomain, o.namespace, o.serviceAccount), notAfter: notAfter(pair.cert).toISOString() }, 'serving certificate issued');
      if (!closed) timer = setTimeout(() => void renewing(), (ttlMs * 2) / 3).unref();
    } catch (e) {
      log.error({ err: (e as Error).message }, 'cannot issue the serving certificate; retrying in 10 s');
      if (!closed) timer = setTimeout(() => void renewing(), 10_000).unref();
    }
  };
  /** One renewal at a time. */
  let last = Promise.resolve();
  const renewing = (): Promise<void> => (last = last.then(renew));
  await renewing();
  const watch = setInterval(() => {
    let next: KeyPair;
    try {
      next = readCaDir(caDir);
    } catch (e) {
      return void log.warn({ err: (e as Error).message }, 'cannot read the mesh CA; keeping the one in use');
    }
    if (next.cert === ca.cert && next.key === ca.key) return;
    try {
      verifier.setCa(next.cert);
    } catch (e) {
      return void log.error({ err: (e as Error).message }, 'the new mesh CA is not usable; keeping the one in use');
    }
    ca = next;
    log.info({ dir: caDir, notAfter: notAfter(ca.cert).toISOString() }, 'mesh CA changed: issuing from the new one');
    void renewing();
    onCa?.(ca);
  }, refreshMs).unref();
  return {
    provider,
    verifier,
    close: () => {
      closed = true;
      clearInterval(watch);
      if (timer) clearTimeout(timer);
    },
  };
}
