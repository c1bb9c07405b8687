/**
 * `mesh-xds demo --kubernetes`: the guide as a transcript against a real Kubernetes control plane on this machine
 * (kube-guide.ts): each command as the guide gives it and what it printed, then the curl sidecar's retry stats.
 * Everything it made (the API server, etcd, the controller manager, the pods, the bridge) is removed at the end,
 * on failure and on Ctrl-C.
 */
import { readFileSync } from 'node:fs';
import { packagePath } from '../src/paths.js';
import { GUIDE_SETS, HTTPBIN_CLUSTER, HTTPBIN_URL, KubeGuide, kubeGuideProblems } from './kube-guide.js';
import type { ExecResult } from './netns.js';
import { until } from './sandbox.js';
import { indent, write } from './transcript.js';


function show(command: string, r: ExecResult): string {
  write(`   $ ${command}`);
  if (r.code !== 0) throw new Error(`${command} failed (${r.code}): ${r.stderr || r.stdout}`);
  if (r.stdout.trim()) write(indent(r.stdout));
  return r.stdout;
}

export async function demoKubernetesCommand(): Promise<number> {
  // On a fresh machine the Kubernetes binaries are still building: say what, for how long, and what is left.
  const problems = await kubeGuideProblems(30 * 60_000, (line) => write(`(waiting) ${line}`));
  if (problems.length) {
    process.stderr.write(`mesh-xds demo --kubernetes cannot run here:\n- ${problems.join('\n- ')}\n`);
    return 1;
  }
  write('mesh-xds demo --kubernetes: the Retry policy guide against a real Kubernetes control plane on this machine');
  write('(etcd, kube-apiserver and kube-controller-manager of k8s.io/kubernetes v1.34.4, a sandbox node in place of a');
  write("kubelet: pods are network namespaces; `kubectl exec` runs the command in the pod's network namespace).");
  write();
  let g: KubeGuide | undefined;
  let interrupted = false;
  const onSignal = (signal: string): void => {
    if (interrupted) return;
    interrupted = true;
    process.stderr.write(`\n${signal}: removing the cluster and its pods\n`);
    void (g?.close() ?? Promise.resolve()).finally(() => process.exit(130));
  };
  process.on('SIGINT', () => onSignal('SIGINT'));
  process.on('SIGTERM', () => onSignal('SIGTERM'));
  try {
    g = await KubeGuide.start();
    const guide = g;
    write(`The cluster: kube-apiserver at ${g.kube.url}, node ${g.node.name} on bridge ${g.net.bridge}.`);
    write();
    write('1. Install mesh-xds with permissive mode and retry policy enabled.');
    show(`mesh-xds install ${GUIDE_SETS.join(' ')}`, await g.cli(['install', ...GUIDE_SETS]));
    for (const [n, ns] of [
      [2, 'httpbin'],
      [3, 'curl'],
    ] as const) {
      write();
      write(`${n}. Deploy ${ns} into the ${ns} namespace after enrolling its namespace to the mesh.`);
      show(`kubectl create namespace ${ns}`, await g.kubectl(['create', 'namespace', ns]));
      show(`mesh-xds namespace add ${ns}`, await g.cli(['namespace', 'add', ns]));
      show(`kubectl apply -f deploy/samples/guide/${ns}.yaml -n ${ns}`, await g.kubectl(['apply', '-f', packagePath(`deploy/samples/guide/${ns}.yaml`), '-n', ns]));
      await g.waitRunning(ns, 1);
      show(`kubectl get pods -n ${ns}`, await g.kubectl(['get', 'pods', '-n', ns]));
    }
    write();
    write('4. Apply the Retry policy: retry 5xx from the curl ServiceAccount to the httpbin Service.');
    show('kubectl apply -f deploy/samples/retry.yaml', await g.kubectl(['apply', '-f', '-'], readFileSync(packagePath('deploy/samples/retry.yaml'), 'utf8')));
    const [curl] = await g.pods('curl');
    await until(async () => (await guide.admin('curl', curl.name, '/config_dump?resource=dynamic_route_configs')).includes('"num_retries": 5'), 30_000, 'the retry policy in the curl sidecar');
    write();
    write('5. Send a request that returns 503 from the curl pod (5 retries, each after a random backoff: a few seconds).');
    const started = Date.now();
    show(`kubectl exec ${curl.name} -n curl -c curl -- curl -sI ${HTTPBIN_URL}/status/503`, await g.exec('curl', curl.name, ['curl', '-sI', `${HTTPBIN_URL}/status/503`]));
    write(`   took ${((Date.now() - started) / 1000).toFixed(1)} s`);
    write();
    write("6. The stats between curl and httpbin (the curl sidecar's admin, read in the pod):");
    const stats = await g.stats('curl', curl.name, `${HTTPBIN_CLUSTER}.upstream_rq_retry`);
    write(`   $ mesh-xds proxy get stats -n curl ${curl.name} | grep upstream_rq_retry`);
    for (const [k, v] of stats) write(`   ${k}: ${v}`);
    write();
    write('7. A 404 is not retried:');
    show(`kubectl exec ${curl.name} -n curl -c curl -- curl -sI ${HTTPBIN_URL}/status/404`, await g.exec('curl', curl.name, ['curl', '-sI', `${HTTPBIN_URL}/status/404`]));
    const after = await g.stats('curl', curl.name, `${HTTPBIN_CLUSTER}.upstream_rq_retry`);
    write(`   upstream_rq_retry is still ${after.get(`cluster.${HTTPBIN_CLUSTER}.upstream_rq_retry`)}`);
    write();
    write("8. What the control plane summed from every sidecar's counters, in the Retry's status (written at most once a");
    write('   minute per policy: this may wait for the next write):');
    const { yaml } = await g.observedStatus(5);
    write('   $ kubectl get retry retry -n curl -o yaml');
    for (const line of yaml.trimEnd().split('\n')) write(`   ${line}`);
    return 0;
  } catch (e) {
    if (interrupted) return 130;
    process.stderr.write(`mesh-xds demo --kubernetes failed: ${(e as Error).message}\n`);
    return 1;
  } finally {
    if (!interrupted) {
      await g?.close();
      write();
      write('Removed the cluster, its pods and the bridge.');
    }
  }
}
