/**
 * A mesh on one machine: pods as network namespaces (netns.ts), each with its app and a real Envoy sidecar
 * started as deploy/samples would start it (samples.ts), and `mesh-xds serve --manifests DIR` as the control
 * plane, whose folder describes exactly these namespaces, service accounts, services and pods. Used by the
 * real-Envoy tests, `mesh-xds demo` and the benchmarks.
 */
import { createHash } from 'node:crypto';
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parse, stringify } from 'yaml';
import { MONITORED_BY_LABEL } from '../src/model/mesh.js';
import { packagePath } from '../src/paths.js';
import { Network, Proc, type ExecResult, type Pod } from './netns.js';
import { ENVOY_VERSION, GUNICORN_BIN, envoyForSidecars, sandboxProblems } from './parts.js';
import { IDENTITY_MOUNT, IDENTITY_VOLUME, initScript, podTemplate, sampleObjects, sampleRetryText, sidecarArgs, sidecarBootstrap, sidecarConfigFiles, sidecarMounts, sidecarNode, sidecarUid, type KubeObject, type PodFacts } from './samples.js';
import { createCa, issue, writeCaDir, writeTlsDir, type KeyPair, type TlsBundle } from '../src/security/ca.js';

export type AdsFlavour = 'GRPC' | 'DELTA_GRPC';

export interface ServicePortSpec {
  name: string;
  port: number;
  targetPort: number;
  appProtocol?: string;
}

export interface WorkloadSpec {
  /** The app: the pods' `app` label and name prefix, and the Service's name. */
  name: string;
  namespace: string;
  serviceAccount: string;
  /** deploy/samples/guide file whose pod template, injected, gives the sidecar and the init container. */
  sample: string;
  /** Ports of the Service `name` (none: no Service). */
  ports?: ServicePortSpec[];
  /** A headless Service (`clusterIP: None`): its names resolve to the pod's own address. */
  headless?: boolean;
  /** The app process, run in the pod as root, and a line it prints once it serves. */
  app?: { command: string[]; ready: RegExp };
  /** The sidecar's ADS flavour (the sample's bootstrap says GRPC). */
  flavour?: AdsFlavour;
}

/** The guide's httpbin, as its sample's container runs it (gunicorn, without the gevent worker). */
export const HTTPBIN_APP = { command: [GUNICORN_BIN, '-b', '0.0.0.0:14001', 'httpbin:app', '--access-logfile', '-', '--no-control-socket'], ready: /Listening at/ };

/** A workload of deploy/samples/guide (httpbin.yaml, curl.yaml): its namespace, service account, Service and app. */
export function sampleWorkload(file: string, overrides: Partial<WorkloadSpec> = {}): WorkloadSpec {
  const objects = sampleObjects(file);
  const { namespace, labels, spec } = podTemplate(file);
  const svc = objects.find((o) => o.kind === 'Service');
  const name = labels.app;
  return {
    name,
    namespace,
    serviceAccount: spec.serviceAccountName,
    sample: file,
    ports: svc?.spec.ports.map((p: any) => ({ name: p.name, port: p.port, targetPort: p.targetPort ?? p.port, ...(p.appProtocol ? { appProtocol: p.appProtocol } : {}) })),
    ...(name === 'httpbin' ? { app: HTTPBIN_APP } : {}),
    ...overrides,
  };
}

/** The guide's two workloads: httpbin (port 14001) and curl. */
export function guideWorkloads(flavour: AdsFlavour = 'GRPC'): WorkloadSpec[] {
  return [sampleWorkload('httpbin.yaml', { flavour }), sampleWorkload('curl.yaml', { flavour })];
}

export interface SandboxOptions {
  workloads: WorkloadSpec[];
  /** Files of the control plane's manifests folder besides the generated ones (default: the guide's Retry). */
  manifests?: Record<string, string>;
  enableRetryPolicy?: boolean;
  /** More flags of `mesh-xds serve`, for every control plane the sandbox starts. */
  controlPlaneArgs?: string[];
  /** Progress lines (the demo prints them). */
  progress?: (line: string) => void;
}

/** A stable pod name in the shape of a Deployment's (`curl-54ccc6954c-9rlvp`). */
function podName(w: WorkloadSpec): string {
  const h = createHash('sha256').update(`${w.namespace}/${w.name}/${w.serviceAccount}`).digest();
  const b36 = (b: Buffer, n: number) => [...b].map((x) => 'bcdfghjklmnpqrstvwxz2456789'[x % 27]).join('').slice(0, n);
  return `${w.name}-${h.subarray(0, 5).toString('hex')}-${b36(h.subarray(5), 5)}`;
}

/** The mesh-xds cluster's address in the sidecar bootstrap: the name the pods must resolve to the control plane. */
function controlPlaneHost(bootstrap: any): string {
  const cluster = bootstrap.static_resources.clusters.find((c: any) => c.name === 'mesh-xds');
  return cluster.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address.address;
}

export const ADS_PORT = 15128;
const ADMIN = 'http://127.0.0.1:15000';
/** The mesh-xds Service's ClusterIP: the pods reach the control plane through it, as through kube-proxy. */
const CONTROL_PLANE_VIP = '10.96.0.2';

/** `mesh-xds serve --manifests DIR` as a process, listening for the pods on the bridge. */
/** The control plane's own certificate lives this long here, so that tests see it renewed under connected sidecars. */
const SERVING_TTL = '15s';

export class ControlPlane {
  proc?: Proc;
  debugUrl = '';

  constructor(
    readonly dir: string,
    readonly adsAddress: string,
    /** The mesh CA (ca.crt, ca.key), from which the server issues its serving certificate: mTLS. */
    readonly caDir: string,
    readonly extraArgs: string[] = [],
  ) {}

  async start(): Promise<void> {
    const args = [packagePath('bin/mesh-xds.js'), 'serve', '--manifests', this.dir, '--ads-address', this.adsAddress, '--debug-address', '127.0.0.1:0', '--ca-dir', this.caDir, '--serving-ttl', SERVING_TTL, ...this.extraArgs];
    this.proc = Proc.spawn(`mesh-xds serve (${this.adsAddress})`, process.execPath, args, { env: { LOG_LEVEL: 'info' } });
    const line = await this.proc.waitFor(/"msg":"listening"/, 20_000);
    this.debugUrl = `http://${JSON.parse(line).debug}`;
    await until(async () => (await fetch(`${this.debugUrl}/readyz`)).status === 200, 20_000, `${this.proc.label} to be ready`);
  }

  async stop(): Promise<void> {
    await this.proc?.stop(10_000);
  }

  async get(pathAndQuery: string): Promise<any> {
    const res = await fetch(`${this.debugUrl}${pathAndQuery}`);
    if (res.status !== 200) throw new Error(`GET ${pathAndQuery}: ${res.status} ${await res.text()}`);
    return res.json();
  }

  /** The proxy's entry in /debug/proxies, if connected. */
  async proxy(nodeId: string): Promise<any | undefined> {
    return (await this.get('/debug/proxies')).proxies.find((p: any) => p.nodeId === nodeId);
  }
}

/** A pod's Envoy sidecar, read through its admin (127.0.0.1:15000 inside the pod). */
export class Sidecar {
  constructor(
    readonly pod: Pod,
    readonly proc: Proc,
    readonly nodeId: string,
  ) {}

  admin(pathAndQuery: string): Promise<string> {
    return this.pod.fetch(`${ADMIN}${pathAndQuery}`);
  }

  /** Counters and gauges by name. */
  async stats(filter?: string): Promise<Map<string, number>> {
    const text = await this.admin(`/stats${filter ? `?filter=${encodeURIComponent(filter)}` : ''}`);
    const out = new Map<string, number>();
    for (const line of text.split('\n')) {
      const m = /^(.+): (\d+)$/.exec(line);
      if (m) out.set(m[1], Number(m[2]));
    }
    return out;
  }

  async stat(name: string): Promise<number> {
    const v = (await this.stats(`^${name.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}$`)).get(name);
    if (v === undefined) throw new Error(`${this.nodeId}: no stat ${name}`);
    return v;
  }

  async configDump(query = ''): Promise<any> {
    return JSON.parse(await this.admin(`/config_dump${query}`));
  }

  /** Every `update_rejected` counter (CDS, LDS, RDS per route, EDS per cluster) that is not 0. */
  async rejected(): Promise<Record<string, number>> {
    return Object.fromEntries([...(await this.stats('update_rejected'))].filter(([, v]) => v !== 0));
  }
}

export interface SidecarOptions {
  /** deploy/samples/guide file whose injected pod template (args, uid) the sidecar uses. */
  sample: string;
  /** The pod as the downward API describes it. */
  facts: PodFacts;
  /** A folder the sidecar's uid can read, for its bootstrap. */
  dir: string;
  flavour?: AdsFlavour;
  /** HOST:PORT to reach the control plane at directly, instead of the bootstrap's Service name. */
  adsAddress?: string;
  /** The pod's identity Secret (mTLS to the control plane); without it, plaintext. */
  identity?: TlsBundle;
  /** Seconds a listener removed or changed by LDS drains before it goes (Envoy's default: 600). */
  drainSeconds?: number;
}

/**
 * Starts the sample's injected Envoy sidecar in a pod as the kubelet would: its identity Secret (certificate, key,
 * CA and the SDS files) at the sidecar's mount path (here, a folder of the pod), its args with the downward API
 * filled in, its uid. Without `identity` the control plane is plaintext and the bootstrap's TLS is left out.
 */
export function startSidecar(pod: Pod, o: SidecarOptions): Sidecar {
  const args = writeSidecarConfig(o);
  const drain = o.drainSeconds === undefined ? [] : ['--drain-time-s', String(o.drainSeconds)];
  const proc = pod.spawn('envoy', envoyForSidecars(), [...args, ...drain], { uid: sidecarUid(o.sample) });
  return new Sidecar(pod, proc, sidecarNode(args).id);
}

/**
 * Writes what the kubelet would mount for the sample's sidecar into `o.dir/<pod>/identity` (the identity Secret's
 * files, their paths rewritten from the sidecar's mount path) and returns Envoy's args, the bootstrap in
 * `--config-yaml` adjusted for the sandbox (ADS flavour, a direct address, plaintext).
 */
export function writeSidecarConfig(o: Omit<SidecarOptions, 'dir'> & { dir: string }): string[] {
  const dir = path.join(o.dir, o.facts.name);
  mkdirSync(dir, { recursive: true, mode: 0o755 });
  const identityDir = path.join(dir, 'identity');
  const local = (text: string): string => text.replaceAll(sidecarMounts(o.sample)[IDENTITY_VOLUME] ?? IDENTITY_MOUNT, identityDir);
  // The sample's args with the downward API filled in, as the kubelet starts the container.
  const args = sidecarArgs(o.sample, o.facts);
  const at = args.indexOf('--config-yaml') + 1;
  const bootstrap = parse(args[at]);
  if (o.flavour) bootstrap.dynamic_resources.ads_config.api_type = o.flavour;
  const cluster = bootstrap.static_resources.clusters.find((c: any) => c.name === 'mesh-xds');
  if (o.adsAddress) {
    const [host, port] = [o.adsAddress.replace(/:\d+$/, ''), Number(o.adsAddress.replace(/^.*:/, ''))];
    cluster.type = 'STATIC';
    cluster.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address = { address: host, port_value: port };
  }
  if (o.identity) {
    // The Secret's files, readable by the sidecar.
    writeTlsDir(identityDir, o.identity, sidecarUid(o.sample));
    for (const [name, text] of Object.entries(sidecarConfigFiles())) writeFileSync(path.join(identityDir, name), local(text), { mode: 0o644 });
  } else delete cluster.transport_socket;
  args[at] = local(JSON.stringify(bootstrap));
  return args;
}

/** Resolves once the sidecar's admin says LIVE (initial xDS done, listeners warmed). */
export async function sidecarLive(sidecar: Sidecar, timeoutMs = 30_000): Promise<void> {
  await until(async () => (await sidecar.admin('/ready')).trim() === 'LIVE', timeoutMs, `the sidecar ${sidecar.nodeId} to be LIVE`).catch((e) => {
    throw new Error(`${(e as Error).message}\n${sidecar.proc.tail()}`);
  });
}

export interface Workload {
  spec: WorkloadSpec;
  podName: string;
  pod: Pod;
  sidecar: Sidecar;
  app?: Proc;
}

export async function until(check: () => Promise<boolean> | boolean, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      if (await check()) return;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${last ? ` (last error: ${(last as Error).message})` : ''}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

interface Planned {
  w: WorkloadSpec;
  name: string;
  /** The Service's ClusterIP (`None` for a headless one). */
  clusterIP: string;
  /** The pod's address, once the pod is made. */
  ip?: string;
}

export class Sandbox {
  readonly workloads = new Map<string, Workload>();
  readonly dir: string;
  private readonly files: string;
  private planned: Planned[] = [];
  /** Every control plane started (replicas included): all are stopped by close(). */
  private readonly controlPlanes: ControlPlane[] = [];
  /** The control plane the pods' name for it resolves to. */
  controlPlane!: ControlPlane;
  /** The mesh CA: the control plane's serving certificate and every sidecar's identity come from it. */
  ca!: KeyPair;
  readonly caDir: string;

  private constructor(
    readonly net: Network,
    private readonly opts: SandboxOptions,
  ) {
    this.files = mkdtempSync(path.join(os.tmpdir(), 'mesh-xds-sandbox-'));
    // The sidecars (uid 1500) read their bootstrap from here.
    chmodSync(this.files, 0o755);
    this.dir = path.join(this.files, 'manifests');
    mkdirSync(this.dir);
    this.caDir = path.join(this.files, 'ca');
  }

  /** Builds the pods, starts the control plane and every sidecar and app, and waits until all serve. */
  static async start(opts: SandboxOptions): Promise<Sandbox> {
    const problems = sandboxProblems();
    if (problems.length) throw new Error(`the sandbox cannot run here:\n- ${problems.join('\n- ')}`);
    const net = await Network.create();
    const sb = new Sandbox(net, opts);
    try {
      await sb.boot();
    } catch (e) {
      await sb.close();
      throw e;
    }
    return sb;
  }

  private say(line: string): void {
    this.opts.progress?.(line);
  }

  workload(name: string): Workload {
    const w = this.workloads.get(name);
    if (!w) throw new Error(`no workload ${name} in the sandbox (${[...this.workloads.keys()].join(', ')})`);
    return w;
  }

  /** The pod's hosts file: the control plane's name, and every Service's names (short ones in its namespace). */
  private hostsFor(w: WorkloadSpec): [string, string[]][] {
    const ns = w.namespace;
    return [
      [CONTROL_PLANE_VIP, [controlPlaneHost(sidecarBootstrap(w.sample))]],
      ...this.planned
        .filter((p) => p.w.ports?.length)
        .map(({ w, clusterIP, ip }): [string, string[]] => {
          const fqdn = `${w.name}.${w.namespace}.svc.cluster.local`;
          return [w.headless ? ip! : clusterIP, [fqdn, `${w.name}.${w.namespace}.svc`, `${w.name}.${w.namespace}`, ...(w.namespace === ns ? [w.name] : [])]];
        }),
    ];
  }

  private async startControlPlane(address: string): Promise<ControlPlane> {
    const cp = new ControlPlane(this.dir, `${address}:${ADS_PORT}`, this.caDir, this.opts.controlPlaneArgs);
    this.controlPlanes.push(cp);
    await cp.start();
    return cp;
  }

  /** A second control-plane replica on another address of the bridge, serving the same folder. */
  async startReplica(): Promise<ControlPlane> {
    return this.startControlPlane(await this.net.addHostAddress());
  }

  /**
   * kube-proxy's part, in each pod: the control plane's ClusterIP is DNATed to the replica it picks, so a new
   * connection goes to `cp` while established ones stay where they are.
   */
  private async routeControlPlane(pod: Pod, cp: ControlPlane, first: boolean): Promise<void> {
    const rule = ['-d', `${CONTROL_PLANE_VIP}/32`, '-p', 'tcp', '--dport', String(ADS_PORT), '-j', 'DNAT', '--to-destination', cp.adsAddress];
    const steps = first
      ? [['-N', 'KUBE-SERVICES'], ['-I', 'OUTPUT', '1', '-j', 'KUBE-SERVICES'], ['-A', 'KUBE-SERVICES', ...rule]]
      : [['-R', 'KUBE-SERVICES', '1', ...rule]];
    for (const step of steps) {
      const r = await pod.exec('iptables', ['-t', 'nat', ...step]);
      if (r.code !== 0) throw new Error(`pod ${pod.netns}: iptables ${step.join(' ')}: ${r.stderr}`);
    }
  }

  /** Sends the pods' new connections to the control plane to `cp` (the Service now picks that replica). */
  async pointPodsAt(cp: ControlPlane): Promise<void> {
    this.controlPlane = cp;
    await Promise.all([...this.workloads.values()].map((w) => this.routeControlPlane(w.pod, cp, false)));
  }

  private async boot(): Promise<void> {
    this.planned = this.opts.workloads.map((w, i) => ({ w, name: podName(w), clusterIP: w.headless ? 'None' : `10.96.0.${10 + i}` }));
    // Every pod's address is known before anything starts: the Pod objects carry it, as the kubelet reports it.
    const made = new Map<string, Pod>();
    for (const p of this.planned) {
      const pod = await this.net.pod(p.name);
      made.set(p.w.name, pod);
      p.ip = pod.ip;
    }
    this.writeManifests(this.planned);
    // `mesh-xds ca init`: the CA of the mesh, which the control plane serves with and the sidecars' Secrets hold.
    this.ca = await createCa('cluster.local');
    writeCaDir(this.caDir, this.ca);

    this.controlPlane = await this.startControlPlane(this.net.gateway);
    this.say(`control plane: mesh-xds serve --manifests ${this.dir} (ADS on ${this.controlPlane.adsAddress}, debug on ${this.controlPlane.debugUrl})`);

    await Promise.all(
      this.planned.map(async ({ w, name }) => {
        const pod = made.get(w.name)!;
        pod.setHosts(this.hostsFor(w));
        // The init container: the sample's own iptables script, run in the pod.
        const init = await pod.exec('/bin/sh', ['-c', initScript(w.sample)]);
        if (init.code !== 0) throw new Error(`pod ${name}: the init script injected into deploy/samples/guide/${w.sample} failed: ${init.stderr}`);
        await this.routeControlPlane(pod, this.controlPlane, true);
        const identity = await this.identity(w.namespace, w.serviceAccount);
        const sidecar = startSidecar(pod, { sample: w.sample, facts: { name, namespace: w.namespace, serviceAccount: w.serviceAccount, ip: pod.ip }, dir: this.files, flavour: w.flavour, identity });
        const app = w.app ? pod.spawn(w.name, w.app.command[0], w.app.command.slice(1)) : undefined;
        this.workloads.set(w.name, { spec: w, podName: name, pod, sidecar, app });
        await Promise.all([
          sidecarLive(sidecar),
          app?.waitFor(w.app!.ready, 30_000),
        ]);
        this.say(`pod ${w.namespace}/${name} (${pod.ip}): ${w.app ? `${w.name} and ` : ''}Envoy ${ENVOY_VERSION} sidecar, traffic redirected by the sample's init script`);
      }),
    );
  }

  /** Restarts a workload's Envoy sidecar as the kubelet restarts a container (same pod and bootstrap, counters from zero); resolves once it is LIVE. */
  async restartSidecar(name: string): Promise<Sidecar> {
    const w = this.workload(name);
    await w.sidecar.proc.stop();
    const { namespace, serviceAccount, sample, flavour } = w.spec;
    const identity = await this.identity(namespace, serviceAccount);
    w.sidecar = startSidecar(w.pod, { sample, facts: { name: w.podName, namespace, serviceAccount, ip: w.pod.ip }, dir: this.files, flavour, identity });
    await sidecarLive(w.sidecar);
    return w.sidecar;
  }

  /** Renews a workload's identity Secret in place, as the kubelet updates a mounted Secret. */
  async renewIdentity(name: string): Promise<void> {
    const w = this.workload(name);
    const dir = path.join(this.files, w.podName, 'identity');
    writeTlsDir(dir, await this.identity(w.spec.namespace, w.spec.serviceAccount), sidecarUid(w.spec.sample));
  }

  /** The Secret mesh-xds-identity-<service account> of a namespace: its certificate, key and the CA. */
  identity(namespace: string, serviceAccount: string, ttlMs?: number): Promise<TlsBundle> {
    return issue(this.ca, { trustDomain: 'cluster.local', namespace, serviceAccount, ttlMs });
  }

  private writeManifests(pods: Planned[]): void {
    const docs: KubeObject[] = [
      {
        apiVersion: 'config.flomesh.io/v1alpha3',
        kind: 'MeshConfig',
        metadata: { name: 'fsm-mesh-config', namespace: 'mesh-xds' },
        spec: { featureFlags: { enableRetryPolicy: this.opts.enableRetryPolicy ?? true }, traffic: { enablePermissiveTrafficPolicyMode: true } },
      },
    ];
    for (const ns of [...new Set(pods.map((p) => p.w.namespace))].sort()) {
      docs.push({ apiVersion: 'v1', kind: 'Namespace', metadata: { name: ns, labels: { [MONITORED_BY_LABEL]: 'mesh-xds' } } });
    }
    const accounts = new Set<string>();
    for (const { w, name, clusterIP, ip } of pods) {
      if (!accounts.has(`${w.namespace}/${w.serviceAccount}`)) {
        accounts.add(`${w.namespace}/${w.serviceAccount}`);
        docs.push({ apiVersion: 'v1', kind: 'ServiceAccount', metadata: { name: w.serviceAccount, namespace: w.namespace } });
      }
      if (w.ports?.length) {
        docs.push({
          apiVersion: 'v1',
          kind: 'Service',
          metadata: { name: w.name, namespace: w.namespace, labels: { app: w.name } },
          spec: { clusterIP, selector: { app: w.name }, ports: w.ports.map((p) => ({ ...p, protocol: 'TCP' })) },
        });
      }
      docs.push({
        apiVersion: 'v1',
        kind: 'Pod',
        metadata: { name, namespace: w.namespace, labels: { app: w.name } },
        spec: { serviceAccountName: w.serviceAccount, containers: [{ name: w.name, ports: (w.ports ?? []).map((p) => ({ name: p.name, containerPort: p.targetPort })) }] },
        status: { phase: 'Running', podIP: ip, conditions: [{ type: 'Ready', status: 'True' }] },
      });
    }
    this.writeManifest('mesh.yaml', docs.map((d) => stringify(d)).join('---\n'));
    for (const [file, text] of Object.entries(this.opts.manifests ?? { 'retry.yaml': sampleRetryText() })) this.writeManifest(file, text);
  }

  writeManifest(file: string, text: string): void {
    writeFileSync(path.join(this.dir, file), text);
  }

  readManifest(file: string): string {
    return readFileSync(path.join(this.dir, file), 'utf8');
  }

  removeManifest(file: string): void {
    unlinkSync(path.join(this.dir, file));
  }

  /** `mesh-xds ARGS` run inside a pod (as `kubectl exec` or a port-forward would reach the pod's admin). */
  cli(workload: string, args: string[]): Promise<ExecResult> {
    return this.workload(workload).pod.exec(process.execPath, [packagePath('bin/mesh-xds.js'), ...args]);
  }

  async close(): Promise<void> {
    await Promise.all(this.controlPlanes.map((cp) => cp.stop().catch(() => {})));
    await this.net.destroy();
    rmSync(this.files, { recursive: true, force: true });
  }
}
