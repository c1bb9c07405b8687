/**
 * The Gateway API conformance suite itself (v1.7.0, profiles MESH-HTTP and MESH-GRPC, and mesh-xds's own
 * MeshHTTPRouteRetry), unchanged, as `npm run conformance` runs it: a fresh local Kubernetes control plane, mesh-xds
 * installed by `mesh-xds install`, the suite's own manifests and checks through `kubectl exec` of its echo client.
 * The report goes to a temporary file (docs/conformance/report.yaml is what `npm run conformance` writes).
 *
 * Every mesh test of the suite must run (none skipped) and pass, but for the ones docs/conformance/README.md lists as
 * not passing yet, with the reason: KNOWN_FAILING. One of those that starts passing fails this test too, so that
 * the list and the docs stay true.
 *
 * Last of all the tests (vitest.config.ts): on a fresh machine the suite is built in the background after the
 * Kubernetes binaries (scripts/install-real-parts.sh), and this waits for it.
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { suiteProblems } from '../../sandbox/conformance.js';
import { ROOT } from '../helpers/cli.js';
import { kubeMissing } from '../helpers/kube.js';
import { sandboxMissing } from '../helpers/sandbox.js';

/** The 23 mesh tests of v1.7.0 (conformance/tests/mesh), and mesh-xds's own (test/conformance/mesh). */
const MESH_TESTS = [
  'MeshBasic',
  'MeshConsumerRoute',
  'MeshFrontend',
  'MeshFrontendHostname',
  'MeshGRPCRouteRequestHeaderModifier',
  'MeshGRPCRouteWeight',
  'MeshHTTPRoute303Redirect',
  'MeshHTTPRoute307Redirect',
  'MeshHTTPRoute308Redirect',
  'MeshHTTPRouteBackendRequestHeaderModifier',
  'MeshHTTPRouteMatching',
  'MeshHTTPRouteNamedRule',
  'MeshHTTPRouteQueryParamMatching',
  'MeshHTTPRouteRedirectHostAndStatus',
  'MeshHTTPRouteRedirectPath',
  'MeshHTTPRouteRedirectPort',
  'MeshHTTPRouteRequestHeaderModifier',
  'MeshHTTPRouteRewritePath',
  'MeshHTTPRouteSchemeRedirect',
  'MeshHTTPRouteSimpleSameNamespace',
  'MeshHTTPRouteWeight',
  'MeshPorts',
  'MeshTrafficSplit',
  'MeshHTTPRouteRetry',
];

/** Not passing yet, each for the reason docs/conformance/README.md gives ("What does not pass yet"). */
const KNOWN_FAILING = ['MeshFrontend'];

const suiteMissing = await suiteProblems(35 * 60_000, (line) => console.log(line));
if (suiteMissing.length) {
  const text = `the conformance suite cannot run here:\n- ${suiteMissing.join('\n- ')}`;
  if (process.env.CI) throw new Error(`${text}\n(CI=true: .ci/run must build it)`);
  console.warn(`${text}\nIt is skipped.`);
}
const missing = [...(await kubeMissing()), ...sandboxMissing, ...suiteMissing];

describe.skipIf(missing.length > 0)('the Gateway API conformance suite (v1.7.0, Mesh profiles) on a local Kubernetes control plane', () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'mesh-xds-conformance-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('runs every mesh test; all pass but the ones the docs list as not passing yet, and the report says so', async () => {
    const report = path.join(dir, 'report.yaml');
    const started = Date.now();
    const run = await new Promise<{ code: number | null; out: string }>((resolve) => {
      const child = spawn(process.execPath, [path.join(ROOT, 'dist-dev/sandbox/conformance.js'), '--report', report], { stdio: ['ignore', 'pipe', 'pipe'] });
      let out = '';
      child.stdout.on('data', (d: Buffer) => (out += d.toString('utf8')));
      child.stderr.on('data', (d: Buffer) => (out += d.toString('utf8')));
      child.on('close', (code) => resolve({ code, out }));
    });
    console.log(`npm run conformance: exit ${run.code} after ${Math.round((Date.now() - started) / 1000)} s\n${run.out.split('\n').filter((l) => /--- (PASS|FAIL)|MESH-|suite exit/.test(l)).join('\n')}`);

    // The verdict of each mesh test, from the suite's whole output (the runner keeps it).
    const log = readFileSync(path.join(ROOT, '.cache/conformance/last-run.log'), 'utf8');
    const verdicts = new Map([...log.matchAll(/^\s*--- (PASS|FAIL|SKIP): TestConformance\/(\w+) /gm)].map((m) => [m[2]!, m[1]!]));
    const of = (names: string[]): Record<string, string | undefined> => Object.fromEntries(names.map((n) => [n, verdicts.get(n)]));
    const expected = Object.fromEntries(MESH_TESTS.map((n) => [n, KNOWN_FAILING.includes(n) ? 'FAIL' : 'PASS']));
    expect(of(MESH_TESTS), run.out.slice(-3000)).toEqual(expected);
    // The suite exits 1 when a test fails: only while KNOWN_FAILING is not empty.
    expect(run.code).toBe(KNOWN_FAILING.length ? 1 : 0);

    // The suite's own report: each profile's core (and MESH-HTTP's extended) tests all passed, none skipped.
    const profiles = (parse(readFileSync(report, 'utf8')) as { profiles: { name: string; core: any; extended?: any }[] }).profiles;
    const line = (p: { core: any; extended?: any }) => ({
      core: [p.core.result, p.core.statistics],
      extended: p.extended ? [p.extended.result, p.extended.statistics] : undefined,
    });
    expect(Object.fromEntries(profiles.map((p) => [p.name, line(p)]))).toEqual({
      'MESH-GRPC': { core: ['success', { Passed: 3, Failed: 0, Skipped: 0 }], extended: undefined },
      'MESH-HTTP': { core: ['success', { Passed: 7, Failed: 0, Skipped: 0 }], extended: ['success', { Passed: 7, Failed: 0, Skipped: 0 }] },
    });
  }, 30 * 60_000);
});
