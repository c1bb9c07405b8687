/**
 * The guide on a real Kubernetes control plane on this machine: etcd, kube-apiserver and kube-controller-manager
 * (kube.ts) listening on a sandbox bridge, a sandbox node running the pods (node.ts), and the commands the guide
 * gives, run as an operator runs them: `mesh-xds install`, `kubectl create namespace`, `mesh-xds namespace add`,
 * `kubectl apply -f deploy/samples/guide/...`. Used by test/guide-kubernetes.test.ts and `mesh-xds demo --kubernetes`.
 */
import { execFile } from 'node:child_process';
import { packagePath } from '../src/paths.js';
import { KubeCluster, kubeProblems } from './kube.js';
import { Network, type ExecResult } from './netns.js';
import { SandboxNode } from './node.js';
import { sandboxProblems } from './parts.js';
import { until } from './sandbox.js';

export const GUIDE_SETS = ['--set=fsm.enablePermissiveTrafficPolicy=true', '--set=fsm.featureFlags.enableRetryPolicy=true'];
export const HTTPBIN_URL = 'httpbin.httpbin.svc.cluster.local:14001';
export const HTTPBIN_CLUSTER = 'httpbin/httpbin|14001';

/** What the guide on Kubernetes needs that this machine lacks ([] when all is here). */
export async function kubeGuideProblems(waitMs?: number, progress?: (line: string) => void): Promise<string[]> {
  return [...sandboxProblems(), ...(await kubeProblems(waitMs, progress))];
}

export interface PodRow {
  name: string;
  ready: string;
  status: string;
  containers: string[];
  ip: string;
}

export class KubeGuide {
  private constructor(
    readonly net: Network,
    readonly kube: KubeCluster,
    readonly node: SandboxNode,
  ) {}

  static async start(log?: (line: string) => void): Promise<KubeGuide> {
    const net = await Network.create();
    let kube: KubeCluster | undefined;
    try {
      kube = await KubeCluster.start({ bindAddress: net.gateway, controllerManager: true });
      const node = await SandboxNode.start(kube, net, { log });
      return new KubeGuide(net, kube, node);
    } catch (e) {
      await kube?.stop();
      await net.destroy();
      throw e;
    }
  }

  /** `mesh-xds ARGS` as the admin (KUBECONFIG), from this machine. */
  cli(args: string[], timeoutMs = 600_000): Promise<ExecResult> {
    return new Promise((resolve) => {
      execFile(process.execPath, [packagePath('bin/mesh-xds.js'), ...args], { env: { ...process.env, KUBECONFIG: this.kube.adminKubeconfig }, timeout: timeoutMs, maxBuffer: 64 << 20 }, (err, stdout, stderr) =>
        resolve({ code: err ? (typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : 1) : 0, stdout, stderr }),
      );
    });
  }

  kubectl(args: string[], input?: string): Promise<ExecResult> {
    return this.kube.kubectl(args, { input });
  }

  async kubectlOk(args: string[], input?: string): Promise<string> {
    const r = await this.kubectl(args, input);
    if (r.code !== 0) throw new Error(`kubectl ${args.join(' ')} failed (${r.code}): ${r.stderr}`);
    return r.stdout;
  }

  /** The pods of a namespace as `kubectl get pods` shows them (READY, STATUS), with their containers. */
  async pods(namespace: string, selector?: string): Promise<PodRow[]> {
    const list = JSON.parse(await this.kubectlOk(['get', 'pods', '-n', namespace, '-o', 'json', ...(selector ? ['-l', selector] : [])]));
    return list.items.map((p: any) => {
      const statuses = p.status?.containerStatuses ?? [];
      const waiting = statuses.find((s: any) => s.state?.waiting)?.state.waiting.reason;
      return {
        name: p.metadata.name,
        ready: `${statuses.filter((s: any) => s.ready).length}/${p.spec.containers.length}`,
        status: p.metadata.deletionTimestamp ? 'Terminating' : (waiting ?? p.status?.phase ?? 'Pending'),
        containers: p.spec.containers.map((c: any) => c.name),
        ip: p.status?.podIP ?? '',
      };
    });
  }

  /** Waits until `count` pods of the namespace (and selector) are all Running with every container ready. */
  async waitRunning(namespace: string, count: number, timeoutMs = 120_000, selector?: string): Promise<PodRow[]> {
    let rows: PodRow[] = [];
    await until(
      async () => {
        rows = (await this.pods(namespace, selector)).filter((r) => r.status !== 'Terminating');
        return rows.length === count && rows.every((r) => r.status === 'Running' && r.ready.split('/')[0] === r.ready.split('/')[1]);
      },
      timeoutMs,
      `${count} pod(s) of ${namespace} to be Running and ready (last: ${JSON.stringify(rows)})`,
    );
    return rows;
  }

  /** `kubectl exec POD -n NS -- CMD` in the pod's first container (the app's): the API server calls the node's kubelet API. */
  exec(namespace: string, pod: string, cmd: string[]): Promise<ExecResult> {
    return this.kubectl(['exec', pod, '-n', namespace, '--', ...cmd]);
  }

  /** `mesh-xds proxy get stats POD -n NS`, run in the pod (the admin is on its loopback; no port-forward here). */
  async stats(namespace: string, pod: string, filter: string): Promise<Map<string, number>> {
    const r = await this.exec(namespace, pod, [process.execPath, packagePath('bin/mesh-xds.js'), 'proxy', 'get', 'stats', pod, '-n', namespace, '--admin-url', 'http://127.0.0.1:15000', '--filter', filter]);
    if (r.code !== 0) throw new Error(`mesh-xds proxy get stats ${pod}: ${r.stderr}`);
    return new Map(
      r.stdout
        .trim()
        .split('\n')
        .map((l) => /^(.+): (\d+)$/.exec(l))
        .filter((m): m is RegExpExecArray => Boolean(m))
        .map((m) => [m[1], Number(m[2])]),
    );
  }

  /** GET from the pod's sidecar admin. */
  async admin(namespace: string, pod: string, pathAndQuery: string): Promise<string> {
    const r = await this.exec(namespace, pod, ['curl', '-sS', '--max-time', '10', `http://127.0.0.1:15000${pathAndQuery}`]);
    if (r.code !== 0) throw new Error(`admin ${pathAndQuery} of ${namespace}/${pod}: ${r.stderr}`);
    return r.stdout;
  }

  /**
   * The guide Retry's status once the control plane has written what its sidecars did (`status.observed`) with at
   * least `retries` retries: the leader writes it on a material change, at most once a minute per policy.
   */
  async observedStatus(retries: number, waitMs = 100_000): Promise<{ observed: Record<string, unknown>; conditions: { type: string; status: string; message?: string }[]; yaml: string }> {
    let status: any;
    await until(
      async () => {
        status = JSON.parse(await this.kubectlOk(['get', 'retry', 'retry', '-n', 'curl', '-o', 'jsonpath={.status}']) || '{}');
        return (status.observed?.retries ?? 0) >= retries;
      },
      waitMs,
      `the Retry's status.observed to show ${retries} retries`,
    );
    const yaml = await this.kubectlOk(['get', 'retry', 'retry', '-n', 'curl', '-o', 'yaml']);
    return { observed: status.observed, conditions: status.conditions ?? [], yaml: yaml.slice(yaml.indexOf('status:')) };
  }

  async close(): Promise<void> {
    await this.node.stop().catch(() => {});
    await this.kube.stop().catch(() => {});
    await this.net.destroy();
  }
}
