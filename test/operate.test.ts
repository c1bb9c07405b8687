/**
 * Operating it: real HTTP requests to the debug server, CSDS over gRPC, and the CLI as a subprocess, while a
 * real @grpc/grpc-js-xds client is connected to the server serving the demo mesh.
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { readFileSync, writeFileSync } from 'node:fs';
import { cli } from './helpers/cli.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as grpc from '@grpc/grpc-js';
import { XdsTestClient, eventually, startBackend, type Backend } from './helpers/grpc-xds.js';
import { DEMO, startDemo, useBackend, type DemoServer } from './helpers/demo.js';
import { CSDS_SERVICE } from '../src/xds/protocol/csds.js';
import { buildSnapshot, resourceFromObject, TypeSet } from '../src/xds/resources/snapshot.js';
import { fromProto3Json } from '../src/xds/resources/json.js';
import { decodeMessage, resourceToJson } from './helpers/xds-json.js';
import { envoyRoot } from '../src/xds/resources/protos.js';
import { ROUTE } from '../src/xds/resources/types.js';
import { tempDir } from './helpers/tmp.js';

let backend: Backend;
let demo: DemoServer;
let client: XdsTestClient;
const NODE = 'curl-pod-1';
const KEY = 'proxyless:curl/curl';

async function get(p: string, accept = 'application/json'): Promise<{ status: number; text: string; json: any }> {
  const res = await fetch(`${demo.debug}${p}`, { headers: { accept } });
  const text = await res.text();
  let json: any;
  try {
    json = JSON.parse(text);
  } catch {
    json = undefined;
  }
  return { status: res.status, text, json };
}


const proxy = async () => (await get('/debug/proxies')).json.proxies.find((p: any) => p.nodeId === NODE);

beforeAll(async () => {
  backend = await startBackend(grpc.status.UNAVAILABLE);
  demo = await startDemo((dir) => useBackend(dir, backend.port, 'retryOn: unavailable\nnumRetries: 2\nretryBackoffBaseInterval: 10ms'));
  client = new XdsTestClient('xds:///httpbin.httpbin.svc.cluster.local:14001', demo.ads, { nodeId: NODE, namespace: 'curl', serviceAccount: 'curl' });
  expect(await client.call()).toBe(grpc.status.UNAVAILABLE);
  await eventually(async () => Object.values((await proxy())?.types ?? {}).every((t: any) => t.state === 'SYNCED'), 5000, 'SYNCED');
});

afterAll(async () => {
  client?.close();
  await demo?.close();
  await backend?.close();
});

describe('debug HTTP server', () => {
  it('serves an index, health and readiness', async () => {
    expect((await get('/debug', 'text/html')).text).toContain('<a href="/debug/proxies">');
    expect((await get('/debug')).json.endpoints['/debug/proxies']).toBeTruthy();
    expect((await get('/healthz')).status).toBe(200);
    expect((await get('/readyz')).text).toBe('ready\n');
  });

  it('lists the connected proxy as SYNCED for every type', async () => {
    const p = await proxy();
    expect(p).toMatchObject({ namespace: 'curl', serviceAccount: 'curl', podName: `${NODE}-pod`, kind: 'proxyless', stream: 'sotw' });
    expect(Object.keys(p.types).sort()).toEqual(['CDS', 'EDS', 'LDS', 'RDS']);
    for (const t of Object.values<any>(p.types)) expect(t).toMatchObject({ state: 'SYNCED', lastNack: null });
  });

  it("dumps the proxy's config as Envoy's /config_dump, which parses back with the Envoy protos", async () => {
    const { json } = await get(`/debug/config_dump?proxy=${NODE}`);
    expect(json.configs.map((c: any) => c['@type'])).toEqual([
      'type.googleapis.com/envoy.admin.v3.ClustersConfigDump',
      'type.googleapis.com/envoy.admin.v3.EndpointsConfigDump',
      'type.googleapis.com/envoy.admin.v3.ListenersConfigDump',
      'type.googleapis.com/envoy.admin.v3.RoutesConfigDump',
      // Empty here (no mesh CA: sidecars talk plaintext); Envoy prints the section too.
      'type.googleapis.com/envoy.admin.v3.SecretsConfigDump',
    ]);
    const dumpType = envoyRoot().lookupType('envoy.admin.v3.ConfigDump');
    const msg: any = fromProto3Json(dumpType, json);
    const routes: any = envoyRoot().lookupType('envoy.admin.v3.RoutesConfigDump').decode(msg.configs[3].value);
    const route: any = decodeMessage('envoy.config.route.v3.RouteConfiguration', routes.dynamic_route_configs[0].route_config.value);
    const served = demo.running.cache.peek(KEY)!.get(ROUTE)!.resources.get(route.name)!;
    expect(route).toEqual(resourceToJson(served));
    const vh = json.configs[3].dynamic_route_configs[0].route_config.virtual_hosts.find((v: any) => v.name.includes('httpbin'));
    expect(vh.routes[0].route.retry_policy).toEqual({ retry_on: 'unavailable', num_retries: 2, retry_back_off: { base_interval: '0.010s' } });
    expect(vh.routes[0].route.timeout).toBe('0s');
    // Only what this proxy was sent: the one listener it asked for, not every api_listener of its identity.
    expect(json.configs[2].dynamic_listeners.map((l: any) => l.name)).toEqual(['httpbin.httpbin.svc.cluster.local:14001']);
  });

  it('dumps what an identity that is not connected would get', async () => {
    const { status, json } = await get('/debug/config_dump?namespace=httpbin&serviceAccount=httpbin');
    expect(status).toBe(200);
    const listeners = json.configs[2].dynamic_listeners.map((l: any) => l.name);
    // 15001 and the listener of each ClusterIP service port it hands connections to (httpbin's pods are not in
    // this mesh, so no inbound listener).
    expect(listeners).toEqual(['10.96.198.23_14001', '10.96.44.10_80', 'outbound-listener']);
    expect((await get('/debug/config_dump?proxy=nobody')).status).toBe(404);
  });

  it('shows policies with the Envoy retry_policy they produced', async () => {
    const { json } = await get('/debug/policies');
    expect(json.policies).toEqual([
      expect.objectContaining({ namespace: 'curl', name: 'retry', state: 'Accepted', identities: ['curl/curl'], services: ['httpbin/httpbin'], retryPolicy: {
          retry_on: 'unavailable',
          num_retries: 2,
          retry_back_off: { base_interval: '0.010s' },
          // What sidecars get: retries to another host (docs/retry-safety.md#another-host).
          retry_host_predicate: [{ name: 'envoy.retry_host_predicates.previous_hosts', typed_config: { '@type': 'type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate' } }],
          host_selection_retry_max_attempts: '5',
        },
      }),
    ]);
  });
});

describe('after a push the client rejects', () => {
  beforeAll(async () => {
    // A route with num_retries 0: valid for Envoy, NACKed by gRPC clients.
    const current = demo.running.cache.peek(KEY)!;
    const bad = resourceFromObject(ROUTE, {
      name: 'rds-outbound.14001',
      virtual_hosts: [{ name: 'vh', domains: ['httpbin.httpbin.svc.cluster.local:14001'], routes: [{ match: { prefix: '/' }, route: { cluster: 'httpbin/httpbin|14001', retry_policy: { retry_on: 'unavailable', num_retries: { value: 0 } } } }] }],
    });
    const routes = [...current.get(ROUTE)!.resources.values()].filter((r) => r.name !== bad.name);
    demo.running.cache.set(KEY, buildSnapshot(new Map([...current.types, [ROUTE, TypeSet.of(ROUTE, [...routes, bad])]])));
    await eventually(async () => (await proxy()).types.RDS.state === 'NACKED', 5000, 'NACKED');
  });

  it('the proxy is NACKED with the client error text', async () => {
    const rds = (await proxy()).types.RDS;
    expect(rds.lastNack.error).toMatch(/retry/i);
    expect(rds.acked).not.toBe(rds.sent);
  });

  it('CSDS over gRPC gives the same picture', async () => {
    const Client = grpc.makeGenericClientConstructor(CSDS_SERVICE, 'CSDS');
    const c = new Client(demo.ads, grpc.credentials.createInsecure()) as any;
    const res: any = await new Promise((resolve, reject) =>
      c.FetchClientStatus({ node_matchers: [{ node_id: { exact: NODE } }] }, (err: Error | null, r: any) => (err ? reject(err) : resolve(r))),
    );
    c.close();
    expect(res.config).toHaveLength(1);
    expect(res.config[0].node.id).toBe(NODE);
    const byType = (url: string) => res.config[0].generic_xds_configs.filter((g: any) => g.type_url === url);
    const rds = byType('type.googleapis.com/envoy.config.route.v3.RouteConfiguration');
    expect(rds[0]).toMatchObject({ config_status: 'ERROR', client_status: 'NACKED', error_state: { details: (await proxy()).types.RDS.lastNack.error } });
    expect(byType('type.googleapis.com/envoy.config.cluster.v3.Cluster')[0]).toMatchObject({ config_status: 'SYNCED', client_status: 'ACKED', name: 'httpbin/httpbin|14001' });
  });

  it('CSDS streams answer each request', async () => {
    const Client = grpc.makeGenericClientConstructor(CSDS_SERVICE, 'CSDS');
    const c = new Client(demo.ads, grpc.credentials.createInsecure()) as any;
    const call = c.StreamClientStatus();
    const answers: any[] = [];
    call.on('data', (r: any) => answers.push(r));
    call.write({ node_matchers: [{ node_id: { prefix: 'curl-' } }], exclude_resource_contents: true });
    call.write({ node_matchers: [{ node_id: { exact: 'nobody' } }] });
    await eventually(() => answers.length === 2, 5000, 'two CSDS answers');
    call.end();
    c.close();
    expect(answers[0].config.map((x: any) => x.node.id)).toEqual([NODE]);
    expect(answers[0].config[0].generic_xds_configs.every((g: any) => g.xds_config === undefined)).toBe(true);
    expect(answers[1].config ?? []).toEqual([]);
  });

  it('metrics count the proxy, pushes and the NACK', async () => {
    const { text } = await get('/metrics', 'text/plain');
    expect(text).toMatch(/mesh_xds_connected_proxies\{stream="sotw",kind="proxyless"\} 1/);
    expect(text).toMatch(/mesh_xds_nacks_total\{type="RDS"\} 1/);
    expect(text).toMatch(/mesh_xds_push_ack_seconds_count\{type="CDS"\} [1-9]/);
    expect(text).toMatch(/mesh_xds_policies\{state="Accepted"\} 1/);
  });
});

describe('the mesh-xds CLI', () => {
  it('proxy status: a table, the NACK, and exit 1 while a proxy is not synced', async () => {
    const r = await cli(['proxy', 'status', '--debug-url', demo.debug]);
    expect(r.code).toBe(1);
    expect(r.stdout).toMatch(new RegExp(`${NODE}\\s+curl/curl\\s+${NODE}-pod\\s+proxyless\\s+sotw\\s+SYNCED\\s+SYNCED\\s+SYNCED\\s+NACKED`));
    expect(r.stdout).toContain('RDS NACK of');
    const j = await cli(['proxy', 'status', '--debug-url', demo.debug, '-o', 'json']);
    expect(JSON.parse(j.stdout).proxies[0].nodeId).toBe(NODE);
  });

  it('policy explain says which Retry applies and the route it yields', async () => {
    const r = await cli(['policy', 'explain', '--from', 'curl/curl', '--to', 'httpbin/httpbin', '--debug-url', demo.debug]);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain('curl/curl -> httpbin/httpbin: Retry curl/retry applies');
    expect(r.stdout).toContain('httpbin.httpbin.svc.cluster.local:14001 outbound_virtual-host|httpbin.httpbin.svc.cluster.local');
    expect(r.stdout).toContain('"retry_on":"unavailable"');
    // The mesh's retry budget (the default: docs/retry-safety.md#retry-budget).
    expect(r.stdout).toContain("retry budget of httpbin/httpbin's clusters: retries in flight at most 20% of active requests, at least 3");
    const none = await cli(['policy', 'explain', '--from', 'other/other', '--to', 'httpbin/httpbin', '--debug-url', demo.debug, '-o', 'json']);
    expect(JSON.parse(none.stdout).applied).toBeNull();
    expect(JSON.parse(none.stdout).retryBudget).toEqual({ budgetPercent: 20, minRetryConcurrency: 3 });
  });

  it('validate -f: 0 for a good file, 1 with every problem for a bad one, 2 for no file', async () => {
    expect((await cli(['validate', '-f', 'deploy/demo/retry.yaml'])).code).toBe(0);
    const dir = tempDir('mesh-xds-cli-');
    const bad = path.join(dir, 'bad.yaml');
    writeFileSync(bad, 'apiVersion: policy.flomesh.io/v1alpha1\nkind: Retry\nmetadata: {name: r, namespace: curl}\nspec:\n  source: {kind: ServiceAccount, name: curl, namespace: curl}\n  destinations: [{kind: Service, name: httpbin, namespace: httpbin}]\n  retryPolicy: {retryOn: "5xx,connect-faillure", numRetries: -1}\n');
    const r = await cli(['validate', '-f', bad, '-o', 'json']);
    expect(r.code).toBe(1);
    const out = JSON.parse(r.stdout);
    expect(out.valid).toBe(false);
    expect(out.objects[0].problems.map((p: any) => p.field).sort()).toEqual(['spec.retryPolicy.numRetries', 'spec.retryPolicy.retryOn']);
    expect((await cli(['validate'])).code).toBe(2);
  });

  it('validate names the bad retryOn condition at its own line, and fails a document without kind', async () => {
    const dir = tempDir('mesh-xds-cli-');
    const bad = path.join(dir, 'bad.yaml');
    writeFileSync(bad, readFileSync(path.join(DEMO, 'retry.yaml'), 'utf8').replace('retryOn: "5xx"', 'retryOn: "5xx,bogus"'));
    const line = readFileSync(bad, 'utf8').split('\n').findIndex((l) => l.includes('bogus')) + 1;
    const r = await cli(['validate', '-f', bad]);
    expect(r.code).toBe(1);
    expect(r.stdout).toContain(`${line}`);
    expect(r.stdout).toContain('spec.retryPolicy.retryOn: unknown retryOn condition "bogus"');
    expect(r.stdout).not.toMatch(/\^ \*\(5xx\|/);
    const json = JSON.parse((await cli(['validate', '-f', bad, '-o', 'json'])).stdout);
    expect(json.objects[0].problems).toEqual([expect.objectContaining({ field: 'spec.retryPolicy.retryOn', line })]);

    const noKind = path.join(dir, 'nokind.yaml');
    writeFileSync(noKind, 'apiVersion: v1\nmetadata: {name: x}\n');
    const n = await cli(['validate', '-f', noKind]);
    expect(n.code).toBe(1);
    expect(n.stdout).toContain('kind: is required');
  });

  it('proxy get stats reads an Envoy admin and filters it', async () => {
    const admin = http.createServer((req, res) => {
      expect(req.url).toBe('/stats');
      res.end('cluster.httpbin/httpbin|14001.upstream_rq_retry: 5\ncluster.httpbin/httpbin|14001.upstream_rq_retry_limit_exceeded: 1\nserver.uptime: 42\n');
    });
    await new Promise<void>((r) => admin.listen(0, '127.0.0.1', r));
    const url = `http://127.0.0.1:${(admin.address() as AddressInfo).port}`;
    const r = await cli(['proxy', 'get', 'stats', 'curl-1', '-n', 'curl', '--admin-url', url, '--filter', 'upstream_rq_retry']);
    admin.close();
    expect(r.code).toBe(0);
    expect(r.stdout).toBe('cluster.httpbin/httpbin|14001.upstream_rq_retry: 5\ncluster.httpbin/httpbin|14001.upstream_rq_retry_limit_exceeded: 1\n');
  });

  it('exits 3 when the server cannot be reached, 2 on usage errors', async () => {
    expect((await cli(['proxy', 'status', '--debug-url', 'http://127.0.0.1:1'])).code).toBe(3);
    expect((await cli(['policy', 'explain'])).code).toBe(2);
    expect((await cli(['bogus'])).code).toBe(2);
  });
});
