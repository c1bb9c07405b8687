/**
 * Sidecar-to-sidecar mTLS, below the real-Envoy tests (envoy-mtls.test.ts, the guide suite): what the builder makes
 * (TLS on sidecars' destination clusters and inbound chains, none for proxyless clients or pods without a sidecar),
 * the certificates' issuer (renewal; a CA rotation sends the bundle before the certificates), and over real gRPC:
 * secrets only to a stream whose certificate proved the identity, and redacted everywhere else (config dump, CSDS,
 * logs).
 */
import { X509Certificate } from 'node:crypto';
import path from 'node:path';
import { Writable } from 'node:stream';
import * as grpc from '@grpc/grpc-js';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SnapshotBuilder } from '../src/pipeline/build.js';
import { Pipeline } from '../src/pipeline/pipeline.js';
import { compile } from '../src/compile/compile.js';
import { createCa, issue, writeCaDir, type KeyPair, type TlsBundle } from '../src/security/ca.js';
import { WorkloadCerts } from '../src/security/workload-certs.js';
import { CSDS_SERVICE } from '../src/xds/protocol/csds.js';
import { AdsServer } from '../src/xds/protocol/server.js';
import { ProxyRegistry } from '../src/xds/protocol/status.js';
import { SnapshotCache } from '../src/xds/resources/cache.js';
import { resourceToJson } from './helpers/xds-json.js';
import { CLUSTER, LISTENER, SECRET } from '../src/xds/resources/types.js';
import { CA_SECRET, IDENTITY_SECRET } from '../src/envoy/tls.js';
import { eventually } from './helpers/grpc-xds.js';
import { RawAdsClient, node } from './helpers/ads-client.js';
import { startDemo, type DemoServer } from './helpers/demo.js';
import { loadMesh } from './helpers/mesh.js';
import { tempDir } from './helpers/tmp.js';

const trustDomain = 'cluster.local';
const silent = pino({ level: 'silent' });
const json = (x: unknown): string => JSON.stringify(x);

describe('the builder with mTLS on', () => {
  const state = loadMesh('guide');
  const mtlsPods = { ...state, pods: state.pods };
  const builder = new SnapshotBuilder({ trustDomain });
  builder.update(compile(mtlsPods));
  const certs = new Map([
    ['curl/curl', { cert: 'CERT curl\n', key: 'KEY curl\n' }],
    ['httpbin/httpbin', { cert: 'CERT httpbin\n', key: 'KEY httpbin\n' }],
  ]);

  it('a sidecar needs its certificate before its snapshot is built', () => {
    expect(builder.hasSecrets('sidecar:curl/curl')).toBe(false);
    expect(() => builder.build('sidecar:curl/curl')).toThrow(/no certificate issued for curl\/curl yet/);
    expect(builder.hasSecrets('proxyless:curl/curl')).toBe(true);
    builder.setSecrets({ bundle: 'CA\n', certs });
    expect(builder.hasSecrets('sidecar:curl/curl')).toBe(true);
  });

  it("sidecars: their identity's secret and the bundle over SDS; destination clusters verify the pods' SPIFFE ids; the inbound side requires a certificate", () => {
    const snap = builder.build('sidecar:curl/curl');
    const secrets = [...snap.get(SECRET)!.resources.values()].map(resourceToJson);
    expect(secrets.map((s: any) => s.name).sort()).toEqual([CA_SECRET, IDENTITY_SECRET].sort());
    expect(json(secrets)).toContain('CERT curl');
    // Shown outside ADS: the key redacted (the wire form keeps it: the sidecar needs it).
    expect(json(secrets)).not.toContain('KEY curl');
    const wire = snap.get(SECRET)!.resources.get(IDENTITY_SECRET)!;
    expect(Buffer.from(wire.body).toString()).toContain('KEY curl');
    const cluster: any = resourceToJson(snap.get(CLUSTER)!.resources.get('httpbin/httpbin|14001')!);
    const ctx = cluster.transport_socket.typed_config;
    expect(ctx.sni).toBe('httpbin.httpbin.svc.cluster.local');
    expect(ctx.common_tls_context.combined_validation_context.default_validation_context.match_typed_subject_alt_names).toEqual([
      { san_type: 'URI', matcher: { exact: 'spiffe://cluster.local/ns/httpbin/sa/httpbin' } },
    ]);
    expect(ctx.common_tls_context.tls_params.tls_minimum_protocol_version).toBe('TLSv1_3');
    const server = builder.build('sidecar:httpbin/httpbin');
    const inbound: any = resourceToJson(server.get(LISTENER)!.resources.get('inbound-listener')!);
    expect(inbound.filter_chains[0].transport_socket.typed_config.require_client_certificate).toEqual({ value: true });
    // Another identity's snapshot holds its own certificate, not curl's.
    expect(json([...server.get(SECRET)!.resources.values()].map(resourceToJson))).toContain('CERT httpbin');
  });

  it('proxyless clients: no secrets, plaintext clusters', () => {
    const snap = builder.build('proxyless:curl/curl');
    expect(snap.get(SECRET)!.resources.size).toBe(0);
    expect(json([...snap.get(CLUSTER)!.resources.values()].map(resourceToJson))).not.toContain('transport_socket');
  });

  it("a service whose pods have no sidecar (opted out) is reached in plaintext", () => {
    const optedOut = { ...state, pods: state.pods.map((p) => (p.namespace === 'httpbin' ? { ...p, noSidecar: true as const } : p)) };
    const b = new SnapshotBuilder({ trustDomain });
    b.update(compile(optedOut));
    b.setSecrets({ bundle: 'CA\n', certs });
    const cluster: any = resourceToJson(b.build('sidecar:curl/curl').get(CLUSTER)!.resources.get('httpbin/httpbin|14001')!);
    expect(cluster.transport_socket).toBeUndefined();
  });
});

describe('the sidecar certificates', () => {
  let ca: KeyPair;
  beforeAll(async () => {
    ca = await createCa(trustDomain);
  });

  it('issues one per identity wanted, renews it, drops those no longer wanted', async () => {
    const changes: (readonly string[] | undefined)[] = [];
    const certs = new WorkloadCerts({ ca, trustDomain, log: silent, onChange: (ids) => changes.push(ids) });
    certs.want(['a/x', 'b/y']);
    await certs.settled();
    const first = certs.secrets().certs.get('a/x')!;
    const x509 = new X509Certificate(first.cert);
    expect(x509.subjectAltName).toBe('URI:spiffe://cluster.local/ns/a/sa/x');
    expect(x509.verify(new X509Certificate(ca.cert).publicKey)).toBe(true);
    expect(first.key).toMatch(/BEGIN PRIVATE KEY/);
    certs.renew('a/x');
    await certs.settled();
    expect(certs.secrets().certs.get('a/x')!.cert).not.toBe(first.cert);
    expect(changes.at(-1)).toEqual(['a/x']);
    certs.want(['b/y']);
    expect([...certs.secrets().certs.keys()]).toEqual(['b/y']);
    certs.stop();
  });

  it('connected sidecars waiting for their config are issued for first', async () => {
    const changes: (readonly string[] | undefined)[] = [];
    const certs = new WorkloadCerts({ ca, trustDomain, log: silent, onChange: (ids) => changes.push(ids) });
    const all = Array.from({ length: 200 }, (_, i) => `ns/sa-${i}`);
    certs.want(all, ['ns/sa-199']);
    await certs.settled();
    expect(changes[0]).toContain('ns/sa-199');
    expect(changes.flat().length).toBe(200);
    certs.stop();
  });

  it('a new CA: the bundle goes out first with the current certificates, then certificates of the new CA', async () => {
    const changes: (readonly string[] | undefined)[] = [];
    const certs = new WorkloadCerts({ ca, trustDomain, log: silent, rotationDelayMs: 200, onChange: (ids) => changes.push(ids) });
    certs.want(['a/x']);
    await certs.settled();
    const before = certs.secrets().certs.get('a/x')!.cert;
    const next = await createCa(trustDomain);
    certs.setCa({ cert: next.cert + ca.cert, key: next.key });
    // At once: the new bundle, the certificate unchanged.
    expect(changes.at(-1)).toBeUndefined();
    expect(certs.secrets().bundle).toBe(next.cert + ca.cert);
    expect(certs.secrets().certs.get('a/x')!.cert).toBe(before);
    await eventually(() => certs.secrets().certs.get('a/x')!.cert !== before, 15_000, 'a certificate from the new CA');
    expect(new X509Certificate(certs.secrets().certs.get('a/x')!.cert).verify(new X509Certificate(next.cert).publicKey)).toBe(true);
    certs.stop();
  });
});

describe('secrets over ADS (real gRPC)', () => {
  const tmp = tempDir('mesh-xds-sds-');
  const lines: string[] = [];
  const clients: { close(): void }[] = [];
  let ca: KeyPair;
  let demo: DemoServer;
  const creds = (b: TlsBundle) => grpc.credentials.createSsl(Buffer.from(b.ca), Buffer.from(b.key), Buffer.from(b.cert));

  beforeAll(async () => {
    ca = await createCa(trustDomain);
    writeCaDir(path.join(tmp, 'ca'), ca);
    const log = pino({ level: 'debug' }, new Writable({ write: (c, _e, done) => (lines.push(String(c)), done()) }));
    demo = await startDemo(() => {}, log, { caDir: path.join(tmp, 'ca'), trustDomain, csdsAllow: ['spiffe://cluster.local/ns/ops/*'] });
  }, 30_000);
  afterAll(async () => {
    for (const c of clients) c.close();
    await demo?.close();
  });

  it('a sidecar gets its own certificate and key and the bundle; the config dump, CSDS and the log never show the key', async () => {
    const leaf = await issue(ca, { trustDomain, namespace: 'curl', serviceAccount: 'curl' });
    const client = new RawAdsClient(demo.ads, creds(leaf));
    clients.push(client);
    const s = client.sotw();
    s.send({ node: node({ id: 'curl-sds' }), type_url: SECRET, resource_names: [IDENTITY_SECRET, CA_SECRET] });
    const r = await s.next(5_000);
    expect(r.type_url).toBe(SECRET);
    const byName = Object.fromEntries(r.resources.map((x: any) => [x.name, x]));
    const cert = new X509Certificate(byName[IDENTITY_SECRET].tls_certificate.certificate_chain.inline_string);
    expect(cert.subjectAltName).toBe('URI:spiffe://cluster.local/ns/curl/sa/curl');
    const key: string = byName[IDENTITY_SECRET].tls_certificate.private_key.inline_string;
    expect(key).toMatch(/BEGIN PRIVATE KEY/);
    expect(byName[CA_SECRET].validation_context.trusted_ca.inline_string).toBe(ca.cert);
    s.send({ type_url: SECRET, resource_names: [IDENTITY_SECRET, CA_SECRET], version_info: r.version_info, response_nonce: r.nonce });

    const keyBody = key.split('\n')[1];
    const dump = await fetch(`${demo.debug}/debug/config_dump?proxy=curl-sds`).then((x) => x.text());
    expect(dump).toContain('[redacted]');
    expect(dump).toContain('BEGIN CERTIFICATE');
    expect(dump).not.toContain(keyBody);
    const byIdentity = await fetch(`${demo.debug}/debug/config_dump?namespace=httpbin&serviceAccount=httpbin`).then((x) => x.text());
    expect(byIdentity).not.toMatch(/BEGIN PRIVATE KEY/);
    // An identity nobody has asked for (no certificate yet) is shown too, without secrets.
    const stranger = await fetch(`${demo.debug}/debug/config_dump?namespace=nowhere&serviceAccount=nobody`);
    expect(stranger.status).toBe(200);
    expect(JSON.stringify(await stranger.json())).toContain('ClustersConfigDump');

    const ops = await issue(ca, { trustDomain, namespace: 'ops', serviceAccount: 'admin' });
    const Csds = grpc.makeGenericClientConstructor(CSDS_SERVICE, 'CSDS');
    const csds = new Csds(demo.ads, creds(ops)) as any;
    clients.push(csds);
    const status: any = await new Promise((resolve, reject) => csds.FetchClientStatus({ node_matchers: [] }, (e: Error | null, res: any) => (e ? reject(e) : resolve(res))));
    const secretsShown = status.config.flatMap((c: any) => c.generic_xds_configs).filter((g: any) => g.type_url === SECRET && g.xds_config);
    expect(secretsShown.length).toBeGreaterThan(0);
    for (const g of secretsShown) expect(Buffer.from(g.xds_config.value).toString()).not.toContain(keyBody);
    expect(secretsShown.some((g: any) => Buffer.from(g.xds_config.value).toString().includes('[redacted]'))).toBe(true);

    await eventually(() => lines.some((l) => l.includes('"push"') && l.includes('"SDS"')), 10_000, 'the push logged');
    const metrics = await fetch(`${demo.debug}/metrics`).then((x) => x.text());
    expect(Number(/^mesh_xds_sidecar_certificates (\d+)/m.exec(metrics)?.[1])).toBeGreaterThan(0);
    expect(Number(/^mesh_xds_sidecar_certificates_issued_total (\d+)/m.exec(metrics)?.[1])).toBeGreaterThan(0);
    expect(metrics).not.toContain(keyBody);
    expect(lines.join('')).not.toContain(keyBody);
    expect(lines.join('')).not.toMatch(/BEGIN PRIVATE KEY/);
  });

  it('a sidecar of an identity the mesh does not know yet gets its certificate issued on demand, then its config', async () => {
    const leaf = await issue(ca, { trustDomain, namespace: 'curl', serviceAccount: 'stranger' });
    const client = new RawAdsClient(demo.ads, creds(leaf));
    clients.push(client);
    const s = client.sotw();
    s.send({ node: node({ id: 'stranger-1', namespace: 'curl', serviceAccount: 'stranger' }), type_url: CLUSTER });
    expect((await s.next(5_000)).type_url).toBe(CLUSTER);
    s.send({ type_url: SECRET, resource_names: [IDENTITY_SECRET] });
    const r = await s.next(5_000);
    expect(new X509Certificate(r.resources[0].tls_certificate.certificate_chain.inline_string).subjectAltName).toBe('URI:spiffe://cluster.local/ns/curl/sa/stranger');
  });

  it('a stream without a client certificate is never sent secrets (a plaintext server with mTLS between sidecars)', async () => {
    const cache = new SnapshotCache();
    const registry = new ProxyRegistry();
    const c = await createCa(trustDomain);
    const certs: WorkloadCerts = new WorkloadCerts({ ca: c, trustDomain, log: silent, onChange: (ids) => pipeline.secretsChanged(ids) });
    const pipeline: Pipeline = new Pipeline(cache, silent, {}, certs);
    pipeline.update(loadMesh('guide'));
    await certs.settled();
    const server = new AdsServer({ cache, registry, log: silent });
    const port = await server.listen('127.0.0.1:0');
    try {
      const client = new RawAdsClient(`127.0.0.1:${port}`);
      clients.push(client);
      const s = client.sotw();
      s.send({ node: node({ id: 'plain' }), type_url: SECRET, resource_names: [IDENTITY_SECRET, CA_SECRET] });
      // The same stream is served what is not secret, and that first: no secret came before it, nor after it.
      s.send({ type_url: CLUSTER });
      const clusters = await s.next();
      expect(clusters.type_url).toBe(CLUSTER);
      s.send({ type_url: CLUSTER, version_info: clusters.version_info, response_nonce: clusters.nonce });
      expect(await s.nothingOwed(LISTENER)).toBe(true);
    } finally {
      certs.stop();
      await server.close(0);
    }
  });
});
