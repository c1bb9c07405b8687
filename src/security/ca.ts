/**
 * The mesh CA: an ECDSA P-256 key and self-signed certificate, and the leaf certificates it issues, each with one
 * SPIFFE id as its URI SAN (plus DNS names for a server). The CA and serving certificates are built with
 * @peculiar/x509 on Node's WebCrypto; workload certificates (one per identity, thousands at a time) by
 * `workloadIssuer`: a key pair from OpenSSL, the certificate's few DER fields written here, signed by OpenSSL.
 * Files in the layout of a Kubernetes TLS Secret (tls.crt, tls.key, ca.crt) or of the CA (ca.crt, ca.key).
 */
import 'reflect-metadata';
import { createECDH, createHash, createPrivateKey, randomBytes, sign, webcrypto, X509Certificate, type KeyObject } from 'node:crypto';
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

/** A workload's certificate: its SPIFFE id only, for a client and a server. */
export type WorkloadIssueOptions = Omit<IssueOptions, 'server'>;

/** PEM text ends with a newline, so that files and bundles concatenate into valid PEM. */
const pem = (text: string): string => (text.endsWith('\n') ? text : `${text}\n`);

/** 126 random bits, positive and minimal in DER (the top byte is 0x40 to 0x7f). */
const serialBytes = (): Buffer => {
  const b = randomBytes(16);
  b[0] = (b[0]! & 0x3f) | 0x40;
  return b;
};
const serial = (): string => serialBytes().toString('hex');

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

/**
 * Issues from one CA, its certificate parsed and its key imported once (many certificates in a row): a workload's
 * certificate by `workloadIssuer`, a serving one with @peculiar/x509.
 */
export async function issuer(ca: KeyPair): Promise<(o: IssueOptions) => Promise<TlsBundle>> {
  const workload = workloadIssuer(ca);
  let serving: Promise<[x509.X509Certificate, CryptoKey]> | undefined;
  return async (o) => {
    if (!o.server) return workload(o);
    serving ??= importKey(ca.key).then((key) => [new x509.X509Certificate(ca.cert), key]);
    const [caCert, caKey] = await serving;
    return issueWith(ca, caCert, caKey, o);
  };
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

/*
 * Workload certificates, written here field by field (a few microseconds) rather than through @peculiar/x509's
 * ASN.1 objects (about 2 ms each, most of the cost of a certificate there), and signed with OpenSSL's ECDSA.
 * They are what `issueWith` makes for a workload, byte for byte in the to-be-signed part (test/ca-der.test.ts
 * checks it): version 3; a random serial; ecdsa-with-SHA256; the CA's subject as issuer; notBefore a minute ago;
 * subject O=mesh-xds, CN=<sa>.<ns>; the key's SubjectPublicKeyInfo; basicConstraints (critical, not a CA),
 * keyUsage (critical, digitalSignature), extKeyUsage (clientAuth, serverAuth), the SPIFFE id as the one URI SAN
 * and the CA's key identifier. Deliberately left out: anything a workload's certificate does not have (DNS and IP
 * SANs, other key types or signature algorithms: a CA key must be P-256, as `createCa` makes it), and the
 * @peculiar/x509 parsing of a distinguished name from text (the CN is written as given, never split at commas).
 */

/** DER of one element: a tag, its length, its content. */
function tlv(tag: number, ...content: Buffer[]): Buffer {
  const n = content.reduce((sum, b) => sum + b.length, 0);
  const len = n < 0x80 ? [n] : n < 0x100 ? [0x81, n] : n < 0x10000 ? [0x82, n >> 8, n & 0xff] : [0x83, n >> 16, (n >> 8) & 0xff, n & 0xff];
  return Buffer.concat([Buffer.from([tag, ...len]), ...content], 1 + len.length + n);
}

const hex = (h: string): Buffer => Buffer.from(h.replace(/\s/g, ''), 'hex');
const SEQ = 0x30;
const ECDSA_SHA256 = hex('300a 0608 2a8648ce3d040302');
const VERSION_3 = hex('a003 020102');
/** The SubjectPublicKeyInfo of a P-256 key up to its point (04 || x || y). */
const SPKI_P256 = hex('3059 3013 0607 2a8648ce3d0201 0608 2a8648ce3d030107 0342 00');
/** PKCS#8 of a P-256 key (an ECPrivateKey with its public key, as OpenSSL writes it): before d, between d and the point. */
const PKCS8_P256 = [hex('308187 020100 3013 0607 2a8648ce3d0201 0608 2a8648ce3d030107 046d 306b 020101 0420'), hex('a144 0342 00')] as const;
/** basicConstraints (critical, not a CA), keyUsage (critical, digitalSignature), extKeyUsage (clientAuth, serverAuth). */
const WORKLOAD_EXTENSIONS = hex('300c 0603 551d13 0101ff 0402 3000  300e 0603 551d0f 0101ff 0404 03020780  301d 0603 551d25 0416 3014 0608 2b06010505070302 0608 2b06010505070301');
const OID_CN = hex('0603 550403');
const OID_SAN = hex('0603 551d11');
const OID_AKI = hex('0603 551d23');
const OID_SKI = hex('0603 551d0e');

/** DirectoryString as @peculiar/x509 picks it: PrintableString when every character allows it, else UTF8String. */
const directoryString = (s: string): Buffer => tlv(/^[A-Za-z0-9 '()+,\-./:=?]*$/.test(s) ? 0x13 : 0x0c, Buffer.from(s, 'utf8'));
/** The subject's first RDN: O=mesh-xds. */
const ORGANIZATION = tlv(0x31, tlv(SEQ, hex('0603 55040a'), directoryString('mesh-xds')));

/** UTCTime until 2049, GeneralizedTime from 2050 (RFC 5280 4.1.2.5), to the second. */
function time(d: Date): Buffer {
  const iso = d.toISOString(); // YYYY-MM-DDTHH:MM:SS.sssZ
  const digits = iso.slice(0, 19).replace(/[-T:]/g, '') + 'Z';
  const year = d.getUTCFullYear();
  if (year < 1950 || year > 9999) throw new Error(`cannot encode the time ${iso} in a certificate`);
  return year < 2050 ? tlv(0x17, Buffer.from(digits.slice(2), 'latin1')) : tlv(0x18, Buffer.from(digits, 'latin1'));
}

/** One DER element at `at` in `buf`: its tag, the whole element and its content. */
export interface Der {
  tag: number;
  der: Buffer;
  body: Buffer;
}

export function readDer(buf: Buffer, at = 0): Der {
  const tag = buf[at];
  let n = buf[at + 1];
  if (tag === undefined || n === undefined) throw new Error('DER ends early');
  let head = 2;
  if (n & 0x80) {
    const k = n & 0x7f;
    if (k < 1 || k > 3 || at + 2 + k > buf.length) throw new Error('DER length not supported');
    n = 0;
    for (let i = 0; i < k; i++) n = n * 256 + buf[at + 2 + i]!;
    head += k;
  }
  if (at + head + n > buf.length) throw new Error('DER ends early');
  return { tag, der: buf.subarray(at, at + head + n), body: buf.subarray(at + head, at + head + n) };
}

/** The elements inside a constructed element's content. */
export function derItems(body: Buffer): Der[] {
  const out: Der[] = [];
  for (let at = 0; at < body.length; ) {
    const d = readDer(body, at);
    out.push(d);
    at += d.der.length;
  }
  return out;
}

const pemBlock = (label: string, der: Buffer): string => {
  const b64 = der.toString('base64');
  let out = `-----BEGIN ${label}-----\n`;
  for (let i = 0; i < b64.length; i += 64) out += `${b64.slice(i, i + 64)}\n`;
  return `${out}-----END ${label}-----\n`;
};

/** PKCS#8 PEM of a P-256 key from its private scalar (Node drops its leading zero bytes) and public point. */
export function p256KeyPem(d: Buffer, point: Buffer): string {
  if (d.length > 32 || point.length !== 65) throw new Error('not a P-256 key');
  return pemBlock('PRIVATE KEY', Buffer.concat([PKCS8_P256[0], Buffer.alloc(32 - d.length), d, PKCS8_P256[1], point]));
}

/** What a CA gives every certificate it signs: its key, its subject as their issuer, and its key identifier. */
interface Signer {
  key: KeyObject;
  issuerName: Buffer;
  authorityKeyId: Buffer;
}

function signerOf(ca: KeyPair): Signer {
  let cert: X509Certificate;
  let key: KeyObject;
  try {
    cert = new X509Certificate(ca.cert);
  } catch (e) {
    throw new Error(`the mesh CA certificate (ca.crt) cannot be read: ${(e as Error).message}`, { cause: e });
  }
  try {
    key = createPrivateKey(ca.key);
  } catch (e) {
    throw new Error(`the mesh CA key (ca.key) cannot be read: ${(e as Error).message}`, { cause: e });
  }
  if (key.asymmetricKeyType !== 'ec' || key.asymmetricKeyDetails?.namedCurve !== 'prime256v1') {
    throw new Error(`the mesh CA key (ca.key) must be ECDSA P-256; it is ${key.asymmetricKeyType} ${key.asymmetricKeyDetails?.namedCurve ?? ''}`.trimEnd());
  }
  if (!cert.checkPrivateKey(key)) throw new Error('the mesh CA key (ca.key) is not the key of its certificate (the first in ca.crt)');
  // Certificate { tbsCertificate { [0] version, serial, signature, issuer, validity, subject, spki, ..., [3] extensions } }
  const tbs = derItems(derItems(readDer(cert.raw).body)[0]!.body);
  const off = tbs[0]!.tag === 0xa0 ? 1 : 0;
  const subject = tbs[off + 4]!.der;
  const spki = tbs[off + 5]!;
  // Its subjectKeyIdentifier, else (as @peculiar/x509 and RFC 5280's method 1) the SHA-1 of its public key.
  let keyId = createHash('sha1').update(derItems(spki.body)[1]!.body.subarray(1)).digest();
  const extensions = tbs.find((d) => d.tag === 0xa3);
  for (const ext of extensions ? derItems(derItems(extensions.body)[0]!.body) : []) {
    const [oid, ...rest] = derItems(ext.body);
    if (oid && oid.der.equals(OID_SKI)) keyId = Buffer.from(readDer(rest.at(-1)!.body).body);
  }
  return { key, issuerName: Buffer.from(subject), authorityKeyId: tlv(SEQ, OID_AKI, tlv(0x04, tlv(SEQ, tlv(0x80, keyId)))) };
}

let lastIssuer: { ca: KeyPair; issue: (o: WorkloadIssueOptions) => TlsBundle } | undefined;

/**
 * Issues workload certificates from one CA, synchronously (about 0.25 ms each, mostly the key pair and the
 * signature), each with its own P-256 key. Throws at once, with the reason, when the CA's certificate or key is not
 * usable. The last CA's signer is kept (callers of `issue` pass the same CA again and again).
 */
export function workloadIssuer(ca: KeyPair): (o: WorkloadIssueOptions) => TlsBundle {
  if (lastIssuer && lastIssuer.ca.cert === ca.cert && lastIssuer.ca.key === ca.key) return lastIssuer.issue;
  const s = signerOf(ca);
  const caPem = pem(ca.cert);
  const issueOne = (o: WorkloadIssueOptions): TlsBundle => {
    const id = spiffeId(o.trustDomain, o.namespace, o.serviceAccount);
    // IA5String: ASCII only.
    if (!/^[\x20-\x7e]+$/.test(id)) throw new Error(`cannot issue a certificate for ${JSON.stringify(id)}: a SPIFFE id is ASCII`);
    // A P-256 key pair as two numbers (the private scalar, the public point): OpenSSL's key objects and their DER
    // and PEM encoders cost three times more than the key itself.
    const ecdh = createECDH('prime256v1');
    const point = ecdh.generateKeys(); // 04 || x || y
    const now = Date.now();
    const tbs = tlv(
      SEQ,
      VERSION_3,
      tlv(0x02, serialBytes()),
      ECDSA_SHA256,
      s.issuerName,
      tlv(SEQ, time(new Date(now - 60_000)), time(new Date(now + (o.ttlMs ?? 86_400_000)))),
      tlv(SEQ, ORGANIZATION, tlv(0x31, tlv(SEQ, OID_CN, directoryString(`${o.serviceAccount}.${o.namespace}`)))),
      Buffer.concat([SPKI_P256, point]),
      tlv(0xa3, tlv(SEQ, WORKLOAD_EXTENSIONS, tlv(SEQ, OID_SAN, tlv(0x04, tlv(SEQ, tlv(0x86, Buffer.from(id, 'latin1'))))), s.authorityKeyId)),
    );
    const signature = sign('sha256', tbs, s.key);
    const cert = tlv(SEQ, tbs, ECDSA_SHA256, tlv(0x03, Buffer.from([0]), signature));
    return { cert: pemBlock('CERTIFICATE', cert), key: p256KeyPem(ecdh.getPrivateKey(), point), ca: caPem };
  };
  lastIssuer = { ca, issue: issueOne };
  return issueOne;
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
