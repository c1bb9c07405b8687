/**
 * `mesh-xds demo`: the user guide on this machine with real Envoy sidecars (src/sandbox): builds the pods,
 * starts the server, sends the 503, prints the sidecar's retry stats with what each means, then the 404 and a
 * live edit, and removes everything it made, also on Ctrl-C or failure.
 */
import { parse } from 'yaml';
import { sandboxProblems, ENVOY_VERSION } from './parts.js';
import { Sandbox, guideWorkloads, until, type Workload } from './sandbox.js';
import { indent, write } from './transcript.js';

const HTTPBIN = 'httpbin.httpbin.svc.cluster.local:14001';
const CLUSTER = 'httpbin/httpbin|14001';
const RDS_UPDATES = 'http.outbound_14001.rds.httpbin.httpbin.svc.cluster.local_14001.update_success';

const MEANING: Record<string, (n: number) => string> = {
  upstream_rq_retry: (n) => `${n} retries were made`,
  upstream_rq_retry_backoff_exponential: (n) => `${n} of them waited an exponential backoff first`,
  upstream_rq_retry_backoff_ratelimited: () => 'no backoff came from a rate-limit header',
  upstream_rq_retry_limit_exceeded: (n) => `${n} request(s) still failed when numRetries was used up`,
  upstream_rq_retry_overflow: (n) => (n ? `${n} retries refused by the cluster's retry budget` : "no retry was refused by the cluster's retry budget"),
  upstream_rq_retry_success: (n) => (n ? `${n} retries succeeded` : 'no retry succeeded (httpbin answers 503 every time)'),
};


async function curl(w: Workload, status: number): Promise<string> {
  const r = await w.pod.exec('curl', ['-sI', `${HTTPBIN}/status/${status}`], { timeoutMs: 90_000 });
  if (r.code !== 0) throw new Error(`curl failed (${r.code}): ${r.stderr}`);
  return r.stdout;
}

/** The retry counters, read with `mesh-xds proxy get stats` inside the pod (as `kubectl exec` would). */
async function retryStats(sb: Sandbox, w: Workload): Promise<{ command: string; lines: string[] }> {
  const args = ['proxy', 'get', 'stats', w.podName, '-n', w.spec.namespace, '--admin-url', 'http://127.0.0.1:15000', '--filter', `${CLUSTER}.upstream_rq_retry`];
  const r = await sb.cli(w.spec.name, args);
  if (r.code !== 0) throw new Error(`mesh-xds proxy get stats failed: ${r.stderr}`);
  return { command: `mesh-xds ${args.join(' ')}`, lines: r.stdout.trim().split('\n') };
}

function showStats({ command, lines }: { command: string; lines: string[] }): void {
  write(`   $ ${command}`);
  const width = Math.max(...lines.map((l) => l.length));
  for (const line of lines) {
    const [name, value] = line.split(': ');
    const meaning = MEANING[name.slice(name.lastIndexOf('.') + 1)]?.(Number(value)) ?? '';
    write(`   ${line.padEnd(width)}   ${meaning}`);
  }
}

export async function demoCommand(args: string[] = []): Promise<number> {
  if (args.includes('--kubernetes')) {
    const { demoKubernetesCommand } = await import('./demo-kube.js');
    return demoKubernetesCommand();
  }
  const problems = sandboxProblems();
  if (problems.length) {
    process.stderr.write(`mesh-xds demo cannot run here:\n- ${problems.join('\n- ')}\n`);
    return 1;
  }
  write(`mesh-xds demo: the Retry policy guide on this machine, with real Envoy ${ENVOY_VERSION} sidecars.`);
  write('Pods are network namespaces on a private bridge; everything made is removed at the end, on failure or on Ctrl-C.');
  write();
  let sb: Sandbox | undefined;
  let interrupted = false;
  const onSignal = (signal: string): void => {
    if (interrupted) return;
    interrupted = true;
    process.stderr.write(`\n${signal}: removing the pods and the control plane\n`);
    void (sb?.close() ?? Promise.resolve()).finally(() => process.exit(130));
  };
  process.on('SIGINT', () => onSignal('SIGINT'));
  process.on('SIGTERM', () => onSignal('SIGTERM'));
  try {
    write('1-4. The mesh: retries enabled (featureFlags.enableRetryPolicy: true), httpbin and curl enrolled, the guide\'s Retry:');
    sb = await Sandbox.start({ workloads: guideWorkloads(), progress: (l) => write(`   ${l}`) });
    const retry = parse(sb.readManifest('retry.yaml'));
    write(`   Retry ${retry.metadata.namespace}/${retry.metadata.name} (deploy/samples/retry.yaml): ${Object.entries(retry.spec.retryPolicy).map(([k, v]) => `${k} ${JSON.stringify(v)}`).join(', ')}`);
    const curlPod = sb.workload('curl');
    const httpbin = sb.workload('httpbin');
    const received = (): number => httpbin.app!.lines().filter((l) => l.includes('"HEAD /status/503 HTTP/1.1"')).length;

    write();
    write(`5. From the curl pod: curl -sI ${HTTPBIN}/status/503`);
    write('   (a few seconds: 5 retries, each after a random backoff of up to 1 s, 2 s, 4 s, 8 s, 10 s)');
    let started = Date.now();
    write(indent(await curl(curlPod, 503)));
    write(`   took ${((Date.now() - started) / 1000).toFixed(1)} s; httpbin received ${received()} requests (1 + numRetries)`);

    write();
    write("6. The curl sidecar's retry stats:");
    const after503 = await retryStats(sb, curlPod);
    showStats(after503);

    write();
    write(`7. A 404: curl -sI ${HTTPBIN}/status/404`);
    write(indent((await curl(curlPod, 404)).split('\n')[0]));
    const after404 = await retryStats(sb, curlPod);
    if (after404.lines.join() === after503.lines.join()) write('   5xx does not cover 404: not retried, the six counters are as they were');
    else showStats(after404);

    write();
    write('8. A live edit of the Retry file: numRetries: 5 -> 2 (Envoy keeps running)');
    const before = await curlPod.sidecar.stat(RDS_UPDATES);
    started = Date.now();
    sb.writeManifest('retry.yaml', sb.readManifest('retry.yaml').replace('numRetries: 5', 'numRetries: 2'));
    await until(async () => (await curlPod.sidecar.stat(RDS_UPDATES)) > before, 15_000, 'the sidecar to take the new route');
    write(`   the sidecar took the new route ${Date.now() - started} ms after the file was saved`);
    const sent = received();
    write(indent((await curl(curlPod, 503)).split('\n')[0]));
    write(`   httpbin received ${received() - sent} more requests (1 + 2); the stats now:`);
    showStats(await retryStats(sb, curlPod));
    write();
    const rejected = Object.keys(await curlPod.sidecar.rejected()).length + Object.keys(await httpbin.sidecar.rejected()).length;
    write(rejected ? `Envoy rejected ${rejected} update(s): see the sidecars' update_rejected stats` : "Envoy accepted every update (update_rejected: 0 everywhere).");
    return 0;
  } catch (e) {
    if (interrupted) return 130;
    process.stderr.write(`mesh-xds demo failed: ${(e as Error).message}\n`);
    return 1;
  } finally {
    if (!interrupted) {
      await sb?.close();
      write('Removed the pods, the bridge and the control plane.');
    }
  }
}
