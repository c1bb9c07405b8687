/**
 * The vendored Gateway API CRDs (deploy/crds/, from sigs.k8s.io/gateway-api v1.7.0, Standard channel): unchanged
 * (their pinned sha256), of the bundle-version and channel they say, installed by `mesh-xds install`, which never
 * downgrades or replaces someone else's.
 */
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { parse } from 'yaml';
import { describe, expect, it } from 'vitest';
import { gatewayCrdVerdict, installPlan, isGatewayApiCrd } from '../src/cli/install.js';

const CRDS = path.join(import.meta.dirname, '../deploy/crds');
const FILES = ['gateway.networking.k8s.io_httproutes.yaml', 'gateway.networking.k8s.io_grpcroutes.yaml'];
const read = (f: string): string => readFileSync(path.join(CRDS, f), 'utf8');

describe('the Gateway API CRDs in deploy/crds', () => {
  it("are upstream's files unchanged: each sha256 as pinned in gateway-api.sha256, and README.md names the module and paths", () => {
    const pins = new Map(read('gateway-api.sha256').trim().split('\n').map((l) => l.split(/\s+/).reverse() as [string, string]));
    expect([...pins.keys()]).toEqual(FILES);
    for (const f of FILES) expect(createHash('sha256').update(readFileSync(path.join(CRDS, f))).digest('hex'), `${f} was edited: take it again with scripts/fetch-gateway-api-crds.sh --write`).toBe(pins.get(f));
    const readme = read('README.md');
    expect(readme).toContain('`sigs.k8s.io/gateway-api` version `v1.7.0`');
    expect(readme).toContain('config/crd/standard/gateway.networking.k8s.io_httproutes.yaml');
  });

  it('are v1.7.0 of the standard channel, serving v1 of HTTPRoute and GRPCRoute', () => {
    const kinds = FILES.map((f) => {
      const crd = parse(read(f));
      expect(crd.metadata.annotations).toMatchObject({ 'gateway.networking.k8s.io/bundle-version': 'v1.7.0', 'gateway.networking.k8s.io/channel': 'standard' });
      expect(crd.spec.versions.find((v: any) => v.name === 'v1')).toMatchObject({ served: true, storage: true, subresources: { status: {} } });
      return crd.spec.names.kind;
    });
    expect(kinds).toEqual(['HTTPRoute', 'GRPCRoute']);
    // HTTPRoute retries are Standard in v1.7.0 (GEP-1731): the schema has rules[].retry, so the API server keeps it.
    expect(read(FILES[0])).toMatch(/^ {20}retry:\n/m);
  });

  it('install applies them with the other CRDs, before the rest', () => {
    const plan = installPlan({ namespace: 'mesh-xds', sets: [] });
    const crds = plan.filter((o) => o.kind === 'CustomResourceDefinition');
    expect(crds.filter(isGatewayApiCrd).map((o) => o.metadata.name)).toEqual(['httproutes.gateway.networking.k8s.io', 'grpcroutes.gateway.networking.k8s.io']);
    expect(plan.slice(1, 5)).toEqual(crds);
    // Byte for byte the vendored object, with nothing of install's own added.
    expect(crds.find((o) => o.metadata.name === 'httproutes.gateway.networking.k8s.io')).toEqual(parse(read(FILES[0])));
  });
});

describe("install over a cluster's own Gateway API CRDs", () => {
  const ours = installPlan({ namespace: 'mesh-xds', sets: [] }).find(isGatewayApiCrd)!;
  const existing = (annotations: Record<string, string> | undefined) => ({ metadata: { name: ours.metadata.name, ...(annotations ? { annotations } : {}) } });
  const installed = (version: string, channel = 'standard') => existing({ 'gateway.networking.k8s.io/bundle-version': version, 'gateway.networking.k8s.io/channel': channel });

  it('creates a missing one and upgrades an older Standard-channel one, saying from which version', () => {
    expect(gatewayCrdVerdict(ours, undefined)).toEqual({ apply: true });
    expect(gatewayCrdVerdict(ours, installed('v1.5.1'))).toEqual({ apply: true, why: 'upgraded from v1.5.1 to v1.7.0' });
    expect(gatewayCrdVerdict(ours, installed('v1.7.0-rc.1')).apply).toBe(true);
    expect(gatewayCrdVerdict(ours, installed('v0.8.0')).apply).toBe(true);
  });

  it('leaves alone an equal or newer one, an Experimental-channel one, and one whose version it cannot read, saying why', () => {
    expect(gatewayCrdVerdict(ours, installed('v1.7.0'))).toEqual({ apply: false, why: 'Gateway API v1.7.0 (standard) is installed already: left as it is' });
    expect(gatewayCrdVerdict(ours, installed('v1.7.1'))).toEqual({ apply: false, why: 'Gateway API v1.7.1 (standard) is installed, newer than v1.7.0 that mesh-xds ships: left as it is (never downgraded)' });
    expect(gatewayCrdVerdict(ours, installed('v1.10.0')).apply).toBe(false);
    expect(gatewayCrdVerdict(ours, installed('v2.0.0-rc.1')).apply).toBe(false);
    expect(gatewayCrdVerdict(ours, installed('v1.5.0', 'experimental'))).toEqual({
      apply: false,
      why: 'Gateway API v1.5.0 (experimental) is installed: not of the standard channel that mesh-xds ships (v1.7.0), so it is left as it is',
    });
    expect(gatewayCrdVerdict(ours, existing(undefined)).why).toBe('Gateway API (no bundle-version) is installed: not of the standard channel that mesh-xds ships (v1.7.0), so it is left as it is');
    expect(gatewayCrdVerdict(ours, installed('main', 'standard')).why).toMatch(/its bundle-version cannot be compared with v1\.7\.0/);
  });
});
