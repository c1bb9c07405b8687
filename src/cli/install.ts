/**
 * `mesh-xds install` and `uninstall`, as `fsm install`: the manifests of deploy/ (in the order of
 * deploy/kustomization.yaml) applied with server-side apply, the MeshConfig with the `--set` values, the mesh CA
 * Secret if absent; then it waits for the CRDs, the control plane and the webhook's caBundle. Pure planning
 * (`installPlan`) apart from the API calls, so `--dry-run` prints exactly what would be applied.
 */
import { readFileSync } from 'node:fs';
import type * as k8s from '@kubernetes/client-node';
import { parse, parseAllDocuments, stringify } from 'yaml';
import { ConfigError } from '../config.js';
import { asList, asMap } from '../model/plain.js';
import { isDnsLabel } from '../model/names.js';
import { WEBHOOK_CONFIGURATION } from '../outputs/webhook-ca.js';
import { packagePath } from '../paths.js';
import { createCa } from '../security/ca.js';
import { DEFAULT_TRUST_DOMAIN } from '../security/spiffe.js';
import { CA_SECRET } from './ca.js';
import { parseFlags } from './args.js';
import { ExitError, UnreachableError, UsageError } from './errors.js';

type Obj = Record<string, unknown> & { apiVersion: string; kind: string; metadata: { name: string; namespace?: string; [k: string]: unknown } };

const DEFAULT_NAMESPACE = 'mesh-xds';
const FIELD_MANAGER = 'mesh-xds-install';

/** The `--set` keys (as `fsm install` names them; the `fsm.` prefix optional) and where each goes in the MeshConfig. */
const SET_KEYS: Record<string, { path: string[]; type: 'boolean' | 'number' }> = {
  enablePermissiveTrafficPolicy: { path: ['traffic', 'enablePermissiveTrafficPolicyMode'], type: 'boolean' },
  'traffic.enablePermissiveTrafficPolicyMode': { path: ['traffic', 'enablePermissiveTrafficPolicyMode'], type: 'boolean' },
  'featureFlags.enableRetryPolicy': { path: ['featureFlags', 'enableRetryPolicy'], type: 'boolean' },
  // mesh-xds's own (docs/retry-safety.md#retry-budget): the retry budget of every destination.
  'traffic.retryBudget.enabled': { path: ['traffic', 'retryBudget', 'enabled'], type: 'boolean' },
  'traffic.retryBudget.budgetPercent': { path: ['traffic', 'retryBudget', 'budgetPercent'], type: 'number' },
  'traffic.retryBudget.minRetryConcurrency': { path: ['traffic', 'retryBudget', 'minRetryConcurrency'], type: 'number' },
};

export interface InstallOptions {
  namespace: string;
  image?: string;
  replicas?: number;
  /** MeshConfig spec values from --set: the path under spec, and the value. */
  sets: [string[], boolean | number][];
}

/** Parses `KEY=VALUE` of --set; an unknown key is an error naming it and the known ones. */
export function parseInstallSet(expr: string): [string[], boolean | number] {
  const m = /^([^=]+)=(.*)$/.exec(expr);
  if (!m) throw new ConfigError(`--set ${expr}: expected KEY=VALUE`);
  const key = m[1].trim().replace(/^fsm\./, '');
  const def = SET_KEYS[key];
  if (!def) throw new ConfigError(`--set ${m[1]}: unknown key; known: ${Object.keys(SET_KEYS).map((k) => `[fsm.]${k}`).join(', ')}`);
  const v = m[2].trim();
  if (def.type === 'number') {
    if (!/^\d+(\.\d+)?$/.test(v)) throw new ConfigError(`--set ${m[1]}=${v}: expected a number`);
    return [def.path, Number(v)];
  }
  if (v !== 'true' && v !== 'false') throw new ConfigError(`--set ${m[1]}=${v}: expected true or false`);
  return [def.path, v === 'true'];
}

/** deploy/'s manifests in kustomization order. */
function deployObjects(): Obj[] {
  const kustomization = parse(readFileSync(packagePath('deploy/kustomization.yaml'), 'utf8')) as { resources: string[] };
  return kustomization.resources.flatMap((file) =>
    parseAllDocuments(readFileSync(packagePath('deploy', file), 'utf8'))
      .map((d) => d.toJS() as Obj)
      .filter(Boolean),
  );
}

/** Every place deploy/ names the control plane's namespace. */
function renamespace(o: Obj, ns: string): void {
  if (o.kind === 'Namespace' && o.metadata.name === DEFAULT_NAMESPACE) o.metadata.name = ns;
  if (o.metadata.namespace === DEFAULT_NAMESPACE) o.metadata.namespace = ns;
  for (const s of asList(o.subjects)) if (asMap(s).namespace === DEFAULT_NAMESPACE) (s as Record<string, unknown>).namespace = ns;
  for (const w of asList(o.webhooks)) {
    const svc = asMap(asMap(asMap(w).clientConfig).service) as Record<string, unknown>;
    if (svc.namespace === DEFAULT_NAMESPACE) svc.namespace = ns;
    for (const e of asList(asMap(asMap(w).namespaceSelector).matchExpressions)) {
      const expr = e as { key?: string; values?: string[] };
      if (expr.key === 'kubernetes.io/metadata.name') expr.values = expr.values?.map((v) => (v === DEFAULT_NAMESPACE ? ns : v));
    }
  }
}

/** What install applies, in order (the CA Secret apart: it is made only if absent). */
export function installPlan(o: InstallOptions): Obj[] {
  const objects = deployObjects();
  for (const obj of objects) {
    renamespace(obj, o.namespace);
    if (obj.kind === 'Deployment' && obj.metadata.name === 'mesh-xds') {
      const spec = obj.spec as { replicas?: number; template: { spec: { containers: { name: string; image: string }[] } } };
      if (o.replicas !== undefined) spec.replicas = o.replicas;
      if (o.image) spec.template.spec.containers.find((c) => c.name === 'mesh-xds')!.image = o.image;
    }
    if (obj.kind === 'MeshConfig') {
      for (const [path, value] of o.sets) {
        let at = (obj.spec ??= {}) as Record<string, unknown>;
        for (const p of path.slice(0, -1)) at = (at[p] ??= {}) as Record<string, unknown>;
        at[path.at(-1)!] = value;
      }
      delete obj.metadata.annotations;
    }
  }
  // A Namespace first, the CRDs next (they must be Established before a MeshConfig), the webhook configuration
  // last but one: it sends pods to the control plane, which must exist by then.
  const rank = (x: Obj): number => (x.kind === 'Namespace' ? 0 : x.kind === 'CustomResourceDefinition' ? 1 : x.kind === 'MeshConfig' ? 4 : x.kind === 'MutatingWebhookConfiguration' ? 3 : 2);
  return objects.map((x, i) => ({ x, i })).sort((a, b) => rank(a.x) - rank(b.x) || a.i - b.i).map(({ x }) => x);
}

const GATEWAY_GROUP = 'gateway.networking.k8s.io';
const BUNDLE_VERSION = `${GATEWAY_GROUP}/bundle-version`;
const CHANNEL = `${GATEWAY_GROUP}/channel`;

/** A CRD of the Gateway API (shared with gateways and other meshes: install guards it, uninstall keeps it). */
export function isGatewayApiCrd(o: Obj): boolean {
  return o.kind === 'CustomResourceDefinition' && asMap(o.spec).group === GATEWAY_GROUP;
}

/** vMAJOR.MINOR.PATCH[-PRE] as numbers, or undefined. */
function bundleVersion(v: unknown): { release: number[]; pre?: string } | undefined {
  const m = typeof v === 'string' ? /^v(\d+)\.(\d+)\.(\d+)(?:-([0-9A-Za-z.-]+))?$/.exec(v) : null;
  return m ? { release: [Number(m[1]), Number(m[2]), Number(m[3])], pre: m[4] } : undefined;
}

/** Orders two parsed bundle versions (a pre-release before its release). */
function compareBundles(a: NonNullable<ReturnType<typeof bundleVersion>>, b: NonNullable<ReturnType<typeof bundleVersion>>): number {
  for (let i = 0; i < 3; i++) if (a.release[i] !== b.release[i]) return a.release[i] - b.release[i];
  if (a.pre === b.pre) return 0;
  if (a.pre === undefined) return 1;
  if (b.pre === undefined) return -1;
  return a.pre < b.pre ? -1 : 1;
}

/**
 * Whether install applies a Gateway API CRD over what the cluster has (`existing`, undefined if absent): it creates a
 * missing one and upgrades an older Standard-channel one, and leaves alone one of an equal or newer bundle-version,
 * of another channel, or without a readable bundle-version (installed by the user, a gateway or another mesh): no
 * downgrade, and no tug of war with whoever installed it. `why` says what was found.
 */
export function gatewayCrdVerdict(ours: Obj, existing: unknown): { apply: boolean; why?: string } {
  if (existing === undefined) return { apply: true };
  const oursVersion = String(asMap(ours.metadata.annotations)[BUNDLE_VERSION]);
  const annotations = asMap(asMap(asMap(existing).metadata).annotations);
  const theirs = annotations[BUNDLE_VERSION];
  const channel = annotations[CHANNEL];
  const found = `Gateway API ${typeof theirs === 'string' ? theirs : '(no bundle-version)'}${typeof channel === 'string' ? ` (${channel})` : ''} is installed`;
  if (channel !== 'standard') return { apply: false, why: `${found}: not of the standard channel that mesh-xds ships (${oursVersion}), so it is left as it is` };
  const a = bundleVersion(theirs);
  const b = bundleVersion(oursVersion);
  if (!a || !b) return { apply: false, why: `${found}: its bundle-version cannot be compared with ${oursVersion}, so it is left as it is` };
  const order = compareBundles(a, b);
  if (order > 0) return { apply: false, why: `${found}, newer than ${oursVersion} that mesh-xds ships: left as it is (never downgraded)` };
  if (order === 0) return { apply: false, why: `${found} already: left as it is` };
  return { apply: true, why: `upgraded from ${String(theirs)} to ${oursVersion}` };
}

/** The REST path of an object's collection, and of the object. */
function restPath(o: Obj, plural: string): string {
  const base = o.apiVersion.includes('/') ? `/apis/${o.apiVersion}` : `/api/${o.apiVersion}`;
  return `${base}${o.metadata.namespace ? `/namespaces/${o.metadata.namespace}` : ''}/${plural}/${o.metadata.name}`;
}

const PLURALS: Record<string, string> = {
  CustomResourceDefinition: 'customresourcedefinitions',
  Namespace: 'namespaces',
  ServiceAccount: 'serviceaccounts',
  ClusterRole: 'clusterroles',
  ClusterRoleBinding: 'clusterrolebindings',
  Role: 'roles',
  RoleBinding: 'rolebindings',
  Service: 'services',
  Deployment: 'deployments',
  PodDisruptionBudget: 'poddisruptionbudgets',
  MutatingWebhookConfiguration: 'mutatingwebhookconfigurations',
  MeshConfig: 'meshconfigs',
};

function pathOf(o: Obj): string {
  const plural = PLURALS[o.kind];
  if (!plural) throw new Error(`install: no REST path known for kind ${o.kind} (${o.metadata.name})`);
  return restPath(o, plural);
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function waitFor(what: string, timeoutMs: number, check: () => Promise<string | undefined>): Promise<string> {
  const deadline = Date.now() + timeoutMs;
  let last = '';
  for (;;) {
    try {
      const done = await check();
      if (done !== undefined) return done;
    } catch (e) {
      last = (e as Error).message;
    }
    if (Date.now() > deadline) throw new ExitError(`timed out after ${Math.round(timeoutMs / 1000)} s waiting for ${what}${last ? ` (${last})` : ''}`, 1);
    await sleep(500);
  }
}

const HELP = `Usage: mesh-xds install [--set KEY=VALUE]... [--namespace NS] [--image IMAGE] [--replicas N] [--dry-run] [--timeout SECONDS]
       mesh-xds uninstall [--namespace NS] [--purge]

install applies deploy/ with server-side apply (CRDs, RBAC, the control plane, the injection webhook, the MeshConfig
with the --set values) and the mesh CA Secret if absent, then waits until the control plane is ready. Running it
again changes nothing. --set keys (fsm. prefix optional): ${Object.keys(SET_KEYS).join(', ')}.
--image: the control plane's image (default mesh-xds:0.1.0; build it with docker build -t mesh-xds:0.1.0 .).
The Gateway API CRDs (HTTPRoute, GRPCRoute; v1.7.0, Standard channel) are created if missing and upgraded if
older, but one of an equal or newer version or of another channel is left as it is.
uninstall removes what install made, and keeps the CRDs (with every Retry and route), the namespace and its CA
Secret (so identities survive a reinstall); --purge removes those too, but never the Gateway API CRDs (shared).
`;

export async function installCommand(args: string[], uninstall = false): Promise<number> {
  const command = uninstall ? 'uninstall' : 'install';
  const parsed = parseFlags(
    { command, usage: uninstall ? 'mesh-xds uninstall [--namespace NS] [--kubeconfig FILE] [--purge]' : 'mesh-xds install [--set KEY=VALUE]... [--namespace NS] [--image IMAGE] [--replicas N] [--dry-run] [--timeout SECONDS] [--kubeconfig FILE]', help: HELP },
    args,
    {
      set: { type: 'string', multiple: true, default: [] },
      namespace: { type: 'string', default: DEFAULT_NAMESPACE },
      image: { type: 'string' },
      replicas: { type: 'string' },
      'dry-run': { type: 'boolean', default: false },
      timeout: { type: 'string', default: '300' },
      kubeconfig: { type: 'string' },
      purge: { type: 'boolean', default: false },
    },
  );
  if (!parsed) return 0;
  const values = parsed.values;
  const given = (name: string): boolean => args.some((a) => a === `--${name}` || a.startsWith(`--${name}=`));
  const wrong = uninstall ? ['set', 'image', 'replicas', 'dry-run', 'timeout'].filter(given) : ['purge'].filter(given);
  if (wrong.length) throw new UsageError(`${command}: ${wrong.map((w) => `--${w}`).join(', ')} ${wrong.length > 1 ? 'are' : 'is'} for ${uninstall ? 'install' : 'uninstall'}`);
  const ns = values.namespace!;
  if (!isDnsLabel(ns)) throw new UsageError(`${command}: --namespace ${ns}: not a Kubernetes namespace name`);
  const replicas = values.replicas === undefined ? undefined : Number(values.replicas);
  if (replicas !== undefined && (!Number.isInteger(replicas) || replicas < 1)) throw new UsageError(`install: --replicas ${values.replicas}: a whole number, at least 1`);
  const timeoutMs = Number(values.timeout) * 1000;
  if (!(timeoutMs > 0) || !Number.isFinite(timeoutMs)) throw new UsageError(`install: --timeout ${values.timeout}: a number of seconds, e.g. 300`);
  const plan = installPlan({ namespace: ns, image: values.image, replicas, sets: values.set!.map(parseInstallSet) });
  if (values['dry-run']) {
    process.stdout.write(plan.map((o) => stringify(o)).join('---\n'));
    return 0;
  }
  const { loadKubeConfig } = await import('../sources/kubeconfig.js');
  const { kubeJson } = await import('../outputs/lease.js');
  let kc: k8s.KubeConfig;
  try {
    kc = loadKubeConfig(values.kubeconfig);
  } catch (e) {
    throw new UsageError(`${command}: no usable kubeconfig${values.kubeconfig ? ` at --kubeconfig ${values.kubeconfig}` : ' (KUBECONFIG, ~/.kube/config, or in-cluster)'}: ${(e as Error).message}`);
  }
  const api = (method: string, path: string, body?: unknown, type?: string) =>
    kubeJson(kc, method, path, body, type).catch((e: Error) => {
      throw new UnreachableError(`${command}: cannot reach the Kubernetes API (${kc.getCurrentCluster()?.server}): ${e.message}`);
    });
  const say = (line: string): void => void process.stdout.write(`${line}\n`);
  const label = (o: Obj): string => `${o.kind.toLowerCase()} ${o.metadata.namespace ? `${o.metadata.namespace}/` : ''}${o.metadata.name}`;

  if (uninstall) {
    // The Gateway API CRDs are shared (gateways, other meshes, the user's routes): never deleted, not even by --purge.
    const keep = (o: Obj): boolean => isGatewayApiCrd(o) || (!values.purge && (o.kind === 'CustomResourceDefinition' || o.kind === 'Namespace'));
    const gatewayCrds = plan.filter(isGatewayApiCrd).map((o) => o.metadata.name);
    const keptGateway = `the Gateway API CRDs ${gatewayCrds.join(' and ')} (every HTTPRoute and GRPCRoute stays; shared with gateways and other meshes, so never deleted by mesh-xds: kubectl delete crd ${gatewayCrds.join(' ')} removes them and every route)`;
    // The webhook first: pods of the mesh's namespaces must not wait for a control plane that is going away.
    for (const o of [...plan].reverse().sort((a, b) => Number(b.kind === 'MutatingWebhookConfiguration') - Number(a.kind === 'MutatingWebhookConfiguration'))) {
      if (keep(o)) continue;
      const res = await api('DELETE', pathOf(o));
      if (res.status === 404) say(`${label(o)} not found`);
      else if (res.status >= 300) throw new ExitError(`delete ${label(o)}: HTTP ${res.status}: ${asMap(res.body).message ?? ''}`, 1);
      else say(`${label(o)} deleted`);
    }
    say(
      values.purge
        ? `purged: the CRDs retries.policy.flomesh.io and meshconfigs.config.flomesh.io (and every Retry with them) and namespace ${ns} (with the mesh CA) are being deleted; kept: ${keptGateway}`
        : `kept: the CRDs retries.policy.flomesh.io and meshconfigs.config.flomesh.io (every Retry stays), ${keptGateway}, namespace ${ns} with the Secret ${CA_SECRET} (the mesh CA: a reinstall keeps the identities), the identity Secrets and the namespace labels of the mesh (mesh-xds namespace remove NS). mesh-xds uninstall --purge removes the mesh-xds CRDs and the namespace too.`,
    );
    return 0;
  }

  const started = Date.now();
  for (const o of plan) {
    const path = pathOf(o);
    if (o.kind === 'MeshConfig') {
      // The MeshConfig's CRD must be served before one can be made.
      await waitFor('the MeshConfig CRD to be Established', timeoutMs, async () => {
        const crd = await api('GET', '/apis/apiextensions.k8s.io/v1/customresourcedefinitions/meshconfigs.config.flomesh.io');
        return asList(asMap(asMap(crd.body).status).conditions).some((c) => asMap(c).type === 'Established' && asMap(c).status === 'True') ? 'ok' : undefined;
      });
    }
    const before = await api('GET', path);
    let upgraded: string | undefined;
    if (isGatewayApiCrd(o)) {
      const verdict = gatewayCrdVerdict(o, before.status === 404 ? undefined : before.body);
      if (!verdict.apply) {
        say(`${label(o)} kept: ${verdict.why}`);
        continue;
      }
      upgraded = verdict.why;
    }
    const res = await api('PATCH', `${path}?fieldManager=${FIELD_MANAGER}&force=true`, o, 'application/apply-patch+yaml');
    if (res.status !== 200 && res.status !== 201) throw new ExitError(`apply ${label(o)}: HTTP ${res.status}: ${asMap(res.body).message ?? JSON.stringify(res.body)}`, 1);
    const rvBefore = asMap(asMap(before.body).metadata).resourceVersion;
    const rvAfter = asMap(asMap(res.body).metadata).resourceVersion;
    say(`${label(o)} ${before.status === 404 ? 'created' : rvBefore === rvAfter ? 'unchanged' : 'configured'}${upgraded ? ` (${upgraded})` : ''}`);
    if (o.kind === 'MeshConfig') {
      const spec = asMap(o.spec);
      const budget = asMap(spec.traffic).retryBudget;
      say(`  enableRetryPolicy=${String(asMap(spec.featureFlags).enableRetryPolicy)}, enablePermissiveTrafficPolicyMode=${String(asMap(spec.traffic).enablePermissiveTrafficPolicyMode)}${budget ? `, retryBudget=${JSON.stringify(budget)}` : ''}`);
    }
  }
  // The mesh CA, made here if absent (never replaced: identities and sidecars depend on it).
  const caPath = `/api/v1/namespaces/${ns}/secrets/${CA_SECRET}`;
  const ca = await api('GET', caPath);
  if (ca.status === 404) {
    const pair = await createCa(DEFAULT_TRUST_DOMAIN);
    const res = await api('POST', `/api/v1/namespaces/${ns}/secrets`, {
      apiVersion: 'v1',
      kind: 'Secret',
      metadata: { name: CA_SECRET, namespace: ns, labels: { 'app.kubernetes.io/name': 'mesh-xds', 'app.kubernetes.io/component': 'ca' } },
      type: 'Opaque',
      stringData: { 'ca.crt': pair.cert, 'ca.key': pair.key },
    });
    if (res.status !== 201 && res.status !== 409) throw new ExitError(`create Secret ${ns}/${CA_SECRET}: HTTP ${res.status}: ${asMap(res.body).message ?? ''}`, 1);
    say(`secret ${ns}/${CA_SECRET} created (the mesh CA of ${DEFAULT_TRUST_DOMAIN})`);
  } else if (ca.status === 200) say(`secret ${ns}/${CA_SECRET} unchanged (the mesh CA is never replaced by install)`);
  else throw new ExitError(`read Secret ${ns}/${CA_SECRET}: HTTP ${ca.status}: ${asMap(ca.body).message ?? ''}`, 1);

  const ready = await waitFor('the control plane to be ready (kubectl get pods -n ' + ns + ')', timeoutMs, async () => {
    const d = asMap((await api('GET', `/apis/apps/v1/namespaces/${ns}/deployments/mesh-xds`)).body);
    const want = Number(asMap(d.spec).replicas ?? 1);
    const status = asMap(d.status);
    return Number(status.readyReplicas ?? 0) >= want && Number(status.updatedReplicas ?? 0) >= want && Number(status.observedGeneration ?? 0) >= Number(asMap(d.metadata).generation ?? 0) ? `${want}/${want}` : undefined;
  });
  say(`control plane ready (${ready})`);
  await waitFor(`the control plane to write the caBundle of ${WEBHOOK_CONFIGURATION}`, timeoutMs, async () => {
    const w = asMap((await api('GET', `/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/${WEBHOOK_CONFIGURATION}`)).body);
    return asList(w.webhooks).every((x) => asMap(asMap(x).clientConfig).caBundle) && asList(w.webhooks).length ? 'ok' : undefined;
  });
  say(`mutatingwebhookconfiguration ${WEBHOOK_CONFIGURATION}: caBundle set by the control plane`);
  say(`mesh-xds installed in namespace ${ns} in ${((Date.now() - started) / 1000).toFixed(1)} s; enrol a namespace with: mesh-xds namespace add NS`);
  return 0;
}
