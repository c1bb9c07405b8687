/**
 * Kubernetes mode with the mesh CA (`serve --kubernetes --ca-dir`), against a real API server: the Lease holder
 * keeps a kubernetes.io/tls Secret `mesh-xds-identity-<service account>` for every service account of an enrolled
 * namespace, renews it, and deletes it when the account or the enrolment goes, with the RBAC of deploy/ (which
 * cannot read a Secret).
 */
import { X509Certificate } from 'node:crypto';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KubeCluster } from '../sandbox/kube.js';
import { Network } from '../sandbox/netns.js';
import { until } from '../sandbox/sandbox.js';
import { createCa, writeCaDir, type KeyPair } from '../src/security/ca.js';
import { startBackend, type Backend } from './helpers/grpc-xds.js';
import { installGuideMesh, kubeMissing, kubectlOk, serveKubernetes, type Served } from './helpers/kube.js';
import { sandboxMissing } from './helpers/sandbox.js';

const missing = [...(await kubeMissing()), ...sandboxMissing];

describe.skipIf(missing.length > 0)('identity Secrets kept by the control plane, against a real API server', () => {
  let kube: KubeCluster;
  let net: Network;
  let backend: Backend;
  let served: Served | undefined;
  let ca: KeyPair;
  const ok = (args: string[]) => kubectlOk(kube, args);

  beforeAll(async () => {
    kube = await KubeCluster.start();
    net = await Network.create();
    backend = await startBackend(grpc.status.UNAVAILABLE, net.gateway);
    await installGuideMesh(kube, { host: net.gateway, port: backend.port });
    ca = await createCa('cluster.local');
    writeCaDir(path.join(kube.dir, 'ca'), ca);
  }, 180_000);

  afterAll(async () => {
    await served?.stop();
    await backend?.close();
    await net?.destroy();
    await kube?.stop();
  }, 60_000);

  /** The identity Secret of an account, or undefined. */
  const secret = async (ns: string, sa: string): Promise<any | undefined> => {
    const r = await kube.kubectl(['get', 'secret', `mesh-xds-identity-${sa}`, '-n', ns, '-o', 'json']);
    return r.code === 0 ? JSON.parse(r.stdout) : undefined;
  };
  const leafOf = (s: any) => new X509Certificate(Buffer.from(s.data['tls.crt'], 'base64'));

  it('writes one for every service account of the mesh, signed by the CA and owned by its account', async () => {
    const kubeconfig = await kube.serviceAccountKubeconfig('mesh-xds', 'mesh-xds');
    served = await serveKubernetes(kubeconfig, ['--ca-dir', path.join(kube.dir, 'ca'), '--identity-ttl', '6s']);
    for (const ns of ['curl', 'httpbin']) {
      await until(async () => (await secret(ns, ns)) !== undefined, 30_000, `the Secret ${ns}/mesh-xds-identity-${ns}`);
      const s = await secret(ns, ns);
      expect(s.type).toBe('kubernetes.io/tls');
      const leaf = leafOf(s);
      expect(leaf.verify(new X509Certificate(ca.cert).publicKey)).toBe(true);
      expect(leaf.subjectAltName).toBe(`URI:spiffe://cluster.local/ns/${ns}/sa/${ns}`);
      expect(Buffer.from(s.data['ca.crt'], 'base64').toString()).toBe(ca.cert);
      const uid = await ok(['get', 'serviceaccount', ns, '-n', ns, '-o', 'jsonpath={.metadata.uid}']);
      expect(s.metadata.ownerReferences).toEqual([expect.objectContaining({ kind: 'ServiceAccount', name: ns, uid })]);
    }
    // Not the control plane's own namespace (not in the mesh).
    expect(await secret('mesh-xds', 'mesh-xds')).toBeUndefined();
  }, 120_000);

  it('renews each before it expires', async () => {
    const serial = async () => leafOf(await secret('curl', 'curl')).serialNumber;
    const first = await serial();
    await until(async () => (await serial()) !== first, 20_000, 'the renewed certificate (6 s lifetime, renewed after 4 s)');
    expect((await served!.get('/debug/mesh')).identitySecrets.writes).toBeGreaterThanOrEqual(3);
  }, 60_000);

  it('follows service accounts and enrolment: a new account gets one, a deleted one and an unenrolled namespace lose theirs', async () => {
    await ok(['create', 'serviceaccount', 'extra', '-n', 'curl']);
    await until(async () => (await secret('curl', 'extra')) !== undefined, 20_000, 'the new account\'s Secret');
    await ok(['delete', 'serviceaccount', 'extra', '-n', 'curl']);
    await until(async () => (await secret('curl', 'extra')) === undefined, 20_000, 'the deleted account\'s Secret to go');
    await ok(['label', 'namespace', 'httpbin', 'flomesh.io/monitored-by-']);
    await until(async () => (await secret('httpbin', 'httpbin')) === undefined, 20_000, 'the unenrolled namespace\'s Secret to go');
    expect(await secret('curl', 'curl')).toBeDefined();
    const log = served!.proc.tail(400);
    expect(log).toMatch(/identity Secret deleted/);
    expect(log).not.toMatch(/cannot (write|delete) the identity Secret/);
  }, 60_000);
});
