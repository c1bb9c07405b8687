/**
 * A node of the sandbox cluster, standing in for a kubelet where there is no container runtime and no registry:
 * it registers a Node, binds the pods no scheduler binds, and runs each pod bound to it as a network namespace
 * (netns.ts) from its spec: init containers in order to completion, then the containers, each image mapped to a
 * real program of this machine (IMAGES, the one table). It writes pod status back as a kubelet does (podIP,
 * init and container statuses, Ready from the readiness probes, which it runs over the pod's address), restarts
 * containers that exit, and on deletion stops the pod and removes it. kube-proxy's part is played inside each pod:
 * a Service's ClusterIP is DNATed to a ready endpoint, for the traffic the sidecar lets through (its own and the
 * app's to loopback) and for pods without one.
 *
 * What it does not do, and what stands in: no mount namespace, so a volume is a folder of the pod and the
 * container's args, env and the volume's own files name that folder where the spec names the mountPath; no
 * projected service-account token, so the control plane's image gets a kubeconfig with a token of its service
 * account (the TokenRequest API) in KUBECONFIG. Its kubelet API is node-agent (scripts/kube/node-agent, built
 * with the Kubernetes parts): the API server's `kubectl exec` runs the command in the pod's network namespace as
 * the container's user, and `kubectl logs` reads the container's log file; each pod's folder holds what the agent
 * reads (pod.json: the namespace, each container's user, env and image programs; logs/CONTAINER.log). Not served: attach,
 * port-forward, a TTY. `exec()` runs a command in the pod's network namespace from here. Names resolve from the
 * pod's hosts file (every Service's names), as there is no cluster DNS.
 */
import { createHash, randomBytes } from 'node:crypto';
import { chmodSync, chownSync, closeSync, fstatSync, lchownSync, lstatSync, mkdirSync, openSync, readdirSync, renameSync, rmSync, symlinkSync, writeFileSync, writeSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import * as k8s from '@kubernetes/client-node';
import { kubeJson } from '../src/outputs/lease.js';
import { packagePath } from '../src/paths.js';
import { KUBE_BIN, type KubeCluster } from './kube.js';
import { Network, Proc, type ExecResult, type Pod } from './netns.js';
import { GUNICORN_BIN, envoyForSidecars } from './parts.js';
import { containerEnv, expandArgs, type PodFacts } from './samples.js';

/** How an image runs here: its entrypoint and the local program for each command a container may name. */
interface LocalImage {
  /** The image's ENTRYPOINT, used when the container gives no command. */
  entrypoint: string[];
  /** A command's first word as the image has it -> the program here (absent: as written, from this machine). */
  programs?: Record<string, string>;
  /** Arguments this machine's program cannot take, dropped (with why, in the table). */
  drop?: (args: string[]) => string[];
  /** Runs as root whatever runAsUser says (the checkout may be readable by root only). */
  asRoot?: boolean;
  /** Environment the pod would have from the cluster (the in-cluster config stand-in). */
  clusterAccess?: boolean;
}

const ALWAYS_503 = `const port = Number(process.argv[1] ?? 14001);
require('node:http').createServer((q, s) => { console.log(q.method + ' ' + q.url + ' 503'); s.writeHead(503, { 'content-length': 0 }); s.end(); }).listen(port, () => console.log('listening on ' + port));`;

/** Image (without its tag) -> the real program it runs here. An image not here is ErrImagePull, as a kubelet reports. */
export const IMAGES: Record<string, LocalImage> = {
  // The pinned Envoy of .cache (scripts/real-parts.txt), copied where uid 1500 can run it.
  'envoyproxy/envoy': { entrypoint: ['envoy'], programs: { envoy: 'envoy' } },
  // Any shell with iptables: the init container's script runs with this machine's sh and iptables.
  'nicolaka/netshoot': { entrypoint: ['/bin/sh'] },
  // httpbin under gunicorn from .cache/venv; its gevent worker is not installed there, so `-k gevent` becomes
  // gunicorn's threaded worker (as concurrent for these tests, and the same answers).
  'kennethreitz/httpbin': {
    entrypoint: ['gunicorn', '-b', '0.0.0.0:80', 'httpbin:app', '-k', 'gevent'],
    programs: { gunicorn: GUNICORN_BIN },
    drop: (args) => {
      const out = [...args];
      const k = out.indexOf('-k');
      if (k >= 0 && out[k + 1] === 'gevent') out.splice(k, 2, '-k', 'gthread', '--threads', '64');
      return [...out, '--access-logfile', '-', '--no-control-socket'];
    },
  },
  // A replica that fails: 503 to every request on the port it is given (default 14001), one log line per request.
  'mesh-xds-sandbox/always-503': { entrypoint: ['node', '-e', ALWAYS_503], programs: { node: process.execPath } },
  // curl's image sleeps; `exec` runs this machine's curl in the pod.
  'curlimages/curl': { entrypoint: ['curl'] },
  // The control plane, from this checkout (Dockerfile: ENTRYPOINT node bin/mesh-xds.js).
  'mesh-xds': { entrypoint: ['node', 'bin/mesh-xds.js'], programs: { node: process.execPath }, asRoot: true, clusterAccess: true },
  // The Gateway API mesh conformance suite's echo (Istio's echo app: ENTRYPOINT server; the suite execs `client`):
  // sandbox/echo, answering and printing what the suite parses (docs/conformance/README.md).
  'registry.k8s.io/gateway-api/conformance/echo-advanced': {
    entrypoint: ['server'],
    programs: { server: packagePath('sandbox/echo/server.mjs'), client: packagePath('sandbox/echo/client.mjs') },
  },
};

const imageName = (image: string): string => image.replace(/@.*$/, '').replace(/:[^/:]*$/, '');

type Json = Record<string, any>;

interface Running {
  uid: string;
  namespace: string;
  name: string;
  pod: Pod;
  dir: string;
  spec: Json;
  procs: Map<string, Proc>;
  restarts: Map<string, number>;
  ready: Map<string, boolean>;
  initDone: boolean;
  startedAt: string;
  waiting?: { reason: string; message: string };
  stopping: boolean;
  lastStatus: string;
  secretVersions: Map<string, string>;
  volumesAt: number;
}

export interface SandboxNodeOptions {
  name?: string;
  /** Progress lines. */
  log?: (line: string) => void;
  /** `kubectl exec` and `kubectl logs -f` sessions the node serves at once (node-agent --max-sessions; default 64). */
  maxSessions?: number;
}

export class SandboxNode {
  readonly name: string;
  readonly net: Network;
  private readonly kc: k8s.KubeConfig;
  private readonly pods = new Map<string, Running>();
  private timer?: NodeJS.Timeout;
  private ticking = false;
  private stopped = false;
  private readonly root: string;
  private services: Json[] = [];
  private slices: Json[] = [];
  private hostsText = '';
  private routesText = '';
  private agent?: Proc;

  private constructor(
    private readonly kube: KubeCluster,
    net: Network,
    private readonly o: SandboxNodeOptions,
  ) {
    this.net = net;
    this.name = o.name ?? 'sandbox-node';
    this.kc = new k8s.KubeConfig();
    this.kc.loadFromFile(kube.adminKubeconfig);
    this.root = path.join(os.tmpdir(), `mesh-xds-node-${randomBytes(4).toString('hex')}`);
    mkdirSync(this.root, { mode: 0o755 });
    chmodSync(this.root, 0o755);
  }

  /** Registers the node on `net` (whose bridge address the API server listens on) and starts running pods. */
  static async start(kube: KubeCluster, net: Network, o: SandboxNodeOptions = {}): Promise<SandboxNode> {
    const node = new SandboxNode(kube, net, o);
    try {
      await node.register(await node.startAgent());
    } catch (e) {
      await node.stop();
      throw e;
    }
    node.loop();
    return node;
  }

  /** The node's kubelet API (node-agent) on the node's address; its port. */
  private async startAgent(): Promise<number> {
    const ca = this.kube.kubeletCA;
    this.agent = Proc.spawn('node-agent', path.join(KUBE_BIN, 'node-agent'), ['--listen', `${this.net.gateway}:0`, '--pods', this.root, '--ca-cert', ca.cert, '--ca-key', ca.key, ...(this.o.maxSessions ? ['--max-sessions', String(this.o.maxSessions)] : [])]);
    const line = await this.agent.waitFor(/^listening on \S+:\d+$/, 15_000);
    return Number(line.slice(line.lastIndexOf(':') + 1));
  }

  private api(method: string, p: string, body?: unknown, type?: string): Promise<{ status: number; body: any }> {
    return kubeJson(this.kc, method, p, body, type) as Promise<{ status: number; body: any }>;
  }

  private say(line: string): void {
    this.o.log?.(line);
  }

  private async register(kubeletPort: number): Promise<void> {
    const status = {
      daemonEndpoints: { kubeletEndpoint: { Port: kubeletPort } },
      conditions: [{ type: 'Ready', status: 'True', reason: 'KubeletReady', message: 'sandbox node (mesh-xds sandbox/node.ts)', lastHeartbeatTime: new Date().toISOString(), lastTransitionTime: new Date().toISOString() }],
      addresses: [{ type: 'InternalIP', address: this.net.gateway }, { type: 'Hostname', address: this.name }],
      capacity: { cpu: '2', memory: '24Gi', pods: '110' },
      allocatable: { cpu: '2', memory: '24Gi', pods: '110' },
      nodeInfo: { kubeletVersion: 'v1.34.4-sandbox', operatingSystem: 'linux', architecture: 'amd64', containerRuntimeVersion: 'sandbox://netns', kernelVersion: os.release(), osImage: 'sandbox', kubeProxyVersion: '', machineID: '', systemUUID: '', bootID: '' },
    };
    const res = await this.api('POST', '/api/v1/nodes', { apiVersion: 'v1', kind: 'Node', metadata: { name: this.name, labels: { 'kubernetes.io/hostname': this.name, 'kubernetes.io/os': 'linux' } }, status });
    if (res.status !== 201 && res.status !== 409) throw new Error(`register node ${this.name}: HTTP ${res.status} ${JSON.stringify(res.body)}`);
    const st = await this.api('PATCH', `/api/v1/nodes/${this.name}/status`, { status }, 'application/merge-patch+json');
    if (st.status !== 200) throw new Error(`node ${this.name} status: HTTP ${st.status} ${JSON.stringify(st.body)}`);
  }

  private loop(): void {
    const tick = async (): Promise<void> => {
      if (this.stopped) return;
      if (!this.ticking) {
        this.ticking = true;
        try {
          await this.sync();
        } catch (e) {
          this.say(`node: ${(e as Error).message}`);
        } finally {
          this.ticking = false;
        }
      }
      if (!this.stopped) this.timer = setTimeout(() => void tick(), 250);
    };
    void tick();
  }

  /** One pass: bind, start, probe, report, stop what was deleted; the pods' hosts and Service routes. */
  private async sync(): Promise<void> {
    const [pods, services, slices] = await Promise.all([this.api('GET', '/api/v1/pods'), this.api('GET', '/api/v1/services'), this.api('GET', '/apis/discovery.k8s.io/v1/endpointslices')]);
    if (pods.status !== 200 || services.status !== 200 || slices.status !== 200) return;
    this.services = services.body.items;
    this.slices = slices.body.items;
    const seen = new Set<string>();
    for (const p of pods.body.items as Json[]) {
      const uid = p.metadata.uid as string;
      if (!p.spec.nodeName) {
        if (!p.metadata.deletionTimestamp) await this.bind(p);
        continue;
      }
      if (p.spec.nodeName !== this.name) continue;
      seen.add(uid);
      const r = this.pods.get(uid);
      if (p.metadata.deletionTimestamp) {
        if (r && !r.stopping) void this.remove(r, true);
        else if (!r) await this.api('DELETE', `/api/v1/namespaces/${p.metadata.namespace}/pods/${p.metadata.name}?gracePeriodSeconds=0`, { kind: 'DeleteOptions', apiVersion: 'v1', gracePeriodSeconds: 0, preconditions: { uid } });
        continue;
      }
      if (!r) {
        if (p.status?.phase === 'Succeeded' || p.status?.phase === 'Failed') continue;
        await this.admit(p);
      } else if (!r.stopping) await this.advance(r);
    }
    for (const r of this.pods.values()) if (!seen.has(r.uid) && !r.stopping) void this.remove(r, false);
    this.refreshNetwork();
  }

  private async bind(p: Json): Promise<void> {
    await this.api('POST', `/api/v1/namespaces/${p.metadata.namespace}/pods/${p.metadata.name}/binding`, {
      apiVersion: 'v1',
      kind: 'Binding',
      metadata: { name: p.metadata.name, namespace: p.metadata.namespace },
      target: { apiVersion: 'v1', kind: 'Node', name: this.name },
    });
  }

  /** A new pod: its network namespace (the pod sandbox), then the rest in advance(). */
  private async admit(p: Json): Promise<void> {
    const { namespace, name, uid } = p.metadata;
    const short = createHash('sha256').update(uid).digest('hex').slice(0, 8);
    const pod = await this.net.pod(`${name.slice(0, 30)}-${short}`);
    const dir = path.join(this.root, `${namespace}_${name}`);
    mkdirSync(dir, { recursive: true, mode: 0o755 });
    const r: Running = { uid, namespace, name, pod, dir, spec: p.spec, procs: new Map(), restarts: new Map(), ready: new Map(), initDone: false, startedAt: new Date().toISOString(), stopping: false, lastStatus: '', secretVersions: new Map(), volumesAt: 0 };
    this.pods.set(uid, r);
    this.writeExecFile(r);
    this.say(`node: pod ${namespace}/${name} at ${pod.ip}`);
    this.writeHosts(r);
    await this.report(r);
  }

  /**
   * What node-agent needs for `kubectl exec`, per container: its user, env and working folder, and its image's
   * programs (the suite's `client` is sandbox/echo/client.mjs). Root's only (env may hold a Secret's values);
   * written whole, then renamed: the agent never reads half a file.
   */
  private writeExecFile(r: Running): void {
    const containers: Json = {};
    for (const c of [...(r.spec.initContainers ?? []), ...r.spec.containers] as Json[]) {
      const run = this.command(r, c);
      const programs = Object.fromEntries(Object.entries(IMAGES[imageName(c.image ?? '')]?.programs ?? {}).filter(([, to]) => to !== 'envoy'));
      containers[c.name] = { uid: this.containerUid(r, c) ?? null, programs, ...('error' in run ? {} : { env: run.env, cwd: run.cwd ?? '' }) };
    }
    writeFileSync(path.join(r.dir, 'pod.json.tmp'), JSON.stringify({ netns: r.pod.netns, containers }), { mode: 0o600 });
    renameSync(path.join(r.dir, 'pod.json.tmp'), path.join(r.dir, 'pod.json'));
  }

  /** Every Service's names in the pod's hosts file (short names in its own namespace). */
  private writeHosts(r: Running): void {
    const entries: [string, string[]][] = [];
    for (const s of this.services) {
      const ip = s.spec.clusterIP;
      if (!ip || ip === 'None') continue;
      const { name, namespace } = s.metadata;
      entries.push([ip, [`${name}.${namespace}.svc.cluster.local`, `${name}.${namespace}.svc`, `${name}.${namespace}`, ...(namespace === r.namespace ? [name] : [])]]);
    }
    r.pod.setHosts(entries);
  }

  /** kube-proxy's rules for one pod: each ClusterIP:port to a ready endpoint. */
  private serviceRules(): string[][] {
    const rules: string[][] = [];
    for (const s of this.services) {
      const ip = s.spec.clusterIP;
      if (!ip || ip === 'None') continue;
      const slices = this.slices.filter((x) => x.metadata.namespace === s.metadata.namespace && x.metadata.labels?.['kubernetes.io/service-name'] === s.metadata.name);
      for (const port of s.spec.ports ?? []) {
        for (const slice of slices) {
          const sp = (slice.ports ?? []).find((x: Json) => (x.name ?? '') === (port.name ?? ''));
          const ep = (slice.endpoints ?? []).find((e: Json) => e.conditions?.ready !== false);
          if (!sp || !ep) continue;
          rules.push(['-d', `${ip}/32`, '-p', 'tcp', '--dport', String(port.port), '-j', 'DNAT', '--to-destination', `${ep.addresses[0]}:${sp.port}`]);
          break;
        }
      }
    }
    return rules;
  }

  /** Hosts files and Service rules follow the Services and their endpoints. */
  private refreshNetwork(): void {
    const hosts = JSON.stringify(this.services.map((s) => [s.metadata.namespace, s.metadata.name, s.spec.clusterIP]));
    const rules = this.serviceRules();
    const routes = JSON.stringify(rules);
    const hostsChanged = hosts !== this.hostsText;
    const routesChanged = routes !== this.routesText;
    this.hostsText = hosts;
    this.routesText = routes;
    for (const r of this.pods.values()) {
      if (r.stopping) continue;
      if (hostsChanged) this.writeHosts(r);
      if (routesChanged && r.initDone) void this.installRoutes(r, rules);
    }
  }

  private async installRoutes(r: Running, rules: string[][]): Promise<void> {
    const ipt = async (...a: string[]): Promise<ExecResult> => r.pod.exec('iptables', ['-t', 'nat', ...a]);
    if ((await ipt('-N', 'KUBE-SERVICES')).code === 0) {
      // After the sidecar's rules: what it redirects never gets here, as on a node (kube-proxy sees what leaves the pod).
      await ipt('-A', 'OUTPUT', '-j', 'KUBE-SERVICES');
    } else await ipt('-F', 'KUBE-SERVICES');
    for (const rule of rules) await ipt('-A', 'KUBE-SERVICES', ...rule);
  }

  /** Volumes as folders of the pod: secrets and configMaps written as the kubelet writes them, emptyDirs made. */
  private async volumes(r: Running): Promise<{ missing?: string }> {
    // Once a pod runs, its Secrets and ConfigMaps are read again every few seconds (a kubelet: about a minute).
    if (r.initDone && Date.now() - r.volumesAt < 3_000) return {};
    r.volumesAt = Date.now();
    for (const v of r.spec.volumes ?? []) {
      const dir = path.join(r.dir, 'volumes', v.name);
      let data: Record<string, string>;
      let version: string;
      if (v.secret) {
        const s = await this.api('GET', `/api/v1/namespaces/${r.namespace}/secrets/${v.secret.secretName}`);
        if (s.status === 404) return { missing: `secret "${v.secret.secretName}" not found` };
        if (s.status !== 200) return { missing: `secret ${v.secret.secretName}: HTTP ${s.status}` };
        data = Object.fromEntries(Object.entries((s.body.data ?? {}) as Record<string, string>).map(([k, b]) => [k, Buffer.from(b, 'base64').toString('utf8')]));
        version = s.body.metadata.resourceVersion;
      } else if (v.configMap) {
        const c = await this.api('GET', `/api/v1/namespaces/${r.namespace}/configmaps/${v.configMap.name}`);
        if (c.status !== 200) return { missing: `configmap "${v.configMap.name}" not found` };
        data = c.body.data ?? {};
        version = c.body.metadata.resourceVersion;
      } else {
        mkdirSync(dir, { recursive: true, mode: 0o777 });
        continue;
      }
      if (r.secretVersions.get(v.name) === version) continue;
      r.secretVersions.set(v.name, version);
      const owner = this.volumeOwner(r, v.name);
      const mode = (v.secret ?? v.configMap).defaultMode ?? 0o644;
      writeVolume(dir, this.localize(r, data), mode, owner);
    }
    return {};
  }

  /** The uid of the (first) container mounting a volume: the files are its own (what fsGroup achieves on a node). */
  private volumeOwner(r: Running, volume: string): number | undefined {
    for (const c of [...(r.spec.initContainers ?? []), ...r.spec.containers]) {
      if ((c.volumeMounts ?? []).some((m: Json) => m.name === volume)) return c.securityContext?.runAsUser ?? r.spec.securityContext?.runAsUser;
    }
    return undefined;
  }

  /** Mount paths of the pod -> its folders, in text (args, env, the volumes' own files). */
  private localize<T extends string | Record<string, string>>(r: Running, x: T): T {
    const mounts: [string, string][] = [];
    for (const c of [...(r.spec.initContainers ?? []), ...r.spec.containers]) for (const m of c.volumeMounts ?? []) mounts.push([m.mountPath, path.join(r.dir, 'volumes', m.name)]);
    mounts.sort((a, b) => b[0].length - a[0].length);
    const one = (s: string): string => mounts.reduce((t, [from, to]) => t.replaceAll(from, to), s);
    return (typeof x === 'string' ? one(x) : Object.fromEntries(Object.entries(x).map(([k, v]) => [k, one(v)]))) as T;
  }

  /** The next step of a pod: volumes, init containers, containers, probes; then its status. */
  private async advance(r: Running): Promise<void> {
    const vols = await this.volumes(r);
    if (vols.missing) {
      r.waiting = { reason: 'ContainerCreating', message: `MountVolume.SetUp failed: ${vols.missing}` };
      return this.report(r);
    }
    if (!r.initDone) {
      for (const c of r.spec.initContainers ?? []) {
        const run = this.command(r, c);
        if ('error' in run) {
          r.waiting = { reason: 'ErrImagePull', message: run.error };
          return this.report(r);
        }
        const res = await r.pod.exec(run.cmd, run.args, { uid: run.uid, env: run.env });
        if (res.code !== 0) {
          r.waiting = { reason: 'Init:Error', message: `init container ${c.name} exited ${res.code}: ${res.stderr.trim().slice(-500)}` };
          return this.report(r);
        }
      }
      r.initDone = true;
      r.waiting = undefined;
      await this.installRoutes(r, this.serviceRules());
    }
    if (r.spec.containers.some((c: Json) => IMAGES[imageName(c.image ?? '')]?.clusterAccess) && !(await this.clusterAccess(r))) {
      r.waiting = { reason: 'ContainerCreating', message: `no token for service account ${r.spec.serviceAccountName ?? 'default'} yet` };
      return this.report(r);
    }
    for (const c of r.spec.containers) {
      const proc = r.procs.get(c.name);
      if (proc && proc.exitCode === undefined) continue;
      if (proc) {
        // Exited: restarted (restartPolicy Always), after a short back-off.
        r.restarts.set(c.name, (r.restarts.get(c.name) ?? 0) + 1);
        r.ready.set(c.name, false);
        this.say(`node: ${r.namespace}/${r.name} container ${c.name} exited (${proc.exitCode}); restarting\n${proc.tail(10)}`);
      }
      const run = this.command(r, c);
      if ('error' in run) {
        r.waiting = { reason: 'ErrImagePull', message: run.error };
        return this.report(r);
      }
      const started = r.pod.spawn(`${r.namespace}/${r.name}/${c.name}`, run.cmd, run.args, { uid: run.uid, env: run.env, cwd: run.cwd });
      r.procs.set(c.name, started);
      logTo(started, path.join(r.dir, 'logs', `${c.name}.log`));
    }
    await Promise.all(r.spec.containers.map(async (c: Json) => r.ready.set(c.name, await this.probe(r, c))));
    await this.report(r);
  }

  /** What a container runs here, or why it cannot. */
  private command(r: Running, c: Json): { cmd: string; args: string[]; uid?: number; env: NodeJS.ProcessEnv; cwd?: string } | { error: string } {
    const image = IMAGES[imageName(c.image ?? '')];
    if (!image) return { error: `image ${c.image} is not on the sandbox node (sandbox/node.ts IMAGES: ${Object.keys(IMAGES).join(', ')})` };
    const facts: PodFacts = { name: r.name, namespace: r.namespace, serviceAccount: r.spec.serviceAccountName ?? 'default', ip: r.pod.ip };
    const env = containerEnv(c, facts);
    // The container's command, else the image's entrypoint; then its args; `$(VAR)` expanded.
    let words: string[] = [...(c.command ?? image.entrypoint), ...(c.args ?? [])].map((a: string) => expandArgs(a, env));
    if (image.drop) words = [words[0], ...image.drop(words.slice(1))];
    words = words.map((w) => this.localize(r, w));
    let cmd = image.programs?.[words[0]] ?? words[0];
    if (cmd === 'envoy') cmd = envoyForSidecars();
    const extra: NodeJS.ProcessEnv = {};
    if (image.clusterAccess) extra.KUBECONFIG = path.join(r.dir, 'kubeconfig');
    // As a container runtime does: HOSTNAME is the pod's hostname (the echo server reports it).
    extra.HOSTNAME = r.spec.hostname ?? r.name;
    return { cmd, args: words.slice(1), uid: this.containerUid(r, c), env: { ...this.localize(r, env as Record<string, string>), ...extra }, cwd: image.clusterAccess ? packagePath('.') : undefined };
  }

  /** The user a container runs as here (undefined: root). */
  private containerUid(r: Running, c: Json): number | undefined {
    return IMAGES[imageName(c.image ?? '')]?.asRoot ? undefined : (c.securityContext?.runAsUser ?? r.spec.securityContext?.runAsUser);
  }

  /** A readiness probe (httpGet over the pod's address, as a kubelet), or a running process where there is none. */
  private async probe(r: Running, c: Json): Promise<boolean> {
    const proc = r.procs.get(c.name);
    if (!proc || proc.exitCode !== undefined) return false;
    const get = c.readinessProbe?.httpGet;
    if (!get) return true;
    const port = typeof get.port === 'number' ? get.port : (c.ports ?? []).find((p: Json) => p.name === get.port)?.containerPort;
    try {
      const res = await fetch(`http://${r.pod.ip}:${port}${get.path ?? '/'}`, { signal: AbortSignal.timeout(1000) });
      await res.arrayBuffer();
      return res.status >= 200 && res.status < 400;
    } catch {
      return false;
    }
  }

  /** The pod's status as a kubelet writes it; only when it changed. */
  private async report(r: Running): Promise<void> {
    const now = new Date().toISOString();
    const allReady = r.initDone && r.spec.containers.every((c: Json) => r.ready.get(c.name));
    const cond = (type: string, ok: boolean) => ({ type, status: ok ? 'True' : 'False' });
    const containerStatuses = r.spec.containers.map((c: Json) => {
      const proc = r.procs.get(c.name);
      const running = proc && proc.exitCode === undefined;
      return {
        name: c.name,
        image: c.image,
        imageID: '',
        ready: Boolean(r.ready.get(c.name)),
        started: Boolean(running),
        restartCount: r.restarts.get(c.name) ?? 0,
        state: running ? { running: { startedAt: r.startedAt } } : { waiting: { reason: r.waiting?.reason ?? (r.initDone ? 'ContainerCreating' : 'PodInitializing'), ...(r.waiting ? { message: r.waiting.message } : {}) } },
      };
    });
    const initContainerStatuses = (r.spec.initContainers ?? []).map((c: Json) => ({
      name: c.name,
      image: c.image,
      imageID: '',
      ready: r.initDone,
      restartCount: 0,
      state: r.initDone ? { terminated: { exitCode: 0, reason: 'Completed' } } : { waiting: { reason: r.waiting?.reason ?? 'PodInitializing', ...(r.waiting ? { message: r.waiting.message } : {}) } },
    }));
    const status = {
      phase: r.initDone && containerStatuses.every((s: Json) => s.started) ? 'Running' : 'Pending',
      hostIP: this.net.gateway,
      hostIPs: [{ ip: this.net.gateway }],
      podIP: r.pod.ip,
      podIPs: [{ ip: r.pod.ip }],
      conditions: [cond('PodScheduled', true), cond('Initialized', r.initDone), cond('ContainersReady', allReady), cond('Ready', allReady)],
      containerStatuses,
      initContainerStatuses,
    };
    const text = JSON.stringify(status);
    if (text === r.lastStatus) return;
    r.lastStatus = text;
    const stamped = { ...status, startTime: r.startedAt, conditions: status.conditions.map((c) => ({ ...c, lastTransitionTime: now })) };
    const res = await this.api('PATCH', `/api/v1/namespaces/${r.namespace}/pods/${r.name}/status`, { status: stamped }, 'application/merge-patch+json');
    if (res.status !== 200) r.lastStatus = '';
  }

  /** The in-cluster config stand-in: a kubeconfig with a token of the pod's service account; false until it can be had. */
  private async clusterAccess(r: Running): Promise<boolean> {
    if (r.secretVersions.has('..kubeconfig')) return true;
    const sa = r.spec.serviceAccountName ?? 'default';
    const res = await this.api('POST', `/api/v1/namespaces/${r.namespace}/serviceaccounts/${sa}/token`, { apiVersion: 'authentication.k8s.io/v1', kind: 'TokenRequest', spec: { expirationSeconds: 86400 } });
    if (res.status !== 201) return false;
    writeFileSync(path.join(r.dir, 'kubeconfig'), this.kube.kubeconfig(`${r.namespace}-${sa}`, { token: res.body.status.token }), { mode: 0o644 });
    r.secretVersions.set('..kubeconfig', 'written');
    return true;
  }

  /** Stops a pod and removes its network namespace; a pod being deleted is then deleted for good. */
  private async remove(r: Running, finalize: boolean): Promise<void> {
    r.stopping = true;
    const grace = (r.spec.terminationGracePeriodSeconds ?? 30) * 1000;
    await Promise.all([...r.procs.values()].map((p) => p.stop(Math.min(grace, 5_000))));
    await this.net.removePod(r.pod);
    rmSync(r.dir, { recursive: true, force: true });
    this.pods.delete(r.uid);
    this.say(`node: pod ${r.namespace}/${r.name} stopped`);
    if (finalize) {
      const res = await this.api('DELETE', `/api/v1/namespaces/${r.namespace}/pods/${r.name}?gracePeriodSeconds=0`, { kind: 'DeleteOptions', apiVersion: 'v1', gracePeriodSeconds: 0, preconditions: { uid: r.uid } });
      if (res.status >= 300 && res.status !== 404) this.say(`node: delete pod ${r.namespace}/${r.name}: HTTP ${res.status} ${JSON.stringify(res.body)}`);
    }
  }

  /** The running pod of namespace/name. */
  running(namespace: string, name: string): Pod {
    const r = [...this.pods.values()].find((x) => x.namespace === namespace && x.name === name && !x.stopping);
    if (!r) throw new Error(`pod ${namespace}/${name} is not running on ${this.name}`);
    return r.pod;
  }

  /** What `kubectl exec POD -n NS -- CMD...` runs: the command in the pod's network namespace. */
  exec(namespace: string, name: string, cmd: string[]): Promise<ExecResult> {
    return this.running(namespace, name).exec(cmd[0], cmd.slice(1));
  }

  /** A container's output so far (what `kubectl logs` would show). */
  logs(namespace: string, name: string, container: string): string {
    const r = [...this.pods.values()].find((x) => x.namespace === namespace && x.name === name);
    return r?.procs.get(container)?.output ?? '';
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.timer);
    while (this.ticking) await new Promise((res) => setTimeout(res, 50));
    await Promise.all([...this.pods.values()].map((r) => Promise.all([...r.procs.values()].map((p) => p.stop(2_000)))));
    await this.agent?.stop(2_000);
    rmSync(this.root, { recursive: true, force: true });
  }
}

/** At most this much of a container's log is kept in its file (then it starts again; a kubelet rotates at 10 MiB). */
export const LOG_FILE_MAX = 10 << 20;

/** A container's stdout and stderr appended to its log file (what node-agent serves as `kubectl logs`). */
function logTo(proc: Proc, file: string): void {
  mkdirSync(path.dirname(file), { recursive: true, mode: 0o755 });
  let fd = openSync(file, 'a', 0o644);
  // A restarted container appends to its file: what is there counts.
  let size = fstatSync(fd).size;
  const write = (d: Buffer): void => {
    if (fd < 0) return;
    if (size + d.length > LOG_FILE_MAX) {
      closeSync(fd);
      fd = openSync(file, 'w', 0o644);
      size = 0;
    }
    try {
      size += writeSync(fd, d.subarray(0, LOG_FILE_MAX));
    } catch {
      /* the pod's folder is gone */
    }
  };
  proc.child.stdout?.on('data', write);
  proc.child.stderr?.on('data', write);
  // 'close': after the last output (which may come after the exit).
  proc.child.on('close', () => {
    if (fd >= 0) closeSync(fd);
    fd = -1;
  });
}

/** A Secret's or ConfigMap's files as the kubelet writes them: a hidden version folder, `..data` switched to it, links. */
function writeVolume(dir: string, data: Record<string, string>, mode: number, owner?: number): void {
  mkdirSync(dir, { recursive: true, mode: 0o755 });
  const version = `..${Date.now()}.${randomBytes(4).toString('hex')}`;
  const target = path.join(dir, version);
  mkdirSync(target, { mode: 0o755 });
  for (const [k, v] of Object.entries(data)) {
    writeFileSync(path.join(target, k), v, { mode });
    chmodSync(path.join(target, k), mode);
    if (owner !== undefined) chownSync(path.join(target, k), owner, owner);
  }
  const tmp = path.join(dir, '..data_tmp');
  rmSync(tmp, { force: true });
  symlinkSync(version, tmp);
  if (owner !== undefined) lchownSync(tmp, owner, owner);
  renameSync(tmp, path.join(dir, '..data'));
  for (const k of Object.keys(data)) {
    const link = path.join(dir, k);
    let isLink = false;
    try {
      isLink = lstatSync(link).isSymbolicLink();
    } catch {
      /* absent */
    }
    if (!isLink) symlinkSync(path.join('..data', k), link);
  }
  for (const e of readdirSync(dir)) if (e.startsWith('..') && e !== '..data' && e !== version) rmSync(path.join(dir, e), { recursive: true, force: true });
}
