/**
 * The guide, step by step, with its own commands and plain manifests, against a real Kubernetes control plane on
 * this machine (etcd, kube-apiserver and kube-controller-manager built from k8s.io/kubernetes v1.34.4) and a
 * sandbox node in place of a kubelet (sandbox/node.ts): `mesh-xds install` with the guide's two --set flags runs
 * the control plane as pods of its own Deployment, the webhook injects the sidecars into the plain samples, and
 * the curl pod's real Envoy retries the 503 five times, and a Gateway API HTTPRoute applied with kubectl reaches it
 * (the Retry, naming the caller, still sets its retries). The guide's commands in pods are `kubectl exec`, served by
 * the sandbox node's kubelet API (scripts/kube/node-agent; port-forward is not served).
 */
import { readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { GUIDE_SETS, HTTPBIN_CLUSTER, HTTPBIN_URL, KubeGuide, type PodRow } from '../sandbox/kube-guide.js';
import { until } from '../sandbox/sandbox.js';
import { ROOT } from './helpers/cli.js';
import { kubeMissing } from './helpers/kube.js';
import { sandboxMissing } from './helpers/sandbox.js';

const missing = [...(await kubeMissing()), ...sandboxMissing];
const RETRY = readFileSync(`${ROOT}/deploy/samples/retry.yaml`, 'utf8');
/** A producer route of httpbin (docs/routes.md): a header on /headers, and everything else with a retry of its own. */
const HTTP_ROUTE = `apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: { name: httpbin, namespace: httpbin }
spec:
  parentRefs: [{ group: "", kind: Service, name: httpbin, port: 14001 }]
  rules:
    - matches: [{ path: { type: PathPrefix, value: /headers } }]
      filters: [{ type: RequestHeaderModifier, requestHeaderModifier: { set: [{ name: X-Route, value: producer }] } }]
      backendRefs: [{ name: httpbin, port: 14001 }]
    - backendRefs: [{ name: httpbin, port: 14001 }]
      retry: { codes: [503], attempts: 2 }
`;
const RETRY_STATS = ['upstream_rq_retry', 'upstream_rq_retry_backoff_exponential', 'upstream_rq_retry_limit_exceeded', 'upstream_rq_retry_overflow', 'upstream_rq_retry_success'];

describe.skipIf(missing.length > 0)('the guide on a real Kubernetes control plane, with its own plain manifests', () => {
  let g: KubeGuide;
  let curl: PodRow;
  let httpbin: PodRow;

  beforeAll(async () => {
    g = await KubeGuide.start();
  }, 120_000);
  afterAll(async () => g?.close(), 60_000);

  const ok = (args: string[], input?: string): Promise<string> => g.kubectlOk(args, input);

  it('mesh-xds install --set=fsm.enablePermissiveTrafficPolicy=true --set=fsm.featureFlags.enableRetryPolicy=true: the control plane runs, a second install changes nothing', async () => {
    const r = await g.cli(['install', ...GUIDE_SETS]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain('deployment mesh-xds/mesh-xds created');
    expect(r.stdout).toContain('enableRetryPolicy=true, enablePermissiveTrafficPolicyMode=true');
    expect(r.stdout).toContain('control plane ready (2/2)');
    expect(r.stdout).toContain('caBundle set by the control plane');
    expect(await ok(['get', 'meshconfig', 'fsm-mesh-config', '-n', 'mesh-xds', '-o', 'jsonpath={.spec.featureFlags.enableRetryPolicy}'])).toBe('true');
    const again = await g.cli(['install', ...GUIDE_SETS]);
    expect(again.code, again.stderr).toBe(0);
    const verdicts = again.stdout.split('\n').filter((l) => / (created|configured|unchanged)$/.test(l));
    expect(verdicts.length).toBeGreaterThan(10);
    expect(verdicts.filter((l) => !l.endsWith(' unchanged'))).toEqual([]);
    expect((await g.cli(['install', '--set', 'fsm.bogus=true'])).stderr).toMatch(/--set fsm\.bogus: unknown key; known: .*featureFlags\.enableRetryPolicy/);
  }, 300_000);

  it('httpbin and curl: kubectl create namespace, mesh-xds namespace add, kubectl apply of the plain sample: 2/2 Running', async () => {
    for (const ns of ['httpbin', 'curl']) {
      await ok(['create', 'namespace', ns]);
      const add = await g.cli(['namespace', 'add', ns]);
      expect(add.code, add.stderr).toBe(0);
      await ok(['apply', '-f', `${ROOT}/deploy/samples/guide/${ns}.yaml`, '-n', ns]);
    }
    [httpbin] = await g.waitRunning('httpbin', 1);
    [curl] = await g.waitRunning('curl', 1);
    for (const p of [httpbin, curl]) {
      expect(p.ready).toBe('2/2');
      expect(p.status).toBe('Running');
      // One sidecar, after the app; the kubectl printout the guide shows.
      expect(p.containers.filter((c) => c === 'envoy')).toEqual(['envoy']);
    }
    expect(await ok(['get', 'pods', '-n', 'curl'])).toMatch(new RegExp(`${curl.name}\\s+2/2\\s+Running`));
    const annotations = JSON.parse(await ok(['get', 'pod', curl.name, '-n', 'curl', '-o', 'jsonpath={.metadata.annotations}']));
    expect(annotations['mesh-xds.flomesh.io/injected']).toMatch(/^envoy \(envoyproxy\/envoy:v1\.40\.0\), mesh-init, mesh-xds-identity; by mesh-xds /);
  }, 300_000);

  it("the guide's Retry: the 503 is retried 5 times with exponential backoff, then the limit; httpbin sees 6 requests; the 404 is not retried", async () => {
    await ok(['apply', '-f', '-'], RETRY);
    // The Retry reaches the curl sidecar's route (kubectl apply returns before the control plane pushes).
    await until(async () => (await g.admin('curl', curl.name, '/config_dump?resource=dynamic_route_configs')).includes('"num_retries": 5'), 30_000, 'the retry policy in the curl sidecar');
    const r = await g.exec('curl', curl.name, ['curl', '-sI', `${HTTPBIN_URL}/status/503`]);
    expect(r.stdout).toMatch(/^HTTP\/1\.1 503 SERVICE UNAVAILABLE/i);
    expect(r.stdout).toMatch(/server: envoy|server: gunicorn/i);
    const stats = await g.stats('curl', curl.name, `${HTTPBIN_CLUSTER}.upstream_rq_retry`);
    const at = (s: string): number | undefined => stats.get(`cluster.${HTTPBIN_CLUSTER}.${s}`);
    expect(Object.fromEntries(RETRY_STATS.map((s) => [s, at(s)]))).toEqual({
      upstream_rq_retry: 5,
      upstream_rq_retry_backoff_exponential: 5,
      upstream_rq_retry_limit_exceeded: 1,
      upstream_rq_retry_overflow: 0,
      upstream_rq_retry_success: 0,
    });
    await until(() => (g.node.logs('httpbin', httpbin.name, 'httpbin').match(/"HEAD \/status\/503 /g) ?? []).length === 6, 10_000, 'httpbin to log 6 requests');
    const notFound = await g.exec('curl', curl.name, ['curl', '-sI', `${HTTPBIN_URL}/status/404`]);
    expect(notFound.stdout).toMatch(/^HTTP\/1\.1 404 NOT FOUND/i);
    const after = await g.stats('curl', curl.name, `${HTTPBIN_CLUSTER}.upstream_rq_retry`);
    expect(after.get(`cluster.${HTTPBIN_CLUSTER}.upstream_rq_retry`)).toBe(5);
    expect((g.node.logs('httpbin', httpbin.name, 'httpbin').match(/"HEAD \/status\/404 /g) ?? []).length).toBe(1);
  }, 120_000);

  it("the control plane summed what the sidecars did: kubectl get retry shows the 5 retries and the 1 request that ran out, and Programmed", async () => {
    const { observed, conditions } = await g.observedStatus(5);
    // Two requests (the 503 and the 404 that is not retried), 5 retries, the 503 out of retries.
    expect(observed).toMatchObject({ window: '5m', requests: 2, retries: 5, retriesSucceeded: 0, retriesExhausted: 1, retriesRefused: 0, predictedAttemptsPerRequest: 6, proxiesReporting: 1 });
    expect(conditions.find((c) => c.type === 'Programmed')).toMatchObject({ status: 'True' });
  }, 120_000);

  it("an HTTPRoute of httpbin (kubectl apply) reaches the curl sidecar: its header on /headers, its status Accepted; the guide's Retry names curl, so its 5 retries win over the route's 2 (Pitfall on the Retry); deleted, the default route is back", async () => {
    await ok(['apply', '-f', '-'], HTTP_ROUTE);
    const headers = async (): Promise<string> => (await g.exec('curl', curl.name, ['curl', '-sS', `${HTTPBIN_URL}/headers`])).stdout;
    await until(async () => (await headers()).includes('"X-Route": "producer"'), 30_000, 'the route\'s X-Route header on /headers from the curl pod');
    const retries = async (): Promise<number | undefined> => (await g.stats('curl', curl.name, `${HTTPBIN_CLUSTER}.upstream_rq_retry`)).get(`cluster.${HTTPBIN_CLUSTER}.upstream_rq_retry`);
    const before = await retries();
    const r = await g.exec('curl', curl.name, ['curl', '-sI', `${HTTPBIN_URL}/status/503`]);
    expect(r.stdout).toMatch(/^HTTP\/1\.1 503 SERVICE UNAVAILABLE/i);
    // The Retry's 5, not the route's 2: 6 more tries reach httpbin.
    expect((await retries())! - before!).toBe(5);
    await until(() => (g.node.logs('httpbin', httpbin.name, 'httpbin').match(/"HEAD \/status\/503 /g) ?? []).length === 12, 10_000, 'httpbin to log 6 more requests');
    const parent = ['get', 'httproute', 'httpbin', '-n', 'httpbin', '-o', 'jsonpath={.status.parents[0].controllerName} {.status.parents[0].conditions[?(@.type=="Accepted")].status}'];
    await until(async () => (await ok(parent)) === 'flomesh.io/mesh-xds True', 30_000, 'the route\'s status.parents[0] Accepted by mesh-xds');
    const pitfalls = async (): Promise<string[]> =>
      (JSON.parse((await ok(['get', 'retry', 'retry', '-n', 'curl', '-o', 'jsonpath={.status.conditions}'])) || '[]') as { type: string; status: string; message?: string }[]).filter((c) => c.type === 'Pitfall' && c.status === 'True').map((c) => c.message ?? '');
    const pitfall = 'HTTPRoute httpbin/httpbin also sets retries for curl/curl -> Service httpbin/httpbin; this Retry is used instead';
    await until(async () => (await pitfalls()).some((m) => m.includes(pitfall)), 30_000, 'the Retry\'s Pitfall condition naming the HTTPRoute');
    await ok(['delete', 'httproute', 'httpbin', '-n', 'httpbin']);
    await until(async () => {
      const h = await headers();
      return h.includes('"Host"') && !h.includes('X-Route');
    }, 30_000, 'the default route (no X-Route) back in the curl sidecar');
    await until(async () => !(await pitfalls()).some((m) => m.includes('HTTPRoute')), 30_000, 'the Pitfall condition to go with the route');
  }, 120_000);

  it('kubectl scale httpbin to 3 replicas reaches the curl sidecar; a deleted pod’s endpoint goes', async () => {
    const endpoints = async (): Promise<string[]> =>
      [...(await g.admin('curl', curl.name, '/clusters')).matchAll(new RegExp(`^${HTTPBIN_CLUSTER.replace(/[|/]/g, '\\$&')}::([\\d.]+):14001::health_flags::healthy$`, 'gm'))].map((m) => m[1]).sort();
    await ok(['scale', 'deployment', 'httpbin', '-n', 'httpbin', '--replicas=3']);
    const three = await g.waitRunning('httpbin', 3);
    await until(async () => JSON.stringify(await endpoints()) === JSON.stringify(three.map((p) => p.ip).sort()), 30_000, 'three httpbin endpoints in the curl sidecar');
    const gone = three[0];
    await ok(['delete', 'pod', gone.name, '-n', 'httpbin', '--wait=false']);
    await until(async () => !(await endpoints()).includes(gone.ip), 30_000, `the deleted pod's endpoint ${gone.ip} to leave the curl sidecar`);
    const replaced = await g.waitRunning('httpbin', 3);
    await until(async () => JSON.stringify(await endpoints()) === JSON.stringify(replaced.map((p) => p.ip).sort()), 30_000, 'the replacement pod in the curl sidecar');
  }, 180_000);

  it("an app's own HTTP readiness probe passes through the sidecar's health port, its port requiring mTLS now", async () => {
    const probed = (name: string, status: number) => `apiVersion: v1
kind: Pod
metadata: { name: ${name}, labels: { probe: "yes" } }
spec:
  serviceAccountName: httpbin
  containers:
    - name: httpbin
      image: kennethreitz/httpbin
      command: [gunicorn, -b, 0.0.0.0:14001, httpbin:app, -k, gevent]
      ports: [{ name: web, containerPort: 14001 }]
      readinessProbe: { httpGet: { path: /status/${status}, port: web }, periodSeconds: 1 }
`;
    await ok(['apply', '-n', 'httpbin', '-f', '-'], probed('probed-ok', 200));
    await ok(['apply', '-n', 'httpbin', '-f', '-'], probed('probed-failing', 503));
    const spec = JSON.parse(await ok(['get', 'pod', 'probed-ok', '-n', 'httpbin', '-o', 'json'])).spec;
    // Rewritten by the injector to the health port, which forwards it to the app on loopback.
    expect(spec.containers[0].readinessProbe.httpGet).toMatchObject({ path: '/app-health/httpbin/readyz', port: 15021 });
    await until(async () => (await g.pods('httpbin', 'probe=yes')).find((p) => p.name === 'probed-ok')?.ready === '2/2', 60_000, 'probed-ok ready (2/2)');
    // The probe is the app's own answer: a 503 keeps the app container not ready.
    await new Promise((r) => setTimeout(r, 3_000));
    expect((await g.pods('httpbin', 'probe=yes')).find((p) => p.name === 'probed-failing')?.ready).toBe('1/2');
    await ok(['delete', 'pod', 'probed-ok', 'probed-failing', '-n', 'httpbin', '--wait=false']);
  }, 120_000);

  it('left alone: a namespace not enrolled, a pod opted out; with the control plane down, a pod outside the mesh is still created', async () => {
    await ok(['create', 'namespace', 'plain']);
    await ok(['apply', '-f', `${ROOT}/deploy/samples/guide/curl.yaml`, '-n', 'plain']);
    const [plain] = await g.waitRunning('plain', 1);
    expect(plain.containers).toEqual(['curl']);
    const optedOut = `apiVersion: v1
kind: Pod
metadata: { name: opted-out, annotations: { flomesh.io/sidecar-injection: disabled } }
spec: { serviceAccountName: curl, containers: [{ name: curl, image: curlimages/curl, command: [/bin/sleep, infinity] }] }
`;
    await ok(['apply', '-n', 'curl', '-f', '-'], optedOut);
    const pods = await g.pods('curl');
    expect(pods.find((p) => p.name === 'opted-out')?.containers).toEqual(['curl']);
    // The control plane down: enrolled namespaces refuse pods (failurePolicy Fail), the others never ask it.
    await ok(['scale', 'deployment', 'mesh-xds', '-n', 'mesh-xds', '--replicas=0']);
    await until(async () => (await g.pods('mesh-xds')).length === 0, 60_000, 'the control plane pods to go');
    await ok(['run', 'outside', '-n', 'plain', '--image=curlimages/curl', '--command', '--', '/bin/sleep', 'infinity']);
    expect((await g.pods('plain')).find((p) => p.name === 'outside')?.containers).toEqual(['outside']);
    const refused = await g.kubectl(['run', 'inside', '-n', 'curl', '--image=curlimages/curl', '--command', '--', '/bin/sleep', 'infinity']);
    expect(refused.code).not.toBe(0);
    expect(refused.stderr).toMatch(/failed calling webhook "sidecar-injector\.mesh-xds\.flomesh\.io"/);
    await ok(['scale', 'deployment', 'mesh-xds', '-n', 'mesh-xds', '--replicas=2']);
    await g.waitRunning('mesh-xds', 2);
    await until(async () => (await g.kubectl(['run', 'inside', '-n', 'curl', '--image=curlimages/curl', '--command', '--', '/bin/sleep', 'infinity'])).code === 0, 30_000, 'pods of the mesh to be admitted again');
    await until(async () => (await g.pods('curl')).find((p) => p.name === 'inside')?.containers.join() === 'inside,envoy', 10_000, 'the new pod to have its sidecar');
  }, 240_000);

  it('mesh-xds uninstall removes what install made and says what it keeps', async () => {
    const r = await g.cli(['uninstall']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain('mutatingwebhookconfiguration mesh-xds-webhook deleted');
    expect(r.stdout).toContain('deployment mesh-xds/mesh-xds deleted');
    expect(r.stdout).toMatch(/kept: the CRDs .*\(every Retry stays\)/);
    expect((await g.kubectl(['get', 'deployment', 'mesh-xds', '-n', 'mesh-xds'])).code).not.toBe(0);
    expect(await ok(['get', 'retry', 'retry', '-n', 'curl', '-o', 'name'])).toContain('retry');
    // Without the webhook, pods of the enrolled namespaces are created again (without a sidecar).
    await ok(['run', 'after', '-n', 'curl', '--image=curlimages/curl', '--command', '--', '/bin/sleep', 'infinity']);
  }, 120_000);
});
