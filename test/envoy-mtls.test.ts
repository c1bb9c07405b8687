/**
 * Sidecar-to-sidecar mTLS with real Envoy sidecars, one on each ADS flavour (curl on SotW, httpbin on delta): a
 * destination whose certificate is of another identity is refused; certificates renewed (15 s lifetime here) and a
 * CA rotation (docs/security.md: "to rotate the CA") reach the sidecars over SDS under steady traffic, with no request failed,
 * no restart, nothing rejected. (The guide suite checks handshakes and the refused caller without a sidecar.)
 */
import { createServer, type Server, type TLSSocket } from 'node:tls';
import { X509Certificate } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { HTTPBIN_APP, Sandbox, sampleWorkload, until, type Workload } from '../sandbox/sandbox.js';
import { createCa, writeCaDir, type KeyPair, type TlsBundle } from '../src/security/ca.js';
import { sandboxMissing } from './helpers/sandbox.js';
import { dataPlaneCerts, tlsGet } from './helpers/guide-suite.js';
import { CA_SECRET } from '../src/envoy/tls.js';
import * as grpc from '@grpc/grpc-js';
import pino from 'pino';
import { serve } from '../src/main.js';
import { startBackend, XdsTestClient } from './helpers/grpc-xds.js';

const HTTPBIN = 'httpbin.httpbin.svc.cluster.local:14001';
const CLUSTER = 'httpbin/httpbin|14001';

describe.skipIf(sandboxMissing.length > 0)('sidecar mTLS with real Envoy (SotW and delta): identities verified, renewal and CA rotation under traffic', () => {
  let sb: Sandbox;
  let curl: Workload;
  let httpbin: Workload;

  beforeAll(async () => {
    sb = await Sandbox.start({
      workloads: [
        // Threads, so that requests overlap and the curl sidecar opens a new connection (a handshake) per burst size.
        sampleWorkload('httpbin.yaml', { flavour: 'DELTA_GRPC', app: { ...HTTPBIN_APP, command: [...HTTPBIN_APP.command, '-k', 'gthread', '--threads', '32'] } }),
        sampleWorkload('curl.yaml', { flavour: 'GRPC' }),
      ],
      controlPlaneArgs: ['--sidecar-cert-ttl', '15s'],
    });
    curl = sb.workload('curl');
    httpbin = sb.workload('httpbin');
  }, 120_000);
  afterAll(async () => sb?.close(), 60_000);

  const code = async (url: string): Promise<string> => (await curl.pod.exec('curl', ['-s', '-o', '/dev/null', '-w', '%{http_code}', '--max-time', '10', url], { timeoutMs: 15_000 })).stdout;

  it("a destination presenting another identity's certificate is refused; its own identity's is accepted", async () => {
    const gateway = sb.controlPlane.adsAddress.replace(/:\d+$/, '');
    let presented: TlsBundle = await sb.identity('httpbin', 'httpbin');
    let client = '';
    const sockets = new Set<TLSSocket>();
    // A TLS server on this host, reached as an endpoint of the Service `impostor` that names httpbin's pod: the curl
    // sidecar expects httpbin's identity there.
    const server: Server = createServer({ cert: presented.cert, key: presented.key, ca: sb.ca.cert, requestCert: true, rejectUnauthorized: true, minVersion: 'TLSv1.3' }, (s) => {
      sockets.add(s);
      s.on('close', () => sockets.delete(s));
      client = s.getPeerX509Certificate()?.subjectAltName ?? '';
      s.on('data', () => s.write('HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok'));
    });
    await new Promise<void>((r) => server.listen(0, gateway, r));
    const port = (server.address() as { port: number }).port;
    try {
      const before = await curl.sidecar.stat('cluster_manager.cds.update_success');
      sb.writeManifest(
        'impostor.yaml',
        `apiVersion: v1
kind: Service
metadata: { name: impostor, namespace: httpbin }
spec: { clusterIP: 10.96.0.200, ports: [{ name: http, port: 18080, targetPort: ${port} }] }
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: { name: impostor-1, namespace: httpbin, labels: { kubernetes.io/service-name: impostor } }
addressType: IPv4
ports: [{ name: http, port: ${port} }]
endpoints: [{ addresses: ["${gateway}"], targetRef: { kind: Pod, namespace: httpbin, name: ${httpbin.podName} } }]
`,
      );
      await until(async () => (await curl.sidecar.stat('cluster_manager.cds.update_success')) > before, 15_000, 'the curl sidecar to get the impostor cluster');
      const cluster = `cluster.httpbin/impostor|${port}`;
      // The certificate of the identity the destination's pods run as: served, and the caller's own presented.
      await until(async () => (await code('http://10.96.0.200:18080/')) === '200', 15_000, 'a request through the impostor service with the right certificate');
      expect(client).toBe('URI:spiffe://cluster.local/ns/curl/sa/curl');
      // Another identity's certificate from the same CA (curl/other): new connections fail verification.
      presented = await sb.identity('curl', 'other');
      server.setSecureContext({ cert: presented.cert, key: presented.key, ca: sb.ca.cert });
      for (const s of sockets) s.destroy();
      const failedBefore = await curl.sidecar.stat(`${cluster}.ssl.fail_verify_san`);
      expect(await code('http://10.96.0.200:18080/')).toBe('503');
      expect(await curl.sidecar.stat(`${cluster}.ssl.fail_verify_san`)).toBeGreaterThan(failedBefore);
    } finally {
      sb.removeManifest('impostor.yaml');
      server.close();
      for (const s of sockets) s.destroy();
    }
  }, 60_000);

  it('proxyless gRPC clients (plaintext ADS, plaintext clusters): a server without a sidecar is reached, a sidecar refuses them', async () => {
    const gateway = sb.controlPlane.adsAddress.replace(/:\d+$/, '');
    const backend = await startBackend(grpc.status.OK, gateway);
    // The pinned proxyless clients cannot reach an mTLS control plane: a plaintext one on loopback serves them the same mesh.
    const plain = await serve(
      { adsAddress: '127.0.0.1:0', debugAddress: '127.0.0.1:0', manifests: sb.dir, kubernetes: false, meshName: 'mesh-xds', overrides: {}, logLevel: 'silent', namespace: 'mesh-xds' },
      pino({ level: 'silent' }),
    );
    const who = { nodeId: 'proxyless-curl', namespace: 'curl', serviceAccount: 'curl' };
    const clients: XdsTestClient[] = [];
    try {
      sb.writeManifest(
        'plain.yaml',
        `apiVersion: v1
kind: Service
metadata: { name: plain, namespace: httpbin }
spec: { clusterIP: 10.96.0.201, ports: [{ name: grpc, port: 50052, targetPort: ${backend.port}, appProtocol: grpc }] }
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: { name: plain-1, namespace: httpbin, labels: { kubernetes.io/service-name: plain } }
addressType: IPv4
ports: [{ name: grpc, port: ${backend.port} }]
endpoints: [{ addresses: ["${gateway}"] }]
`,
      );
      const ads = `127.0.0.1:${plain.adsPort}`;
      // A server that is not a mesh pod (no sidecar): reached in plaintext.
      const toPlain = new XdsTestClient('xds:///plain.httpbin.svc.cluster.local:50052', ads, who);
      clients.push(toPlain);
      await until(async () => (await toPlain.call(2_000)) === grpc.status.OK, 20_000, 'a proxyless call to the server without a sidecar');
      expect(backend.attempts).toBeGreaterThan(0);
      // httpbin's sidecar requires a certificate from the mesh CA: the proxyless client's plaintext connection fails.
      const refusedBefore = await httpbin.sidecar.stat('listener.0.0.0.0_15003.ssl.connection_error');
      const toSidecar = new XdsTestClient(`xds:///${HTTPBIN}`, ads, who);
      clients.push(toSidecar);
      expect(await toSidecar.call(5_000)).toBe(grpc.status.UNAVAILABLE);
      expect(await httpbin.sidecar.stat('listener.0.0.0.0_15003.ssl.connection_error')).toBeGreaterThan(refusedBefore);
    } finally {
      for (const c of clients) c.close();
      sb.removeManifest('plain.yaml');
      await plain.close();
      await backend.close();
    }
  }, 60_000);

  it('certificates renewed and the CA rotated under steady traffic: no request failed, nothing rejected, no restart', async () => {
    const issuer = (w: Workload) => dataPlaneCerts(w).then((c) => c[0]);
    const bundleSize = async (w: Workload): Promise<number> => {
      const dump = await w.sidecar.configDump();
      const section = dump.configs.find((c: any) => c['@type'] === 'type.googleapis.com/envoy.admin.v3.SecretsConfigDump') ?? {};
      const pem: string = section.dynamic_active_secrets?.find((s: any) => s.name === CA_SECRET)?.secret?.validation_context?.trusted_ca?.inline_string ?? '';
      return pem.split('BEGIN CERTIFICATE').length - 1;
    };
    const handshakes = () => curl.sidecar.stat(`cluster.${CLUSTER}.ssl.handshake`);
    // Envoy's uptime only grows: the sidecars are not restarted.
    const uptimes = async () => Promise.all([curl, httpbin].map((w) => w.sidecar.stat('server.uptime')));
    const started = Date.now();
    const up0 = await uptimes();
    // Steady traffic for 60 s: bursts that grow by one request every 1.5 s, so that the curl sidecar keeps opening
    // new connections (new handshakes) to httpbin all along.
    const traffic = curl.pod.exec(
      '/bin/sh',
      ['-c', `i=0; while [ $i -lt 40 ]; do n=$((i/3+1)); j=0; while [ $j -lt $n ]; do curl -s -o /dev/null -w '%{http_code}\\n' --max-time 10 http://${HTTPBIN}/delay/0.3 & j=$((j+1)); done; wait; i=$((i+1)); sleep 1.5; done`],
      { timeoutMs: 120_000 },
    );
    try {
      // A renewal (two thirds of 15 s) reaches both sidecars without a restart.
      const first = await issuer(httpbin);
      await until(async () => (await issuer(httpbin)).serialNumber !== first.serialNumber, 20_000, "httpbin's renewed certificate");
      const hs0 = await handshakes();

      // The rotation, as docs/security.md says: the new CA first in ca.crt, the old one after it, the new key.
      const old: KeyPair = sb.ca;
      const next = await createCa('cluster.local');
      sb.ca = { cert: next.cert + old.cert, key: next.key };
      writeCaDir(sb.caDir, sb.ca);
      // The sidecars' own Secrets (their ADS connection) get the bundle too, as the control plane writes them in Kubernetes.
      await Promise.all([sb.renewIdentity('curl'), sb.renewIdentity('httpbin')]);
      // First the bundle with both CAs, then each sidecar's certificate from the new CA.
      await until(async () => (await bundleSize(curl)) === 2 && (await bundleSize(httpbin)) === 2, 20_000, 'both sidecars to trust old and new CA');
      const nextCa = new X509Certificate(next.cert);
      await until(async () => (await issuer(curl)).verify(nextCa.publicKey) && (await issuer(httpbin)).verify(nextCa.publicKey), 40_000, 'certificates from the new CA');
      // httpbin serves its new certificate to a caller with one from the new CA.
      const fromNext = await sb.identity('curl', 'other');
      const served = await tlsGet(httpbin.pod.ip, 14001, fromNext, next.cert);
      expect(served.status).toMatch(/^HTTP\/1\.1 200/);
      // New connections after the rotation: curl's sidecar has opened at most hs0 connections to httpbin so far, so a
      // burst of more concurrent requests than that needs new ones (the steady traffic alone need not: under load its
      // bursts overlap less, and the pool may already hold enough connections).
      const burst = hs0 + 4;
      const extra = await curl.pod.exec(
        '/bin/sh',
        ['-c', `j=0; while [ $j -lt ${burst} ]; do curl -s -o /dev/null -w '%{http_code}\\n' --max-time 10 http://${HTTPBIN}/delay/0.5 & j=$((j+1)); done; wait`],
        { timeoutMs: 30_000 },
      );
      expect(extra.stdout.trim().split('\n'), extra.stderr).toEqual(Array(burst).fill('200'));
      const hs1 = await handshakes();
      expect(hs1).toBeGreaterThan(hs0);

      // The old CA dropped: a certificate from it no longer gets in.
      const fromOld = await (await import('../src/security/ca.js')).issue(old, { trustDomain: 'cluster.local', namespace: 'curl', serviceAccount: 'other' });
      sb.ca = next;
      writeCaDir(sb.caDir, next);
      await Promise.all([sb.renewIdentity('curl'), sb.renewIdentity('httpbin')]);
      await until(async () => (await bundleSize(curl)) === 1 && (await bundleSize(httpbin)) === 1, 20_000, 'both sidecars to trust the new CA only');
      await expect(tlsGet(httpbin.pod.ip, 14001, fromOld, next.cert)).rejects.toThrow();
    } finally {
      const r = await traffic;
      const codes = r.stdout.trim().split('\n');
      // Every request of the steady traffic succeeded (1 + 2 + ... bursts: over 200 requests).
      expect(codes.length).toBeGreaterThan(200);
      expect(codes.filter((c) => c !== '200'), r.stderr).toEqual([]);
    }
    expect(await handshakes()).toBeGreaterThan(0);
    const elapsed = Math.floor((Date.now() - started) / 1000);
    for (const [i, up] of (await uptimes()).entries()) expect(up).toBeGreaterThanOrEqual(up0[i] + elapsed - 5);
    for (const w of [curl, httpbin]) {
      expect(await w.sidecar.rejected(), w.podName).toEqual({});
      expect(await w.sidecar.stat('control_plane.connected_state')).toBe(1);
    }
  }, 150_000);
});
