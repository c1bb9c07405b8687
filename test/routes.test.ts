/**
 * Gateway API mesh routes, in process: what the spec refuses (with the field), the Gateway API's precedence, producer
 * and consumer routes, the seam's precedence between a Retry and a route, which proxies a route edit rebuilds, and
 * what `validate` and `policy explain -f` say about routes. Their Envoy output is pinned by the golden case `routes`
 * (IR and xDS stages) and judged by a real Envoy in envoy-accepts and envoy-routes.
 */
import path from 'node:path';
import pino from 'pino';
import { describe, expect, it } from 'vitest';
import { compile } from '../src/compile/compile.js';
import { featuresFor, retryOnRoute } from '../src/compile/features.js';
import { parseRouteSpec } from '../src/compile/routes.js';
import { envoyRoutes } from '../src/envoy/routes.js';
import { routeParents } from '../src/outputs/route-status.js';
import type { MeshState, RouteObject } from '../src/model/mesh.js';
import { Pipeline } from '../src/pipeline/pipeline.js';
import { SnapshotCache } from '../src/xds/resources/cache.js';
import { cli } from './helpers/cli.js';
import { loadMesh } from './helpers/mesh.js';

const ROUTES_INPUT = path.join(import.meta.dirname, 'golden', 'routes', 'input.yaml');

const route = (namespace: string, name: string, spec: unknown, created = '2026-12-01T00:00:00Z'): RouteObject => ({ kind: 'HTTPRoute', namespace, name, creationTimestamp: created, generation: 1, spec });
const toHttpbin = { parentRefs: [{ group: '', kind: 'Service', name: 'httpbin', namespace: 'httpbin' }] };
const backend = [{ name: 'httpbin', namespace: 'httpbin', port: 14001 }];

describe('HTTPRoute spec', () => {
  it('refuses what Envoy or the spec cannot take, naming each field', () => {
    const { problems } = parseRouteSpec('HTTPRoute', 'httpbin', {
      ...toHttpbin,
      rules: [
        {
          matches: [{ path: { type: 'RegularExpression', value: '(?=x)' } }, { path: { type: 'PathPrefix', value: 'no-slash' } }, { headers: [{ name: 'bad header', value: 'x' }] }],
          filters: [{ type: 'RequestMirror' }, { type: 'RequestHeaderModifier', requestHeaderModifier: { set: [{ name: 'Host', value: 'x' }] } }],
          timeouts: { request: '1s', backendRequest: '2s' },
          retry: { codes: [200, 503], attempts: -1, backoff: '1.5s' },
          extra: true,
        },
      ],
    });
    expect(problems.map((p) => p.field).sort()).toEqual(
      [
        'spec.rules[0].extra',
        'spec.rules[0].matches[0].path.value',
        'spec.rules[0].matches[1].path.value',
        'spec.rules[0].matches[2].headers[0].name',
        'spec.rules[0].filters[0].type',
        'spec.rules[0].filters[1].requestHeaderModifier.set[0].name',
        'spec.rules[0].timeouts.backendRequest',
        'spec.rules[0].retry.codes[0]',
        'spec.rules[0].retry.attempts',
        'spec.rules[0].retry.backoff',
      ].sort(),
    );
    expect(problems.find((p) => p.field === 'spec.rules[0].filters[0].type')!.message).toMatch(/RequestMirror is not supported/);
  });

  it('takes the defaults of the spec: PathPrefix /, weight 1, attempts 1, a GRPCRoute method as its path', () => {
    const http = parseRouteSpec('HTTPRoute', 'httpbin', { ...toHttpbin, rules: [{ backendRefs: backend, retry: { codes: [503] } }] });
    expect(http.problems).toEqual([]);
    expect(http.spec.rules[0]!.matches).toEqual([{ path: { type: 'PathPrefix', value: '/' }, headers: [], queryParams: [] }]);
    expect(http.spec.rules[0]!.retry).toEqual({ codes: [503], attempts: 1 });
    expect(http.spec.rules[0]!.backends[0]!.weight).toBe(1);
    const grpc = parseRouteSpec('GRPCRoute', 'httpbin', { ...toHttpbin, rules: [{ matches: [{ method: { service: 'a.B', method: 'C' } }, { method: { service: 'a.B' } }, { method: { method: 'C' } }] }] });
    expect(grpc.problems).toEqual([]);
    expect(grpc.spec.rules[0]!.matches.map((m) => m.path)).toEqual([
      { type: 'Exact', value: '/a.B/C' },
      { type: 'PathPrefix', value: '/a.B' },
      { type: 'RegularExpression', value: '/[^/]+/C' },
    ]);
  });
});

describe('mesh routes', () => {
  const mesh = (routes: RouteObject[]): MeshState => ({ ...loadMesh('guide'), routes });

  it('orders rules as the Gateway API says, across routes: exact, then the longest prefix, then more headers; then the oldest route', () => {
    const ir = compile(
      mesh([
        route('httpbin', 'b-newer', { ...toHttpbin, rules: [{ matches: [{ path: { type: 'PathPrefix', value: '/a' } }], backendRefs: backend }] }, '2026-12-02T00:00:00Z'),
        route('httpbin', 'a-older', {
          ...toHttpbin,
          rules: [
            { matches: [{ path: { type: 'PathPrefix', value: '/a' } }], backendRefs: backend },
            { matches: [{ path: { type: 'PathPrefix', value: '/a/b' } }], backendRefs: backend },
            { matches: [{ path: { type: 'Exact', value: '/a' } }], backendRefs: backend },
            { matches: [{ path: { type: 'PathPrefix', value: '/a' }, headers: [{ name: 'x', value: '1' }] }], backendRefs: backend },
          ],
        }),
      ]),
    );
    const rules = ir.routes['httpbin/httpbin:14001']!.producer!;
    expect(rules.map((r) => `${r.from} ${r.rule}`)).toEqual(['HTTPRoute httpbin/a-older 2', 'HTTPRoute httpbin/a-older 1', 'HTTPRoute httpbin/a-older 3', 'HTTPRoute httpbin/a-older 0', 'HTTPRoute httpbin/b-newer 0']);
  });

  it("gives a consumer route to its namespace's callers only, in place of the producer route; a Retry naming the caller wins on retries", () => {
    const ir = compile(
      mesh([
        route('httpbin', 'producer', { ...toHttpbin, rules: [{ backendRefs: backend, retry: { codes: [503], attempts: 2 } }] }),
        route('curl', 'consumer', { ...toHttpbin, rules: [{ backendRefs: backend, timeouts: { request: '3s' } }] }),
        route('httpbin', 'ignored', { parentRefs: [{ name: 'some-gateway' }], rules: [{ backendRefs: backend }] }),
      ]),
    );
    // A route of another controller (a Gateway parent) is reported with no parents: nothing of ours in its status.
    expect(ir.routeReports.map((r) => `${r.namespace}/${r.name} ${r.parents.length}`)).toEqual(['curl/consumer 1', 'httpbin/ignored 0', 'httpbin/producer 1']);
    const curl = featuresFor(ir, 'curl/curl', 'curl').get('httpbin/httpbin:14001')!;
    expect(curl.rules!.map((r) => r.from)).toEqual(['HTTPRoute curl/consumer']);
    // The guide's Retry names curl/curl: its retry is on the consumer route too.
    expect(retryOnRoute(curl, curl.rules![0])!.from).toBe('Retry curl/retry');
    const httpbin = featuresFor(ir, 'httpbin/httpbin', 'httpbin').get('httpbin/httpbin:14001')!;
    expect(httpbin.rules!.map((r) => r.from)).toEqual(['HTTPRoute httpbin/producer']);
    expect(retryOnRoute(httpbin, httpbin.rules![0])).toEqual({ from: 'HTTPRoute httpbin/producer', settings: expect.objectContaining({ numRetries: 2, retriableStatusCodes: [503] }) });
  });

  it("sends an unresolved backend's share of a split to 500s on a sidecar; a proxyless client gets the resolved ones only", () => {
    const ir = compile(mesh([route('httpbin', 'split', { ...toHttpbin, rules: [{ backendRefs: [...backend, { name: 'missing', port: 80 }] }, { matches: [{ path: { value: '/r' } }], filters: [{ type: 'RequestRedirect', requestRedirect: { hostname: 'example.com' } }] }] })]));
    const service = ir.services.find((s) => s.name === 'httpbin')!;
    const features = featuresFor(ir, 'curl/other', 'curl').get('httpbin/httpbin:14001');
    const [redirect, split] = envoyRoutes(service.ports[0]!, features, { proxyless: false }) as any[];
    expect(split.route.weighted_clusters.clusters).toEqual([
      { name: 'httpbin/httpbin|14001', weight: { value: 1 } },
      { name: 'mesh-xds|invalid-backend', weight: { value: 1 } },
    ]);
    expect(split.route.cluster_not_found_response_code).toBe('INTERNAL_SERVER_ERROR');
    // A redirect naming only a host keeps the Service port (the listener's, for a mesh route).
    expect(redirect.redirect).toEqual({ host_redirect: 'example.com', port_redirect: 14001, response_code: 'FOUND' });
    expect(envoyRoutes(service.ports[0]!, features, { proxyless: true }).map((r: any) => r.route?.cluster)).toEqual(['httpbin/httpbin|14001']);
  });

  it("bounds what routes put in a caller's virtual host: older routes keep their rules, a newer one past the bound is not Accepted", () => {
    // 20 routes of 64 matches each (16 rules of 4), in one consumer namespace, on one service port: 1,280 matches against a bound of 1,024.
    const rules = Array.from({ length: 16 }, (_, i) => ({ matches: Array.from({ length: 4 }, (_, j) => ({ path: { type: 'Exact', value: `/p${i}-${j}` } })), backendRefs: backend }));
    const many = Array.from({ length: 20 }, (_, i) => route('curl', `flood${String(i).padStart(2, '0')}`, { ...toHttpbin, rules }, `2026-12-0${1 + Math.floor(i / 10)}T00:00:${String(i % 10).padStart(2, '0')}Z`));
    const producer = route('httpbin', 'producer', { ...toHttpbin, rules: [{ backendRefs: backend, retry: { codes: [503] } }] }, '2026-12-09T00:00:00Z');
    const ir = compile(mesh([...many, producer]));
    const accepted = ir.routeReports.filter((r) => r.parents[0]?.conditions[0]!.status === 'True').map((r) => r.name);
    expect(accepted).toEqual([...Array.from({ length: 16 }, (_, i) => `flood${String(i).padStart(2, '0')}`), 'producer']);
    expect(ir.routes['httpbin/httpbin:14001']!.consumers!.curl!.length).toBe(16 * 64);
    const refused = ir.routeReports.find((r) => r.name === 'flood16')!.parents[0]!.conditions[0]!;
    expect(refused).toMatchObject({ status: 'False', reason: 'UnsupportedValue' });
    expect(refused.message).toMatch(/already has 1024 route matches from older routes of namespace curl; this route's 64 would pass the bound of 1024/);
    // The flood is the consumer namespace's own: the producer route, and every other namespace's callers, are untouched.
    expect(featuresFor(ir, 'httpbin/httpbin', 'httpbin').get('httpbin/httpbin:14001')!.rules!.map((r) => r.from)).toEqual(['HTTPRoute httpbin/producer']);
  });

  it("bounds a route's size and work: its rules and matches (the CRD's bounds), its header modifiers, its characters per service port and namespace, its problems", () => {
    const big = 'v'.repeat(4000);
    const headers = { set: Array.from({ length: 5 }, (_, i) => ({ name: `x-${i}`, value: big })) };
    const fat = parseRouteSpec('HTTPRoute', 'curl', { ...toHttpbin, rules: [{ filters: [{ type: 'RequestHeaderModifier', requestHeaderModifier: headers }], backendRefs: backend }] });
    expect(fat.problems.map((p) => p.message)).toEqual([expect.stringMatching(/header modifiers .* hold 20\d+ characters; at most 16384/)]);
    const many = parseRouteSpec('HTTPRoute', 'curl', { ...toHttpbin, rules: Array.from({ length: 3 }, () => ({ matches: Array.from({ length: 50 }, () => ({})), backendRefs: backend })) });
    expect(many.problems.map((p) => p.message)).toEqual(['hold 150 matches in all; at most 128 (the CRD\'s bound)']);
    // A route of many bad regexes: 20 problems named, the rest not read.
    const bad = parseRouteSpec('HTTPRoute', 'curl', { ...toHttpbin, rules: [{ matches: Array.from({ length: 64 }, () => ({ headers: Array.from({ length: 16 }, (_, i) => ({ name: `h${i}`, type: 'RegularExpression', value: `(${'a'.repeat(1000)}` })) })) }] });
    expect(bad.problems.length).toBe(21);
    expect(bad.problems.at(-1)!.message).toBe('more problems were not read');
    expect(JSON.stringify(bad.problems).length).toBeLessThan(20_000);
    // Characters per service port and audience: 1 MiB; older routes first.
    const value = 'w'.repeat(4000);
    const heavy = Array.from({ length: 12 }, (_, i) =>
      route('curl', `heavy${String(i).padStart(2, '0')}`, { ...toHttpbin, rules: [{ matches: Array.from({ length: 24 }, (_, j) => ({ path: { type: 'Exact', value: `/h${i}-${j}` } })), filters: [{ type: 'RequestHeaderModifier', requestHeaderModifier: { set: [{ name: 'x-a', value }, { name: 'x-b', value }, { name: 'x-c', value }, { name: 'x-d', value }] } }], backendRefs: backend }] }, `2026-12-01T00:00:${String(i).padStart(2, '0')}Z`),
    );
    const ir = compile(mesh(heavy));
    const refused = ir.routeReports.filter((r) => r.parents[0]!.conditions[0]!.status === 'False');
    expect(refused.length).toBeGreaterThan(0);
    expect(refused[0]!.parents[0]!.conditions[0]!.message).toMatch(/characters of routes from older routes of namespace curl; this route's \d+ would pass the bound of 1048576/);
    expect(ir.routeReports.filter((r) => r.parents[0]!.conditions[0]!.status === 'True').map((r) => r.name)).toEqual(heavy.slice(0, 12 - refused.length).map((r) => r.name));
  });

  it('takes only the regexes Envoy takes (RE2 and its program size), its own built ones too; a GRPCRoute regex stays in its part', () => {
    const re = (value: string): string[] => parseRouteSpec('HTTPRoute', 'curl', { ...toHttpbin, rules: [{ matches: [{ path: { type: 'RegularExpression', value } }] }] }).problems.map((p) => p.message);
    expect(re('/r/[0-9]+')).toEqual([]);
    expect(re('(?i)/abc')).toEqual([]);
    expect(re(`/${'b'.repeat(110)}`)).toEqual([expect.stringMatching(/RE2 program of about 11\d instructions; Envoy refuses over 100/)]);
    expect(re('a{1000}')).toEqual([expect.stringMatching(/Envoy refuses over 100/)]);
    for (const bad of ['\\u0041', '\\p{Script=Greek}', '[]', '(?<=a)b']) expect(re(bad), bad).toEqual([expect.stringMatching(/RE2|lookbehind/)]);
    const grpc = parseRouteSpec('GRPCRoute', 'curl', { ...toHttpbin, rules: [{ matches: [{ method: { type: 'RegularExpression', service: 'x|', method: '.*|' } }, { method: { method: `M${'x'.repeat(110)}` } }] }] });
    expect(grpc.spec.rules[0]!.matches[0]!.path).toEqual({ type: 'RegularExpression', value: '/(?:x|)/(?:.*|)' });
    expect(grpc.problems).toEqual([expect.objectContaining({ field: 'spec.rules[0].matches[1].method', message: expect.stringMatching(/makes the path regex .* Envoy refuses over 100/) })]);
  });

  it("takes our entries out of a route's status once it names no Service; others' stay", () => {
    const ir = compile(mesh([route('httpbin', 'moved', { parentRefs: [{ name: 'edge' }], rules: [{ backendRefs: backend }] })]));
    const report = ir.routeReports.find((r) => r.name === 'moved')!;
    expect(report.parents).toEqual([]);
    const theirs = { parentRef: { name: 'edge' }, controllerName: 'example.com/gateway', conditions: [] };
    const ours = { parentRef: { group: '', kind: 'Service', name: 'httpbin' }, controllerName: 'flomesh.io/mesh-xds', conditions: [] };
    expect(routeParents(report, 2, { parents: [theirs, ours] }, Date.now())).toEqual([theirs]);
  });

  it('reports parents as the spec says: a parent that is not in the mesh, a backend in a third namespace, a missing port', () => {
    const ir = compile(
      mesh([
        route('httpbin', 'nowhere', { parentRefs: [{ group: '', kind: 'Service', name: 'nope' }], rules: [{ backendRefs: backend }] }),
        route('curl', 'third', { ...toHttpbin, rules: [{ backendRefs: [{ name: 'x', namespace: 'elsewhere', port: 80 }] }] }),
        route('httpbin', 'port', { parentRefs: [{ group: '', kind: 'Service', name: 'httpbin', port: 9 }], rules: [{ backendRefs: backend }] }),
      ]),
    );
    const reasons = Object.fromEntries(ir.routeReports.map((r) => [r.name, r.parents[0]!.conditions.map((c) => `${c.type}=${c.status}:${c.reason}`)]));
    expect(reasons).toEqual({
      nowhere: ['Accepted=False:NoMatchingParent', 'ResolvedRefs=True:ResolvedRefs'],
      third: ['Accepted=True:Accepted', 'ResolvedRefs=False:RefNotPermitted'],
      port: ['Accepted=False:NoMatchingParent', 'ResolvedRefs=True:ResolvedRefs'],
    });
  });

  it('rebuilds for a consumer route edit only the proxies of its namespace; for a producer route, every proxy', () => {
    const cache = new SnapshotCache();
    const pipeline = new Pipeline(cache, pino({ level: 'silent' }));
    const base = loadMesh('routes');
    pipeline.update(base);
    const before = new Map([...cache.keys()].map((k) => [k, cache.peek(k)!.version]));
    const edit = (name: string, f: (spec: any) => any): MeshState => ({ ...base, routes: base.routes.map((r) => (r.name === name ? { ...r, spec: f(structuredClone(r.spec)) } : r)) });
    const consumer = pipeline.update(edit('httpbin-from-shop', (s) => ((s.rules[0].timeouts.request = '4s'), s)));
    const changed = [...cache.keys()].filter((k) => cache.peek(k)!.version !== before.get(k));
    expect(changed).toEqual(['sidecar:shop/shop']);
    expect(consumer.rebuilt).toBe(1);
    const producer = pipeline.update(edit('httpbin', (s) => ((s.rules[0].retry.attempts = 4), s)));
    expect(producer.rebuilt).toBe([...cache.keys()].length);
  });
});

describe('validate and policy explain -f read routes', () => {
  it('validate names the unsupported filter and the missing backend; explain says which policy set each field', async () => {
    const v = await cli(['validate', '-f', ROUTES_INPUT]);
    expect(v.code).toBe(1);
    expect(v.stdout).toMatch(/HTTPRoute shop\/mirror .*filter RequestMirror is not supported/);
    expect(v.stdout).toMatch(/HTTPRoute curl\/curl .*warning: the server sets ResolvedRefs False \(BackendNotFound\)/);
    expect(v.stdout).toMatch(/HTTPRoute httpbin\/httpbin +valid/);

    const e = await cli(['policy', 'explain', '--from', 'curl/curl', '--to', 'httpbin/httpbin', '-f', ROUTES_INPUT, '-o', 'json']);
    expect(e.code).toBe(0);
    const json = JSON.parse(e.stdout);
    expect(json.why).toMatch(/Retry curl\/retry applies.*routes from HTTPRoute httpbin\/httpbin/);
    const routes = json.fields[0].routes;
    expect(routes[0]).toEqual({ route: 'HTTPRoute httpbin/httpbin rule retry-503', match: 'Exact /status/503', setBy: { route: 'HTTPRoute httpbin/httpbin', retry: 'Retry curl/retry', timeout: null } });
    expect(json.candidates[0].warnings.map((w: any) => w.condition)).toContain('Pitfall');

    const other = JSON.parse((await cli(['policy', 'explain', '--from', 'curl/client', '--to', 'httpbin/httpbin', '-f', ROUTES_INPUT, '-o', 'json'])).stdout);
    expect(other.fields[0].routes[0].setBy.retry).toBe('HTTPRoute httpbin/httpbin');
    expect(other.fields[0].routes.find((r: any) => r.match.startsWith('RegularExpression')).setBy.timeout).toBe('HTTPRoute httpbin/httpbin');
  });
});
