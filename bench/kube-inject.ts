/**
 * `npm run bench:inject`: on the local Kubernetes control plane (sandbox/kube-guide.ts), the time from `kubectl
 * apply` of a Deployment to its injected sidecar holding all four types (its admin's /ready says LIVE: Envoy
 * finished its initial CDS, EDS, LDS and RDS), and to `kubectl get pods` showing 2/2 Running; N pods one after
 * another (default 10), median and range. The mesh holds the guide's httpbin, so each sidecar gets routes and
 * endpoints.
 */
import { packagePath } from '../src/paths.js';
import { GUIDE_SETS, KubeGuide, kubeGuideProblems } from '../sandbox/kube-guide.js';
import { until } from '../sandbox/sandbox.js';

const n = Number(process.argv[2] ?? 10);
const problems = await kubeGuideProblems();
if (problems.length) {
  console.error(`bench:inject cannot run here:\n- ${problems.join('\n- ')}`);
  process.exit(1);
}

const deployment = (i: number): string => `apiVersion: apps/v1
kind: Deployment
metadata: { name: client-${i} }
spec:
  replicas: 1
  selector: { matchLabels: { app: client-${i} } }
  template:
    metadata: { labels: { app: client-${i} } }
    spec:
      serviceAccountName: curl
      containers: [{ name: curl, image: curlimages/curl, command: [/bin/sleep, infinity] }]
`;

const median = (xs: number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

const g = await KubeGuide.start();
try {
  const install = await g.cli(['install', ...GUIDE_SETS]);
  if (install.code !== 0) throw new Error(install.stderr);
  for (const ns of ['httpbin', 'curl']) {
    await g.kubectlOk(['create', 'namespace', ns]);
    const add = await g.cli(['namespace', 'add', ns]);
    if (add.code !== 0) throw new Error(add.stderr);
    await g.kubectlOk(['apply', '-f', packagePath(`deploy/samples/guide/${ns}.yaml`), '-n', ns]);
    await g.waitRunning(ns, 1);
  }
  const live: number[] = [];
  const running: number[] = [];
  for (let i = 0; i < n; i++) {
    const started = performance.now();
    await g.kubectlOk(['apply', '-n', 'curl', '-f', '-'], deployment(i));
    let pod = '';
    await until(
      async () => {
        pod ||= (await g.pods('curl', `app=client-${i}`))[0]?.name ?? '';
        return pod !== '' && (await g.admin('curl', pod, '/ready')).trim() === 'LIVE';
      },
      120_000,
      `client-${i}'s sidecar to be LIVE`,
    );
    live.push(performance.now() - started);
    await g.waitRunning('curl', 1, 120_000, `app=client-${i}`);
    running.push(performance.now() - started);
    console.log(`client-${i} (${pod}): sidecar LIVE ${(live[i] / 1000).toFixed(2)} s, 2/2 Running ${(running[i] / 1000).toFixed(2)} s after kubectl apply`);
  }
  const fmt = (xs: number[]): string => `median ${(median(xs) / 1000).toFixed(2)} s (${(Math.min(...xs) / 1000).toFixed(2)} to ${(Math.max(...xs) / 1000).toFixed(2)} s)`;
  console.log(`${n} pods: kubectl apply -> sidecar holding CDS, EDS, LDS, RDS (LIVE): ${fmt(live)}; -> 2/2 Running in kubectl: ${fmt(running)}`);
} finally {
  await g.close();
}
