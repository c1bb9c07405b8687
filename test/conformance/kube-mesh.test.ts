/**
 * What the Gateway API mesh conformance suite (v1.7.0) needs of the local Kubernetes control plane, short of
 * `kubectl exec`: its own mesh manifests (from the module, copied by scripts/conformance/build.sh) applied as the
 * suite applies them (its namespaces labelled and annotated as `npm run conformance` asks: what `mesh-xds namespace
 * add` sets) come up Ready with the injected sidecar, on the sandbox node with sandbox/echo for the echo image; names
 * resolve as the suite's requests name them (`echo`, `echo.gateway-conformance-mesh`, the other namespace's
 * `echo-v1.gateway-conformance-mesh`); and the suite's own checks, made with the echo client in the pod's network
 * namespace instead of through pods/exec, pass through the sidecars: plain HTTP and gRPC, and one of its routes
 * (tests/mesh/httproute-matching.yaml).
 */
import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseAllDocuments, stringify } from 'yaml';
import { GUIDE_SETS, KubeGuide } from '../../sandbox/kube-guide.js';
import { until } from '../../sandbox/sandbox.js';
import { ROOT } from '../helpers/cli.js';
import { kubeMissing } from '../helpers/kube.js';
import { sandboxMissing } from '../helpers/sandbox.js';

/**
 * The suite's own manifests, kept byte for byte from sigs.k8s.io/gateway-api v1.7.0 (conformance/base/mesh/manifests.yaml
 * and conformance/tests/mesh/httproute-matching.yaml; sha256 in SHA256SUMS, checked below, and equal to build.sh's
 * copy where the suite is built), so that this test runs without building the suite.
 */
const MANIFESTS = path.join(ROOT, 'test/conformance/manifests');
const CLIENT = path.join(ROOT, 'sandbox/echo/client.mjs');
const MESH = 'gateway-conformance-mesh';
const CONSUMER = 'gateway-conformance-mesh-consumer';
const missing = [...(await kubeMissing()), ...sandboxMissing];

/** The suite's manifests with its namespaces labelled and annotated, as its applier does with --namespace-labels. */
function asTheSuiteApplies(file: string): string {
  return parseAllDocuments(readFileSync(file, 'utf8'))
    .map((d) => d.toJSON())
    .filter(Boolean)
    .map((o) => {
      if (o.kind === 'Namespace') {
        o.metadata.labels = { ...o.metadata.labels, 'flomesh.io/monitored-by': 'mesh-xds' };
        o.metadata.annotations = { ...o.metadata.annotations, 'flomesh.io/sidecar-injection': 'enabled' };
      }
      return stringify(o);
    })
    .join('---\n');
}

/** The first `Field=` match, as utils/echo.ParseResponse reads it. */
const field = (out: string, name: string): string => new RegExp(`${name}=(.*)`).exec(out)?.[1] ?? '';

it("the suite's manifests are kept as the module has them", () => {
  for (const line of readFileSync(path.join(MANIFESTS, 'SHA256SUMS'), 'utf8').trim().split('\n')) {
    const [sum, file] = line.split(/\s+/) as [string, string];
    const bytes = readFileSync(path.join(MANIFESTS, file));
    expect(createHash('sha256').update(bytes).digest('hex'), file).toBe(sum);
    const built = path.join(ROOT, '.cache/conformance/manifests', file === 'mesh.yaml' ? file : `tests/${file}`);
    if (existsSync(built)) expect(readFileSync(built).equals(bytes), `${file} against ${built}`).toBe(true);
  }
});

describe.skipIf(missing.length > 0)('the mesh conformance manifests on the local control plane, with sidecars', () => {
  let g: KubeGuide;
  let client: string;
  let consumer: string;
  const ok = (args: string[], input?: string): Promise<string> => g.kubectlOk(args, input);
  const request = async (ns: string, pod: string, ...args: string[]): Promise<string> => {
    const r = await g.exec(ns, pod, [CLIENT, ...args]);
    if (r.code !== 0) throw new Error(`client ${args.join(' ')} from ${ns}/${pod}: ${r.stderr}`);
    return r.stdout;
  };

  beforeAll(async () => {
    g = await KubeGuide.start();
    const r = await g.cli(['install', ...GUIDE_SETS]);
    if (r.code !== 0) throw new Error(`install: ${r.stderr}`);
  }, 300_000);
  afterAll(async () => g?.close(), 60_000);

  it('the echo Deployments come up Ready with the sidecar (what MeshNamespacesMustBeReady waits for)', async () => {
    await ok(['apply', '-f', '-'], asTheSuiteApplies(path.join(MANIFESTS, 'mesh.yaml')));
    const mesh = await g.waitRunning(MESH, 2, 180_000);
    const [cons] = await g.waitRunning(CONSUMER, 1, 180_000);
    for (const p of [...mesh, cons!]) expect(p.containers.length, JSON.stringify(p)).toBe(2);
    client = mesh.find((p) => p.name.startsWith('echo-v1-'))!.name;
    consumer = cons!.name;
    const pods = JSON.parse(await ok(['get', 'pods', '-n', MESH, '-o', 'json'])).items;
    for (const p of pods) expect(p.status.conditions.find((c: { type: string }) => c.type === 'Ready')?.status).toBe('True');
  }, 240_000);

  it('`echo`, `echo.gateway-conformance-mesh` and gRPC `echo:7070` answer from an echo pod, through the sidecars', async () => {
    for (const url of ['http://echo/', `http://echo.${MESH}/`, 'grpc://echo:7070']) {
      // As the suite's checks: eventually consistent (the sidecars get their configuration after the pods start).
      let out = '';
      await until(
        async () => {
          const r = await g.exec(MESH, client, [CLIENT, url]);
          out = r.stdout || r.stderr;
          return field(out, 'StatusCode') === '200';
        },
        60_000,
        `${url} to answer 200 (last: ${out})`,
      ).catch((e) => {
        throw new Error(`${(e as Error).message}; last output: ${out}`);
      });
      expect(field(out, 'StatusCode'), url).toBe('200');
      expect(field(out, 'Hostname'), url).toMatch(/^echo-v[12]-/);
      // The sidecar's HTTP connection manager adds a request id: the request went through Envoy.
      expect(out, url).toMatch(/RequestHeader=x-request-id:/i);
    }
    const fromConsumer = await request(CONSUMER, consumer, `http://echo-v1.${MESH}/`);
    expect(field(fromConsumer, 'StatusCode')).toBe('200');
    const meshPods = (await g.pods(MESH)).map((p) => p.name);
    expect(meshPods).toContain(field(fromConsumer, 'Hostname'));
  }, 120_000);

  it('a suite route (httproute-matching.yaml), producer side: /v2 and version: two reach echo-v2, the rest echo-v1', async () => {
    await ok(['apply', '-f', path.join(MANIFESTS, 'httproute-matching.yaml')]);
    // From the consumer namespace's pod (the producer route applies to every caller); echo-v1 is the next test's.
    const cases: [string[], string][] = [
      [[`http://echo.${MESH}/`], 'echo-v1-'],
      [[`http://echo.${MESH}/v2/example`], 'echo-v2-'],
      [[`http://echo.${MESH}/`, '-H', 'Version:two'], 'echo-v2-'],
      [[`http://echo.${MESH}/v2example`], 'echo-v1-'],
    ];
    for (const [args, backend] of cases) {
      let out = '';
      await until(
        async () => {
          const r = await g.exec(CONSUMER, consumer, [CLIENT, ...args]);
          out = r.stdout || r.stderr;
          return field(out, 'StatusCode') === '200' && field(out, 'Hostname').startsWith(backend);
        },
        60_000,
        `${args.join(' ')} to reach ${backend}`,
      ).catch((e) => {
        throw new Error(`${(e as Error).message}; last output: ${out}`);
      });
    }
    const batch = (await request(CONSUMER, consumer, `http://echo.${MESH}/v2`, '--count=20')).split('\n\n').filter((s) => /Hostname=/.test(s));
    expect(batch).toHaveLength(20);
    expect(batch.every((s) => field(s, 'Hostname').startsWith('echo-v2-'))).toBe(true);
  }, 180_000);

  // A pod calling itself through a Service: its sidecar connects to its own pod address, which must go to its
  // inbound listener (the init container's `-o lo` rule, src/inject/template.ts), not straight to the app (which
  // would get the mTLS handshake: 503, "remote connection failure"). The suite's client is always echo-v1, and
  // most of its checks expect echo-v1 to answer.
  it('echo-v1 reaches itself through its own Service (echo-v1), as the suite\'s checks need', async () => {
    await until(
      async () => field((await g.exec(MESH, client, [CLIENT, 'http://echo-v1/'])).stdout, 'StatusCode') === '200',
      30_000,
      'echo-v1 -> http://echo-v1/ to answer 200',
    );
  }, 60_000);
});
