/** Kubernetes API helpers for the CLI: port-forward to a pod's Envoy admin, label a namespace, store the CA. */
import net from 'node:net';
import { PassThrough } from 'node:stream';
import * as k8s from '@kubernetes/client-node';
import { SIDECAR_INJECTION_ANNOTATION } from '../inject/template.js';
import { MONITORED_BY_LABEL } from '../model/mesh.js';
import { loadKubeConfig } from '../sources/kubeconfig.js';

const kubeConfig = (): k8s.KubeConfig => loadKubeConfig();

/** How long `proxy get` waits for the pod's admin through the API server before it says so. */
const PORT_FORWARD_DEADLINE_MS = 20_000;
/** How long one attempt may take to open the port-forward stream before it is given up and tried again. */
const PORT_FORWARD_OPEN_MS = 6_000;

/**
 * GETs `path` from the pod's Envoy admin (127.0.0.1:15000 in the pod) through a port-forward. An attempt
 * whose port-forward stream does not open within a few seconds is abandoned and made again (a stall seen only
 * on a loaded machine, never explained), until the deadline; then the error says where it stalled.
 */
export async function adminThroughPortForward(namespace: string, pod: string, path: string, deadlineMs = PORT_FORWARD_DEADLINE_MS): Promise<string> {
  const until = Date.now() + deadlineMs;
  for (;;) {
    const left = until - Date.now();
    const attempt = await forwardOnce(namespace, pod, path, Math.min(left, PORT_FORWARD_OPEN_MS), left);
    if (attempt.ok) return attempt.body;
    if (!attempt.stalledOpening || Date.now() + 1_000 >= until) {
      throw attempt.stalledOpening || attempt.stalled ? new Error(`no answer within ${deadlineMs / 1000} s (stalled ${attempt.stage})`) : attempt.error;
    }
  }
}

type Attempt = { ok: true; body: string } | { ok: false; error: Error; stage: string; stalled: boolean; stalledOpening: boolean };

/** One port-forward and GET: `openMs` for the API server to open the stream, `totalMs` for the answer. */
async function forwardOnce(namespace: string, pod: string, path: string, openMs: number, totalMs: number): Promise<Attempt> {
  const forward = new k8s.PortForward(kubeConfig());
  let failure: Error | undefined;
  /** How far the forward got, for the message if it stalls. */
  const opening = 'opening the port-forward stream on the API server';
  let stage = 'connecting to the local end of the forward';
  const sockets = new Set<net.Socket>();
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), totalMs);
  const openTimer = setTimeout(() => stage === opening && abort.abort(), openMs);
  const server = net.createServer((socket) => {
    sockets.add(socket);
    stage = opening;
    const errStream = new PassThrough();
    forward.portForward(namespace, pod, [15000], socket, errStream, socket).then(
      () => (stage = "waiting for the admin's answer through the stream"),
      (err: unknown) => {
        const e = err as { message?: string; error?: Error };
        failure = new Error(e?.error?.message ?? e?.message ?? `port-forward to ${namespace}/${pod} failed`);
        socket.destroy();
      },
    );
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as net.AddressInfo).port;
  try {
    const res = await fetch(`http://127.0.0.1:${port}${path}`, { signal: abort.signal });
    return { ok: true, body: await res.text() };
  } catch (err) {
    const stalled = abort.signal.aborted;
    return { ok: false, error: failure ?? (err as Error), stage, stalled, stalledOpening: stalled && stage === opening };
  } finally {
    clearTimeout(timer);
    clearTimeout(openTimer);
    for (const s of sockets) s.destroy();
    server.close();
  }
}

/** Sets (or with `meshName` null, removes) the namespace's flomesh.io/monitored-by label. */
/**
 * Enrols a namespace (label flomesh.io/monitored-by=MESH and, unless `inject` is false, the annotation
 * flomesh.io/sidecar-injection: enabled, as `fsm namespace add`), or takes it out (meshName null: both removed).
 */
export async function labelNamespace(namespace: string, meshName: string | null, inject = true): Promise<void> {
  const api = kubeConfig().makeApiClient(k8s.CoreV1Api);
  const injection = meshName !== null && inject ? 'enabled' : null;
  await api.patchNamespace(
    { name: namespace, body: { metadata: { labels: { [MONITORED_BY_LABEL]: meshName }, annotations: { [SIDECAR_INJECTION_ANNOTATION]: injection } } } },
    k8s.setHeaderOptions('Content-Type', k8s.PatchStrategy.MergePatch),
  );
}

/** Stores the mesh CA in a Secret (ca.crt, ca.key); false if it exists and `replace` is not set. */
export async function createCaSecret(namespace: string, name: string, ca: { cert: string; key: string }, replace: boolean): Promise<boolean> {
  const api = kubeConfig().makeApiClient(k8s.CoreV1Api);
  const body: k8s.V1Secret = {
    metadata: { name, namespace, labels: { 'app.kubernetes.io/name': 'mesh-xds', 'app.kubernetes.io/component': 'ca' } },
    type: 'Opaque',
    stringData: { 'ca.crt': ca.cert, 'ca.key': ca.key },
  };
  try {
    await api.createNamespacedSecret({ namespace, body });
    return true;
  } catch (err) {
    if ((err as { code?: number }).code !== 409) throw err;
    if (!replace) return false;
    await api.replaceNamespacedSecret({ name, namespace, body });
    return true;
  }
}

/** The mesh CA from its Secret (ca.crt, ca.key). */
export async function readCaSecret(namespace: string, name: string): Promise<{ cert: string; key: string }> {
  const api = kubeConfig().makeApiClient(k8s.CoreV1Api);
  const secret = await api.readNamespacedSecret({ name, namespace });
  const get = (k: string): string => {
    const v = secret.data?.[k];
    if (!v) throw new Error(`Secret ${namespace}/${name} has no ${k} (make it with mesh-xds ca init --kubernetes)`);
    return Buffer.from(v, 'base64').toString('utf8');
  };
  return { cert: get('ca.crt'), key: get('ca.key') };
}

/** Creates or replaces a kubernetes.io/tls Secret with tls.crt, tls.key and ca.crt. */
export async function writeTlsSecret(namespace: string, name: string, b: { cert: string; key: string; ca: string }, extra: Record<string, string> = {}): Promise<void> {
  const api = kubeConfig().makeApiClient(k8s.CoreV1Api);
  const body: k8s.V1Secret = {
    metadata: { name, namespace, labels: { 'app.kubernetes.io/managed-by': 'mesh-xds' } },
    type: 'kubernetes.io/tls',
    stringData: { 'tls.crt': b.cert, 'tls.key': b.key, 'ca.crt': b.ca, ...extra },
  };
  try {
    await api.createNamespacedSecret({ namespace, body });
  } catch (err) {
    if ((err as { code?: number }).code !== 409) throw err;
    await api.replaceNamespacedSecret({ name, namespace, body });
  }
}
