/**
 * Pods on one machine, as a cluster's pod network would hold them: each pod a network namespace with its own
 * address on a private bridge (10.233.<n>.0/24, the bridge itself .1), its own /etc/hosts and resolv.conf
 * (`ip netns exec` mounts /etc/netns/<name>/), and a route for the Service range only, so that nothing a pod
 * sends can leave the machine. Linux and root only. Everything made is removed by `destroy()`, at process
 * exit, and by `sweepStaleSandboxes()` for the leftovers of a process that was killed.
 */
import { execFile, execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';

const SUBNET = '10.233';
/** The Service (ClusterIP) range: routed onto the pod's interface so iptables can redirect it to Envoy. */
export const SERVICE_CIDR = '10.96.0.0/12';
const OWNER_ALIAS = 'mesh-xds sandbox of pid ';

export interface ExecResult {
  code: number;
  stdout: string;
  stderr: string;
}

function run(cmd: string, args: string[], timeoutMs = 30_000): Promise<ExecResult> {
  return new Promise((resolve) => {
    execFile(cmd, args, { timeout: timeoutMs, maxBuffer: 64 * 1024 * 1024 }, (err, stdout, stderr) =>
      resolve({ code: err ? (typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : 1) : 0, stdout, stderr: stderr || (err && !stderr ? err.message : '') }),
    );
  });
}

async function ip(...args: string[]): Promise<void> {
  const r = await run('ip', args);
  if (r.code !== 0) throw new Error(`ip ${args.join(' ')}: ${r.stderr.trim()}`);
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

function quiet(fn: () => void): void {
  try {
    fn();
  } catch {
    /* best effort: already gone */
  }
}

/** Kills every process in the namespace and removes it with its /etc/netns folder. Synchronous (exit hooks). */
function removeNetnsSync(name: string): void {
  quiet(() => {
    const pids = execFileSync('ip', ['netns', 'pids', name], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).split(/\s+/).filter(Boolean);
    for (const pid of pids) quiet(() => process.kill(Number(pid), 'SIGKILL'));
  });
  quiet(() => execFileSync('ip', ['netns', 'del', name], { stdio: 'ignore' }));
  rmSync(path.join('/etc/netns', name), { recursive: true, force: true });
}

function removeSandboxSync(n: number): void {
  const prefix = `mx${n}-`;
  const names = execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' })
    .split('\n')
    .map((l) => l.split(' ')[0])
    .filter((l) => l.startsWith(prefix));
  for (const name of names) removeNetnsSync(name);
  quiet(() => execFileSync('ip', ['link', 'del', `mxb${n}`], { stdio: 'ignore' }));
}

/** Removes the sandboxes whose owning process is gone (a test run that was killed). */
export function sweepStaleSandboxes(): number {
  if (process.platform !== 'linux' || process.getuid?.() !== 0) return 0;
  let links: { ifname: string; ifalias?: string }[];
  try {
    links = JSON.parse(execFileSync('ip', ['-j', 'link', 'show', 'type', 'bridge'], { encoding: 'utf8' }));
  } catch {
    return 0;
  }
  let swept = 0;
  for (const l of links) {
    const m = /^mxb(\d+)$/.exec(l.ifname);
    const owner = l.ifalias?.startsWith(OWNER_ALIAS) ? Number(l.ifalias.slice(OWNER_ALIAS.length)) : NaN;
    // A bridge with no alias yet is being claimed by a sandbox in another test process (alias set just after `ip link
    // add`): left alone. Its number stays taken if that process died in between; there are 250.
    if (m && l.ifalias !== undefined && !(owner > 0 && alive(owner))) {
      removeSandboxSync(Number(m[1]));
      swept++;
    }
  }
  return swept;
}

/** A process of the sandbox (in a pod or not): its output is kept (the last 1 MiB) and can be waited on line by line. */
export class Proc {
  private out = '';
  private readonly waiters = new Set<() => void>();
  readonly exited: Promise<number | null>;
  exitCode: number | null | undefined;

  /** Starts `cmd` in a process group of its own (so that stop() reaches its children too). */
  static spawn(label: string, cmd: string, args: string[], opts: { env?: NodeJS.ProcessEnv; cwd?: string } = {}): Proc {
    const child = spawn(cmd, args, { detached: true, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...opts.env }, cwd: opts.cwd });
    return new Proc(label, child);
  }

  constructor(
    readonly label: string,
    readonly child: ChildProcess,
  ) {
    const take = (d: Buffer): void => {
      this.out += d.toString('utf8');
      if (this.out.length > 1 << 20) this.out = this.out.slice(-(1 << 19));
      for (const w of [...this.waiters]) w();
    };
    child.stdout?.on('data', take);
    child.stderr?.on('data', take);
    this.exited = new Promise((resolve) =>
      child.on('exit', (code, signal) => {
        this.exitCode = code ?? (signal ? null : code);
        for (const w of [...this.waiters]) w();
        resolve(code);
      }),
    );
  }

  get output(): string {
    return this.out;
  }

  /** Output lines so far (stdout and stderr interleaved). */
  lines(): string[] {
    return this.out.split('\n').filter(Boolean);
  }

  /** Resolves with the first output line that matches; rejects on exit or after `timeoutMs`. */
  waitFor(pattern: RegExp, timeoutMs = 30_000): Promise<string> {
    return new Promise((resolve, reject) => {
      const check = (): void => {
        const line = this.lines().find((l) => pattern.test(l));
        if (line !== undefined) return done(() => resolve(line));
        if (this.exitCode !== undefined) done(() => reject(new Error(`${this.label} exited (${this.exitCode}) before printing ${pattern}:\n${this.tail()}`)));
      };
      const timer = setTimeout(() => done(() => reject(new Error(`${this.label} did not print ${pattern} within ${timeoutMs} ms:\n${this.tail()}`))), timeoutMs);
      const done = (fn: () => void): void => {
        clearTimeout(timer);
        this.waiters.delete(check);
        fn();
      };
      this.waiters.add(check);
      check();
    });
  }

  tail(lines = 30): string {
    return this.lines().slice(-lines).join('\n');
  }

  /** SIGTERM to its process group, SIGKILL after `graceMs`. */
  async stop(graceMs = 3_000): Promise<void> {
    if (this.exitCode !== undefined || this.child.pid === undefined) return;
    const pid = this.child.pid;
    quiet(() => process.kill(-pid, 'SIGTERM'));
    const timer = setTimeout(() => quiet(() => process.kill(-pid, 'SIGKILL')), graceMs);
    await this.exited;
    clearTimeout(timer);
  }
}

export interface SpawnOptions {
  /** Run as this uid and gid (setpriv), as a container's securityContext.runAsUser would. */
  uid?: number;
  env?: NodeJS.ProcessEnv;
  cwd?: string;
}

/** One pod: a network namespace on the sandbox's bridge. */
export class Pod {
  readonly processes: Proc[] = [];

  constructor(
    readonly netns: string,
    readonly ip: string,
  ) {}

  /** Writes the pod's /etc/hosts in place (running processes see the change: the mount binds the file). */
  setHosts(entries: Iterable<readonly [string, string[]]>): void {
    const lines = ['127.0.0.1 localhost', `${this.ip} ${this.netns}`, ...[...entries].map(([addr, names]) => `${addr} ${names.join(' ')}`)];
    writeFileSync(path.join('/etc/netns', this.netns, 'hosts'), `${lines.join('\n')}\n`);
  }

  private command(cmd: string, args: string[], opts: SpawnOptions): string[] {
    const user = opts.uid !== undefined ? ['setpriv', `--reuid=${opts.uid}`, `--regid=${opts.uid}`, '--clear-groups'] : [];
    return ['netns', 'exec', this.netns, ...user, cmd, ...args];
  }

  /** Starts a long-running process in the pod, in a process group of its own. */
  spawn(label: string, cmd: string, args: string[], opts: SpawnOptions = {}): Proc {
    const p = Proc.spawn(`${label} in pod ${this.netns}`, 'ip', this.command(cmd, args, opts), opts);
    this.processes.push(p);
    return p;
  }

  /** Runs a command in the pod to completion. */
  exec(cmd: string, args: string[], opts: SpawnOptions & { timeoutMs?: number } = {}): Promise<ExecResult> {
    return new Promise((resolve) => {
      execFile('ip', this.command(cmd, args, opts), { timeout: opts.timeoutMs ?? 60_000, maxBuffer: 64 * 1024 * 1024, env: { ...process.env, ...opts.env }, cwd: opts.cwd }, (err, stdout, stderr) =>
        resolve({ code: err ? (typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : 1) : 0, stdout, stderr }),
      );
    });
  }

  /** GET from inside the pod (Debian's curl), e.g. the sidecar's admin on 127.0.0.1:15000. */
  async fetch(url: string): Promise<string> {
    const r = await this.exec('curl', ['-sS', '--fail-with-body', '--max-time', '10', url], { timeoutMs: 15_000 });
    if (r.code !== 0) throw new Error(`GET ${url} in pod ${this.netns}: ${r.stderr.trim() || `curl exit ${r.code}`} ${r.stdout.slice(0, 500)}`);
    return r.stdout;
  }

  async stopAll(): Promise<void> {
    await Promise.all(this.processes.map((p) => p.stop()));
  }
}

/** A sandbox's bridge and subnet, and the pods on it. */
export class Network {
  private readonly pods: Pod[] = [];
  private hostAddresses = 1;
  private destroyed = false;
  private readonly onExit = (): void => this.destroySync();

  private constructor(
    /** The sandbox number: bridge mxb<n>, subnet 10.233.<n>.0/24, namespaces mx<n>-<pod>. */
    readonly n: number,
  ) {
    process.on('exit', this.onExit);
  }

  get bridge(): string {
    return `mxb${this.n}`;
  }

  /** The bridge's own address: where the control plane listens for the pods. */
  get gateway(): string {
    return `${SUBNET}.${this.n}.1`;
  }

  /** Claims a free bridge number (atomically: `ip link add` fails if another sandbox took it). */
  static async create(): Promise<Network> {
    sweepStaleSandboxes();
    const used = execFileSync('ip', ['-o', 'addr'], { encoding: 'utf8' });
    for (let n = 1; n <= 250; n++) {
      if (used.includes(` ${SUBNET}.${n}.`)) continue;
      const r = await run('ip', ['link', 'add', `mxb${n}`, 'type', 'bridge']);
      if (r.code !== 0) continue;
      const net = new Network(n);
      try {
        await ip('link', 'set', net.bridge, 'alias', `${OWNER_ALIAS}${process.pid}`);
        // A fixed MAC: by default a bridge takes the lowest MAC of its ports, so adding or removing a pod would
        // change it, and the other pods' ARP entries for the gateway would point nowhere for a while.
        await ip('link', 'set', net.bridge, 'address', `02:00:0a:e9:${n.toString(16).padStart(2, '0')}:01`);
        await ip('addr', 'add', `${net.gateway}/24`, 'dev', net.bridge);
        await ip('link', 'set', net.bridge, 'up');
      } catch (e) {
        net.destroySync();
        throw e;
      }
      return net;
    }
    throw new Error(`no free sandbox subnet in ${SUBNET}.1-250.0/24`);
  }

  /** Another address on the bridge (for a second control-plane replica). */
  async addHostAddress(): Promise<string> {
    const addr = `${SUBNET}.${this.n}.${254 - this.hostAddresses++}`;
    await ip('addr', 'add', `${addr}/24`, 'dev', this.bridge);
    return addr;
  }

  /** A new pod on the bridge, with loopback up and a route for the Service range. */
  async pod(name: string): Promise<Pod> {
    // The lowest address not held by a pod (.1 is the bridge; .250 and up are for control-plane replicas).
    const held = new Set(this.pods.map((p) => Number(p.ip.split('.')[3])));
    let index = 2;
    while (held.has(index)) index++;
    if (index >= 250) throw new Error('too many pods in one sandbox (at most 248)');
    const netns = `mx${this.n}-${name}`;
    const pod = new Pod(netns, `${SUBNET}.${this.n}.${index}`);
    this.pods.push(pod);
    const hostSide = `mx${this.n}p${index}`;
    await ip('netns', 'add', netns);
    mkdirSync(path.join('/etc/netns', netns), { recursive: true });
    // Names resolve from the hosts file only: a resolver that answers nothing, so no query leaves the pod.
    writeFileSync(path.join('/etc/netns', netns, 'resolv.conf'), 'nameserver 127.0.0.1\noptions timeout:1 attempts:1\n');
    pod.setHosts([]);
    // The bridge number is ours (claimed atomically) and the index held by none of our pods: a link of this name is a
    // leftover of a pod removed a moment ago (ours, or of a sandbox that had this number), whose veth the kernel
    // deletes asynchronously after its network namespace. Seen in CI as "RTNETLINK answers: File exists".
    await run('ip', ['link', 'del', hostSide]);
    await ip('link', 'add', hostSide, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', netns);
    await ip('link', 'set', hostSide, 'master', this.bridge, 'up');
    await ip('-n', netns, 'addr', 'add', `${pod.ip}/24`, 'dev', 'eth0');
    await ip('-n', netns, 'link', 'set', 'eth0', 'up');
    await ip('-n', netns, 'link', 'set', 'lo', 'up');
    await ip('-n', netns, 'route', 'add', SERVICE_CIDR, 'dev', 'eth0');
    return pod;
  }

  /** Stops a pod's processes and removes it. */
  async removePod(pod: Pod): Promise<void> {
    await pod.stopAll();
    removeNetnsSync(pod.netns);
    const i = this.pods.indexOf(pod);
    if (i >= 0) this.pods.splice(i, 1);
  }

  /** Stops every pod's processes, then removes the pods and the bridge. */
  async destroy(): Promise<void> {
    await Promise.all(this.pods.map((p) => p.stopAll()));
    this.destroySync();
  }

  private destroySync(): void {
    if (this.destroyed) return;
    this.destroyed = true;
    process.off('exit', this.onExit);
    for (const p of this.pods) for (const proc of p.processes) if (proc.child.pid) quiet(() => process.kill(-proc.child.pid!, 'SIGKILL'));
    removeSandboxSync(this.n);
  }
}
