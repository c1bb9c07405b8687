/**
 * The mistakes a newcomer makes with the CLI (issue 37), every command and flag by class (missing, unknown, bad
 * value, given twice, conflicting, a path that is not there): each answered by one line on stderr that says what
 * is wrong and what to do, the documented exit code (1 problem found, 2 usage error, 3 cannot reach server), and
 * no stack trace unless --debug. Real child processes of bin/mesh-xds.js.
 */
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import net, { type AddressInfo } from 'node:net';
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { cli } from './helpers/cli.js';
import { tempDir } from './helpers/tmp.js';

const dir = tempDir('mesh-xds-cli-errors-');
const empty = path.join(dir, 'empty');
const badYaml = path.join(dir, 'bad.yaml');
const noManifests = path.join(dir, 'no-manifests');
const deepYaml = path.join(dir, 'deep.yaml');
beforeAll(() => {
  // 200,000 nested brackets: the YAML parser's recursion overflows its stack (and took the folder's worker to 1.2 GB).
  writeFileSync(deepYaml, `a: ${'['.repeat(200_000)}\n`);
  mkdirSync(empty);
  mkdirSync(noManifests);
  writeFileSync(path.join(noManifests, 'notes.txt'), 'not a manifest\n');
  writeFileSync(badYaml, 'kind: Pod\nmetadata: {name: [unclosed\n');
});

type Row = [args: string[], code: number, stderr: RegExp];

const TABLE: Row[] = [
  // The command itself.
  [['bogus'], 2, /unknown command "bogus"; the commands: mesh-xds --help/],
  [['valdate'], 2, /unknown command "valdate" \(did you mean validate\?\)/],
  // serve
  [['serve'], 2, /choose one source: --manifests DIR or --kubernetes/],
  [['serve', '--manifests'], 2, /serve: --manifests needs a value/],
  [['serve', '--manifest', 'deploy/demo'], 2, /serve: unknown flag --manifest \(did you mean --manifests\?\)/],
  [['serve', '--manifests', '/nonexistent'], 2, /--manifests \/nonexistent: no such directory; give the folder of your manifests/],
  [['serve', '--manifests', 'deploy/demo/retry.yaml'], 2, /--manifests deploy\/demo\/retry.yaml: not a directory/],
  [['serve', '--manifests', 'deploy/demo', '--kubernetes'], 2, /choose one source/],
  [['serve', '--manifests', 'deploy/demo', '--manifests', 'deploy'], 2, /--manifests given twice \(deploy\/demo and deploy\): give it once/],
  [['serve', 'deploy/demo'], 2, /serve: unexpected argument "deploy\/demo"/],
  [['serve', '--manifests', 'deploy/demo', '--ads-address', 'nowhere'], 2, /--ads-address nowhere: expected HOST:PORT/],
  [['serve', '--manifests', 'deploy/demo', '--plaintext=yes'], 2, /--plaintext takes no value \(given "yes"\)/],
  [['serve', '--manifests', 'deploy/demo', '--log-level', 'loud'], 2, /--log-level must be one of/],
  [['serve', '--manifests', 'deploy/demo', '--max-connection-age', 'soon'], 2, /--max-connection-age soon: a Go duration/],
  [['serve', '--manifests', 'deploy/demo', '--ca-dir', empty], 2, /--ca-dir .*: ca.crt and ca.key missing .*mesh-xds ca init --dir/],
  [['serve', '--manifests', 'deploy/demo', '--tls-dir', empty], 2, /--tls-dir .*: tls.crt and tls.key and ca.crt missing .*mesh-xds ca issue/],
  [['serve', '--kubernetes', '--tls-dir', empty, '--ca-dir', empty], 2, /choose one: --tls-dir .* or --ca-dir/],
  [['serve', '--kubernetes', '--kubeconfig', '/nonexistent'], 2, /--kubeconfig \/nonexistent: no such file/],
  // validate
  [['validate'], 2, /validate: which manifests\? give -f FILE_OR_DIR/],
  [['validate', '-f'], 2, /validate: -f needs a value/],
  [['validate', 'deploy/demo/retry.yaml'], 2, /manifests are given with -f: mesh-xds validate -f deploy\/demo\/retry.yaml/],
  [['validate', '-f', '/nonexistent'], 2, /validate: -f \/nonexistent: no such file or directory/],
  [['validate', '-f', noManifests], 2, /a folder without any .yaml, .yml or .json file/],
  [['validate', '-f', 'deploy/demo', '-o', 'yaml'], 2, /validate: -o yaml: the output is a table, or json with -o json/],
  [['validate', '--file', 'deploy/demo'], 2, /unknown flag --file \(did you mean -f, --filename\?\)/],
  // policy
  [['policy'], 2, /policy: which one\? explain or amplification/],
  [['policy', 'explian'], 2, /unknown subcommand "explian" \(did you mean explain\?\)/],
  [['policy', 'explain'], 2, /policy explain: --from is missing: give --from NAMESPACE\/SERVICEACCOUNT, e.g. --from curl\/curl/],
  [['policy', 'explain', '--from', 'curl/curl'], 2, /--to is missing: give --to NAMESPACE\/SERVICE/],
  [['policy', 'explain', '--from', 'curl', '--to', 'httpbin/httpbin'], 2, /--from curl: expected NAMESPACE\/SERVICEACCOUNT/],
  [['policy', 'explain', '--from', 'curl/curl', '--to', 'Httpbin'], 2, /--to Httpbin: expected NAMESPACE\/SERVICE/],
  [['policy', 'explain', '--from', '--to', 'httpbin/httpbin'], 2, /--from needs a value, not the flag --to/],
  [['policy', 'explain', '--from', 'a/b', '--to', 'c/d', '--debug-url', 'nope'], 2, /--debug-url nope: not an http URL/],
  [['policy', 'explain', '--from', 'a/b', '--to', 'c/d', '-f', 'deploy/demo', '--debug-url', 'http://127.0.0.1:1'], 2, /-f and --debug-url: choose one/],
  [['policy', 'explain', '--from', 'a/b', '--to', 'c/d', '--debug-url', 'http://127.0.0.1:1'], 3, /cannot reach the mesh-xds debug server at http:\/\/127.0.0.1:1/],
  [['policy', 'explain', '--from', 'a/b', '--to', 'c/d', '--frm', 'x'], 2, /unknown flag --frm \(did you mean --from\?\)/],
  [['policy', 'amplification'], 2, /policy amplification: which manifests\?/],
  [['policy', 'amplification', '-f', 'deploy/demo', '--max', '0'], 2, /--max 0: a whole number of attempts, at least 1/],
  [['policy', 'amplification', '-f', '/nonexistent'], 2, /-f \/nonexistent: no such file or directory/],
  // proxy
  [['proxy'], 2, /proxy: which one\? status or get/],
  [['proxy', 'stats'], 2, /unknown subcommand "stats" \(did you mean status\?\)/],
  [['proxy', 'status', '-o', 'yaml'], 2, /proxy status: -o yaml/],
  [['proxy', 'status', '--debug-url', 'http://127.0.0.1:1'], 3, /cannot reach the mesh-xds debug server/],
  [['proxy', 'get'], 2, /proxy get: what to get: one of stats, config_dump, clusters/],
  [['proxy', 'get', 'stat', 'curl-1'], 2, /not "stat" \(did you mean stats\?\)/],
  [['proxy', 'get', 'stats'], 2, /proxy get: name the pod/],
  [['proxy', 'get', 'stats', 'curl-1', '--admin-url', 'nope'], 2, /--admin-url nope: not an http URL/],
  [['proxy', 'get', 'stats', 'curl-1', '--admin-url', 'http://127.0.0.1:1'], 3, /cannot reach the Envoy admin at http:\/\/127.0.0.1:1/],
  // namespace
  [['namespace'], 2, /namespace: which one\? add or remove/],
  [['namespace', 'add'], 2, /namespace add: which namespace\?/],
  [['namespace', 'add', 'Bad_NS'], 2, /Bad_NS: not a Kubernetes namespace name/],
  [['namespace', 'remove', 'apps', '--mesh-name', 'm'], 2, /--mesh-name and --disable-sidecar-injection are for namespace add/],
  [['namespace', 'add', 'a', 'b'], 2, /unexpected argument "b"/],
  // inject
  [['inject'], 2, /inject: which file\? give -f FILE/],
  [['inject', '-f', '/nonexistent'], 2, /inject: -f \/nonexistent: no such file/],
  [['inject', '-f', 'deploy'], 2, /inject: -f deploy: a directory; inject takes one file/],
  [['inject', '-f', badYaml], 1, /inject: .*bad.yaml: document 1: /],
  [['inject', '-f', deepYaml], 1, /inject: .*deep.yaml:1: nests flow collections \(\[ \], \{ \}\) more than 100 deep; not parsed/],
  [['inject', '-f', 'deploy/demo/curl.yaml', '-n', 'Bad'], 2, /--namespace Bad: not a Kubernetes namespace name/],
  // ca
  [['ca'], 2, /ca: which one\? init or issue/],
  [['ca', 'init'], 2, /ca init: where\? give --dir DIR \(files\) or --kubernetes/],
  [['ca', 'init', '--dir', empty, '--kubernetes'], 2, /--dir and --kubernetes: choose one/],
  [['ca', 'init', '--dir', empty, '--trust-domain', 'Bad!'], 2, /--trust-domain Bad!: lowercase letters/],
  [['ca', 'issue', '--namespace', 'a', '--service-account', 'b'], 2, /ca issue: where from and to\? give --ca-dir DIR --out DIR/],
  [['ca', 'issue', '--ca-dir', empty, '--out', path.join(dir, 'out'), '--namespace', 'a', '--service-account', 'b'], 2, /no ca.key there; make the CA with: mesh-xds ca init --dir/],
  [['ca', 'issue', '--ca-dir', empty, '--out', path.join(dir, 'out'), '--service-account', 'b'], 2, /ca issue: --namespace is missing/],
  // install, uninstall
  [['install', '--purge'], 2, /install: --purge is for uninstall/],
  [['uninstall', '--set', 'featureFlags.enableRetryPolicy=true'], 2, /uninstall: --set is for install/],
  [['install', '--replicas', '0'], 2, /install: --replicas 0: a whole number, at least 1/],
  [['install', '--timeout', 'soon'], 2, /install: --timeout soon: a number of seconds/],
  [['install', '--set', 'nope=1', '--dry-run'], 2, /--set nope: unknown key; known: /],
];

/** One line on stderr, and no stack trace. */
function oneLine(stderr: string): void {
  expect(stderr.trimEnd().split('\n'), stderr).toHaveLength(1);
  expect(stderr).not.toMatch(/^\s+at /m);
}

describe('the CLI answers each mistake in one line, with the documented exit code', () => {
  it.each(TABLE.map(([args, code, stderr]) => ({ args, code, stderr, name: args.join(' ') })))('mesh-xds $name', async ({ args, code, stderr }) => {
    const r = await cli(args);
    expect(r.code, r.stderr).toBe(code);
    oneLine(r.stderr);
    expect(r.stderr).toMatch(/^mesh-xds: /);
    expect(r.stderr).toMatch(stderr);
    // In the CLI's terms, never the debug endpoint's query syntax.
    expect(r.stderr).not.toContain('?from=');
  });

  it('--debug adds the stack trace to the same message', async () => {
    const r = await cli(['validate', '--debug', '-f', '/nonexistent']);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/^mesh-xds: validate: -f \/nonexistent: no such file or directory\n/);
    expect(r.stderr).toMatch(/^\s+at /m);
  });

  it('a busy port: which flag moves it, and that another mesh-xds may be running; exit 2', async () => {
    const taken = net.createServer();
    await new Promise<void>((resolve) => taken.listen(0, '127.0.0.1', resolve));
    const busy = `127.0.0.1:${(taken.address() as AddressInfo).port}`;
    try {
      for (const [flag, other] of [
        ['--ads-address', '--debug-address'],
        ['--debug-address', '--ads-address'],
      ]) {
        const r = await cli(['serve', '--manifests', 'deploy/demo', flag, busy, other, '127.0.0.1:0']);
        expect(r.code, r.stderr).toBe(2);
        oneLine(r.stderr);
        expect(r.stderr).toContain(`mesh-xds: ${busy} is in use: another mesh-xds may be running (stop it), or move this one with ${flag} HOST:PORT`);
      }
    } finally {
      taken.close();
    }
  });
});

describe('validate finds what the server would say', () => {
  it('a misspelt kind is a problem naming the known kinds and the nearest; a kind of another API is not', async () => {
    const file = path.join(dir, 'typo.yaml');
    writeFileSync(
      file,
      'kind: Retyr\napiVersion: policy.flomesh.io/v1alpha1\nmetadata: {name: r, namespace: curl}\nspec: {}\n---\nkind: Deployment\napiVersion: apps/v1\nmetadata: {name: d, namespace: curl}\n',
    );
    const r = await cli(['validate', '-f', file]);
    expect(r.code).toBe(1);
    expect(r.stdout).toContain('kind: kind "Retyr" is not one mesh-xds knows (did you mean Retry?); it reads Namespace, Service, Endpoints, EndpointSlice, Pod, ServiceAccount, Retry, MeshConfig');
    expect(r.stdout).not.toContain('Deployment');
    const other = path.join(dir, 'other.yaml');
    writeFileSync(other, 'kind: Deployment\napiVersion: apps/v1\nmetadata: {name: d, namespace: curl}\n');
    expect((await cli(['validate', '-f', other])).code).toBe(0);
  });

  it('two Retries for the same caller and Service: the one the server marks Conflicted, by the server\'s compile', async () => {
    const conflicts = path.join(dir, 'conflicts');
    mkdirSync(conflicts);
    const retry = readFileSync('deploy/demo/retry.yaml', 'utf8');
    writeFileSync(path.join(conflicts, 'a.yaml'), retry);
    writeFileSync(path.join(conflicts, 'b.yaml'), retry.replace('name: retry\n', 'name: retry-again\n'));
    const r = await cli(['validate', '-f', conflicts, '-o', 'json']);
    expect(r.code).toBe(1);
    const out = JSON.parse(r.stdout) as { valid: boolean; objects: { object: string; valid: boolean; problems: { message: string }[] }[] };
    expect(out.objects.find((o) => o.object === 'Retry curl/retry')).toMatchObject({ valid: true, problems: [] });
    expect(out.objects.find((o) => o.object === 'Retry curl/retry-again')).toMatchObject({
      valid: false,
      problems: [{ message: expect.stringContaining('the server marks it Conflicted: conflicts with Retry curl/retry (older) for curl/curl -> Service httpbin/httpbin; curl/retry applies') }],
    });
  });

  it('takes a folder, as kubectl -f does, and so do policy amplification and policy explain', async () => {
    const v = await cli(['validate', '-f', 'deploy/demo']);
    expect(v.code, v.stderr).toBe(0);
    expect(v.stdout).toMatch(/deploy\/demo\/retry.yaml\s+\d+\s+Retry curl\/retry\s+valid/);
    expect((await cli(['policy', 'amplification', '-f', 'deploy/demo'])).code).toBe(0);
    const e = await cli(['policy', 'explain', '--from', 'curl/curl', '--to', 'httpbin/httpbin', '-f', 'deploy/demo']);
    expect(e.code, e.stderr).toBe(0);
    expect(e.stdout).toContain('curl/curl -> httpbin/httpbin: Retry curl/retry applies');
    expect(e.stdout).toMatch(/retry_policy: \{.*"retry_on":"5xx"/);
  });
});
