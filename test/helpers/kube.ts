/**
 * The real API server for the Kubernetes tests (src/sandbox/kube.ts): what is missing fails the run under
 * CI=true and elsewhere skips, saying so; and `mesh-xds serve --kubernetes` as a process.
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { kubeProblems, type KubeCluster } from '../../sandbox/kube.js';
import { Proc } from '../../sandbox/netns.js';
import { until } from '../../sandbox/sandbox.js';
import { ROOT } from './cli.js';

/** Problems that keep the real API server from running here (waits for a build in progress). */
export async function kubeMissing(): Promise<string[]> {
  const problems = await kubeProblems();
  if (problems.length) {
    const text = `real API server tests cannot run here:\n- ${problems.join('\n- ')}`;
    if (process.env.CI) throw new Error(`${text}\n(CI=true: .ci/run must install them)`);
    console.warn(`${text}\nThey are skipped.`);
  }
  return problems;
}

export interface Served {
  proc: Proc;
  debug: string;
  ads: string;
  get(pathAndQuery: string): Promise<any>;
  stop(): Promise<void>;
}

/** `mesh-xds serve --kubernetes --kubeconfig FILE` as a process, ready (listed everything, ADS serving). */
export async function serveKubernetes(kubeconfig: string, extra: string[] = [], env: NodeJS.ProcessEnv = {}): Promise<Served> {
  const proc = Proc.spawn(
    'mesh-xds serve --kubernetes',
    process.execPath,
    [path.join(ROOT, 'bin/mesh-xds.js'), 'serve', '--kubernetes', '--kubeconfig', kubeconfig, '--namespace', 'mesh-xds', '--ads-address', '127.0.0.1:0', '--debug-address', '127.0.0.1:0', '--webhook-address', '127.0.0.1:0', ...extra],
    { env: { LOG_LEVEL: 'info', ...env } },
  );
  const line = JSON.parse(await proc.waitFor(/"msg":"listening"/, 20_000));
  const debug = `http://${line.debug}`;
  await until(async () => (await fetch(`${debug}/readyz`)).status === 200, 30_000, 'mesh-xds serve --kubernetes to be ready').catch((e) => {
    throw new Error(`${(e as Error).message}\n${proc.tail()}`);
  });
  return {
    proc,
    debug,
    ads: line.ads,
    get: async (p) => (await fetch(`${debug}${p}`)).json(),
    stop: () => proc.stop(10_000),
  };
}

const deployPath = (p: string): string => path.join(ROOT, 'deploy', p);
/** deploy/samples/retry.yaml, the guide's Retry. */
export const GUIDE_RETRY = readFileSync(deployPath('samples/retry.yaml'), 'utf8');

/** The guide's Retry for gRPC: `unavailable`, `numRetries` retries, a 10 ms backoff. */
export const grpcRetry = (numRetries: number): string =>
  GUIDE_RETRY.replace('retryOn: "5xx"', 'retryOn: unavailable').replace('numRetries: 5', `numRetries: ${numRetries}`).replace('retryBackoffBaseInterval: 1s', 'retryBackoffBaseInterval: 10ms');

/** An EndpointSlice for httpbin (no kubelet: the test stands for the endpoints controller). */
export const httpbinEndpoints = (host: string, port: number): string => `apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: { name: httpbin-local, namespace: httpbin, labels: { kubernetes.io/service-name: httpbin } }
addressType: IPv4
ports: [{ name: http, port: ${port}, protocol: TCP }]
endpoints: [{ addresses: ["${host}"], conditions: { ready: true } }]
`;

/** `kubectl ARGS`, which must succeed; its stdout. */
export async function kubectlOk(kube: KubeCluster, args: string[], opts: { kubeconfig?: string; input?: string } = {}): Promise<string> {
  const r = await kube.kubectl(args, opts);
  if (r.code !== 0) throw new Error(`kubectl ${args.join(' ')} failed (${r.code}):\n${r.stderr}`);
  return r.stdout;
}

/**
 * The Kubernetes steps of docs/deploy.md in one go (test/kube-api.test.ts checks each): the CRDs and deploy/, retries on,
 * curl and httpbin enrolled, the samples, a gRPC Retry for curl (3 retries) and httpbin's endpoints at `backend`.
 */
export async function installGuideMesh(kube: KubeCluster, backend: { host: string; port: number }): Promise<void> {
  await kubectlOk(kube, ['apply', '-f', deployPath('crds/')]);
  await waitEstablished(kube, ['retries.policy.flomesh.io', 'meshconfigs.config.flomesh.io']);
  await kubectlOk(kube, ['apply', '-f', deployPath('control-plane/namespace.yaml')]);
  await kubectlOk(kube, ['apply', '-k', deployPath('')]);
  await kubectlOk(kube, ['patch', 'meshconfig', 'fsm-mesh-config', '-n', 'mesh-xds', '--type', 'merge', '-p', '{"spec":{"featureFlags":{"enableRetryPolicy":true}}}']);
  for (const ns of ['httpbin', 'curl']) {
    await kubectlOk(kube, ['create', 'namespace', ns]);
    await kubectlOk(kube, ['label', 'namespace', ns, 'flomesh.io/monitored-by=mesh-xds']);
  }
  for (const ns of ['httpbin', 'curl']) await kubectlOk(kube, ['apply', '-f', deployPath(`samples/guide/${ns}.yaml`), '-n', ns]);
  await kubectlOk(kube, ['apply', '-f', '-'], { input: grpcRetry(3) });
  await kubectlOk(kube, ['apply', '-f', '-'], { input: httpbinEndpoints(backend.host, backend.port) });
}

/**
 * Waits for CRDs to be Established. `kubectl wait --for condition=established` fails at once ("status.conditions
 * accessor error: <nil>") when it looks before the API server gave the CRD any condition, as happens when several
 * large CRDs are applied together (seen in CI): this asks until each says Established.
 */
export async function waitEstablished(kube: KubeCluster, crds: readonly string[], timeoutMs = 60_000): Promise<void> {
  for (const crd of crds) {
    const name = crd.replace(/^crd\//, '');
    await until(
      async () => (await kube.kubectl(['get', 'crd', name, '-o', 'jsonpath={.status.conditions[?(@.type=="Established")].status}'])).stdout.trim() === 'True',
      timeoutMs,
      `the CRD ${name} Established`,
    );
  }
}
