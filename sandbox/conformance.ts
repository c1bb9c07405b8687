/**
 * `npm run conformance`: the Gateway API conformance suite (v1.7.0, profiles MESH-HTTP and MESH-GRPC), unchanged,
 * against a fresh local Kubernetes control plane (kube-guide.ts: etcd, kube-apiserver, kube-controller-manager, the
 * sandbox node) with mesh-xds installed by `mesh-xds install`. The suite applies its own manifests; its namespaces
 * are enrolled as `mesh-xds namespace add` does (--namespace-labels, --namespace-annotations); the echo pods run
 * sandbox/echo (sandbox/node.ts IMAGES). It writes the suite's report to docs/conformance/report.yaml and the suite's
 * whole output to .cache/conformance/last-run.log, prints the summary, and removes the cluster (also on Ctrl-C).
 *
 *   npm run conformance [-- [--report FILE] [SUITE-FLAGS...]]
 * Other flags go to the suite as they are (one test: `npm run conformance -- --run-test=MeshBasic`). Exit status:
 * the suite's (1 when the run could not start).
 */
import { spawn, spawnSync } from 'node:child_process';
import { createWriteStream, existsSync, mkdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { parse } from 'yaml';
import { packagePath } from '../src/paths.js';
import { GUIDE_SETS, KubeGuide, kubeGuideProblems } from './kube-guide.js';
import { building } from './kube.js';

export const SUITE_BIN = packagePath('.cache/conformance/conformance.test');
export const PROFILES = ['MESH-HTTP', 'MESH-GRPC'];

/**
 * What mesh-xds claims: the Mesh profiles' core features, and every extended feature a mesh test of v1.7.0 checks
 * (conformance/tests/mesh), so that each of the 23 tests runs, and the feature of mesh-xds's own MeshHTTPRouteRetry. A claim the run does not bear out shows as a failure
 * in the report, never as a skip.
 */
export const SUPPORTED_FEATURES = [
  'Mesh',
  'HTTPRoute',
  'GRPCRoute',
  'MeshClusterIPMatching',
  'MeshConsumerRoute',
  'HTTPRouteParentRefPort',
  'HTTPRouteResponseHeaderModification',
  'MeshHTTPRouteBackendRequestHeaderModification',
  'MeshHTTPRouteNamedRouteRule',
  'MeshHTTPRouteQueryParamMatching',
  'MeshHTTPRouteRedirectPath',
  'MeshHTTPRouteRedirectPort',
  'MeshHTTPRouteRewritePath',
  'MeshHTTPRouteSchemeRedirect',
  'HTTPRoute303RedirectStatusCode',
  'HTTPRoute307RedirectStatusCode',
  'HTTPRoute308RedirectStatusCode',
  // mesh-xds's own test in the suite's style (test/conformance/mesh/meshhttproute-retry.go); no profile holds it.
  'MeshHTTPRouteRetry',
];

const BUILD_PID = packagePath('.cache/conformance/build.pid');
const BUILD_LOG = packagePath('.cache/conformance/build.log');

function suiteBuilt(): boolean {
  return spawnSync('bash', [packagePath('scripts/conformance/build.sh'), '--check']).status === 0;
}


/**
 * What keeps the suite from running: [] when it is built. A build in progress (started in the background by
 * scripts/install-real-parts.sh after the Kubernetes binaries) is waited for, up to `waitMs`, with a line to `progress`
 * every 30 s.
 */
export async function suiteProblems(waitMs = 30 * 60_000, progress?: (line: string) => void): Promise<string[]> {
  const deadline = Date.now() + waitMs;
  const started = Date.now();
  let told = 0;
  while (!suiteBuilt() && building(BUILD_PID) && Date.now() < deadline) {
    if (progress && Date.now() - told >= 30_000) {
      progress(`the conformance suite is being built in the background: waited ${Math.round((Date.now() - started) / 1000)} s (log: .cache/conformance/build.log)`);
      told = Date.now();
    }
    await new Promise((r) => setTimeout(r, 2000));
  }
  if (suiteBuilt()) return [];
  const log = existsSync(BUILD_LOG) ? readFileSync(BUILD_LOG, 'utf8').trim().split('\n').slice(-5).join('\n') : '';
  return [`the conformance suite is not built: ${SUITE_BIN} (bash scripts/conformance/build.sh builds it with Go; bash scripts/install-real-parts.sh starts that in the background)${log ? `; the last build said:\n${log}` : ''}`];
}

/** The suite's command line (without the binary). */
export function suiteArgs(report: string, extra: string[] = []): string[] {
  const version = JSON.parse(readFileSync(packagePath('package.json'), 'utf8')).version as string;
  return [
    '-test.v',
    '-test.run=^TestConformance$',
    // The suite's own waits are its TimeoutConfig's; this only stops a run that hangs past all of them.
    '-test.timeout=80m',
    `--conformance-profiles=${PROFILES.join(',')}`,
    `--supported-features=${SUPPORTED_FEATURES.join(',')}`,
    // What `mesh-xds namespace add` sets: the mesh's label, and the annotation that asks for the sidecar.
    '--namespace-labels=flomesh.io/monitored-by=mesh-xds',
    '--namespace-annotations=flomesh.io/sidecar-injection=enabled',
    '--cleanup-base-resources=false',
    `--report-output=${report}`,
    '--organization=flomesh-io',
    '--project=mesh-xds',
    '--url=https://github.com/flomesh-io/mesh-xds',
    `--version=v${version}`,
    '--contact=https://github.com/flomesh-io/mesh-xds/issues',
    '--mode=default',
    ...extra,
  ];
}

export async function conformanceCommand(argv: string[]): Promise<number> {
  let report = packagePath('docs/conformance/report.yaml');
  const extra: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === '--report') {
      if (!argv[i + 1]) {
        process.stderr.write('conformance: --report needs a file\n');
        return 2;
      }
      report = path.resolve(argv[++i]!);
    } else if (argv[i] !== '--') extra.push(argv[i]!);
  }
  const waiting = (line: string): void => void process.stdout.write(`(waiting) ${line}\n`);
  const problems = [...(await kubeGuideProblems(30 * 60_000, waiting)), ...(await suiteProblems(30 * 60_000, waiting))];
  if (problems.length) {
    process.stderr.write(`conformance cannot run here:\n- ${problems.join('\n- ')}\n`);
    return 1;
  }
  let g: KubeGuide | undefined;
  let child: ReturnType<typeof spawn> | undefined;
  const onSignal = (signal: string): void => {
    process.stderr.write(`\n${signal}: stopping the suite, removing the cluster\n`);
    child?.kill('SIGTERM');
    void (g?.close() ?? Promise.resolve()).finally(() => process.exit(130));
  };
  process.once('SIGINT', () => onSignal('SIGINT'));
  process.once('SIGTERM', () => onSignal('SIGTERM'));
  const started = Date.now();
  try {
    g = await KubeGuide.start();
    process.stdout.write(`cluster: kube-apiserver at ${g.kube.url}, node ${g.node.name}\n`);
    const install = await g.cli(['install', ...GUIDE_SETS]);
    if (install.code !== 0) throw new Error(`mesh-xds install failed (${install.code}): ${install.stderr || install.stdout}`);
    process.stdout.write(`mesh-xds install ${GUIDE_SETS.join(' ')}: ${install.stdout.trim().split('\n').at(-1)}\n`);
    mkdirSync(path.dirname(report), { recursive: true });
    const logFile = packagePath('.cache/conformance/last-run.log');
    const log = createWriteStream(logFile);
    const args = suiteArgs(report, extra);
    process.stdout.write(`running: ${path.relative(packagePath('.'), SUITE_BIN)} ${args.join(' ')}\n(whole output: ${path.relative(packagePath('.'), logFile)})\n`);
    const code = await new Promise<number>((resolve) => {
      child = spawn(SUITE_BIN, args, { env: { ...process.env, KUBECONFIG: g!.kube.adminKubeconfig }, stdio: ['ignore', 'pipe', 'pipe'] });
      let pending = '';
      const line = (d: Buffer): void => {
        log.write(d);
        pending += d.toString('utf8');
        const lines = pending.split('\n');
        pending = lines.pop() ?? '';
        // The test verdicts as they come (the rest is in the log).
        for (const l of lines) if (/^\s*--- (PASS|FAIL): TestConformance\/\w+ /.test(l) || /^(PASS|FAIL|ok)\b/.test(l)) process.stdout.write(`${l.trim()}\n`);
      };
      child.stdout!.on('data', line);
      child.stderr!.on('data', line);
      child.on('close', (c) => resolve(c ?? 1));
    });
    log.end();
    process.stdout.write(`suite exit ${code} after ${Math.round((Date.now() - started) / 1000)} s\n`);
    if (existsSync(report)) process.stdout.write(summary(readFileSync(report, 'utf8')));
    return code;
  } catch (e) {
    process.stderr.write(`conformance: ${(e as Error).message}\n`);
    return 1;
  } finally {
    await g?.close();
  }
}

/** Each profile's line from the suite's report: result, tests passed of those run, extended features claimed. */
export function summary(reportYaml: string): string {
  const report = parse(reportYaml) as { profiles?: Profile[] } | null;
  const lines = (report?.profiles ?? []).map((p) => {
    const count = (s?: ProfileStatus): string => {
      const st = s?.statistics ?? {};
      const run = (st.Passed ?? 0) + (st.Failed ?? 0);
      return `${st.Passed ?? 0}/${run} passed${st.Skipped ? `, ${st.Skipped} skipped` : ''}${s?.failedTests?.length ? ` (failed: ${s.failedTests.join(', ')})` : ''}`;
    };
    const ext = p.extended;
    return `${p.name}: core ${p.core?.result ?? '?'}, ${count(p.core)}; extended ${ext?.result ?? '-'}, ${count(ext)}; extended features claimed: ${ext?.supportedFeatures?.join(', ') || 'none'}`;
  });
  return lines.length ? `${lines.join('\n')}\n` : 'the report has no profile\n';
}

interface ProfileStatus {
  result?: string;
  statistics?: { Passed?: number; Skipped?: number; Failed?: number };
  failedTests?: string[];
  supportedFeatures?: string[];
}
interface Profile {
  name: string;
  core?: ProfileStatus;
  extended?: ProfileStatus;
}

if (process.argv[1]?.endsWith(`${path.sep}conformance.js`)) {
  void conformanceCommand(process.argv.slice(2)).then((code) => process.exit(code));
}
