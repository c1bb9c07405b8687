/**
 * The mesh CA: an ECDSA P-256 key and self-signed certificate, and the leaf certificates it issues, each with one
 * SPIFFE id as its URI SAN (plus DNS names for a server). Built with @peculiar/x509 on Node's WebCrypto; files in
 * the layout of a Kubernetes TLS Secret (tls.crt, tls.key, ca.crt) or of the CA (ca.crt, ca.key).
 */
import 'reflect-metadata';
import { randomBytes, webcrypto } from 'node:crypto';
import { chownSync, lchownSync, lstatSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import * as x509 from '@peculiar/x509';
import { spiffeId } from './spiffe.js';

x509.cryptoProvider.set(webcrypto as unknown as Crypto);

const ALG = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' } as const;

/** PEM text of a certificate and its private key (PKCS#8). */
export interface KeyPair {
  readonly cert: string;
  readonly key: string;
}

/** What a workload or the server mounts: its certificate and key, and the CA that verifies its peers. */
export interface TlsBundle extends KeyPair {
  readonly ca: string;
}

export interface IssueOptions {
  readonly trustDomain: string;
  readonly namespace: string;
  readonly serviceAccount: string;
  /** Lifetime in milliseconds (default 24 h). */
  readonly ttlMs?: number;
  /** A serving certificate: these DNS names (and IP addresses) too, and the serverAuth usage only. */
  readonly server?: { dnsNames: readonly string[]; ipAddresses?: readonly string[] };
}

/** PEM text ends with a newline, so that files and bundles concatenate into valid PEM. */
const pem = (text: string): string => (text.endsWith('\n') ? text : `${text}\n`);

const serial = (): string => {
  const b = randomBytes(16);
  b[0] &= 0x7f;
  return b.toString('hex');
};

async function exportKey(key: CryptoKey): Promise<string> {
  return pem(x509.PemConverter.encode(await webcrypto.subtle.exportKey('pkcs8', key as webcrypto.CryptoKey), 'PRIVATE KEY'));
}

async function importKey(pem: string): Promise<CryptoKey> {
  const der = x509.PemConverter.decode(pem)[0];
  if (!der) throw new Error('no PEM block in the CA key');
  return (await webcrypto.subtle.importKey('pkcs8', der, ALG, true, ['sign'])) as unknown as CryptoKey;
}

/** A new mesh CA, valid for `ttlMs` (default ten years). */
export async function createCa(trustDomain: string, ttlMs = 10 * 365 * 86_400_000): Promise<KeyPair> {
  const keys = (await webcrypto.subtle.generateKey(ALG, true, ['sign', 'verify'])) as unknown as CryptoKeyPair;
  const now = Date.now();
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: serial(),
    // A name of its own: during a rotation the old and new CA are trusted side by side, and issuers are looked up
    // by name.
    name: `O=mesh-xds, CN=mesh-xds CA ${trustDomain} ${randomBytes(4).toString('hex')}`,
    notBefore: new Date(now - 60_000),
    notAfter: new Date(now + ttlMs),
    keys,
    signingAlgorithm: ALG,
    extensions: [
      new x509.BasicConstraintsExtension(true, 0, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
    ],
  });
  return { cert: pem(cert.toString('pem')), key: await exportKey(keys.privateKey) };
}

/** A leaf certificate for one identity, signed by the CA. */
export async function issue(ca: KeyPair, o: IssueOptions): Promise<TlsBundle> {
  return (await issuer(ca))(o);
}

/** Issues from one CA, its certificate parsed and its key imported once (many certificates in a row). */
export async function issuer(ca: KeyPair): Promise<(o: IssueOptions) => Promise<TlsBundle>> {
  const caCert = new x509.X509Certificate(ca.cert);
  const caKey = await importKey(ca.key);
  return (o) => issueWith(ca, caCert, caKey, o);
}

async function issueWith(ca: KeyPair, caCert: x509.X509Certificate, caKey: CryptoKey, o: IssueOptions): Promise<TlsBundle> {
  const keys = (await webcrypto.subtle.generateKey(ALG, true, ['sign', 'verify'])) as unknown as CryptoKeyPair;
  const now = Date.now();
  const id = spiffeId(o.trustDomain, o.namespace, o.serviceAccount);
  const names: x509.JsonGeneralName[] = [{ type: 'url', value: id }];
  for (const dns of o.server?.dnsNames ?? []) names.push({ type: 'dns', value: dns });
  for (const ip of o.server?.ipAddresses ?? []) names.push({ type: 'ip', value: ip });
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: serial(),
    subject: `O=mesh-xds, CN=${o.serviceAccount}.${o.namespace}`,
    issuer: caCert.subject,
    notBefore: new Date(now - 60_000),
    notAfter: new Date(now + (o.ttlMs ?? 86_400_000)),
    publicKey: keys.publicKey,
    signingKey: caKey,
    signingAlgorithm: ALG,
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
      // A serving certificate serves only: it cannot stand in for a client (the server refuses it as one). A
      // workload's is both (a sidecar is a client and a server).
      new x509.ExtendedKeyUsageExtension(o.server ? [x509.ExtendedKeyUsage.serverAuth] : [x509.ExtendedKeyUsage.clientAuth, x509.ExtendedKeyUsage.serverAuth]),
      new x509.SubjectAlternativeNameExtension(names, false),
      await x509.AuthorityKeyIdentifierExtension.create(caCert),
    ],
  });
  return { cert: pem(cert.toString('pem')), key: await exportKey(keys.privateKey), ca: pem(ca.cert) };
}

/** When a certificate (PEM) stops being valid. */
export function notAfter(certPem: string): Date {
  return new x509.X509Certificate(certPem).notAfter;
}

export function readCaDir(dir: string): KeyPair {
  try {
    return { cert: readFileSync(path.join(dir, 'ca.crt'), 'utf8'), key: readFileSync(path.join(dir, 'ca.key'), 'utf8') };
  } catch (e) {
    throw new Error(`cannot read the mesh CA from ${dir} (ca.crt, ca.key): ${(e as Error).message}`, { cause: e });
  }
}

export function writeCaDir(dir: string, ca: KeyPair): void {
  mkdirSync(dir, { recursive: true });
  writeFileSync(path.join(dir, 'ca.crt'), ca.cert);
  writeFileSync(path.join(dir, 'ca.key'), ca.key, { mode: 0o600 });
}

/**
 * Writes tls.crt, tls.key and ca.crt into `dir` as the kubelet updates a mounted Secret: the files go into a new
 * hidden directory, `..data` is switched to it with one rename, and each name is a link through `..data`. A
 * reader never sees a certificate with the other one's key, and Envoy's SDS `watched_directory` sees one move.
 */
export function writeTlsDir(dir: string, b: TlsBundle, owner?: number): void {
  mkdirSync(dir, { recursive: true });
  const version = `..${new Date().toISOString().replace(/[:.]/g, '_')}.${randomBytes(4).toString('hex')}`;
  const target = path.join(dir, version);
  mkdirSync(target, { mode: 0o700 });
  writeFileSync(path.join(target, 'tls.crt'), b.cert);
  writeFileSync(path.join(target, 'tls.key'), b.key, { mode: 0o600 });
  writeFileSync(path.join(target, 'ca.crt'), b.ca);
  // Readable by its reader before it becomes visible (the kubelet sets fsGroup the same way).
  if (owner !== undefined) for (const p of [dir, target, ...['tls.crt', 'tls.key', 'ca.crt'].map((f) => path.join(target, f))]) chownSync(p, owner, owner);
  const tmp = path.join(dir, '..data_tmp');
  rmSync(tmp, { force: true });
  symlinkSync(version, tmp);
  if (owner !== undefined) lchownSync(tmp, owner, owner);
  renameSync(tmp, path.join(dir, '..data'));
  for (const f of ['tls.crt', 'tls.key', 'ca.crt']) {
    const link = path.join(dir, f);
    let isLink = false;
    try {
      isLink = lstatSync(link).isSymbolicLink();
    } catch {
      /* absent */
    }
    if (!isLink) {
      rmSync(link, { force: true });
      symlinkSync(path.join('..data', f), link);
      if (owner !== undefined) lchownSync(link, owner, owner);
    }
  }
  for (const e of readdirSync(dir)) {
    if (e.startsWith('..') && e !== '..data' && e !== version) rmSync(path.join(dir, e), { recursive: true, force: true });
  }
}
