/**
 * mTLS on the ADS port over real gRPC: the identity of a stream is its client certificate's SPIFFE id; a stream
 * without a certificate, with one from another CA, an expired one, or whose node claims another identity is
 * refused, saying why, in its status, the log and the metrics; CSDS answers only its allow list; the server's
 * certificate is issued from the mesh CA (for its Service names) or read from files that may rotate.
 */
import { X509Certificate } from 'node:crypto';
import net from 'node:net';
import path from 'node:path';
import { Writable } from 'node:stream';
import tls from 'node:tls';
import * as grpc from '@grpc/grpc-js';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ConfigError, parseServeArgs } from '../src/config.js';
import { createCa, issue, writeCaDir, writeTlsDir, type KeyPair, type TlsBundle } from '../src/security/ca.js';
import { CSDS_SERVICE } from '../src/xds/protocol/csds.js';
import { METRICS_PATH } from '../src/observed/metrics-service.js';
import { envoyRoot } from '../src/xds/resources/protos.js';
import { eventually } from './helpers/grpc-xds.js';
import { RawAdsClient, node } from './helpers/ads-client.js';
import { startDemo, type DemoServer } from './helpers/demo.js';
import { tempDir } from './helpers/tmp.js';

const LDS = 'type.googleapis.com/envoy.config.listener.v3.Listener';
const Csds = grpc.makeGenericClientConstructor(CSDS_SERVICE, 'CSDS');
const tmp = tempDir('mesh-xds-mtls-');
const trustDomain = 'cluster.local';

let ca: KeyPair;
let demo: DemoServer;
const lines: any[] = [];
const clients: { close(): void }[] = [];

const credsOf = (b: Partial<TlsBundle> & { ca: string }) =>
  b.cert ? grpc.credentials.createSsl(Buffer.from(b.ca), Buffer.from(b.key!), Buffer.from(b.cert)) : grpc.credentials.createSsl(Buffer.from(b.ca));
const leaf = (namespace: string, serviceAccount: string, ttlMs?: number, from = ca) => issue(from, { trustDomain, namespace, serviceAccount, ttlMs });
const adsWith = (b: Partial<TlsBundle> & { ca: string }, address = demo.ads) => {
  const c = new RawAdsClient(address, credsOf(b));
  clients.push(c);
  return c;
};
const refusedCount = async (reason: string): Promise<number> => {
  const m = new RegExp(`^mesh_xds_streams_refused_total\\{reason="${reason}"\\} (\\d+)`, 'm').exec(await fetch(`${demo.debug}/metrics`).then((r) => r.text()));
  return m ? Number(m[1]) : 0;
};
const ldsRequest = (n: object) => ({ node: n, type_url: LDS });

beforeAll(async () => {
  ca = await createCa(trustDomain);
  writeCaDir(path.join(tmp, 'ca'), ca);
  const log = pino({ level: 'info' }, new Writable({ write: (c, _e, done) => (lines.push(JSON.parse(String(c))), done()) }));
  demo = await startDemo(() => {}, log, { caDir: path.join(tmp, 'ca'), trustDomain, csdsAllow: ['spiffe://cluster.local/ns/mesh-xds/sa/admin', 'spiffe://cluster.local/ns/ops/*'] });
}, 30_000);

afterAll(async () => {
  for (const c of clients) c.close();
  await demo?.close();
});

describe('ADS over mTLS', () => {
  it("serves a stream its certificate's identity; the node may leave it out", async () => {
    const curl = await leaf('curl', 'curl');
    const claimed = adsWith(curl).sotw();
    claimed.send(ldsRequest(node({ id: 'curl-1', namespace: 'curl', serviceAccount: 'curl' })));
    expect((await claimed.next()).type_url).toBe(LDS);
    const silent = adsWith(curl).sotw();
    silent.send(ldsRequest(node({ id: 'curl-2', namespace: undefined, serviceAccount: undefined })));
    const r = await silent.next();
    expect(r.names.length).toBeGreaterThan(0);
    await eventually(() => lines.some((l) => l.msg === 'stream opened' && l.node === 'curl-2' && l.key === 'sidecar:curl/curl' && l.spiffe === 'spiffe://cluster.local/ns/curl/sa/curl'), 10_000, 'the stream opened as curl/curl');
    const proxies = (await fetch(`${demo.debug}/debug/proxies`).then((r) => r.json())).proxies;
    expect(proxies.find((p: any) => p.nodeId === 'curl-2')).toMatchObject({ namespace: 'curl', serviceAccount: 'curl', spiffe: 'spiffe://cluster.local/ns/curl/sa/curl' });
  });

  const refusals: [string, () => Promise<Partial<TlsBundle> & { ca: string }>, string, RegExp][] = [
    ['no client certificate', async () => ({ ca: ca.cert }), 'no_client_certificate', /no client certificate/],
    ['a certificate from another CA', async () => ({ ...(await leaf('curl', 'curl', undefined, await createCa(trustDomain))), ca: ca.cert }), 'untrusted_certificate', /not signed by the mesh CA/],
    ['an expired certificate', async () => {
      const b = await leaf('curl', 'curl', 1);
      await new Promise((r) => setTimeout(r, 1100));
      return b;
    }, 'expired_certificate', /expired at/],
    ['a certificate of another trust domain', async () => ({ ...(await issue(ca, { trustDomain: 'other.example', namespace: 'curl', serviceAccount: 'curl' })) }), 'untrusted_certificate', /not in the trust domain cluster\.local/],
    // The server's own kind of certificate (ca issue --server) serves only: it is no client identity.
    ['a serving certificate', async () => issue(ca, { trustDomain, namespace: 'mesh-xds', serviceAccount: 'mesh-xds', server: { dnsNames: ['mesh-xds.mesh-xds.svc'] } }), 'bad_certificate', /is not for client authentication \(extended key usage: serverAuth; clientAuth is required\)/],
  ];
  for (const [what, bundle, reason, message] of refusals) {
    it(`refuses ${what}, saying so in the status, the log and the metrics`, async () => {
      const before = await refusedCount(reason);
      const s = adsWith(await bundle()).sotw();
      s.send(ldsRequest(node({ id: `refused-${reason}` })));
      const err = await s.next().then(() => undefined, (e: grpc.ServiceError) => e);
      expect(err?.code).toBe(grpc.status.UNAUTHENTICATED);
      expect(err?.details).toMatch(message);
      expect(await refusedCount(reason)).toBe(before + 1);
      expect(lines.some((l) => l.msg === 'stream refused' && l.reason === reason && message.test(l.details))).toBe(true);
    });
  }

  it('ends a stream when its client certificate expires, with UNAUTHENTICATED; the renewed certificate is served', async () => {
    const before = await refusedCount('expired_certificate');
    const short = await leaf('curl', 'curl', 4_000);
    const s = adsWith(short).sotw();
    s.send(ldsRequest(node({ id: 'short-lived' })));
    expect((await s.next()).type_url).toBe(LDS);
    const expiry = new Date(new X509Certificate(short.cert).validTo);
    const err = await s.next(10_000).then(() => undefined, (e: grpc.ServiceError) => e);
    expect(err?.code).toBe(grpc.status.UNAUTHENTICATED);
    expect(err?.details).toBe(`the client certificate (spiffe://cluster.local/ns/curl/sa/curl) expired at ${expiry.toISOString()}; reconnect with a renewed one`);
    expect(Date.now()).toBeGreaterThanOrEqual(expiry.getTime());
    expect(await refusedCount('expired_certificate')).toBe(before + 1);
    const renewed = adsWith(await leaf('curl', 'curl')).sotw();
    renewed.send(ldsRequest(node({ id: 'short-lived' })));
    expect((await renewed.next()).type_url).toBe(LDS);
  });

  it('counts failed TLS handshakes and warns about them once per 10 s, however many there are', async () => {
    // A server of its own, which has warned of none yet: the first failed handshake warns at once.
    const own: any[] = [];
    const log = pino({ level: 'info' }, new Writable({ write: (c, _e, done) => (own.push(JSON.parse(String(c))), done()) }));
    const fresh = await startDemo(() => {}, log, { caDir: path.join(tmp, 'ca'), trustDomain });
    try {
      const port = Number(fresh.ads.split(':')[1]);
      const count = async (): Promise<number> => {
        const m = /^mesh_xds_connections_refused_total\{reason="tls_handshake_failed"\} (\d+)/m.exec(await fetch(`${fresh.debug}/metrics`).then((r) => r.text()));
        return m ? Number(m[1]) : 0;
      };
      const stranger = await createCa(trustDomain);
      // 50 connections whose ClientHello is junk, and 50 whose client does not trust the server.
      await Promise.all(
        Array.from({ length: 50 }, () =>
          new Promise<void>((resolve) => {
            const sock = net.connect(port, '127.0.0.1', () => sock.write(Buffer.from('GET / HTTP/1.1\r\n\r\n')));
            sock.on('error', () => {});
            sock.on('close', () => resolve());
          }),
        ),
      );
      await Promise.all(
        Array.from({ length: 50 }, () =>
          new Promise<void>((resolve) => {
            const sock = tls.connect({ port, host: '127.0.0.1', ca: [stranger.cert], servername: 'localhost' });
            sock.on('error', () => resolve());
            sock.on('secureConnect', () => (sock.destroy(), resolve()));
          }),
        ),
      );
      await eventually(async () => (await count()) >= 100, 10_000, 'every failed handshake counted');
      const failed = await count();
      const warnings = own.filter((l) => String(l.msg).startsWith('TLS handshake failed'));
      // The first failure warned, saying it is the first; each later warning (if the burst outlasted 10 s on a slow
      // machine) came 10 s after the one before it and counts the failures since; none went uncounted.
      expect(warnings[0]).toMatchObject({ level: 40, failed: 1 });
      for (let i = 1; i < warnings.length; i++) expect(warnings[i].time - warnings[i - 1].time).toBeGreaterThanOrEqual(10_000 - 50);
      expect(warnings.reduce((n, w) => n + w.failed, 0)).toBeLessThanOrEqual(failed);
      // Every failure came within 10 s of the first warning: that warning was the only one.
      if (Date.now() - warnings[0].time < 10_000) expect(warnings).toHaveLength(1);
    } finally {
      await fresh.close();
    }
  });

  it('holds connections without a certificate few (16 per source) and briefly (5 s): a proxy with one is served meanwhile', async () => {
    // A server of its own: the connections other tests left without a certificate reach their end in its count.
    const own = await startDemo(() => {}, pino({ level: 'silent' }), { caDir: path.join(tmp, 'ca'), trustDomain });
    try {
      const port = Number(own.ads.split(':')[1]);
      const count = async (): Promise<number> => {
        const m = /^mesh_xds_connections_refused_total\{reason="anonymous_connection"\} (\d+)/m.exec(await fetch(`${own.debug}/metrics`).then((r) => r.text()));
        return m ? Number(m[1]) : 0;
      };
      // 40 idle connections from one address that finish the handshake without a certificate (each cost 56 KB for
      // as long as the client liked).
      const open = new Set<tls.TLSSocket>();
      await Promise.all(
        Array.from({ length: 40 }, () =>
          new Promise<void>((resolve) => {
            const sock = tls.connect({ socket: net.connect({ port, host: '127.0.0.1', localAddress: '127.0.0.3' }), ca: [ca.cert], servername: 'localhost', ALPNProtocols: ['h2'] });
            sock.on('error', () => {});
            // Read (and drop) what comes, so that the server's close is seen.
            sock.resume();
            sock.on('secureConnect', () => (open.add(sock), resolve()));
            sock.on('close', () => (open.delete(sock), resolve()));
          }),
        ),
      );
      await eventually(() => open.size <= 16, 10_000, 'at most 16 anonymous connections from one source kept');
      expect(open.size).toBeGreaterThan(0);
      // A proxy with its certificate connects and is served while they are held.
      const served = adsWith(await leaf('curl', 'curl'), own.ads).sotw();
      served.send(ldsRequest(node({ id: 'curl-anon', namespace: 'curl', serviceAccount: 'curl' })));
      expect((await served.next()).type_url).toBe(LDS);
      // The rest go at their lifetime's end.
      await eventually(() => open.size === 0, 30_000, 'every anonymous connection closed after its lifetime');
      expect(await count()).toBe(40);
    } finally {
      await own.close();
    }
  });

  it("refuses a node that claims an identity its certificate does not prove, naming the field", async () => {
    const s = adsWith(await leaf('curl', 'curl')).sotw();
    s.send(ldsRequest(node({ id: 'liar', namespace: 'httpbin', serviceAccount: 'httpbin' })));
    const err = await s.next().then(() => undefined, (e: grpc.ServiceError) => e);
    expect(err?.code).toBe(grpc.status.PERMISSION_DENIED);
    expect(err?.details).toBe('node "liar": node.metadata.namespace "httpbin" disagrees with the client certificate, which is spiffe://cluster.local/ns/curl/sa/curl');
    expect(await refusedCount('identity_mismatch')).toBeGreaterThan(0);
    const sa = adsWith(await leaf('curl', 'curl')).delta();
    sa.send({ node: node({ id: 'liar-2', namespace: 'curl', serviceAccount: 'httpbin' }), type_url: LDS });
    const err2 = await sa.next().then(() => undefined, (e: grpc.ServiceError) => e);
    expect(err2?.details).toMatch(/node\.metadata\.serviceAccount "httpbin" disagrees/);
  });

  it('the serving certificate is issued from the mesh CA for the Service names and the server\'s SPIFFE id', async () => {
    const port = Number(demo.ads.split(':')[1]);
    const cert = await new Promise<tls.PeerCertificate>((resolve, reject) => {
      const s = tls.connect({ host: '127.0.0.1', port, servername: 'mesh-xds.mesh-xds.svc', ca: ca.cert, ALPNProtocols: ['h2'] }, () => {
        resolve(s.getPeerCertificate());
        s.end();
      });
      s.on('error', reject);
    });
    expect(cert.subjectaltname).toContain('URI:spiffe://cluster.local/ns/mesh-xds/sa/mesh-xds');
    expect(cert.subjectaltname).toContain('DNS:mesh-xds.mesh-xds.svc.cluster.local');
    expect(tls.checkServerIdentity('mesh-xds.mesh-xds.svc', cert)).toBeUndefined();
    expect(tls.checkServerIdentity('evil.example', cert)).toBeInstanceOf(Error);
  });
});

describe('CSDS over mTLS', () => {
  const fetchStatus = (b: Partial<TlsBundle> & { ca: string }) =>
    new Promise<{ err?: grpc.ServiceError; res?: any }>((resolve) => {
      const c: any = new Csds(demo.ads, credsOf(b));
      clients.push(c);
      c.FetchClientStatus({ node_matchers: [] }, (err: grpc.ServiceError | null, res: any) => resolve(err ? { err } : { res }));
    });

  it('answers the SPIFFE ids on --csds-allow (exact or prefix) and refuses the others', async () => {
    expect((await fetchStatus(await leaf('mesh-xds', 'admin'))).res?.config).toBeDefined();
    expect((await fetchStatus(await leaf('ops', 'oncall'))).res?.config).toBeDefined();
    const before = await refusedCount('csds_not_allowed');
    const { err } = await fetchStatus(await leaf('curl', 'curl'));
    expect(err?.code).toBe(grpc.status.PERMISSION_DENIED);
    expect(err?.details).toBe('spiffe://cluster.local/ns/curl/sa/curl may not read CSDS (not on --csds-allow)');
    expect(await refusedCount('csds_not_allowed')).toBe(before + 1);
    expect(lines.some((l) => l.msg === 'CSDS request refused' && l.reason === 'csds_not_allowed')).toBe(true);
  });
});

describe('the metrics service over mTLS (what the retries did)', () => {
  const MESSAGE = envoyRoot().lookupType('envoy.service.metrics.v3.StreamMetricsMessage');
  const Metrics = grpc.makeGenericClientConstructor(
    { StreamMetrics: { path: METRICS_PATH, requestStream: true, responseStream: false, requestSerialize: (b: Buffer) => b, requestDeserialize: (b: Buffer) => b, responseSerialize: (b: Buffer) => b, responseDeserialize: (b: Buffer) => b } },
    'Metrics',
  );
  /** One flush of `retries` on httpbin's cluster, from a node claiming `claims` (or nothing); resolves with the stream's end. */
  const report = (b: Partial<TlsBundle> & { ca: string }, retries: number, claims?: { namespace: string; serviceAccount: string }) =>
    new Promise<grpc.ServiceError | null>((resolve) => {
      const c: any = new Metrics(demo.ads, credsOf(b));
      clients.push(c);
      const call = c.StreamMetrics((err: grpc.ServiceError | null) => resolve(err));
      const fields = claims ? { namespace: { stringValue: claims.namespace }, serviceAccount: { stringValue: claims.serviceAccount } } : {};
      const family = (name: string, value: number) => ({ name: `cluster.httpbin/httpbin|14001.${name}`, type: 0, metric: [{ counter: { value } }] });
      call.write(Buffer.from(MESSAGE.encode(MESSAGE.fromObject({ identifier: { node: { id: 'm-1', metadata: { fields } } }, envoy_metrics: [family('upstream_rq_total', retries + 1), family('upstream_rq_retry', retries)] })).finish()));
      setTimeout(() => call.end(), 300);
    });
  const curlRetries = async () => (await fetch(`${demo.debug}/debug/retries`).then((r) => r.json())).policies.find((p: any) => p.policy === 'curl/retry')?.windows.total.retries;

  it("counts a stream for its certificate's identity only: a node claiming another is refused, and adds nothing", async () => {
    expect(await report(await leaf('curl', 'curl'), 3)).toBeNull();
    await eventually(async () => (await curlRetries()) === 3, 10_000, "curl's 3 retries");
    // httpbin's certificate, the node claiming to be curl: refused, curl's numbers unchanged.
    const err = await report(await leaf('httpbin', 'httpbin'), 100, { namespace: 'curl', serviceAccount: 'curl' });
    expect(err?.code).toBe(grpc.status.PERMISSION_DENIED);
    expect(err?.details).toMatch(/node.metadata.namespace "curl" disagrees with the client certificate, which is spiffe:\/\/cluster.local\/ns\/httpbin\/sa\/httpbin/);
    // Without a claim, httpbin's numbers are httpbin's own: curl's stay.
    expect(await report(await leaf('httpbin', 'httpbin'), 100)).toBeNull();
    expect(await curlRetries()).toBe(3);
    // No certificate: refused before anything is read.
    expect((await report({ ca: ca.cert }, 100, { namespace: 'curl', serviceAccount: 'curl' }))?.code).toBe(grpc.status.UNAUTHENTICATED);
    expect(await curlRetries()).toBe(3);
  });
});

describe('--tls-dir', () => {
  it('serves the certificate in the folder, and a rotated one to new connections without a restart', async () => {
    const dir = path.join(tmp, 'server');
    const serverCert = () => issue(ca, { trustDomain, namespace: 'mesh-xds', serviceAccount: 'mesh-xds', server: { dnsNames: ['localhost'], ipAddresses: ['127.0.0.1'] } });
    writeTlsDir(dir, await serverCert());
    const other = await startDemo(() => {}, pino({ level: 'silent' }), { tlsDir: dir });
    try {
      const peerSerial = () =>
        new Promise<string>((resolve, reject) => {
          const port = Number(other.ads.split(':')[1]);
          const s = tls.connect({ host: '127.0.0.1', port, ca: ca.cert, ALPNProtocols: ['h2'] }, () => {
            resolve(s.getPeerCertificate().serialNumber);
            s.end();
          });
          s.on('error', reject);
        });
      const first = await peerSerial();
      const s = adsWith(await leaf('curl', 'curl'), other.ads).sotw();
      s.send(ldsRequest(node({ id: 'rotating' })));
      expect((await s.next()).type_url).toBe(LDS);
      writeTlsDir(dir, await serverCert());
      await eventually(async () => (await peerSerial()) !== first, 15_000, 'the rotated certificate to be served');
      // The open stream was not dropped by the rotation.
      expect(s.ended).toBe(false);
      const again = adsWith(await leaf('curl', 'curl'), other.ads).sotw();
      again.send(ldsRequest(node({ id: 'after-rotation' })));
      expect((await again.next()).type_url).toBe(LDS);
    } finally {
      await other.close();
    }
  }, 30_000);
});

describe('plaintext', () => {
  it('is served on loopback by default, and elsewhere only when asked for with --plaintext', () => {
    expect(parseServeArgs(['--manifests', 'd'], {}).adsAddress).toBe('127.0.0.1:15128');
    expect(parseServeArgs(['--manifests', 'd', '--ca-dir', 'ca'], {}).adsAddress).toBe('0.0.0.0:15128');
    expect(() => parseServeArgs(['--manifests', 'd', '--ads-address', '0.0.0.0:15128'], {})).toThrow(ConfigError);
    expect(() => parseServeArgs(['--manifests', 'd', '--ads-address', '0.0.0.0:15128'], {})).toThrow(/plaintext ADS on an address other than loopback .* say --plaintext/);
    expect(parseServeArgs(['--manifests', 'd', '--ads-address', '0.0.0.0:15128', '--plaintext'], {}).plaintext).toBe(true);
    expect(parseServeArgs(['--manifests', 'd', '--ads-address', '[::1]:15128'], {}).adsAddress).toBe('[::1]:15128');
    expect(() => parseServeArgs(['--manifests', 'd', '--csds-allow', 'spiffe://cluster.local/ns/a/sa/b'], {})).toThrow(/needs mTLS/);
    expect(() => parseServeArgs(['--manifests', 'd', '--tls-dir', 'a', '--ca-dir', 'b'], {})).toThrow(/choose one/);
  });
});

describe('a rotated mesh CA (--ca-dir read again)', () => {
  it('is trusted beside the old one, serves from the new key, and drops the old one when it leaves the bundle', async () => {
    const next = await createCa(trustDomain);
    // The kubelet's update of a mounted Secret, in effect: the new signing CA first, the old one still trusted.
    writeCaDir(path.join(tmp, 'ca'), { cert: next.cert + ca.cert, key: next.key });
    const port = Number(demo.ads.split(':')[1]);
    const handshake = (trusted: string) =>
      new Promise<boolean>((resolve) => {
        const s = tls.connect({ host: '127.0.0.1', port, ca: trusted, ALPNProtocols: ['h2'] }, () => {
          resolve(true);
          s.end();
        });
        s.on('error', () => resolve(false));
      });
    await eventually(() => handshake(next.cert), 15_000, 'a serving certificate from the new CA');
    const lds = async (b: TlsBundle) => {
      const s = adsWith(b).sotw();
      s.send(ldsRequest(node({ id: `rotation-${Math.random()}` })));
      return s.next().then((r) => r.type_url, (e: grpc.ServiceError) => e.details);
    };
    const oldLeaf = await leaf('curl', 'curl');
    expect(await lds({ ...oldLeaf, ca: next.cert + ca.cert })).toBe(LDS);
    expect(await lds(await leaf('curl', 'curl', undefined, next))).toBe(LDS);
    expect(lines.some((l) => l.msg === 'mesh CA changed: issuing from the new one')).toBe(true);
    // The old CA leaves the bundle: its certificates are refused from then on.
    writeCaDir(path.join(tmp, 'ca'), next);
    await eventually(async () => /not signed by the mesh CA/.test(String(await lds({ ...oldLeaf, ca: next.cert }))), 15_000, 'the old CA to be dropped');
  }, 60_000);
});
