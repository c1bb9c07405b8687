/**
 * mTLS for the ADS port: the server's certificate (from a TLS Secret's files, watched for rotation, or issued by
 * the server itself from the mesh CA and renewed before expiry), and each peer verified against the mesh CA by
 * `PeerVerifier`, which names why a peer is refused and which identity it proved. The TLS listener itself is
 * the transport's (xds/transport/tls-front.ts).
 */
import { X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import type { Logger } from 'pino';
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


/** What the TLS handshake of a connection established about its client (the transport reads it off the socket). */
export interface PeerTls {
  /** The client certificate, if it sent one. */
  readonly cert?: X509Certificate;
  /** Whether OpenSSL verified it against the CA. */
  readonly authorized: boolean;
  readonly error?: string;
}

/** A TLS server's certificate and key, and the CA its clients' certificates must chain to (PEM). */
export interface ServingCredentials {
  readonly cert: Buffer;
  readonly key: Buffer;
  readonly ca: Buffer;
}

/**
 * The serving credentials as they change: `watch` calls its listener with the current ones (on a later turn, so a
 * listener is never called before `watch` returned) and with every new set; it returns what stops the calls.
 */
export class CredentialsHolder {
  private current?: ServingCredentials;
  private readonly listeners = new Set<(c: ServingCredentials) => void>();

  set(c: ServingCredentials): void {
    this.current = c;
    for (const l of this.listeners) l(c);
  }

  watch(listener: (c: ServingCredentials) => void): () => void {
    this.listeners.add(listener);
    queueMicrotask(() => this.current && this.listeners.has(listener) && listener(this.current));
    return () => this.listeners.delete(listener);
  }
}

/** Credentials and peer verification of a TLS server; `close` stops watching files or renewing. */
export interface TlsServing {
  /** The serving certificate and key, and the CA of clients, as they change. */
  readonly credentials: CredentialsHolder;
  readonly verifier: PeerVerifier;
  close(): void;
}

/**
 * TLS from a directory laid out as a Kubernetes TLS Secret (tls.crt, tls.key, ca.crt), read again every
 * `refreshMs`, so that rotated files are used for new connections without a restart. A set that cannot be read
 * (or whose CA is not usable) is logged once and the previous one kept.
 */
export function tlsFromDir(dir: string, trustDomain: string, log: Logger, refreshMs = 5_000): TlsServing {
  const credentials = new CredentialsHolder();
  const verifier = new PeerVerifier(trustDomain);
  let last = '';
  let lastError = '';
  const read = (): void => {
    let next: ServingCredentials;
    try {
      next = { cert: readFileSync(path.join(dir, 'tls.crt')), key: readFileSync(path.join(dir, 'tls.key')), ca: readFileSync(path.join(dir, 'ca.crt')) };
    } catch (e) {
      const why = `cannot read the TLS files in ${dir} (tls.crt, tls.key, ca.crt): ${(e as Error).message}; keeping the previous ones`;
      if (why !== lastError) log.error({ dir }, (lastError = why));
      return;
    }
    const seen = `${next.cert.toString('base64')}|${next.key.toString('base64')}|${next.ca.toString('base64')}`;
    if (seen === last) return;
    try {
      verifier.setCa(next.ca.toString());
    } catch (e) {
      const why = `${dir}/ca.crt is not usable (${(e as Error).message}); keeping the previous CA and certificate`;
      if (why !== lastError) log.error({ dir }, (lastError = why));
      return;
    }
    last = seen;
    lastError = '';
    credentials.set(next);
  };
  read();
  const timer = setInterval(read, refreshMs).unref();
  return { credentials, verifier, close: () => clearInterval(timer) };
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
  const credentials = new CredentialsHolder();
  const ttlMs = o.ttlMs ?? 24 * 3_600_000;
  let timer: NodeJS.Timeout | undefined;
  let closed = false;
  const renew = async (): Promise<void> => {
    if (timer) clearTimeout(timer);
    try {
      const pair = await issue(ca, { trustDomain: o.trustDomain, namespace: o.namespace, serviceAccount: o.serviceAccount, ttlMs, server: { dnsNames: o.dnsNames, ipAddresses: o.ipAddresses } });
      credentials.set({ ca: Buffer.from(ca.cert), cert: Buffer.from(pair.cert), key: Buffer.from(pair.key) });
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
    credentials,
    verifier,
    close: () => {
      closed = true;
      clearInterval(watch);
      if (timer) clearTimeout(timer);
    },
  };
}
