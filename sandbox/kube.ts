/**
 * A real Kubernetes API server on loopback for the tests: etcd and kube-apiserver built from the Go module proxy
 * (scripts/build-kube.sh), with a service-account signing key, RBAC authorization, an admin token, and
 * kubeconfigs for the admin and for any service account (a token from the TokenRequest API). On request, the
 * real kube-controller-manager too (Deployments become ReplicaSets and Pods, EndpointSlices follow pod
 * readiness); no kubelet: sandbox/node.ts stands in for one, or tests create Pods and EndpointSlices themselves.
 * The API server reaches a node's kubelet API (`kubectl exec`, `kubectl logs`) at the node's InternalIP, with a
 * client certificate of a CA made here (`kubeletCA`), which also signs the node's serving certificate.
 */
import { execFile, spawnSync } from 'node:child_process';
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { packagePath } from '../src/paths.js';
import { Proc, type ExecResult } from './netns.js';
import { until } from './sandbox.js';

export const KUBE_BIN = packagePath('.cache/kube/bin');
const BUILD_PID = packagePath('.cache/kube/build.pid');
const BUILD_LOG = packagePath('.cache/kube/build.log');

function built(): boolean {
  return spawnSync('bash', [packagePath('scripts/build-kube.sh'), '--check']).status === 0;
}

/** Whether the background build whose pid `pidFile` holds still runs. */
export function building(pidFile = BUILD_PID): boolean {
  if (!existsSync(pidFile)) return false;
  try {
    process.kill(Number(readFileSync(pidFile, 'utf8')), 0);
    return true;
  } catch {
    return false;
  }
}

const BUILD_TIMES = packagePath('.cache/kube/build-times');
const BUILT_IN_ORDER = ['etcd', 'kube-apiserver', 'kube-controller-manager', 'node-agent'];
/** What a cold build took on a 2-core machine of this kind (REFERENCE §8), where no build here has been timed yet. */
const COLD_SECONDS: Record<string, number> = { etcd: 90, 'kube-apiserver': 420, 'kube-controller-manager': 150, 'node-agent': 30 };

const minutes = (s: number): string => (s >= 60 ? `${Math.floor(s / 60)} min ${Math.round(s % 60)} s` : `${Math.round(s)} s`);

/**
 * The build in progress, for people: which binary, how long it has taken, roughly how long is left (from the last
 * build's times here, else a cold build's on this kind of machine). Undefined when nothing is building.
 */
export function kubeBuildProgress(now = Date.now(), files = { pid: BUILD_PID, log: BUILD_LOG, times: BUILD_TIMES }): string | undefined {
  if (!building(files.pid) || !existsSync(files.log)) return undefined;
  const started = [...readFileSync(files.log, 'utf8').matchAll(/^building (\S+) at (\d+)$/gm)].at(-1);
  if (!started) return 'building the Kubernetes binaries: fetching modules';
  const [name, at] = [started[1]!, Number(started[2]) * 1000];
  const last = new Map<string, number>();
  if (existsSync(files.times)) for (const [, n, t] of readFileSync(files.times, 'utf8').matchAll(/^(\S+) (\d+)$/gm)) last.set(n!, Number(t));
  const estimate = (n: string): number => last.get(n) ?? COLD_SECONDS[n] ?? 120;
  const sofar = (now - at) / 1000;
  const index = BUILT_IN_ORDER.indexOf(name);
  const after = BUILT_IN_ORDER.slice(index + 1).reduce((sum, n) => sum + estimate(n), 0);
  const left = Math.max(0, estimate(name) - sofar) + after;
  const basis = last.has(name) ? 'from the last build here' : 'from a cold build on 2 cores';
  return `building ${name} (${index + 1} of ${BUILT_IN_ORDER.length}): ${minutes(sofar)} so far, about ${minutes(left)} left (${basis}; log: .cache/kube/build.log)`;
}

/**
 * What the real API server needs that is missing ([] when all is here). A build in progress (started by
 * scripts/install-real-parts.sh) is waited for, up to `waitMs`, its progress told to `progress` every 15 s.
 */
export async function kubeProblems(waitMs = 20 * 60_000, progress?: (line: string) => void): Promise<string[]> {
  const deadline = Date.now() + waitMs;
  let told = 0;
  while (!built() && building() && Date.now() < deadline) {
    if (progress && Date.now() - told >= 15_000) {
      const line = kubeBuildProgress();
      if (line) progress(line);
      told = Date.now();
    }
    await new Promise((r) => setTimeout(r, 2000));
  }
  const problems: string[] = [];
  if (!built()) {
    const log = existsSync(BUILD_LOG) ? readFileSync(BUILD_LOG, 'utf8').trim().split('\n').slice(-5).join('\n') : '';
    problems.push(`kube-apiserver, kube-controller-manager, etcd and node-agent are not all built in ${KUBE_BIN} (bash scripts/install-real-parts.sh builds them with Go)${log ? `; the last build said:\n${log}` : ''}`);
  }
  if (spawnSync('openssl', ['version'], { stdio: 'ignore' }).status !== 0) problems.push('openssl is missing (the sandbox makes the kubelet certificates with it: apt-get install openssl)');
  if (spawnSync('kubectl', ['version', '--client'], { stdio: 'ignore' }).status !== 0) problems.push('kubectl is missing (it is on the machine image; or build it from k8s.io/kubernetes/cmd/kubectl)');
  return problems;
}

async function freePort(): Promise<number> {
  const s = net.createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const port = (s.address() as net.AddressInfo).port;
  await new Promise((r) => s.close(r));
  return port;
}

function run(cmd: string, args: string[], opts: { env?: NodeJS.ProcessEnv; input?: string } = {}): Promise<ExecResult> {
  return new Promise((resolve) => {
    const child = execFile(cmd, args, { env: { ...process.env, ...opts.env }, maxBuffer: 64 * 1024 * 1024, timeout: 120_000 }, (err, stdout, stderr) =>
      resolve({ code: err ? (typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : 1) : 0, stdout, stderr }),
    );
    if (opts.input !== undefined) child.stdin!.end(opts.input);
  });
}

export interface KubeClusterOptions {
  /** kube-apiserver's watch cache (off: watches read etcd, so an old resourceVersion after a compaction is 410 Gone). */
  watchCache?: boolean;
  /** The address kube-apiserver listens on (default 127.0.0.1; a sandbox's bridge address so that its pods reach it). */
  bindAddress?: string;
  /**
   * Run kube-controller-manager with the controllers a cluster's workloads need, and route webhook calls to the
   * Service's endpoints (--enable-aggregator-routing: there is no kube-proxy on the host).
   */
  controllerManager?: boolean;
}

/** The controllers of kube-controller-manager the sandbox runs (no node lifecycle: the sandbox node sends no heartbeats). */
const CONTROLLERS = [
  'deployment-controller',
  'replicaset-controller',
  'endpoints-controller',
  'endpointslice-controller',
  'serviceaccount-controller',
  'garbage-collector-controller',
  'namespace-controller',
  'root-ca-certificate-publisher-controller',
];

export class KubeCluster {
  readonly dir: string;
  etcd!: Proc;
  api!: Proc;
  controllerManager?: Proc;
  url = '';
  private etcdPort = 0;
  private apiPort = 0;
  private readonly adminToken = randomBytes(16).toString('hex');
  readonly adminKubeconfig: string;

  private get host(): string {
    return this.opts.bindAddress ?? '127.0.0.1';
  }

  private constructor(private readonly opts: KubeClusterOptions) {
    this.dir = mkdtempSync(path.join(os.tmpdir(), 'mesh-xds-kube-'));
    this.adminKubeconfig = path.join(this.dir, 'admin.kubeconfig');
  }

  static async start(opts: KubeClusterOptions = {}): Promise<KubeCluster> {
    const c = new KubeCluster(opts);
    try {
      await c.boot();
    } catch (e) {
      await c.stop();
      throw e;
    }
    return c;
  }

  /** The CA of the API server's kubelet client certificate; a sandbox node signs its serving certificate with it. */
  get kubeletCA(): { cert: string; key: string } {
    return { cert: path.join(this.dir, 'kubelet-pki/ca.crt'), key: path.join(this.dir, 'kubelet-pki/ca.key') };
  }

  /** The kubelet CA and the API server's client certificate for the kubelet API (EC P-256, with openssl). */
  private kubeletCerts(): void {
    const dir = path.join(this.dir, 'kubelet-pki');
    mkdirSync(dir, { mode: 0o700 });
    const f = (name: string): string => path.join(dir, name);
    writeFileSync(f('client.ext'), 'extendedKeyUsage=clientAuth\n');
    const key = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
    for (const args of [
      ['req', '-x509', ...key, '-keyout', f('ca.key'), '-out', f('ca.crt'), '-days', '30', '-subj', '/CN=mesh-xds sandbox kubelet CA'],
      ['req', ...key, '-keyout', f('client.key'), '-out', f('client.csr'), '-subj', '/CN=kube-apiserver-kubelet-client'],
      ['x509', '-req', '-in', f('client.csr'), '-CA', f('ca.crt'), '-CAkey', f('ca.key'), '-CAcreateserial', '-out', f('client.crt'), '-days', '30', '-extfile', f('client.ext')],
    ]) {
      const r = spawnSync('openssl', args, { encoding: 'utf8' });
      if (r.status !== 0) throw new Error(`openssl ${args.slice(0, 2).join(' ')} (kubelet certificates): ${r.stderr || r.error?.message}`);
    }
  }

  private async boot(): Promise<void> {
    this.kubeletCerts();
    const { privateKey, publicKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
    writeFileSync(path.join(this.dir, 'sa.key'), privateKey.export({ type: 'pkcs1', format: 'pem' }));
    writeFileSync(path.join(this.dir, 'sa.pub'), publicKey.export({ type: 'spki', format: 'pem' }));
    writeFileSync(path.join(this.dir, 'tokens.csv'), `${this.adminToken},admin,admin,"system:masters"\n`);
    this.etcdPort = await freePort();
    const peer = await freePort();
    this.etcd = Proc.spawn('etcd', path.join(KUBE_BIN, 'etcd'), [
      '--data-dir', path.join(this.dir, 'etcd'),
      '--listen-client-urls', `http://127.0.0.1:${this.etcdPort}`,
      '--advertise-client-urls', `http://127.0.0.1:${this.etcdPort}`,
      '--listen-peer-urls', `http://127.0.0.1:${peer}`,
      '--initial-advertise-peer-urls', `http://127.0.0.1:${peer}`,
      '--initial-cluster', `default=http://127.0.0.1:${peer}`,
      '--log-level', 'warn',
    ]);
    await until(async () => (await fetch(`http://127.0.0.1:${this.etcdPort}/health`).then((r) => r.json())).health === 'true', 30_000, 'etcd to be healthy');
    this.apiPort = await freePort();
    this.url = `https://${this.host}:${this.apiPort}`;
    await this.startApiServer();
    writeFileSync(this.adminKubeconfig, this.kubeconfig('admin', { token: this.adminToken }));
    if (this.opts.controllerManager) await this.startControllerManager();
  }

  private async startControllerManager(): Promise<void> {
    this.controllerManager = Proc.spawn('kube-controller-manager', path.join(KUBE_BIN, 'kube-controller-manager'), [
      `--kubeconfig=${this.adminKubeconfig}`,
      '--leader-elect=false',
      `--controllers=${CONTROLLERS.join(',')}`,
      `--service-account-private-key-file=${path.join(this.dir, 'sa.key')}`,
      `--root-ca-file=${path.join(this.dir, 'certs/apiserver.crt')}`,
      '--bind-address=127.0.0.1',
      `--secure-port=${await freePort()}`,
      '--v=0',
    ]);
    // Ready once it has made the default ServiceAccount of a namespace.
    await until(async () => (await this.kubectl(['get', 'serviceaccount', 'default', '-n', 'default'])).code === 0, 60_000, 'kube-controller-manager to be running').catch((e) => {
      throw new Error(`${(e as Error).message}\n${this.controllerManager!.tail(20)}`);
    });
  }

  private async startApiServer(): Promise<void> {
    this.api = Proc.spawn('kube-apiserver', path.join(KUBE_BIN, 'kube-apiserver'), [
      `--etcd-servers=http://127.0.0.1:${this.etcdPort}`,
      `--bind-address=${this.host}`,
      `--advertise-address=${this.host}`,
      ...(this.opts.controllerManager ? ['--enable-aggregator-routing=true'] : []),
      `--secure-port=${this.apiPort}`,
      `--cert-dir=${path.join(this.dir, 'certs')}`,
      '--service-account-issuer=https://kubernetes.default.svc.cluster.local',
      `--service-account-key-file=${path.join(this.dir, 'sa.pub')}`,
      `--service-account-signing-key-file=${path.join(this.dir, 'sa.key')}`,
      '--authorization-mode=RBAC',
      `--token-auth-file=${path.join(this.dir, 'tokens.csv')}`,
      '--service-cluster-ip-range=10.96.0.0/16',
      `--watch-cache=${this.opts.watchCache ?? true}`,
      // The sandbox node's kubelet API (node.ts): at its InternalIP, its certificate checked against the kubelet CA.
      '--kubelet-preferred-address-types=InternalIP',
      `--kubelet-certificate-authority=${this.kubeletCA.cert}`,
      `--kubelet-client-certificate=${path.join(this.dir, 'kubelet-pki/client.crt')}`,
      `--kubelet-client-key=${path.join(this.dir, 'kubelet-pki/client.key')}`,
      '--v=0',
    ]);
    await until(
      async () => {
        const r = await run('curl', ['-s', '--cacert', path.join(this.dir, 'certs/apiserver.crt'), '-H', `Authorization: Bearer ${this.adminToken}`, `${this.url}/readyz`]);
        return r.stdout.trim() === 'ok';
      },
      60_000,
      'kube-apiserver to be ready',
    ).catch((e) => {
      throw new Error(`${(e as Error).message}\n${this.api.tail(20)}`);
    });
  }

  /** A kubeconfig for the server (its own certificate as CA), as `user` with a token. */
  kubeconfig(user: string, auth: { token: string }, server = this.url): string {
    const cluster = server.startsWith('https:') ? `{server: "${server}", certificate-authority: "${path.join(this.dir, 'certs/apiserver.crt')}"}` : `{server: "${server}"}`;
    return `apiVersion: v1
kind: Config
clusters: [{name: test, cluster: ${cluster}}]
users: [{name: ${user}, user: {token: "${auth.token}"}}]
contexts: [{name: test, context: {cluster: test, user: ${user}}}]
current-context: test
`;
  }

  /** `kubectl ARGS` as the admin (or with another kubeconfig). */
  kubectl(args: string[], opts: { kubeconfig?: string; input?: string } = {}): Promise<ExecResult> {
    return run('kubectl', args, { env: { KUBECONFIG: opts.kubeconfig ?? this.adminKubeconfig }, input: opts.input });
  }

  /** A kubeconfig file for a service account, with a token from the TokenRequest API. */
  async serviceAccountKubeconfig(namespace: string, name: string): Promise<string> {
    const r = await this.kubectl(['create', 'token', name, '-n', namespace, '--duration=1h']);
    if (r.code !== 0) throw new Error(`kubectl create token ${namespace}/${name}: ${r.stderr}`);
    const file = path.join(this.dir, `${namespace}-${name}.kubeconfig`);
    writeFileSync(file, this.kubeconfig(`${namespace}-${name}`, { token: r.stdout.trim() }));
    return file;
  }

  /** Stops and starts kube-apiserver (etcd and its data stay). */
  async restartApiServer(downMs = 0): Promise<void> {
    await this.api.stop(10_000);
    if (downMs) await new Promise((r) => setTimeout(r, downMs));
    await this.startApiServer();
  }

  /** Compacts etcd's history up to its current revision (older resourceVersions are gone). */
  async compact(): Promise<number> {
    const etcd = `http://127.0.0.1:${this.etcdPort}/v3`;
    const range = await fetch(`${etcd}/kv/range`, { method: 'POST', body: JSON.stringify({ key: Buffer.from('/').toString('base64') }) }).then((r) => r.json());
    const revision = Number(range.header.revision);
    const res = await fetch(`${etcd}/kv/compaction`, { method: 'POST', body: JSON.stringify({ revision, physical: true }) });
    if (!res.ok) throw new Error(`etcd compaction: ${res.status} ${await res.text()}`);
    return revision;
  }

  async stop(): Promise<void> {
    await this.controllerManager?.stop(10_000);
    await this.api?.stop(10_000);
    await this.etcd?.stop(10_000);
    rmSync(this.dir, { recursive: true, force: true });
  }
}
