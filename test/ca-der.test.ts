/**
 * The workload certificates written field by field (src/security/ca.ts `workloadIssuer`) against what
 * @peculiar/x509 makes from the same inputs (the recipe the CA used before, kept here as the reference): the
 * to-be-signed part equal byte for byte, field by field; the signature the CA's; the key PEM what OpenSSL writes;
 * and a real TLS handshake between two of them.
 */
import 'reflect-metadata';
import { createECDH, createPrivateKey, generateKeyPairSync, webcrypto, X509Certificate } from 'node:crypto';
import tls from 'node:tls';
import type { AddressInfo } from 'node:net';
import * as x509 from '@peculiar/x509';
import { beforeAll, describe, expect, it } from 'vitest';
import { Writable } from 'node:stream';
import pino from 'pino';
import { createCa, derItems, issue, p256KeyPem, readDer, workloadIssuer, type KeyPair, type TlsBundle } from '../src/security/ca.js';
import { WorkloadCerts } from '../src/security/workload-certs.js';

x509.cryptoProvider.set(webcrypto as unknown as Crypto);
const ALG = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' } as const;

/** The certificate @peculiar/x509 makes for a workload, given the serial, validity and public key of `leaf`. */
async function reference(ca: KeyPair, leaf: X509Certificate, namespace: string, serviceAccount: string, trustDomain = 'cluster.local'): Promise<Buffer> {
  const caCert = new x509.X509Certificate(ca.cert);
  const caKey = (await webcrypto.subtle.importKey('pkcs8', x509.PemConverter.decode(ca.key)[0]!, ALG, true, ['sign'])) as unknown as CryptoKey;
  const publicKey = (await webcrypto.subtle.importKey('spki', leaf.publicKey.export({ type: 'spki', format: 'der' }), ALG, true, ['verify'])) as unknown as CryptoKey;
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: leaf.serialNumber,
    subject: `O=mesh-xds, CN=${serviceAccount}.${namespace}`,
    issuer: caCert.subject,
    notBefore: new Date(leaf.validFrom),
    notAfter: new Date(leaf.validTo),
    publicKey,
    signingKey: caKey,
    signingAlgorithm: ALG,
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
      new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.clientAuth, x509.ExtendedKeyUsage.serverAuth]),
      new x509.SubjectAlternativeNameExtension([{ type: 'url', value: `spiffe://${trustDomain}/ns/${namespace}/sa/${serviceAccount}` }], false),
      await x509.AuthorityKeyIdentifierExtension.create(caCert),
    ],
  });
  return Buffer.from(cert.rawData);
}

const TBS_FIELDS = ['version', 'serialNumber', 'signature', 'issuer', 'validity', 'subject', 'subjectPublicKeyInfo', 'extensions'];

/** The to-be-signed fields of a certificate (DER, hex), named; the extensions one by one. */
function fields(der: Buffer): Record<string, string> {
  const tbs = derItems(derItems(readDer(der).body)[0]!.body);
  const out: Record<string, string> = {};
  tbs.forEach((d, i) => (out[TBS_FIELDS[i] ?? `field ${i}`] = d.der.toString('hex')));
  const ext = tbs.find((d) => d.tag === 0xa3)!;
  derItems(derItems(ext.body)[0]!.body).forEach((e, i) => (out[`extension ${i}`] = e.der.toString('hex')));
  return out;
}

/** Each field as @peculiar/x509 writes it, and the whole to-be-signed part byte for byte. */
async function expectSameAsReference(ca: KeyPair, b: TlsBundle, namespace: string, serviceAccount: string): Promise<void> {
  const leaf = new X509Certificate(b.cert);
  const ref = await reference(ca, leaf, namespace, serviceAccount);
  expect(fields(leaf.raw)).toEqual(fields(ref));
  const tbs = (der: Buffer): Buffer => derItems(readDer(der).body)[0]!.der;
  expect(tbs(leaf.raw).equals(tbs(ref))).toBe(true);
  // The signature's algorithm too (outside the to-be-signed part).
  expect(derItems(readDer(leaf.raw).body)[1]!.der.equals(derItems(readDer(ref).body)[1]!.der)).toBe(true);
}

describe('workload certificates written field by field', () => {
  let ca: KeyPair;
  beforeAll(async () => {
    ca = await createCa('cluster.local');
  });

  it('equal what @peculiar/x509 makes, field for field, signed by the CA, with their own key', async () => {
    const issueOne = workloadIssuer(ca);
    const b = issueOne({ trustDomain: 'cluster.local', namespace: 'bookstore', serviceAccount: 'bookbuyer' });
    await expectSameAsReference(ca, b, 'bookstore', 'bookbuyer');
    const leaf = new X509Certificate(b.cert);
    const caCert = new X509Certificate(ca.cert);
    expect(leaf.verify(caCert.publicKey)).toBe(true);
    expect(leaf.checkIssued(caCert)).toBe(true);
    expect(leaf.subject).toBe('O=mesh-xds\nCN=bookbuyer.bookstore');
    expect(leaf.subjectAltName).toBe('URI:spiffe://cluster.local/ns/bookstore/sa/bookbuyer');
    expect(leaf.ca).toBe(false);
    expect(leaf.keyUsage).toEqual(['1.3.6.1.5.5.7.3.2', '1.3.6.1.5.5.7.3.1']);
    expect(leaf.checkPrivateKey(createPrivateKey(b.key))).toBe(true);
    // The key as OpenSSL itself writes PKCS#8.
    expect(createPrivateKey(b.key).export({ type: 'pkcs8', format: 'pem' })).toBe(b.key);
    expect(b.ca).toBe(ca.cert);
    // A key per certificate, a serial per certificate.
    const other = issueOne({ trustDomain: 'cluster.local', namespace: 'bookstore', serviceAccount: 'bookbuyer' });
    expect(other.key).not.toBe(b.key);
    expect(new X509Certificate(other.cert).serialNumber).not.toBe(leaf.serialNumber);
    // issue() takes the same path for a workload.
    await expectSameAsReference(ca, await issue(ca, { trustDomain: 'cluster.local', namespace: 'a', serviceAccount: 'b' }), 'a', 'b');
  });

  it('long names (long DER lengths), a name PrintableString cannot hold, a notAfter from 2050 (GeneralizedTime)', async () => {
    const issueOne = workloadIssuer(ca);
    const ns = 'n'.repeat(63);
    const sa = `${'s'.repeat(200)}.x`;
    await expectSameAsReference(ca, issueOne({ trustDomain: 'cluster.local', namespace: ns, serviceAccount: sa }), ns, sa);
    await expectSameAsReference(ca, issueOne({ trustDomain: 'cluster.local', namespace: 'ns', serviceAccount: 'under_score' }), 'ns', 'under_score');
    const far = issueOne({ trustDomain: 'cluster.local', namespace: 'ns', serviceAccount: 'far', ttlMs: 40 * 365 * 86_400_000 });
    expect(new Date(new X509Certificate(far.cert).validTo).getUTCFullYear()).toBeGreaterThanOrEqual(2050);
    await expectSameAsReference(ca, far, 'ns', 'far');
  });

  it('a private key whose scalar starts with zero bytes (Node gives it shorter) is written whole', () => {
    const ecdh = createECDH('prime256v1');
    const d = Buffer.alloc(32, 0x11);
    d[0] = 0;
    ecdh.setPrivateKey(d);
    expect(ecdh.getPrivateKey().length).toBe(31);
    const key = p256KeyPem(ecdh.getPrivateKey(), ecdh.getPublicKey());
    const parsed = createPrivateKey(key);
    expect(Buffer.from(parsed.export({ format: 'jwk' }).d!, 'base64url').equals(d)).toBe(true);
    expect(parsed.export({ type: 'pkcs8', format: 'pem' })).toBe(key);
  });

  it('the authority key identifier is the CA certificate subjectKeyIdentifier', () => {
    const b = workloadIssuer(ca)({ trustDomain: 'cluster.local', namespace: 'ns', serviceAccount: 'sa' });
    const ski = (pem: string): string => new x509.X509Certificate(pem).getExtension(x509.SubjectKeyIdentifierExtension)!.keyId;
    const aki = new x509.X509Certificate(b.cert).getExtension(x509.AuthorityKeyIdentifierExtension)!.keyId;
    expect(aki).toBe(ski(ca.cert));
  });

  it('a CA key that is not its certificate, or not P-256, is refused with the reason', async () => {
    const other = await createCa('cluster.local');
    expect(() => workloadIssuer({ cert: ca.cert, key: other.key })).toThrow(/ca\.key\) is not the key of its certificate/);
    const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ type: 'pkcs8', format: 'pem' }) as string;
    expect(() => workloadIssuer({ cert: ca.cert, key: rsa })).toThrow(/must be ECDSA P-256; it is rsa/);
    expect(() => workloadIssuer({ cert: 'not a certificate', key: ca.key })).toThrow(/ca\.crt\) cannot be read/);
    // The bundle of a rotation (the new CA first) issues from the first.
    const b = workloadIssuer({ cert: other.cert + ca.cert, key: other.key })({ trustDomain: 'cluster.local', namespace: 'ns', serviceAccount: 'sa' });
    expect(new X509Certificate(b.cert).verify(new X509Certificate(other.cert).publicKey)).toBe(true);
  });

  it('two of them complete a mutual TLS handshake, each seeing the other SPIFFE id', async () => {
    const issueOne = workloadIssuer(ca);
    const server = issueOne({ trustDomain: 'cluster.local', namespace: 'bookstore', serviceAccount: 'bookstore' });
    const client = issueOne({ trustDomain: 'cluster.local', namespace: 'bookbuyer', serviceAccount: 'bookbuyer' });
    let seenByServer = '';
    const srv = tls.createServer({ cert: server.cert, key: server.key, ca: server.ca, requestCert: true, rejectUnauthorized: true }, (s) => {
      seenByServer = s.getPeerCertificate().subjectaltname ?? '';
      s.end('ok');
    });
    await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
    try {
      const { seenByClient, data } = await new Promise<{ seenByClient: string; data: string }>((resolve, reject) => {
        const c = tls.connect({ port: (srv.address() as AddressInfo).port, host: '127.0.0.1', cert: client.cert, key: client.key, ca: client.ca, checkServerIdentity: () => undefined }, () => {
          const seen = c.getPeerCertificate().subjectaltname ?? '';
          let data = '';
          c.on('data', (d) => (data += d));
          c.on('end', () => resolve({ seenByClient: seen, data }));
        });
        c.on('error', reject);
      });
      expect(data).toBe('ok');
      expect(seenByClient).toBe('URI:spiffe://cluster.local/ns/bookstore/sa/bookstore');
      expect(seenByServer).toBe('URI:spiffe://cluster.local/ns/bookbuyer/sa/bookbuyer');
    } finally {
      srv.close();
    }
  });
});

describe('the sidecars\' certificates and a CA that cannot sign', () => {
  it('refused at the start with the reason; a rotation to one is logged and changes nothing', async () => {
    const ca = await createCa('cluster.local');
    const other = await createCa('cluster.local');
    const log = pino({ level: 'silent' });
    expect(() => new WorkloadCerts({ ca: { cert: ca.cert, key: other.key }, trustDomain: 'cluster.local', log, onChange: () => {} })).toThrow(/not the key of its certificate/);
    const lines: string[] = [];
    const changes: (readonly string[] | undefined)[] = [];
    const certs = new WorkloadCerts({
      ca,
      trustDomain: 'cluster.local',
      rotationDelayMs: 0,
      log: pino({ level: 'info' }, new Writable({ write: (c, _e, done) => (lines.push(String(c)), done()) })),
      onChange: (ids) => changes.push(ids),
    });
    certs.want(['a/x']);
    await certs.settled();
    const before = certs.secrets();
    const cert = before.certs.get('a/x')!.cert;
    certs.setCa({ cert: other.cert + ca.cert, key: ca.key });
    await new Promise((r) => setTimeout(r, 50));
    await certs.settled();
    expect(lines.join('')).toMatch(/the new mesh CA cannot issue sidecar certificates; keeping the one in use/);
    expect(certs.secrets().bundle).toBe(ca.cert);
    expect(certs.secrets().certs.get('a/x')!.cert).toBe(cert);
    expect(changes).toEqual([['a/x']]);
    certs.stop();
  });
});
