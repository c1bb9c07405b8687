/** CLI commands that talk to the Kubernetes API, run as subprocesses against the local list/watch server. */
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { cli } from './helpers/cli.js';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { FakeKube, PATHS } from './helpers/fake-kube.js';
import { tempDir } from './helpers/tmp.js';

let kube: FakeKube;
let kubeconfig: string;

beforeAll(async () => {
  kube = new FakeKube();
  await kube.start();
  kube.apply(PATHS.namespaces, { metadata: { name: 'httpbin', labels: { team: 'web' } } });
  kubeconfig = path.join(tempDir('mesh-xds-kube-'), 'config');
  writeFileSync(kubeconfig, kube.kubeConfig().exportConfig());
});

afterAll(() => kube?.close());

const kubeCli = (args: string[]) => cli(args, { KUBECONFIG: kubeconfig });

it('namespace add labels the namespace into the mesh, and remove takes the label off', async () => {
  const add = await kubeCli(['namespace', 'add', 'httpbin']);
  expect(add).toMatchObject({ code: 0, stdout: 'namespace httpbin is in mesh mesh-xds\n' });
  expect(kube.get(PATHS.namespaces, undefined, 'httpbin').metadata.labels).toEqual({ team: 'web', 'flomesh.io/monitored-by': 'mesh-xds' });
  const remove = await kubeCli(['namespace', 'remove', 'httpbin']);
  expect(remove.code).toBe(0);
  expect(kube.get(PATHS.namespaces, undefined, 'httpbin').metadata.labels).toEqual({ team: 'web' });
});

it('namespace add of a namespace that does not exist fails with exit code 3 and says why', async () => {
  const r = await kubeCli(['namespace', 'add', 'nope']);
  expect(r.code).toBe(3);
  expect(r.stderr).toMatch(/cannot update namespace nope/);
});

it("proxy get stats reaches the pod's Envoy admin through a Kubernetes port-forward", async () => {
  const http = await import('node:http');
  const admin = http.createServer((req, res) => {
    res.end(req.url === '/stats' ? 'cluster.httpbin/httpbin|14001.upstream_rq_retry: 5\nserver.live: 1\n' : 'not found\n');
  });
  await new Promise<void>((r) => admin.listen(0, '127.0.0.1', r));
  kube.podPorts.set('curl/curl-54ccc6954c-9rlvp', (admin.address() as import('node:net').AddressInfo).port);
  const get = () => kubeCli(['proxy', 'get', 'stats', 'curl-54ccc6954c-9rlvp', '-n', 'curl', '--filter', 'upstream_rq_retry']);
  const r = await get();
  expect(r.stderr).toBe('');
  expect(r).toMatchObject({ code: 0, stdout: 'cluster.httpbin/httpbin|14001.upstream_rq_retry: 5\n' });
  // An API server that never answers the port-forward request: the attempt is abandoned and made again.
  kube.stallPortForwards = 1;
  const again = await get();
  expect(kube.stallPortForwards).toBe(0);
  expect(again.stderr).toBe('');
  expect(again).toMatchObject({ code: 0, stdout: 'cluster.httpbin/httpbin|14001.upstream_rq_retry: 5\n' });
  admin.close();
  const missing = await kubeCli(['proxy', 'get', 'stats', 'no-such-pod', '-n', 'curl']);
  expect(missing.code).toBe(3);
  expect(missing.stderr).toMatch(/cannot reach pod curl\/no-such-pod's Envoy admin \(15000\) through the Kubernetes API: .*404/);
  // Two CLI processes: on a machine busy building Kubernetes beside the tests, each start can take seconds.
}, 90_000);
