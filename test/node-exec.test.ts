/**
 * `kubectl exec` and `kubectl logs` on the sandbox cluster: the real API server proxies them to the sandbox node's
 * kubelet API (node-agent, built by scripts/build-kube.sh with k8s.io/kubelet's remotecommand server), which runs
 * the command in the pod's network namespace as the container's user. What the Gateway API conformance suite needs
 * (every check is a pods/exec): stdout, stderr, the exit code, stdin. Its doors: a client certificate of the
 * kubelet CA, and at most --max-sessions sessions at once.
 */
import { execFile, spawn } from 'node:child_process';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { KubeCluster } from '../sandbox/kube.js';
import { Network } from '../sandbox/netns.js';
import { LOG_FILE_MAX, SandboxNode } from '../sandbox/node.js';
import { until } from '../sandbox/sandbox.js';
import { kubectlOk, kubeMissing } from './helpers/kube.js';
import { sandboxMissing } from './helpers/sandbox.js';

const missing = [...(await kubeMissing()), ...sandboxMissing];

const PODS = `apiVersion: v1
kind: Pod
metadata: { name: shell, namespace: exec }
spec:
  containers:
  - name: app
    image: curlimages/curl
    command: [sleep, "3600"]
    env: [{ name: GREETING, value: hello from the spec }]
  - name: user
    image: curlimages/curl
    command: [sleep, "3600"]
    securityContext: { runAsUser: 1500 }
  - name: talker
    image: nicolaka/netshoot
    command: [sh, -c, 'echo one; echo two >&2; echo three; exec sleep 3600']
  - name: flood
    image: nicolaka/netshoot
    command: [sh, -c, 'yes 0123456789abcdef | head -c 12582912; printf "\\nEND\\n"; exec sleep 3600']
  - name: echo
    image: registry.k8s.io/gateway-api/conformance/echo-advanced:v20251204-v1.4.1
`;

describe.skipIf(missing.length > 0)('kubectl exec and kubectl logs on the sandbox node', () => {
  let net: Network;
  let kube: KubeCluster;
  let node: SandboxNode;
  let podIP: string;

  beforeAll(async () => {
    net = await Network.create();
    try {
      kube = await KubeCluster.start({ bindAddress: net.gateway, controllerManager: true });
      node = await SandboxNode.start(kube, net, { maxSessions: 2 });
      await kubectlOk(kube, ['create', 'namespace', 'exec']);
      await until(async () => (await kube.kubectl(['get', 'serviceaccount', 'default', '-n', 'exec'])).code === 0, 30_000, 'the default service account of exec');
      await kubectlOk(kube, ['apply', '-f', '-'], { input: PODS });
      await kubectlOk(kube, ['wait', '--for=condition=Ready', 'pod/shell', '-n', 'exec', '--timeout=60s']);
      podIP = (await kubectlOk(kube, ['get', 'pod', 'shell', '-n', 'exec', '-o', 'jsonpath={.status.podIP}'])).trim();
    } catch (e) {
      await node?.stop();
      await kube?.stop();
      await net.destroy();
      throw e;
    }
  }, 120_000);
  afterAll(async () => {
    await node?.stop();
    await kube?.stop();
    await net?.destroy();
  }, 60_000);

  const exec = (container: string, cmd: string[], input?: string) => kube.kubectl(['exec', ...(input !== undefined ? ['-i'] : []), '-n', 'exec', 'shell', '-c', container, '--', ...cmd], { input });

  it('stdout, stderr and the exit code of the command', async () => {
    const r = await exec('app', ['sh', '-c', 'echo out; echo err >&2; exit 3']);
    expect(r.stdout).toBe('out\n');
    expect(r.stderr).toContain('err\n');
    expect(r.stderr).toContain('command terminated with exit code 3');
    expect(r.code).toBe(3);
    const ok = await exec('app', ['true']);
    expect(ok).toEqual({ code: 0, stdout: '', stderr: '' });
    // kubectl speaks WebSocket (v5) to the API server, which speaks SPDY to the node; with SPDY from kubectl too:
    const spdy = await new Promise<{ code: number; stdout: string; stderr: string }>((resolve) =>
      execFile('kubectl', ['exec', '-n', 'exec', 'shell', '-c', 'app', '--', 'sh', '-c', 'echo out; echo err >&2; exit 4'], { env: { ...process.env, KUBECONFIG: kube.adminKubeconfig, KUBECTL_REMOTE_COMMAND_WEBSOCKETS: 'false' } }, (err, stdout, stderr) =>
        resolve({ code: typeof err?.code === 'number' ? err.code : 0, stdout, stderr }),
      ),
    );
    expect(spdy.stdout).toBe('out\n');
    expect(spdy.stderr).toContain('err\n');
    expect(spdy.code).toBe(4);
  }, 60_000);

  it('kubectl exec -i: stdin reaches the command, to its end', async () => {
    const lines = Array.from({ length: 2000 }, (_, i) => `line ${i}`).join('\n') + '\n';
    const r = await exec('app', ['sh', '-c', 'wc -l; echo done >&2'], lines);
    expect(r.stdout.trim()).toBe('2000');
    expect(r.stderr).toBe('done\n');
    expect(r.code).toBe(0);
    const upper = await exec('app', ['tr', 'a-z', 'A-Z'], 'hello\n');
    expect(upper.stdout).toBe('HELLO\n');
  }, 60_000);

  it("the command runs in the pod's network namespace, as the container's user", async () => {
    const addr = await exec('app', ['ip', '-o', '-4', 'addr', 'show', 'dev', 'eth0']);
    expect(addr.stdout).toContain(`inet ${podIP}/24`);
    expect((await exec('app', ['id', '-u'])).stdout).toBe('0\n');
    expect((await exec('user', ['id', '-u'])).stdout).toBe('1500\n');
  }, 60_000);

  it("the container's env; the image's programs: the conformance suite's `client` of the echo image, as it runs it", async () => {
    expect((await exec('app', ['sh', '-c', 'echo "$GREETING"'])).stdout).toBe('hello from the spec\n');
    let r = { code: 1, stdout: '', stderr: '' };
    await until(async () => (r = await exec('echo', ['client', 'http://127.0.0.1:8080/hello', '-H', 'X-Test:1'])).code === 0, 20_000, 'the echo client to reach the echo server').catch((e) => {
      throw new Error(`${(e as Error).message}: ${JSON.stringify(r)}`);
    });
    expect(r.stdout).toMatch(/^\[0\] StatusCode=200$/m);
    expect(r.stdout).toMatch(/^\[0 body\] Hostname=shell$/m);
  }, 60_000);

  it('an unknown container, a missing command: each a clear error', async () => {
    const unknown = await exec('nope', ['true']);
    expect(unknown.code).not.toBe(0);
    expect(unknown.stderr).toMatch(/container nope is not valid for pod shell/);
    const absent = await exec('app', ['no-such-command-here']);
    expect(absent.code).not.toBe(0);
    expect(absent.stderr).toMatch(/no-such-command-here/);
  }, 60_000);

  it("kubectl logs: the container's stdout and stderr; --tail", async () => {
    await until(async () => (await kube.kubectl(['logs', '-n', 'exec', 'shell', '-c', 'talker'])).stdout.includes('three'), 20_000, 'the talker to have written');
    const all = await kubectlOk(kube, ['logs', '-n', 'exec', 'shell', '-c', 'talker']);
    expect(all.split('\n').filter(Boolean).sort()).toEqual(['one', 'three', 'two']);
    // stdout and stderr are two pipes: their lines interleave as they were read.
    expect(await kubectlOk(kube, ['logs', '-n', 'exec', 'shell', '-c', 'talker', '--tail=1'])).toBe(`${all.trim().split('\n').at(-1)}\n`);
    expect(await kubectlOk(kube, ['logs', '-n', 'exec', 'shell', '-c', 'talker', '--tail=0'])).toBe('');
    expect(await kubectlOk(kube, ['logs', '-n', 'exec', 'shell', '-c', 'talker', '--limit-bytes=3'])).toBe(all.slice(0, 3));
  }, 60_000);

  it("a container's log file holds at most LOG_FILE_MAX (10 MiB): 12 MiB written, the file started again", async () => {
    let out = '';
    await until(async () => (out = (await kube.kubectl(['logs', '-n', 'exec', 'shell', '-c', 'flood'])).stdout).endsWith('\nEND\n'), 30_000, 'the flood to have been written');
    expect(out.length).toBeGreaterThan(0);
    expect(out.length).toBeLessThanOrEqual(LOG_FILE_MAX);
    expect(out.length).toBeLessThan(12 << 20);
  }, 60_000);

  it('the kubelet API answers only a client certificate of the kubelet CA', async () => {
    const port = (await kubectlOk(kube, ['get', 'node', node.name, '-o', 'jsonpath={.status.daemonEndpoints.kubeletEndpoint.Port}'])).trim();
    const url = `https://${net.gateway}:${port}/healthz`;
    const pki = path.join(kube.dir, 'kubelet-pki');
    const curl = (args: string[]) => net.gateway && new Promise<number>((resolve) => spawn('curl', ['-sS', '-o', '/dev/null', '--cacert', `${pki}/ca.crt`, ...args, url], { stdio: 'ignore' }).on('exit', (c) => resolve(c ?? 1)));
    expect(await curl(['--cert', `${pki}/client.crt`, '--key', `${pki}/client.key`])).toBe(0);
    expect(await curl([])).not.toBe(0);
  }, 30_000);

  it('at most --max-sessions sessions at once (2 here): a third is refused with 429, and served once one ends', async () => {
    const follows = [0, 1].map(() => spawn('kubectl', ['logs', '-f', '-n', 'exec', 'shell', '-c', 'talker'], { env: { ...process.env, KUBECONFIG: kube.adminKubeconfig }, stdio: ['ignore', 'pipe', 'pipe'] }));
    try {
      const outputs = follows.map((f) => {
        let out = '';
        f.stdout!.on('data', (d) => (out += d));
        return () => out;
      });
      await until(() => outputs.every((o) => o().includes('three')), 20_000, 'two kubectl logs -f to be streaming');
      const refused = await exec('app', ['echo', 'hi']);
      expect(refused.code).not.toBe(0);
      expect(refused.stderr).toMatch(/too many sessions on this node \(at most 2\)/);
    } finally {
      for (const f of follows) f.kill('SIGKILL');
    }
    await until(async () => (await exec('app', ['echo', 'hi'])).stdout === 'hi\n', 20_000, 'an exec to be served again');
  }, 60_000);
});
