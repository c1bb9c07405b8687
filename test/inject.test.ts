/** Sidecar injection: the decision and patch (pure), and the webhook over real HTTPS with a certificate from the mesh CA. */
import https from 'node:https';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { applyPatch, decide, type InjectOptions, type NamespaceFacts } from '../src/inject/inject.js';
import { INJECTED_ANNOTATION, INIT_SCRIPT } from '../src/inject/template.js';
import { InjectionWebhook } from '../src/inject/webhook.js';
import { createCa, issue } from '../src/security/ca.js';
import { CredentialsHolder } from '../src/security/tls.js';

const OPTS: InjectOptions = { meshName: 'mesh-xds', controlPlaneNamespace: 'mesh-xds', trustDomain: 'cluster.local', mtls: true, version: '0.1.0' };
const ENROLLED: NamespaceFacts = { name: 'curl', labels: { 'flomesh.io/monitored-by': 'mesh-xds' }, annotations: { 'flomesh.io/sidecar-injection': 'enabled' } };

const pod = (extra: { annotations?: Record<string, string>; spec?: Record<string, unknown> } = {}): Record<string, any> => ({
  apiVersion: 'v1',
  kind: 'Pod',
  metadata: { generateName: 'curl-54ccc6954c-', namespace: 'curl', labels: { app: 'curl' }, ...(extra.annotations ? { annotations: extra.annotations } : {}) },
  spec: { serviceAccountName: 'curl', containers: [{ name: 'curl', image: 'curlimages/curl', command: ['/bin/sleep', 'infinity'] }], ...extra.spec },
});

function injected(p: Record<string, any>, ns = ENROLLED): Record<string, any> {
  const d = decide(p, ns, OPTS);
  if (!d.inject) throw new Error(`not injected: ${JSON.stringify(d)}`);
  return applyPatch(p, d.patch) as Record<string, any>;
}

describe('which pods get the sidecar, and what they get', () => {
  it('a pod of an enrolled namespace asking for injection gets the init container, Envoy, the identity volume and the annotation', () => {
    const out = injected(pod());
    expect(out.spec.initContainers.map((c: any) => c.name)).toEqual(['mesh-init']);
    expect(out.spec.initContainers[0].args).toEqual([INIT_SCRIPT]);
    expect(out.spec.containers.map((c: any) => c.name)).toEqual(['curl', 'envoy']);
    const envoy = out.spec.containers[1];
    expect(envoy.image).toBe('envoyproxy/envoy:v1.40.0');
    expect(envoy.readinessProbe.httpGet).toEqual({ path: '/ready', port: 15021 });
    expect(envoy.resources.requests).toEqual({ cpu: '100m', memory: '128Mi' });
    expect(envoy.volumeMounts).toEqual([{ name: 'mesh-xds-identity', mountPath: '/etc/mesh-xds/identity', readOnly: true }]);
    expect(out.spec.volumes).toEqual([{ name: 'mesh-xds-identity', secret: { secretName: 'mesh-xds-identity-curl', defaultMode: 0o444 } }]);
    expect(out.metadata.annotations[INJECTED_ANNOTATION]).toBe('envoy (envoyproxy/envoy:v1.40.0), mesh-init, mesh-xds-identity; by mesh-xds 0.1.0');
    // Without mTLS: no identity volume, and a bootstrap without TLS.
    const plain = decide(pod(), ENROLLED, { ...OPTS, mtls: false });
    const p = applyPatch(pod(), plain.inject ? plain.patch : []) as Record<string, any>;
    expect(p.spec.volumes).toBeUndefined();
    expect(p.spec.containers[1].args[1]).not.toContain('transport_socket');
  });

  it("the pod's own init containers run after the redirection, its volumes and annotations are kept", () => {
    const out = injected(pod({ annotations: { team: 'a/b~c' }, spec: { initContainers: [{ name: 'migrate', image: 'x' }], volumes: [{ name: 'data', emptyDir: {} }] } }));
    expect(out.spec.initContainers.map((c: any) => c.name)).toEqual(['mesh-init', 'migrate']);
    expect(out.spec.volumes.map((v: any) => v.name)).toEqual(['data', 'mesh-xds-identity']);
    expect(Object.keys(out.metadata.annotations)).toEqual(['team', INJECTED_ANNOTATION]);
  });

  it('admitting a pod twice gives one sidecar', () => {
    const once = injected(pod());
    const twice = decide(once, ENROLLED, OPTS);
    expect(twice).toEqual({ inject: false, skipped: 'pod curl/curl-54ccc6954c-* already has the sidecar' });
  });

  it('left alone: opted out, not enrolled, no injection asked, host network, the control plane namespace', () => {
    const skipped = (p: Record<string, any>, ns: NamespaceFacts): string => {
      const d = decide(p, ns, OPTS);
      if (d.inject || !('skipped' in d)) throw new Error(JSON.stringify(d));
      return d.skipped;
    };
    expect(skipped(pod({ annotations: { 'flomesh.io/sidecar-injection': 'disabled' } }), ENROLLED)).toMatch(/opts out/);
    expect(skipped(pod(), { ...ENROLLED, labels: {} })).toMatch(/not in mesh mesh-xds/);
    expect(skipped(pod(), { ...ENROLLED, labels: { 'flomesh.io/monitored-by': 'other-mesh' } })).toMatch(/not in mesh/);
    expect(skipped(pod(), { ...ENROLLED, annotations: {} })).toMatch(/does not ask for injection \(annotation flomesh.io\/sidecar-injection: absent\)/);
    expect(skipped(pod({ spec: { hostNetwork: true } }), ENROLLED)).toMatch(/host's network/);
    expect(skipped(pod(), { ...ENROLLED, name: 'mesh-xds' })).toMatch(/control plane's namespace/);
    // The pod's own "enabled" wins over a namespace without the annotation.
    expect(decide(pod({ annotations: { 'flomesh.io/sidecar-injection': 'enabled' } }), { ...ENROLLED, annotations: {} }, OPTS).inject).toBe(true);
  });

  it("the app's HTTP probes go to the sidecar's health port, which forwards each to the app; others are kept", () => {
    const p = injected(
      pod({
        spec: {
          serviceAccountName: 'curl',
          containers: [
            {
              name: 'app',
              ports: [{ name: 'web', containerPort: 8080 }],
              readinessProbe: { httpGet: { path: '/ready?deep=1', port: 'web', httpHeaders: [{ name: 'X-Probe', value: '1' }] }, periodSeconds: 3 },
              livenessProbe: { httpGet: { path: '/live', port: 8081 } },
              startupProbe: { httpGet: { path: '/tls', port: 8443, scheme: 'HTTPS' } },
            },
            { name: 'side', livenessProbe: { tcpSocket: { port: 9000 } } },
          ],
        },
      }),
    );
    const app = p.spec.containers[0];
    expect(app.readinessProbe).toEqual({ httpGet: { path: '/app-health/app/readyz', port: 15021, scheme: 'HTTP', httpHeaders: [{ name: 'X-Probe', value: '1' }] }, periodSeconds: 3 });
    expect(app.livenessProbe.httpGet).toEqual({ path: '/app-health/app/livez', port: 15021, scheme: 'HTTP' });
    // HTTPS and TCP probes are left as they are.
    expect(app.startupProbe.httpGet).toEqual({ path: '/tls', port: 8443, scheme: 'HTTPS' });
    expect(p.spec.containers[1].livenessProbe).toEqual({ tcpSocket: { port: 9000 } });
    const envoy = p.spec.containers.find((c: any) => c.name === 'envoy');
    const bootstrap = JSON.parse(envoy.args[1]);
    const routes = bootstrap.static_resources.listeners[0].filter_chains[0].filters[0].typed_config.route_config.virtual_hosts[0].routes;
    expect(routes).toEqual([
      { match: { path: '/ready' }, route: { cluster: 'envoy-admin' } },
      { match: { path: '/app-health/app/livez' }, route: { cluster: 'app-probe-8081', prefix_rewrite: '/live' } },
      { match: { path: '/app-health/app/readyz' }, route: { cluster: 'app-probe-8080', prefix_rewrite: '/ready?deep=1' } },
    ]);
    const ports = bootstrap.static_resources.clusters.filter((c: any) => c.name.startsWith('app-probe-')).map((c: any) => c.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address);
    expect(ports).toEqual([{ address: '127.0.0.1', port_value: 8081 }, { address: '127.0.0.1', port_value: 8080 }]);
  });

  it('refused with a reason: an unknown annotation value, a port or a name the sidecar needs', () => {
    const denied = (p: Record<string, any>): string => {
      const d = decide(p, ENROLLED, OPTS);
      if (d.inject || !('denied' in d)) throw new Error(JSON.stringify(d));
      return d.denied;
    };
    expect(denied(pod({ annotations: { 'flomesh.io/sidecar-injection': 'maybe' } }))).toBe('pod curl/curl-54ccc6954c-*: annotation flomesh.io/sidecar-injection: "maybe" is neither enabled nor disabled');
    expect(denied(pod({ spec: { containers: [{ name: 'app', ports: [{ containerPort: 15001 }] }] } }))).toMatch(/container app uses port 15001, which the sidecar takes/);
    expect(denied(pod({ spec: { volumes: [{ name: 'mesh-xds-identity', emptyDir: {} }] } }))).toMatch(/volume is already named mesh-xds-identity/);
  });
});

describe('the webhook over HTTPS', () => {
  let webhook: InjectionWebhook;
  let port = 0;
  let ca = '';
  const namespaces = new Map<string, NamespaceFacts>([['curl', ENROLLED]]);

  beforeAll(async () => {
    const mesh = await createCa('cluster.local');
    ca = mesh.cert;
    const serving = await issue(mesh, { trustDomain: 'cluster.local', namespace: 'mesh-xds', serviceAccount: 'mesh-xds', server: { dnsNames: ['mesh-xds.mesh-xds.svc', 'localhost'] } });
    const credentials = new CredentialsHolder();
    credentials.set({ cert: Buffer.from(serving.cert), key: Buffer.from(serving.key), ca: Buffer.from(mesh.cert) });
    webhook = new InjectionWebhook({ ...OPTS, credentials, namespace: async (n) => namespaces.get(n), log: pino({ level: 'silent' }) });
    port = await webhook.listen('127.0.0.1:0');
  });
  afterAll(async () => webhook?.close());

  /** A request as the API server makes it: TLS checked against the CA (its caBundle), for the Service's name. */
  function post(body: string | Buffer, opts: { method?: string; path?: string } = {}): Promise<{ status: number; text: string }> {
    return new Promise((resolve, reject) => {
      const req = https.request({ agent: false, host: '127.0.0.1', port, servername: 'mesh-xds.mesh-xds.svc', ca, method: opts.method ?? 'POST', path: opts.path ?? '/mutate-pod-creation', headers: { 'content-type': 'application/json' } }, (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (c) => (text += c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, text }));
      });
      // The server may close while a refused body is still being written: the socket's own error then too.
      req.on('socket', (sock) => sock.on('error', () => {}));
      req.on('error', (e) => ((e as NodeJS.ErrnoException).code === 'ECONNRESET' || (e as NodeJS.ErrnoException).code === 'EPIPE' ? resolve({ status: -1, text: e.message }) : reject(e)));
      req.end(body);
    });
  }

  const review = (object: unknown, extra: Record<string, unknown> = {}): string =>
    JSON.stringify({ apiVersion: 'admission.k8s.io/v1', kind: 'AdmissionReview', request: { uid: 'u-1', kind: { group: '', version: 'v1', kind: 'Pod' }, operation: 'CREATE', namespace: 'curl', object, ...extra } });

  it('answers a pod creation with the JSONPatch, which gives the pod its sidecar', async () => {
    const r = await post(review(pod()));
    expect(r.status).toBe(200);
    const body = JSON.parse(r.text);
    expect(body).toMatchObject({ apiVersion: 'admission.k8s.io/v1', kind: 'AdmissionReview', response: { uid: 'u-1', allowed: true, patchType: 'JSONPatch' } });
    const patch = JSON.parse(Buffer.from(body.response.patch, 'base64').toString());
    expect((applyPatch(pod(), patch) as any).spec.containers.map((c: any) => c.name)).toEqual(['curl', 'envoy']);
  });

  it('a refusal carries its reason; other operations and unknown namespaces are answered, never patched', async () => {
    const denied = JSON.parse((await post(review(pod({ annotations: { 'flomesh.io/sidecar-injection': 'maybe' } })))).text).response;
    expect(denied).toMatchObject({ uid: 'u-1', allowed: false, status: { code: 403, message: expect.stringContaining('"maybe" is neither enabled nor disabled') } });
    const update = JSON.parse((await post(review(pod(), { operation: 'UPDATE' }))).text).response;
    expect(update).toEqual({ uid: 'u-1', allowed: true });
    const unknown = JSON.parse((await post(review(pod(), { namespace: 'nowhere' }))).text).response;
    expect(unknown).toMatchObject({ allowed: false, status: { message: expect.stringContaining('namespace nowhere is not known') } });
  });

  it('malformed reviews get 400 with what is wrong; a wrong path 404, a GET 405, a body over 4 MiB 413', async () => {
    expect(await post('{not json')).toMatchObject({ status: 400, text: expect.stringContaining('the body is not JSON') });
    expect(await post(JSON.stringify({ kind: 'Pod' }))).toMatchObject({ status: 400, text: expect.stringContaining('expected an AdmissionReview of admission.k8s.io/v1') });
    expect(await post(JSON.stringify({ apiVersion: 'admission.k8s.io/v1', kind: 'AdmissionReview', request: { kind: { kind: 'Pod' } } }))).toMatchObject({ status: 400, text: expect.stringContaining('request.uid is missing') });
    expect(await post(JSON.stringify({ apiVersion: 'admission.k8s.io/v1', kind: 'AdmissionReview', request: { uid: 'x' } }))).toMatchObject({ status: 400, text: expect.stringContaining('request.object is missing') });
    expect((await post(review(pod()), { path: '/other' })).status).toBe(404);
    expect((await post('', { method: 'GET' })).status).toBe(405);
    const big = await post(Buffer.alloc(5 * 1024 * 1024, 0x20));
    expect([413, -1]).toContain(big.status);
    // Still serving.
    expect((await post(review(pod()))).status).toBe(200);
  });
});
