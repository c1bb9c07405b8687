/**
 * Outside attack on the mesh-route door (issue #38): what one tenant's HTTPRoute files do to the server.
 * Run: npm run build && node dist-dev/bench/attack-routes.js [re2|big|alias|all]   (about 2-4 minutes, ~3 GB RSS)
 *
 * - re2: a header regex of 200 characters (and a GRPCRoute method of 110): `validate -f` says valid, Envoy
 *   (`envoy --mode validate`, .cache/venv) refuses the route configuration `policy explain -f` prints
 *   ("RE2 program size of 204 > max program size of 100").
 * - big: one consumer route in namespace curl (3.3 MB: 1 rule, 64 matches, 16 backends each with 64 header values of
 *   3,000 characters) on 4 Service parents. Every match repeats the rule's and backends' header options, so the
 *   namespace's rules serialize to > 512 M characters: "translating the mesh failed" (RangeError: Invalid string
 *   length, featureSignatures). A Service added afterwards in another namespace never reaches that namespace's config.
 * - alias: invalid routes whose 16 header matches are one YAML anchor used in 64 matches (aliases: 64 < 100): each
 *   route 1,024 problems quoting a 1,000-character regex; 3 files of 3.7 MB: /debug/policies fails (Invalid string length).
 * Prints /healthz latency (worst) throughout; the server's log is in the temp folder until the end.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { cpSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { packagePath } from '../src/paths.js';

const mode = process.argv[2] ?? 'all';
const CLI = packagePath('dist/src/cli/main.js');
const ENVOY = packagePath('.cache/venv/bin/envoy');
const DEBUG = '127.0.0.1:29391';
const dir = mkdtempSync(path.join(os.tmpdir(), 'attack-routes-'));
const mesh = path.join(dir, 'mesh');
cpSync(packagePath('deploy/demo'), mesh, { recursive: true });
rmSync(path.join(mesh, 'README.md'), { force: true });
const services = (names: string[], ns: string, ip: number): string =>
  names.map((n, i) => `apiVersion: v1\nkind: Service\nmetadata: {name: ${n}, namespace: ${ns}}\nspec:\n  clusterIP: 10.96.${ip}.${i + 1}\n  selector: {app: ${n}}\n  ports: [{name: http, port: 8080, targetPort: 8080}]\n`).join('---\n');
writeFileSync(path.join(mesh, 'svcs.yaml'), services(['svc1', 'svc2', 'svc3'], 'httpbin', 199));

const route = (kind: string, name: string, parents: string[], rules: unknown[]): string =>
  JSON.stringify({
    apiVersion: 'gateway.networking.k8s.io/v1',
    kind,
    metadata: { name, namespace: 'curl' },
    spec: { parentRefs: parents.map((p) => ({ group: '', kind: 'Service', namespace: 'httpbin', name: p.split(':')[0], port: Number(p.split(':')[1]) })), rules },
  });

function re2(): void {
  const d = path.join(dir, 're2');
  cpSync(mesh, d, { recursive: true });
  const backendRefs = [{ name: 'httpbin', namespace: 'httpbin', port: 14001 }];
  writeFileSync(path.join(d, 'r.json'), route('HTTPRoute', 'long-regex', ['httpbin:14001'], [{ matches: [{ headers: [{ type: 'RegularExpression', name: 'x', value: 'c'.repeat(200) }] }], backendRefs }]));
  const v = spawnSync('node', [CLI, 'validate', '-f', d], { encoding: 'utf8' });
  console.log(`re2: validate -f exit ${v.status}`);
  const e = spawnSync('node', [CLI, 'policy', 'explain', '--from', 'curl/curl', '--to', 'httpbin/httpbin', '-f', d, '-o', 'json'], { encoding: 'utf8', maxBuffer: 1 << 28 });
  const rc = (JSON.parse(e.stdout) as { routes: { routeConfiguration: string; virtualHost: unknown }[] }).routes[0]!;
  const hcm = { '@type': 'type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager', stat_prefix: 's', route_config: { name: rc.routeConfiguration, validate_clusters: false, virtual_hosts: [rc.virtualHost] }, http_filters: [{ name: 'envoy.filters.http.router', typed_config: { '@type': 'type.googleapis.com/envoy.extensions.filters.http.router.v3.Router' } }] };
  const bootstrap = { static_resources: { listeners: [{ name: 'l', address: { socket_address: { address: '127.0.0.1', port_value: 1 } }, filter_chains: [{ filters: [{ name: 'envoy.filters.network.http_connection_manager', typed_config: hcm }] }] }] } };
  writeFileSync(path.join(dir, 'bootstrap.json'), JSON.stringify(bootstrap));
  if (!existsSync(ENVOY)) return console.log('re2: no Envoy at', ENVOY);
  const r = spawnSync(ENVOY, ['--mode', 'validate', '-c', path.join(dir, 'bootstrap.json'), '-l', 'critical', '--concurrency', '1'], { encoding: 'utf8' });
  console.log(`re2: envoy --mode validate exit ${r.status}: ${(r.stdout + r.stderr).trim().split('\n').pop()!.slice(-220)}`);
}

let server: ChildProcess | undefined;
let worst = 0;
let polling = false;
async function healthz(): Promise<void> {
  polling = true;
  while (polling) {
    const t = Date.now();
    await fetch(`http://${DEBUG}/healthz`, { signal: AbortSignal.timeout(120_000) }).catch(() => undefined);
    worst = Math.max(worst, Date.now() - t);
    await new Promise((r) => setTimeout(r, 200));
  }
}
const log = (): string => (existsSync(path.join(dir, 'server.log')) ? readFileSync(path.join(dir, 'server.log'), 'utf8') : '');
async function waitLog(re: RegExp, after: number, ms: number): Promise<string | undefined> {
  for (const end = Date.now() + ms; Date.now() < end; await new Promise((r) => setTimeout(r, 500))) {
    const hit = log().slice(after).match(re);
    if (hit) return hit[0];
  }
  return undefined;
}
async function start(): Promise<void> {
  const out = path.join(dir, 'server.log');
  writeFileSync(out, '');
  const fd = (await import('node:fs')).openSync(out, 'a');
  server = spawn('node', [CLI, 'serve', '--manifests', mesh, '--ads-address', '127.0.0.1:25391', '--debug-address', DEBUG], { stdio: ['ignore', fd, fd] });
  await waitLog(/mesh translated/, 0, 60_000);
  void healthz();
}

async function big(): Promise<void> {
  const V = (i: number): string => String(i).padEnd(3000, 'v');
  const ops = (p: string) => ({ set: Array.from({ length: 16 }, (_, i) => ({ name: `${p}s${i}`, value: V(i) })), add: Array.from({ length: 16 }, (_, i) => ({ name: `${p}a${i}`, value: V(i) })) });
  const filters = [{ type: 'RequestHeaderModifier', requestHeaderModifier: ops('q') }, { type: 'ResponseHeaderModifier', responseHeaderModifier: ops('r') }];
  const parents = ['httpbin:14001', 'svc1:8080', 'svc2:8080', 'svc3:8080'];
  const backendRefs = Array.from({ length: 16 }, (_, i) => ({ namespace: 'httpbin', name: parents[i % 4]!.split(':')[0], port: Number(parents[i % 4]!.split(':')[1]), filters }));
  const text = route('HTTPRoute', 'big', parents, [{ matches: Array.from({ length: 64 }, (_, i) => ({ path: { type: 'PathPrefix', value: `/p${i}` } })), filters, backendRefs }]);
  worst = 0;
  let at = log().length;
  writeFileSync(path.join(mesh, 'big.json'), text);
  const first = await waitLog(/mesh translated|translating the mesh failed/, at, 180_000);
  console.log(`big: ${(text.length / 1e6).toFixed(1)} MB route -> ${first ?? 'no translation within 180 s'}; worst /healthz ${worst} ms`);
  // Another tenant's change while the route is there.
  worst = 0;
  at = log().length;
  writeFileSync(path.join(mesh, 'other.yaml'), services(['newsvc'], 'httpbin', 200));
  const second = await waitLog(/mesh translated|translating the mesh failed/, at, 180_000);
  const dump = await fetch(`http://${DEBUG}/debug/config_dump?namespace=httpbin&serviceAccount=httpbin`).then((r) => r.text()).catch((e: Error) => e.message);
  console.log(`big: then a Service in namespace httpbin -> ${second ?? 'nothing within 180 s'}; in httpbin's config: ${dump.includes('newsvc') ? 'yes' : 'NO'}; worst /healthz ${worst} ms`);
  rmSync(path.join(mesh, 'big.json'));
  await waitLog(/mesh translated/, log().length, 120_000);
}

async function alias(): Promise<void> {
  const bad = '(' + 'a'.repeat(1000);
  const doc = (name: string): string =>
    [
      'apiVersion: gateway.networking.k8s.io/v1',
      'kind: HTTPRoute',
      `metadata: {name: ${name}, namespace: curl}`,
      'x: &h',
      ...Array.from({ length: 16 }, (_, i) => `  - {type: RegularExpression, name: h${i}, value: "${bad}"}`),
      'spec:',
      '  parentRefs: [{group: "", kind: Service, namespace: httpbin, name: httpbin}]',
      '  rules:',
      '    - matches:',
      ...Array.from({ length: 64 }, () => '        - headers: *h'),
      '      backendRefs: [{name: httpbin, port: 14001}]',
      '',
    ].join('\n');
  worst = 0;
  const at = log().length;
  for (let f = 0; f < 3; f++) writeFileSync(path.join(mesh, `alias${f}.yaml`), Array.from({ length: 200 }, (_, i) => doc(`f${f}r${i}`)).join('---\n'));
  await waitLog(/mesh translated|translating the mesh failed/, at, 180_000);
  const t = Date.now();
  const res = await fetch(`http://${DEBUG}/debug/policies`).then(async (r) => `${r.status}, ${(await r.arrayBuffer()).byteLength} bytes`).catch((e: Error) => e.message);
  console.log(`alias: 3 files of ${(readFileSync(path.join(mesh, 'alias0.yaml')).length / 1e6).toFixed(1)} MB -> /debug/policies ${res} in ${Date.now() - t} ms; worst /healthz ${worst} ms`);
  console.log(`alias: server log says: ${log().slice(at).match(/"err":"[^"]{0,80}/g)?.join(' | ') ?? 'no error'}`);
}

try {
  if (mode === 're2' || mode === 'all') re2();
  if (mode !== 're2') {
    await start();
    if (mode === 'big' || mode === 'all') await big();
    if (mode === 'alias' || mode === 'all') await alias();
  }
} finally {
  polling = false;
  server?.kill('SIGKILL');
  rmSync(dir, { recursive: true, force: true });
}
