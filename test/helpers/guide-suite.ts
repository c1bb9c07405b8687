/**
 * The user guide on this machine with real Envoy sidecars (src/sandbox): pods as network namespaces, the
 * samples' bootstrap and iptables script, the real httpbin, Debian's curl, and `mesh-xds serve --manifests`.
 * Run once per ADS flavour (envoy-sotw.test.ts, envoy-delta.test.ts): both must give the same results.
 * The tests share one sandbox and run in order; each sets the policy it needs.
 */
import { existsSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Sandbox, guideWorkloads, sampleWorkload, until, type AdsFlavour, type Workload } from '../../sandbox/sandbox.js';
import { initScript, sampleRetryText } from '../../sandbox/samples.js';
import { sandboxMissing } from './sandbox.js';
import { dynamicResources } from '../../sandbox/accept.js';
import { X509Certificate } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import tls from 'node:tls';
import type { TlsBundle } from '../../src/security/ca.js';
import { CA_SECRET, IDENTITY_SECRET } from '../../src/envoy/tls.js';

const GRPC_APP = path.join(import.meta.dirname, '../clients/grpc-app.mjs');
const HTTPBIN = 'httpbin.httpbin.svc.cluster.local:14001';
const CLUSTER = 'httpbin/httpbin|14001';
const RDS_UPDATES = 'http.outbound_14001.rds.httpbin.httpbin.svc.cluster.local_14001.update_success';

const GRPC_RETRY = `kind: Retry
apiVersion: policy.flomesh.io/v1alpha1
metadata: { name: greeter, namespace: greeter-client }
spec:
  source: { kind: ServiceAccount, name: greeter-client, namespace: greeter-client }
  destinations: [{ kind: Service, name: greeter, namespace: greeter }]
  retryPolicy: { retryOn: unavailable, numRetries: 3, retryBackoffBaseInterval: 10ms }
`;

/** The six retry counters of the guide, as `mesh-xds proxy get stats` prints them. */
function guideLines(v: { retry: number; backoff: number; limit: number }): string[] {
  return [
    `cluster.${CLUSTER}.upstream_rq_retry: ${v.retry}`,
    `cluster.${CLUSTER}.upstream_rq_retry_backoff_exponential: ${v.backoff}`,
    `cluster.${CLUSTER}.upstream_rq_retry_backoff_ratelimited: 0`,
    `cluster.${CLUSTER}.upstream_rq_retry_limit_exceeded: ${v.limit}`,
    `cluster.${CLUSTER}.upstream_rq_retry_overflow: 0`,
    `cluster.${CLUSTER}.upstream_rq_retry_success: 0`,
  ];
}

/** Update counters but the data-plane secrets' (`sds.default.*`, `sds.ROOTCA.*`). */
export const withoutSds = (all: Record<string, number>[]): Record<string, number>[] =>
  all.map((m) => Object.fromEntries(Object.entries(m).filter(([k]) => !k.startsWith(`sds.${IDENTITY_SECRET}.`) && !k.startsWith(`sds.${CA_SECRET}.`))));

const normSerial = (s: string): string => s.toLowerCase().replace(/^0+/, '');

/** Serial numbers of the data-plane certificate a sidecar holds from SDS over ADS. */
async function dataPlaneSerials(w: Workload): Promise<string[]> {
  return (await dataPlaneCerts(w)).map((c) => normSerial(c.serialNumber));
}

/** The data-plane certificates a sidecar holds from SDS over ADS (its config dump; the key redacted). */
export async function dataPlaneCerts(w: Workload): Promise<X509Certificate[]> {
  const dump = await w.sidecar.configDump();
  const section = dump.configs.find((c: any) => c['@type'] === 'type.googleapis.com/envoy.admin.v3.SecretsConfigDump') ?? {};
  return (section.dynamic_active_secrets ?? [])
    .filter((s: any) => s.name === IDENTITY_SECRET)
    .map((s: any) => s.secret?.tls_certificate?.certificate_chain?.inline_string as string | undefined)
    .filter(Boolean)
    .map((pem: string) => new X509Certificate(pem));
}

/** GET / over TLS from this host to a pod's port, with a client certificate or without: the status line and the server's SAN. */
export function tlsGet(host: string, port: number, client?: TlsBundle, ca?: string): Promise<{ status: string; peer: string }> {
  return new Promise((resolve, reject) => {
    let peer = '';
    const socket = tls.connect({ host, port, cert: client?.cert, key: client?.key, ca: ca ?? client?.ca, rejectUnauthorized: Boolean(client), checkServerIdentity: () => undefined, minVersion: 'TLSv1.3' }, () => {
      peer = socket.getPeerX509Certificate()?.subjectAltName ?? '';
      socket.write(`GET /get HTTP/1.1\r\nHost: httpbin\r\nConnection: close\r\n\r\n`);
    });
    let data = '';
    socket.setTimeout(5_000, () => socket.destroy(new Error('timed out')));
    socket.on('data', (d) => (data += d));
    socket.on('error', reject);
    socket.on('close', () => (data ? resolve({ status: data.split('\r\n')[0], peer }) : reject(new Error('closed without an answer'))));
  });
}

export function guideSuite(flavour: AdsFlavour): void {
  describe.skipIf(sandboxMissing.length > 0)(`the guide with real Envoy sidecars (ADS ${flavour})`, () => {
    let sb: Sandbox;
    let curl: Workload;
    let httpbin: Workload;

    beforeAll(async () => {
      sb = await Sandbox.start({
        workloads: [
          ...guideWorkloads(flavour),
          // A pod of another service account in the curl namespace: the Retry is not its.
          sampleWorkload('curl.yaml', { name: 'curl-other', serviceAccount: 'other', ports: undefined, flavour }),
          // gRPC through both sidecars: a server with an inbound sidecar, a client with an outbound one.
          sampleWorkload('httpbin.yaml', {
            name: 'greeter',
            namespace: 'greeter',
            serviceAccount: 'greeter',
            ports: [
              { name: 'grpc', port: 50051, targetPort: 50051, appProtocol: 'grpc' },
              // gRPC on a port that says only "http", and a WebSocket echo.
              { name: 'http', port: 8080, targetPort: 8080 },
              { name: 'http-ws', port: 8081, targetPort: 8081 },
            ],
            app: { command: [process.execPath, GRPC_APP, 'serve', '50051,8080', '8081'], ready: /^listening$/ },
            flavour,
          }),
          sampleWorkload('curl.yaml', { name: 'greeter-client', namespace: 'greeter-client', serviceAccount: 'greeter-client', ports: undefined, flavour }),
          // A headless Service: its name resolves to the pod, whose address is a filter chain of the 15001 listener.
          // An identity of its own, so that httpbin's pods keep serving target port 14001 as httpbin.
          sampleWorkload('httpbin.yaml', { name: 'httpbin-headless', serviceAccount: 'httpbin-headless', headless: true, flavour }),
        ],
        manifests: { 'retry.yaml': sampleRetryText(), 'greeter-retry.yaml': GRPC_RETRY },
      });
      curl = sb.workload('curl');
      httpbin = sb.workload('httpbin');
    }, 120_000);

    afterAll(async () => {
      // Nothing we published was refused by any sidecar, at any point of the run.
      if (sb) for (const w of sb.workloads.values()) expect(await w.sidecar.rejected(), w.podName).toEqual({});
      await sb?.close();
    }, 60_000);

    /** Requests httpbin received for a path (gunicorn's access log). */
    const received = (what: string): number => httpbin.app!.lines().filter((l) => l.includes(`"${what} HTTP/1.1"`)).length;

    async function request(from: Workload, status: number): Promise<string> {
      const r = await from.pod.exec('curl', ['-sI', `${HTTPBIN}/status/${status}`], { timeoutMs: 60_000 });
      expect(r.code, r.stderr).toBe(0);
      return r.stdout;
    }

    /** The curl sidecar's retry counters for httpbin, read with `mesh-xds proxy get stats` (inside the pod). */
    async function retryStats(from: Workload = curl): Promise<string[]> {
      const r = await sb.cli(from.spec.name, ['proxy', 'get', 'stats', from.podName, '-n', from.spec.namespace, '--admin-url', 'http://127.0.0.1:15000', '--filter', `${CLUSTER}.upstream_rq_retry`]);
      expect(r.code, r.stderr).toBe(0);
      return r.stdout.trim().split('\n');
    }

    const retries = async (w: Workload = curl): Promise<number> => w.sidecar.stat(`cluster.${CLUSTER}.upstream_rq_retry`);

    /** Applies a change to the control plane's folder and waits until the curl sidecar took the new routes. */
    async function change(apply: () => boolean | void): Promise<void> {
      const before = await curl.sidecar.stat(RDS_UPDATES);
      if (apply() === false) return;
      await until(async () => (await curl.sidecar.stat(RDS_UPDATES)) > before, 15_000, 'the curl sidecar to take the new routes');
    }

    /** Writes retry.yaml as the sample's, edited; nothing to wait for if it already says that. */
    const setRetry = (edit: (text: string) => string) =>
      change(() => {
        const text = edit(sampleRetryText());
        if (existsSync(path.join(sb.dir, 'retry.yaml')) && sb.readManifest('retry.yaml') === text) return false;
        sb.writeManifest('retry.yaml', text);
      });

    it("the guide's 503: 5 retries with exponential backoff, then the limit; httpbin sees 6 requests, its sidecar retries nothing", async () => {
      const r = await request(curl, 503);
      expect(r).toMatch(/^HTTP\/1\.1 503 Service Unavailable/);
      // The sidecars pass the app's own Server header through, as the guide shows.
      expect(r).toMatch(/^server: gunicorn/m);
      expect(await retryStats()).toEqual(guideLines({ retry: 5, backoff: 5, limit: 1 }));
      expect(received('HEAD /status/503')).toBe(6);
      // The inbound sidecar relayed each attempt once and made no retries of its own.
      expect(await httpbin.sidecar.stat(`cluster.${CLUSTER}|local.upstream_rq_retry`)).toBe(0);
      expect(await httpbin.sidecar.stat(`cluster.${CLUSTER}|local.upstream_rq_total`)).toBe(6);
    }, 60_000);

    it('a 404 is not retried: one request, the counters unchanged', async () => {
      const before = await retryStats();
      expect(await request(curl, 404)).toMatch(/^HTTP\/1\.1 404 Not Found/);
      expect(await retryStats()).toEqual(before);
      expect(received('HEAD /status/404')).toBe(1);
    });

    it('a live edit of the Retry file (numRetries: 2) applies to the next 503 without restarting Envoy', async () => {
      const pid = curl.sidecar.proc.child.pid;
      const uptime = await curl.sidecar.stat('server.uptime');
      await setRetry((t) => t.replace('numRetries: 5', 'numRetries: 2'));
      const [before, sent] = [await retries(), received('HEAD /status/503')];
      await request(curl, 503);
      expect((await retries()) - before).toBe(2);
      expect(received('HEAD /status/503') - sent).toBe(3);
      expect(curl.sidecar.proc.exitCode).toBeUndefined();
      expect(curl.sidecar.proc.child.pid).toBe(pid);
      expect(await curl.sidecar.stat('server.uptime')).toBeGreaterThanOrEqual(uptime);
      expect(await curl.sidecar.rejected()).toEqual({});
    }, 60_000);

    it('no retries with the feature flag off, with the Retry deleted, or from a pod of another service account', async () => {
      const oneRequest = async (from: Workload): Promise<void> => {
        const [before, sent] = [await retries(from), received('HEAD /status/503')];
        expect(await request(from, 503)).toMatch(/^HTTP\/1\.1 503/);
        expect((await retries(from)) - before).toBe(0);
        expect(received('HEAD /status/503') - sent).toBe(1);
      };
      await setRetry((t) => t.replace('numRetries: 5', 'numRetries: 2'));
      const meshText = sb.readManifest('mesh.yaml');
      await change(() => sb.writeManifest('mesh.yaml', meshText.replace('enableRetryPolicy: true', 'enableRetryPolicy: false')));
      await oneRequest(curl);
      await change(() => sb.writeManifest('mesh.yaml', meshText));

      await change(() => sb.removeManifest('retry.yaml'));
      await oneRequest(curl);
      await setRetry((t) => t.replace('numRetries: 5', 'numRetries: 2'));

      await oneRequest(sb.workload('curl-other'));
      // And curl itself retries again.
      const before = await retries();
      await request(curl, 503);
      expect((await retries()) - before).toBe(2);
    }, 90_000);

    it('gRPC through both sidecars: UNAVAILABLE is retried (1 + 3 attempts at the server), a healthy call succeeds, HTTP/2 on every hop', async () => {
      const client = sb.workload('greeter-client');
      const greeter = sb.workload('greeter');
      const attempts = (m: string) => greeter.app!.lines().filter((l) => l === `attempt ${m}`).length;
      const call = async (m: string): Promise<string> => {
        const r = await client.pod.exec(process.execPath, [GRPC_APP, 'call', 'dns:///greeter.greeter.svc.cluster.local:50051', m]);
        expect(r.code, r.stderr).toBe(0);
        return r.stdout.trim();
      };
      expect(await call('Unavailable')).toBe('UNAVAILABLE');
      expect(attempts('Unavailable')).toBe(4);
      expect(await client.sidecar.stat('cluster.greeter/greeter|50051.upstream_rq_retry')).toBe(3);
      expect(await call('Ok')).toBe('OK');
      expect(attempts('Ok')).toBe(1);
      // The inbound sidecar spoke HTTP/2 to the app (gRPC fails over HTTP/1.1).
      expect(await greeter.sidecar.stat('cluster.greeter/greeter|50051|local.upstream_cx_http2_total')).toBeGreaterThan(0);
      expect(await greeter.sidecar.stat('cluster.greeter/greeter|50051|local.upstream_cx_http1_total')).toBe(0);
    }, 60_000);

    it('gRPC on a port named plain http, and a WebSocket upgrade, pass both sidecars (the upstream speaks as the caller spoke)', async () => {
      const client = sb.workload('greeter-client');
      const greeter = sb.workload('greeter');
      const r = await client.pod.exec(process.execPath, [GRPC_APP, 'call', 'dns:///greeter.greeter.svc.cluster.local:8080', 'Ok']);
      expect(r.stdout.trim(), r.stderr).toBe('OK');
      expect(await greeter.sidecar.stat('cluster.greeter/greeter|8080|local.upstream_cx_http2_total')).toBeGreaterThan(0);
      const ws = await client.pod.exec(process.execPath, [GRPC_APP, 'ws', 'ws://greeter.greeter.svc.cluster.local:8081/']);
      expect(ws.stdout.trim(), ws.stderr).toBe('ping');
      expect(await greeter.sidecar.stat('cluster.greeter/greeter|8081|local.upstream_cx_http1_total')).toBeGreaterThan(0);
    });

    it("a ClusterIP service port is reached through its own listener, a headless service's pod through 15001's filter chain", async () => {
      const listeners = async (): Promise<Map<string, number>> => curl.sidecar.stats('downstream_cx_total');
      const before = await listeners();
      expect((await request(curl, 200)).split('\n')[0]).toMatch(/ 200 /);
      const r = await curl.pod.exec('curl', ['-s', '-o', '/dev/null', '-w', '%{http_code}', 'http://httpbin-headless.httpbin.svc.cluster.local:14001/status/200'], { timeoutMs: 30_000 });
      expect(r.stdout, r.stderr).toBe('200');
      expect(await curl.sidecar.stat('cluster.httpbin/httpbin-headless|14001.upstream_rq_200')).toBe(1);
      const after = await listeners();
      const grew = (name: string): number => (after.get(name) ?? 0) - (before.get(name) ?? 0);
      // Both connections were redirected to 15001: the one to httpbin's ClusterIP was handed to its listener (and
      // counted there only), the one to the headless service's pod stayed on 15001.
      const vip = [...after.keys()].find((k) => /^listener\.10\.96\.0\.\d+_14001\.downstream_cx_total$/.test(k));
      expect(vip).toBeDefined();
      expect(grew(vip!)).toBe(1);
      expect(grew('listener.0.0.0.0_15001.downstream_cx_total')).toBe(1);
    });

    it('sidecar to sidecar is mutual TLS (SDS over ADS): handshakes on both sidecars, a caller without a sidecar refused, one with a mesh certificate served', async () => {
      expect((await request(curl, 200)).split('\n')[0]).toMatch(/ 200 /);
      // The curl sidecar's cluster to httpbin and httpbin's inbound listener each completed TLS handshakes.
      expect(await curl.sidecar.stat(`cluster.${CLUSTER}.ssl.handshake`)).toBeGreaterThan(0);
      expect(await httpbin.sidecar.stat('listener.0.0.0.0_15003.ssl.handshake')).toBeGreaterThan(0);
      // The certificates are the ones issued for each identity, with the mesh CA as the trust bundle.
      const [curlCert] = await dataPlaneCerts(curl);
      expect(curlCert.subjectAltName).toBe('URI:spiffe://cluster.local/ns/curl/sa/curl');
      expect(curlCert.verify(new X509Certificate(sb.ca.cert).publicKey)).toBe(true);
      // From this host, where no sidecar is: plaintext to httpbin's pod port is refused (it was served before mTLS) ...
      const plain = spawnSync('curl', ['-sS', '--max-time', '5', `http://${httpbin.pod.ip}:14001/get`], { encoding: 'utf8' });
      expect(plain.status, plain.stdout).not.toBe(0);
      // ... so is TLS without a client certificate ...
      await expect(tlsGet(httpbin.pod.ip, 14001)).rejects.toThrow();
      // ... while a client certificate from the mesh CA (any identity of the mesh may call) is served.
      const other = await sb.identity('curl', 'other');
      const served = await tlsGet(httpbin.pod.ip, 14001, other);
      expect(served.status).toMatch(/^HTTP\/1\.1 200/);
      expect(served.peer).toBe('URI:spiffe://cluster.local/ns/httpbin/sa/httpbin');
      for (const w of sb.workloads.values()) expect(await w.sidecar.rejected(), w.podName).toEqual({});
    });

    it("the init container's script is safe to run twice and redirects IPv6 too", async () => {
      const rules = async (): Promise<string> =>
        (await Promise.all(['iptables', 'ip6tables'].map((t) => curl.pod.exec(t, ['-t', 'nat', '-S'])))).map((r) => r.stdout).join('');
      const before = await rules();
      expect(before).toMatch(/-A PROXY_OUTPUT -d ::1\/128 -j RETURN/);
      expect(before).toMatch(/-A PROXY_REDIRECT -p tcp -m tcp -j REDIRECT --to-ports 15001|-A PROXY_REDIRECT -p tcp -j REDIRECT --to-ports 15001/);
      const again = await curl.pod.exec('/bin/sh', ['-c', initScript('curl.yaml')]);
      expect(again.code, again.stderr).toBe(0);
      expect(await rules()).toBe(before);
    });

    it("the server's /debug/config_dump equals, resource by resource, what each Envoy prints in its own /config_dump", async () => {
      for (const w of sb.workloads.values()) {
        const ours = await sb.controlPlane.get(`/debug/config_dump?proxy=${encodeURIComponent(w.sidecar.nodeId)}`);
        const theirs = await w.sidecar.configDump();
        expect(dynamicResources(ours), w.podName).toEqual(dynamicResources(theirs));
      }
    });

    it('mTLS: each sidecar proved its identity with its certificate; a renewed certificate reaches Envoy without a restart, and it keeps its config', async () => {
      const opened = sb.controlPlane.proc!.lines().filter((l) => l.includes('"msg":"stream opened"')).map((l) => JSON.parse(l));
      for (const w of sb.workloads.values()) {
        const stream = opened.find((o) => o.node === w.sidecar.nodeId);
        expect(stream?.spiffe, w.podName).toBe(`spiffe://cluster.local/ns/${w.spec.namespace}/sa/${w.spec.serviceAccount}`);
      }
      // The certificate Envoy uses to reach the control plane (from its Secret's folder), as its admin /certs shows it:
      // of the certificates with curl's identity, the one that is not the data plane's (SDS over ADS).
      const serial = async (): Promise<string> => {
        const certs = JSON.parse(await curl.sidecar.admin('/certs')).certificates as { cert_chain?: { serial_number: string; subject_alt_names?: { uri?: string }[] }[] }[];
        const dataPlane = new Set(await dataPlaneSerials(curl));
        const mine = new Set(certs.flatMap((c) => c.cert_chain ?? []).filter((c) => c.subject_alt_names?.some((s) => s.uri === 'spiffe://cluster.local/ns/curl/sa/curl') && !dataPlane.has(normSerial(c.serial_number))).map((c) => c.serial_number));
        expect(mine.size).toBe(1);
        return [...mine][0];
      };
      await setRetry((t) => t);
      // The control plane renewed its own certificate (15 s here) under the connected sidecars: nothing dropped.
      await until(() => sb.controlPlane.proc!.lines().filter((l) => l.includes('"msg":"serving certificate issued"')).length >= 2, 20_000, "the control plane's certificate renewed");
      const first = await serial();
      const rdsBefore = await curl.sidecar.stat(RDS_UPDATES);
      await sb.renewIdentity('curl');
      await until(async () => (await serial()) !== first, 20_000, "Envoy to load the renewed certificate from its Secret's folder");
      // Still connected, nothing resent, and retrying as before.
      expect(await curl.sidecar.stat('control_plane.connected_state')).toBe(1);
      expect(await curl.sidecar.stat('cluster.mesh-xds.upstream_cx_destroy')).toBe(0);
      expect(await curl.sidecar.stat(RDS_UPDATES)).toBe(rdsBefore);
      const n = await retries();
      await request(curl, 503);
      expect((await retries()) - n).toBe(5);
    }, 60_000);

    it('a control-plane restart, then a move to a second replica: Envoy reconnects, is sent nothing new, and retries as before', async () => {
      await setRetry((t) => t.replace('numRetries: 5', 'numRetries: 2'));
      const sidecars = [...sb.workloads.values()].map((w) => w.sidecar);
      const updates = () => Promise.all(sidecars.map(async (s) => Object.fromEntries([...(await s.stats('update_success$'))].filter(([k]) => !k.startsWith('cluster.mesh-xds.')))));
      const connected = (v: number) => until(async () => (await Promise.all(sidecars.map((s) => s.stat('control_plane.connected_state')))).every((x) => x === v), 30_000, `every sidecar's control_plane.connected_state to be ${v}`);
      const before = await updates();

      await sb.controlPlane.stop();
      await connected(0);
      await sb.controlPlane.start();
      await connected(1);
      await until(async () => (await sb.controlPlane.get('/debug/proxies')).proxies.length === sidecars.length, 10_000, 'every sidecar on the restarted server');
      // Time for anything the server would (wrongly) send to arrive.
      await new Promise((r) => setTimeout(r, 1000));
      // Nothing but a new data-plane certificate: its key lives in the control plane's memory, so a restarted one (or
      // another replica) issues another (docs/security.md: sidecar mTLS).
      expect(withoutSds(await updates())).toEqual(withoutSds(before));

      const old = sb.controlPlane;
      const replica = await sb.startReplica();
      await sb.pointPodsAt(replica);
      await old.stop();
      await until(async () => (await replica.get('/debug/proxies')).proxies.length === sidecars.length, 30_000, 'every sidecar on the second replica');
      await connected(1);
      await new Promise((r) => setTimeout(r, 1000));
      expect(withoutSds(await updates())).toEqual(withoutSds(before));

      const n = await retries();
      await request(curl, 503);
      expect((await retries()) - n).toBe(2);
    }, 120_000);
  });
}
