/**
 * Retry safety with real Envoy sidecars on the local Kubernetes control plane (sandbox/kube-guide.ts): the retry
 * budget stops a retry storm (50 concurrent requests to an always-503 httpbin, numRetries 5), and a retry goes to
 * another host (three httpbin endpoints, one a replica failing everything, numRetries 2: every request succeeds).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { GUIDE_SETS, HTTPBIN_CLUSTER, HTTPBIN_URL, KubeGuide, type PodRow } from '../sandbox/kube-guide.js';
import { until } from '../sandbox/sandbox.js';
import { ROOT } from './helpers/cli.js';
import { kubeMissing } from './helpers/kube.js';
import { sandboxMissing } from './helpers/sandbox.js';

const missing = [...(await kubeMissing()), ...sandboxMissing];

const retry = (numRetries: number): string => `apiVersion: policy.flomesh.io/v1alpha1
kind: Retry
metadata: { name: retry, namespace: curl }
spec:
  source: { kind: ServiceAccount, name: curl, namespace: curl }
  destinations: [{ kind: Service, name: httpbin, namespace: httpbin }]
  retryPolicy: { retryOn: 5xx, perTryTimeout: 2s, numRetries: ${numRetries}, retryBackoffBaseInterval: 50ms }
`;

describe.skipIf(missing.length > 0)('retry safety with real Envoy sidecars on a real Kubernetes control plane', () => {
  let g: KubeGuide;
  let curl: PodRow;
  let httpbin: PodRow;

  beforeAll(async () => {
    g = await KubeGuide.start();
    const install = await g.cli(['install', ...GUIDE_SETS, '--replicas', '1']);
    if (install.code !== 0) throw new Error(install.stderr);
    for (const ns of ['httpbin', 'curl']) {
      await g.kubectlOk(['create', 'namespace', ns]);
      const add = await g.cli(['namespace', 'add', ns]);
      if (add.code !== 0) throw new Error(add.stderr);
      await g.kubectlOk(['apply', '-f', `${ROOT}/deploy/samples/guide/${ns}.yaml`, '-n', ns]);
    }
    [httpbin] = await g.waitRunning('httpbin', 1);
    [curl] = await g.waitRunning('curl', 1);
    await g.kubectlOk(['apply', '-f', '-'], retry(5));
    await until(async () => (await g.admin('curl', curl.name, '/config_dump?resource=dynamic_route_configs')).includes('"num_retries": 5'), 30_000, 'the Retry in the curl sidecar');
  }, 240_000);
  afterAll(async () => g?.close(), 60_000);

  const stat = async (name: string): Promise<number> => (await g.stats('curl', curl.name, `${HTTPBIN_CLUSTER}.${name}`)).get(`cluster.${HTTPBIN_CLUSTER}.${name}`) ?? NaN;
  const served = (pod: string, container: string, line: RegExp): number => (g.node.logs('httpbin', pod, container).match(line) ?? []).length;
  const budgetInSidecar = async (): Promise<boolean> => (await g.admin('curl', curl.name, '/config_dump?resource=dynamic_active_clusters')).includes('"retry_budget"');

  /** 50 requests at once from the curl pod; their status codes. */
  async function burst(path: string): Promise<string[]> {
    const urls = Array.from({ length: 50 }, () => `${HTTPBIN_URL}${path}`);
    // Status codes only: a body (the app's, or a sidecar's own reply) would run into the next code on the line.
    const r = await g.exec('curl', curl.name, ['curl', '-s', '--parallel', '--parallel-immediate', '--parallel-max', '50', '-o', '/dev/null', '-w', '%{http_code}\\n', ...urls]);
    return r.stdout.trim().split('\n');
  }

  it('the retry budget: 50 concurrent requests to an always-503 service make 300 attempts without it, far fewer with 20%, the refused retries counted as overflow', async () => {
    // Without a budget (as every mesh does today): 50 x (1 + 5) attempts.
    await g.kubectlOk(['patch', 'meshconfig', 'fsm-mesh-config', '-n', 'mesh-xds', '--type', 'merge', '-p', '{"spec":{"traffic":{"retryBudget":{"enabled":false}}}}']);
    await until(async () => !(await budgetInSidecar()), 30_000, 'the budget to leave the curl sidecar');
    const overflowBefore = await stat('upstream_rq_retry_overflow');
    let before = served(httpbin.name, 'httpbin', /"GET \/status\/503 /g);
    expect(await burst('/status/503')).toEqual(Array(50).fill('503'));
    await until(() => served(httpbin.name, 'httpbin', /"GET \/status\/503 /g) - before === 300, 10_000, 'httpbin to log 300 attempts');
    expect((await stat('upstream_rq_retry_overflow')) - overflowBefore).toBe(0);

    // With the default budget (20% of active requests, at least 3 retries at once).
    await g.kubectlOk(['patch', 'meshconfig', 'fsm-mesh-config', '-n', 'mesh-xds', '--type', 'merge', '-p', '{"spec":{"traffic":{"retryBudget":null}}}']);
    await until(budgetInSidecar, 30_000, 'the budget to reach the curl sidecar');
    before = served(httpbin.name, 'httpbin', /"GET \/status\/503 /g);
    const [overflowWith, limitWith] = [await stat('upstream_rq_retry_overflow'), await stat('upstream_rq_retry_limit_exceeded')];
    expect(await burst('/status/503')).toEqual(Array(50).fill('503'));
    await new Promise((r) => setTimeout(r, 500));
    const attempts = served(httpbin.name, 'httpbin', /"GET \/status\/503 /g) - before;
    const overflow = (await stat('upstream_rq_retry_overflow')) - overflowWith;
    const exhausted = (await stat('upstream_rq_retry_limit_exceeded')) - limitWith;
    console.log(`retry budget 20%/3: 50 requests made ${attempts} attempts (300 without); ${overflow} ended on a refused retry (upstream_rq_retry_overflow), ${exhausted} used all 5 retries`);
    expect(attempts).toBeGreaterThanOrEqual(50);
    expect(attempts).toBeLessThan(150);
    expect(overflow).toBeGreaterThan(0);
    // Each request ends either with its retries used up or on a retry the budget refused.
    expect(overflow + exhausted).toBe(50);
  }, 180_000);

  it("the guide's single request still gives 5/5/1/0/0 with the budget on", async () => {
    const before = Object.fromEntries(await Promise.all(['upstream_rq_retry', 'upstream_rq_retry_backoff_exponential', 'upstream_rq_retry_limit_exceeded', 'upstream_rq_retry_overflow', 'upstream_rq_retry_success'].map(async (s) => [s, await stat(s)] as const)));
    const r = await g.exec('curl', curl.name, ['curl', '-sI', `${HTTPBIN_URL}/status/503`]);
    expect(r.stdout).toMatch(/^HTTP\/1\.1 503/);
    const delta = Object.fromEntries(await Promise.all(Object.entries(before).map(async ([s, v]) => [s, (await stat(s)) - v] as const)));
    expect(delta).toEqual({ upstream_rq_retry: 5, upstream_rq_retry_backoff_exponential: 5, upstream_rq_retry_limit_exceeded: 1, upstream_rq_retry_overflow: 0, upstream_rq_retry_success: 0 });
  }, 60_000);

  it('a retry goes to another host: with a replica failing everything among three, numRetries 2, every request succeeds', async () => {
    await g.kubectlOk(['apply', '-f', '-'], retry(2));
    await g.kubectlOk(['scale', 'deployment', 'httpbin', '-n', 'httpbin', '--replicas=2']);
    const broken = `apiVersion: apps/v1
kind: Deployment
metadata: { name: httpbin-broken, namespace: httpbin }
spec:
  replicas: 1
  selector: { matchLabels: { app: httpbin, replica: broken } }
  template:
    metadata: { labels: { app: httpbin, replica: broken } }
    spec:
      serviceAccountName: httpbin
      containers: [{ name: broken, image: mesh-xds-sandbox/always-503, ports: [{ containerPort: 14001 }] }]
`;
    await g.kubectlOk(['apply', '-f', '-'], broken);
    const pods = await g.waitRunning('httpbin', 3);
    const brokenPod = pods.find((p) => p.containers.includes('broken'))!;
    await until(async () => (await g.admin('curl', curl.name, '/clusters')).split('\n').filter((l) => l.startsWith(`${HTTPBIN_CLUSTER}::`) && l.endsWith('::health_flags::healthy')).length === 3, 30_000, 'three httpbin endpoints in the curl sidecar');
    await until(async () => (await g.admin('curl', curl.name, '/config_dump?resource=dynamic_route_configs')).includes('"num_retries": 2'), 30_000, 'numRetries 2 in the curl sidecar');
    const [retries, successes] = [await stat('upstream_rq_retry'), await stat('upstream_rq_retry_success')];
    const codes: string[] = [];
    for (let i = 0; i < 30; i++) codes.push((await g.exec('curl', curl.name, ['curl', '-s', '-o', '/dev/null', '-w', '%{http_code}', `${HTTPBIN_URL}/status/200`])).stdout);
    expect(codes).toEqual(Array(30).fill('200'));
    const failed = served(brokenPod.name, 'broken', /GET \/status\/200 503/g);
    const [retried, succeeded] = [(await stat('upstream_rq_retry')) - retries, (await stat('upstream_rq_retry_success')) - successes];
    console.log(`another host: 30 requests, the failing replica answered ${failed}, ${retried} retries, ${succeeded} succeeded`);
    // The failing replica was tried (round robin over three), each of its failures was retried once, on a good host.
    expect(failed).toBeGreaterThan(0);
    expect(retried).toBe(failed);
    expect(succeeded).toBe(retried);
    // 50 at once, where round robin alone would hand some retries back to the failing replica: still never. Some
    // retries now exceed the budget (20% of 50 in flight): those requests keep their 503, counted as overflow.
    const [failedBefore, retriesBefore, overflowBefore] = [served(brokenPod.name, 'broken', /GET \/status\/200 503/g), await stat('upstream_rq_retry'), await stat('upstream_rq_retry_overflow')];
    const burstCodes = await burst('/status/200');
    const [burstFailed, burstRetried, burstOverflow] = [served(brokenPod.name, 'broken', /GET \/status\/200 503/g) - failedBefore, (await stat('upstream_rq_retry')) - retriesBefore, (await stat('upstream_rq_retry_overflow')) - overflowBefore];
    const burst503 = burstCodes.filter((c) => c === '503').length;
    console.log(`another host, 50 at once: the failing replica answered ${burstFailed}; ${burstRetried} retries, all to a good host; ${burstOverflow} refused by the budget`);
    expect(burstCodes.filter((c) => c !== '200' && c !== '503')).toEqual([]);
    expect(burstFailed).toBeGreaterThan(0);
    expect(burst503).toBe(burstOverflow);
    expect(burstRetried + burstOverflow).toBe(burstFailed);
  }, 180_000);
});
