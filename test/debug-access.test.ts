/**
 * Who may read the debug port: the endpoints that reveal proxies, their configuration or the policies answer
 * loopback clients only (the control plane's own network namespace, where `kubectl port-forward` arrives); a
 * client from another pod gets 403 saying how to reach them, while probes and Prometheus keep /healthz, /readyz
 * and /metrics. The other pod is a real network namespace on the sandbox's bridge.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Network, type Pod } from '../sandbox/netns.js';
import { startDemo, type DemoServer } from './helpers/demo.js';
import { sandboxMissing } from './helpers/sandbox.js';

describe.skipIf(sandboxMissing.length > 0)('the debug port', () => {
  let net: Network;
  let pod: Pod;
  let demo: DemoServer;
  let port: number;

  beforeAll(async () => {
    net = await Network.create();
    pod = await net.pod('debug-reader');
    // Bound on every address, as deploy/control-plane does so that the kubelet can probe it.
    demo = await startDemo(() => {}, undefined, { debugAddress: '0.0.0.0:0' });
    port = demo.running.debugPort;
  }, 30_000);

  afterAll(async () => {
    await demo?.close();
    await net?.destroy();
  });

  /** Status and body of a GET from the other pod. */
  async function fromPod(path: string): Promise<{ status: number; body: string }> {
    const r = await pod.exec('curl', ['-sS', '--max-time', '10', '-w', '\n%{http_code}', `http://${net.gateway}:${port}${path}`]);
    expect(r.code, r.stderr).toBe(0);
    const at = r.stdout.lastIndexOf('\n');
    return { status: Number(r.stdout.slice(at + 1)), body: r.stdout.slice(0, at) };
  }

  it('refuses what reveals configuration to another pod, saying how to reach it; serves it on loopback', async () => {
    const paths = ['/debug/proxies', '/debug/config_dump?namespace=curl&serviceAccount=curl', '/debug/policies', '/debug/mesh', '/debug/explain?from=curl/curl&to=httpbin/httpbin', '/debug', '/'];
    for (const p of paths) {
      const r = await fromPod(p);
      expect(r.status, p).toBe(403);
      expect(JSON.parse(r.body).error).toContain('served to loopback clients only. Reach it through kubectl port-forward');
      const local = await fetch(`http://127.0.0.1:${port}${p}`);
      expect(local.status, p).toBe(200);
    }
    const metrics = await fetch(`http://127.0.0.1:${port}/metrics`).then((r) => r.text());
    expect(metrics).toMatch(new RegExp(`^mesh_xds_streams_refused_total\\{reason="debug_not_loopback"\\} ${paths.length}$`, 'm'));
  });

  it('keeps /healthz, /readyz and /metrics open for probes and Prometheus', async () => {
    expect(await fromPod('/healthz')).toEqual({ status: 200, body: 'ok\n' });
    expect(await fromPod('/readyz')).toEqual({ status: 200, body: 'ready\n' });
    const m = await fromPod('/metrics');
    expect(m.status).toBe(200);
    expect(m.body).toContain('mesh_xds_connected_proxies');
  });
});
