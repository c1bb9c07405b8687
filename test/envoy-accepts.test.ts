/**
 * A real Envoy accepts everything we publish (src/sandbox/accept.ts): for every golden case and the demo mesh,
 * one Envoy per identity and ADS flavour, each in a pod of its own, and a proxyless gRPC client, connect to the
 * server serving that mesh, ACK every type, end with no listener warming and every cluster initialised, and
 * Envoy prints in its /config_dump exactly what the server's /debug/config_dump says it was sent. And
 * `envoy --mode validate` accepts the samples' bootstraps as the sidecars render them.
 */
import { execFile } from 'node:child_process';
import { chmodSync, cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { acceptMesh, type Verdict } from '../sandbox/accept.js';
import { Network } from '../sandbox/netns.js';
import { envoyForSidecars } from '../sandbox/parts.js';
import { createCa, issue } from '../src/security/ca.js';
import { writeSidecarConfig, type AdsFlavour } from '../sandbox/sandbox.js';
import { DEMO } from './helpers/demo.js';
import { sandboxMissing } from './helpers/sandbox.js';

const GOLDEN = path.join(import.meta.dirname, 'golden');
const FLAVOURS: AdsFlavour[] = ['GRPC', 'DELTA_GRPC'];

interface Mesh {
  name: string;
  dir: string;
  set: Record<string, boolean>;
}

/** Every golden case's input (with its mesh-config overrides), and the demo folder. */
function meshes(tmp: string): Mesh[] {
  const out: Mesh[] = [{ name: 'deploy/demo', dir: DEMO, set: {} }];
  for (const c of readdirSync(GOLDEN).sort()) {
    const caseFile = path.join(GOLDEN, c, 'case.json');
    const cfg = existsSync(caseFile) ? JSON.parse(readFileSync(caseFile, 'utf8')) : {};
    const input = path.join(GOLDEN, c, cfg.input ?? 'input.yaml');
    if (!existsSync(input)) continue;
    const dir = path.join(tmp, 'meshes', c);
    mkdirSync(dir, { recursive: true });
    cpSync(input, path.join(dir, 'input.yaml'));
    out.push({ name: `golden/${c}`, dir, set: cfg.set ?? {} });
  }
  return out;
}

describe.skipIf(sandboxMissing.length > 0)('a real Envoy accepts everything we publish', () => {
  let net: Network;
  let tmp: string;
  const verdicts: { mesh: string; verdict: Verdict }[] = [];

  beforeAll(async () => {
    tmp = mkdtempSync(path.join(os.tmpdir(), 'mesh-xds-accepts-'));
    chmodSync(tmp, 0o755);
    net = await Network.create();
    // Every mesh at once, each with its own server; every identity with an Envoy per ADS flavour and a gRPC client.
    await Promise.all(
      meshes(tmp).map(async (mesh) => {
        const verdict = await acceptMesh(net, mesh.dir, { tmp, overrides: mesh.set, flavours: FLAVOURS, proxyless: true, compareDumps: true });
        verdicts.push({ mesh: mesh.name, verdict });
      }),
    );
  }, 180_000);

  afterAll(async () => {
    await net?.destroy();
    if (tmp) rmSync(tmp, { recursive: true, force: true });
  }, 60_000);

  it('covers the demo and every golden case, each identity over both ADS flavours and as a proxyless gRPC client', () => {
    expect(verdicts.map((v) => v.mesh)).toEqual(expect.arrayContaining(['deploy/demo', 'golden/guide', 'golden/two-ports', 'golden/headless', 'golden/tcp-port', 'golden/flag-off']));
    const checked = verdicts.flatMap((v) => v.verdict.checked);
    expect(checked.filter((c) => c.client.startsWith('envoy')).length).toBeGreaterThanOrEqual(2 * 12);
    expect(checked.some((c) => c.client === 'grpc-js-xds')).toBe(true);
  });

  it("every client ACKed every type; Envoy rejected nothing, left no listener warming, and printed what the server's /debug/config_dump says", () => {
    for (const { mesh, verdict } of verdicts) expect(verdict.problems, mesh).toEqual([]);
  });

  it("envoy --mode validate accepts each injected sample's bootstrap and flags, rendered as its sidecar renders them", async () => {
    const ca = await createCa('cluster.local');
    for (const sample of ['httpbin.yaml', 'curl.yaml']) {
      const facts = { name: `${sample.split('.')[0]}-54ccc6954c-9rlvp`, namespace: sample.split('.')[0], serviceAccount: sample.split('.')[0] };
      // The identity Secret (certificate, key, CA, SDS files) where the sidecar mounts it (here, a folder).
      const identity = await issue(ca, { trustDomain: 'cluster.local', namespace: facts.namespace, serviceAccount: facts.serviceAccount });
      const args = writeSidecarConfig({ sample, facts, dir: tmp, identity });
      const r = await new Promise<{ code: number; out: string }>((resolve) =>
        execFile(envoyForSidecars(), [...args, '--mode', 'validate'], (err, stdout, stderr) => resolve({ code: err ? 1 : 0, out: stdout + stderr })),
      );
      expect(r.out, sample).toContain('configuration');
      expect(r.code, r.out).toBe(0);
    }
  });
});
