/**
 * The Kubernetes steps of docs/deploy.md, one by one, against a real API server (kube-apiserver and etcd built from
 * the Go module proxy; no kubelet, so the test stands in for it where pods would run): the CRDs and `apply -k
 * deploy/` as the API server judges them, Retry validation by the API server itself, `mesh-xds serve
 * --kubernetes` with the control plane's own service account and exactly the RBAC of deploy/, status written
 * back and printed by `kubectl get retry`, and a real gRPC xDS client following kubectl edits.
 */
import { X509Certificate } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KubeCluster } from '../sandbox/kube.js';
import { Network } from '../sandbox/netns.js';
import { until } from '../sandbox/sandbox.js';
import { ROOT, cli } from './helpers/cli.js';
import { XdsTestClient, startBackend, type Backend } from './helpers/grpc-xds.js';
import { GUIDE_RETRY as RETRY, grpcRetry, httpbinEndpoints, kubeMissing, serveKubernetes, type Served, waitEstablished } from './helpers/kube.js';
import { sandboxMissing } from './helpers/sandbox.js';
import { tempDir } from './helpers/tmp.js';

const missing = [...(await kubeMissing()), ...sandboxMissing];
const deploy = (p: string): string => path.join(ROOT, 'deploy', p);

describe.skipIf(missing.length > 0)("the Kubernetes steps of docs/deploy.md against a real API server", () => {
  let kube: KubeCluster;
  let served: Served | undefined;
  let backend: Backend;
  let net: Network;
  const clients: XdsTestClient[] = [];

  beforeAll(async () => {
    kube = await KubeCluster.start();
    // The API server refuses loopback addresses in EndpointSlices: the backend listens on a bridge of our own.
    net = await Network.create();
    backend = await startBackend(grpc.status.UNAVAILABLE, net.gateway);
  }, 120_000);

  afterAll(async () => {
    for (const c of clients) c.close();
    await served?.stop();
    await backend?.close();
    await net?.destroy();
    await kube?.stop();
  }, 60_000);

  const ok = async (args: string[], opts: { kubeconfig?: string; input?: string } = {}): Promise<string> => {
    const r = await kube.kubectl(args, opts);
    expect(r.code, `kubectl ${args.join(' ')}\n${r.stderr}`).toBe(0);
    return r.stdout;
  };

  it('the CRDs are Established; `kubectl apply -k deploy/` passes a server-side dry run and then applies', async () => {
    await ok(['apply', '-f', deploy('crds/')]);
    await waitEstablished(kube, ['crd/retries.policy.flomesh.io', 'crd/meshconfigs.config.flomesh.io']);
    // The namespace first: a dry run does not create it for the objects that live in it.
    await ok(['apply', '-f', deploy('control-plane/namespace.yaml')]);
    const dry = await ok(['apply', '-k', deploy(''), '--dry-run=server']);
    expect(dry).toMatch(/deployment.apps\/mesh-xds created \(server dry run\)/);
    expect(dry).toMatch(/clusterrole.rbac.authorization.k8s.io\/mesh-xds created \(server dry run\)/);
    await ok(['apply', '-k', deploy('')]);
    expect(await ok(['get', 'meshconfig', 'fsm-mesh-config', '-n', 'mesh-xds', '-o', 'jsonpath={.spec.featureFlags.enableRetryPolicy}'])).toBe('false');
    // The mesh CA, which the Deployment mounts (--ca-dir).
    const r = await cli(['ca', 'init', '--kubernetes'], { KUBECONFIG: kube.adminKubeconfig });
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain('stored in Secret mesh-xds/mesh-xds-ca');
    expect((await cli(['ca', 'init', '--kubernetes'], { KUBECONFIG: kube.adminKubeconfig })).stdout).toContain('exists; kept');
  });

  it('retries on, the namespaces enrolled with `mesh-xds namespace add`, the samples and the guide Retry applied', async () => {
    await ok(['patch', 'meshconfig', 'fsm-mesh-config', '-n', 'mesh-xds', '--type', 'merge', '-p', '{"spec":{"featureFlags":{"enableRetryPolicy":true}}}']);
    for (const ns of ['httpbin', 'curl']) {
      await ok(['create', 'namespace', ns]);
      const r = await cli(['namespace', 'add', ns], { KUBECONFIG: kube.adminKubeconfig });
      expect(r.code, r.stderr).toBe(0);
      expect(await ok(['get', 'namespace', ns, '-o', 'jsonpath={.metadata.labels.flomesh\\.io/monitored-by}'])).toBe('mesh-xds');
      expect(await ok(['get', 'namespace', ns, '-o', 'jsonpath={.metadata.annotations.flomesh\\.io/sidecar-injection}'])).toBe('enabled');
    }
    for (const ns of ['httpbin', 'curl']) await ok(['apply', '-f', deploy(`samples/guide/${ns}.yaml`), '-n', ns]);
    // Each sidecar's identity Secret, signed by the CA in mesh-xds-ca.
    const caCert = new X509Certificate(Buffer.from(await ok(['get', 'secret', 'mesh-xds-ca', '-n', 'mesh-xds', '-o', 'jsonpath={.data.ca\\.crt}']), 'base64'));
    for (const ns of ['httpbin', 'curl']) {
      const r = await cli(['ca', 'issue', '--kubernetes', '--namespace', ns, '--service-account', ns], { KUBECONFIG: kube.adminKubeconfig });
      expect(r.code, r.stderr).toBe(0);
      const secret = JSON.parse(await ok(['get', 'secret', `mesh-xds-identity-${ns}`, '-n', ns, '-o', 'json']));
      expect(secret.type).toBe('kubernetes.io/tls');
      const leaf = new X509Certificate(Buffer.from(secret.data['tls.crt'], 'base64'));
      expect(leaf.verify(caCert.publicKey)).toBe(true);
      expect(leaf.subjectAltName).toBe(`URI:spiffe://cluster.local/ns/${ns}/sa/${ns}`);
    }
    await ok(['apply', '-f', deploy('samples/retry.yaml')]);
    const created = JSON.parse(await ok(['get', 'retry', 'retry', '-n', 'curl', '-o', 'json']));
    expect(created.spec.retryPolicy).toEqual({ retryOn: '5xx', perTryTimeout: '1s', numRetries: 5, retryBackoffBaseInterval: '1s' });
  });

  it('the API server refuses bad Retry objects itself, naming each field; `mesh-xds validate` names the condition too', async () => {
    const cases: [string, (t: string) => string, RegExp[]][] = [
      ['an unknown retryOn condition', (t) => t.replace('retryOn: "5xx"', 'retryOn: "5xx,bogus"'), [/spec\.retryPolicy\.retryOn/, /unknown retryOn condition "bogus"/]],
      ['a bad duration', (t) => t.replace('perTryTimeout: 1s', 'perTryTimeout: 1 sec'), [/spec\.retryPolicy\.perTryTimeout/, /must be a Go duration greater than 0/]],
      ['a zero backoff', (t) => t.replace('retryBackoffBaseInterval: 1s', 'retryBackoffBaseInterval: 0s'), [/spec\.retryPolicy\.retryBackoffBaseInterval/, /greater than 0/]],
      ['a negative numRetries', (t) => t.replace('numRetries: 5', 'numRetries: -1'), [/spec\.retryPolicy\.numRetries/, /greater than or equal to 0/]],
      ['a numRetries over 2^32-1', (t) => t.replace('numRetries: 5', 'numRetries: 4294967296'), [/spec\.retryPolicy\.numRetries/, /less than or equal to 4294967295/]],
      ['a wrong source kind', (t) => t.replace('kind: ServiceAccount', 'kind: Pod'), [/spec\.source\.kind/, /Unsupported value: "Pod"/]],
      ['a missing field', (t) => t.replace(/ {2}source:\n(?: {4}.*\n){3}/, ''), [/spec\.source/, /Required value/]],
    ];
    for (const [what, edit, expected] of cases) {
      const text = edit(RETRY).replace('name: retry\n', 'name: bad\n');
      expect(text, what).not.toBe(RETRY.replace('name: retry\n', 'name: bad\n'));
      const r = await kube.kubectl(['apply', '-f', '-'], { input: text });
      expect(r.code, what).not.toBe(0);
      for (const e of expected) expect(r.stderr, what).toMatch(e);
    }
    const dir = tempDir('mesh-xds-kube-');
    writeFileSync(path.join(dir, 'bad.yaml'), cases[0][1](RETRY));
    expect((await cli(['validate', '-f', path.join(dir, 'bad.yaml')])).stdout).toContain('unknown retryOn condition "bogus"');
  });

  it('`mesh-xds serve --kubernetes` with the control plane service account and the RBAC of deploy/ lists, watches and writes Retry status; `kubectl get retry` prints it', async () => {
    const kubeconfig = await kube.serviceAccountKubeconfig('mesh-xds', 'mesh-xds');
    served = await serveKubernetes(kubeconfig);
    // The source listed everything as the service account (or it would not be ready), and the Lease holder writes.
    await until(async () => (await ok(['get', 'retry', 'retry', '-n', 'curl', '-o', 'jsonpath={.status.conditions[0].status}'])) === 'True', 30_000, 'the status True');
    const table = await ok(['get', 'retry', '-n', 'curl']);
    expect(table.split('\n')[0]).toMatch(/^NAME\s+SOURCE\s+RETRY-ON\s+RETRIES\s+ACCEPTED\s+AGE$/);
    expect(table.split('\n')[1]).toMatch(/^retry\s+curl\s+5xx\s+5\s+True\s+/);
    expect(await ok(['get', 'lease', 'mesh-xds-status-writer', '-n', 'mesh-xds', '-o', 'jsonpath={.spec.holderIdentity}'])).toMatch(/_\d+$/);
    // A Retry the API server admits but mesh-xds refuses: the wide table says why.
    await ok(['apply', '-f', '-'], { input: RETRY.replace('name: retry\n', 'name: fine\n').replace('perTryTimeout: 1s', 'perTryTimeout: 1500us') });
    await until(async () => (await ok(['get', 'retry', 'fine', '-n', 'curl', '-o', 'jsonpath={.status.conditions[0].reason}'])) === 'Invalid', 30_000, 'the status Invalid');
    const wide = (await ok(['get', 'retry', 'fine', '-n', 'curl', '-o', 'wide'])).split('\n')[1];
    expect(wide).toMatch(/^fine\s+curl\s+5xx\s+5\s+False\s+Invalid\s+spec\.retryPolicy\.perTryTimeout: "1500us" is finer than Envoy's millisecond resolution/);
    await ok(['delete', 'retry', 'fine', '-n', 'curl']);
  });

  it('the RBAC is least privilege, as the API server enforces it: nothing beyond reading the mesh, Retry status, identity Secrets written unread, and its Lease', async () => {
    const kubeconfig = await kube.serviceAccountKubeconfig('mesh-xds', 'mesh-xds');
    const can = async (...args: string[]) => (await kube.kubectl(['auth', 'can-i', ...args], { kubeconfig })).stdout.trim();
    expect(await can('list', 'pods', '-A')).toBe('yes');
    expect(await can('watch', 'retries.policy.flomesh.io', '-A')).toBe('yes');
    expect(await can('patch', 'retries.policy.flomesh.io', '--subresource=status', '-n', 'curl')).toBe('yes');
    expect(await can('update', 'leases.coordination.k8s.io/mesh-xds-status-writer', '-n', 'mesh-xds')).toBe('yes');
    expect(await can('patch', 'retries.policy.flomesh.io', '-n', 'curl')).toBe('no');
    expect(await can('get', 'secrets', '-A')).toBe('no');
    expect(await can('list', 'secrets', '-n', 'curl')).toBe('no');
    expect(await can('watch', 'secrets', '-A')).toBe('no');
    // It writes identity Secrets, without reading them.
    expect(await can('patch', 'secrets', '-n', 'curl')).toBe('yes');
    expect(await can('update', 'leases.coordination.k8s.io/other', '-n', 'mesh-xds')).toBe('no');
    expect(await can('patch', 'meshconfigs.config.flomesh.io', '-n', 'mesh-xds')).toBe('no');
    // And tried for real: writing a Retry's spec is refused.
    const r = await kube.kubectl(['patch', 'retry', 'retry', '-n', 'curl', '--type', 'merge', '-p', '{"spec":{"retryPolicy":{"numRetries":1}}}'], { kubeconfig });
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/forbidden/i);
  });

  it('a real gRPC xDS client follows kubectl apply, patch and delete of its Retry, and `namespace remove`', async () => {
    // No kubelet: the test stands for the endpoints controller, pointing httpbin at its backend.
    await ok(['apply', '-f', '-'], { input: httpbinEndpoints(net.gateway, backend.port) });
    await ok(['apply', '-f', '-'], { input: grpcRetry(3) });
    const client = new XdsTestClient('xds:///httpbin.httpbin.svc.cluster.local:14001', served!.ads, { nodeId: 'curl-xds', namespace: 'curl', serviceAccount: 'curl' });
    clients.push(client);
    const attempts = async (): Promise<number> => {
      const before = backend.attempts;
      expect(await client.call()).toBe(grpc.status.UNAVAILABLE);
      return backend.attempts - before;
    };
    const settles = (n: number, what: string) => until(async () => (await attempts()) === n, 20_000, what);
    await settles(4, '1 + 3 attempts');
    await ok(['patch', 'retry', 'retry', '-n', 'curl', '--type', 'merge', '-p', '{"spec":{"retryPolicy":{"numRetries":1}}}']);
    await settles(2, '1 + 1 attempts after the patch');
    await ok(['delete', 'retry', 'retry', '-n', 'curl']);
    await settles(1, 'one attempt after the delete');
    await ok(['apply', '-f', '-'], { input: grpcRetry(2) });
    await settles(3, '1 + 2 attempts again');
    const r = await cli(['namespace', 'remove', 'curl'], { KUBECONFIG: kube.adminKubeconfig });
    expect(r.code, r.stderr).toBe(0);
    expect(await ok(['get', 'namespace', 'curl', '-o', 'jsonpath={.metadata.labels}'])).not.toContain('monitored-by');
    // The Retry's namespace left the mesh: ignored, and its status says why.
    await settles(1, 'one attempt once curl left the mesh');
    await until(async () => (await ok(['get', 'retry', 'retry', '-n', 'curl', '-o', 'jsonpath={.status.conditions[0].reason}'])) === 'Ignored', 30_000, 'the status Ignored');
  });
});
