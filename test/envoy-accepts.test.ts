/**
 * A real Envoy accepts everything we publish: for every golden case and the demo mesh, one Envoy per sidecar
 * identity (and per ADS flavour), each in a pod of its own, connects to the server serving that mesh, ACKs
 * every type, ends with no listener warming and every cluster initialised, and prints in its /config_dump
 * exactly what the server's /debug/config_dump says it was sent. And `envoy --mode validate` accepts the
 * samples' bootstraps as the sidecars render them.
 */
import { execFile } from 'node:child_process';
import { chmodSync, cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { serve, type Running } from '../src/main.js';
import { Network } from '../src/sandbox/netns.js';
import { envoyForSidecars } from '../src/sandbox/parts.js';
import { sidecarArgs, sidecarBootstrap } from '../src/sandbox/samples.js';
import { sidecarLive, startSidecar, type AdsFlavour, type Sidecar } from '../src/sandbox/sandbox.js';
import { DEMO } from './helpers/demo.js';
import { dynamicResources } from './helpers/guide-suite.js';
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
  const servers: Running[] = [];
  const started: { mesh: string; identity: string; flavour: AdsFlavour; sidecar: Sidecar; running: Running }[] = [];

  beforeAll(async () => {
    tmp = mkdtempSync(path.join(os.tmpdir(), 'mesh-xds-accepts-'));
    chmodSync(tmp, 0o755);
    net = await Network.create();
    for (const mesh of meshes(tmp)) {
      const running = await serve(
        { adsAddress: `${net.gateway}:0`, debugAddress: '127.0.0.1:0', manifests: mesh.dir, kubernetes: false, meshName: 'mesh-xds', overrides: mesh.set, logLevel: 'silent', namespace: 'mesh-xds' },
        pino({ level: 'silent' }),
      );
      servers.push(running);
      for (const identity of running.pipeline.ir!.identities) {
        const [namespace, serviceAccount] = identity.split('/');
        for (const flavour of FLAVOURS) {
          const name = `${serviceAccount}-${started.length}`;
          const pod = await net.pod(name);
          const sidecar = startSidecar(pod, {
            sample: 'curl.yaml',
            facts: { name, namespace, serviceAccount, ip: pod.ip },
            dir: tmp,
            flavour,
            adsAddress: `${net.gateway}:${running.adsPort}`,
          });
          started.push({ mesh: mesh.name, identity, flavour, sidecar, running });
        }
      }
    }
    await Promise.all(started.map((s) => sidecarLive(s.sidecar, 60_000)));
  }, 180_000);

  afterAll(async () => {
    await Promise.all(servers.map((s) => s.close()));
    await net?.destroy();
    if (tmp) rmSync(tmp, { recursive: true, force: true });
  }, 60_000);

  it('covers the demo and every golden case, each identity over both ADS flavours', () => {
    const covered = new Set(started.map((s) => s.mesh));
    expect([...covered]).toEqual(expect.arrayContaining(['deploy/demo', 'golden/guide', 'golden/two-ports', 'golden/headless', 'golden/tcp-port', 'golden/flag-off']));
    expect(started.length).toBeGreaterThanOrEqual(2 * 12);
  });

  it('every sidecar ACKed every type (SYNCED), rejected nothing, and has no listener warming and every cluster initialised', async () => {
    for (const s of started) {
      const who = `${s.mesh} ${s.identity} ${s.flavour}`;
      const conn = [...s.running.registry.connections].find((c) => c.identity.nodeId === s.sidecar.nodeId);
      expect(conn, who).toBeDefined();
      const res = await fetch(`http://127.0.0.1:${s.running.debugPort}/debug/proxies`).then((r) => r.json());
      const entry = res.proxies.find((p: any) => p.nodeId === s.sidecar.nodeId);
      expect(Object.keys(entry.types).sort(), who).toEqual(['CDS', 'EDS', 'LDS', 'RDS']);
      for (const [type, st] of Object.entries<any>(entry.types)) expect(st.state, `${who} ${type}`).toBe('SYNCED');
      expect(await s.sidecar.rejected(), who).toEqual({});
      const stats = await s.sidecar.stats();
      expect(stats.get('listener_manager.total_listeners_warming'), who).toBe(0);
      expect(stats.get('listener_manager.total_listeners_active'), who).toBeGreaterThan(0);
      expect(stats.get('cluster_manager.warming_clusters'), who).toBe(0);
      const dump = await s.sidecar.configDump();
      const listeners = dump.configs.find((c: any) => c['@type'].endsWith('.ListenersConfigDump')).dynamic_listeners;
      for (const l of listeners) expect(l.warming_state, `${who} listener ${l.name}`).toBeUndefined();
    }
  });

  it("the server's /debug/config_dump of each sidecar equals Envoy's own, resource by resource", async () => {
    for (const s of started) {
      const ours = await fetch(`http://127.0.0.1:${s.running.debugPort}/debug/config_dump?proxy=${encodeURIComponent(s.sidecar.nodeId)}`).then((r) => r.json());
      expect(dynamicResources(ours), `${s.mesh} ${s.identity} ${s.flavour}`).toEqual(dynamicResources(await s.sidecar.configDump()));
    }
  });

  it("envoy --mode validate accepts each sample's bootstrap, rendered as its sidecar renders it", async () => {
    for (const sample of ['httpbin.yaml', 'curl.yaml']) {
      const facts = { name: `${sample.split('.')[0]}-54ccc6954c-9rlvp`, namespace: sample.split('.')[0], serviceAccount: sample.split('.')[0] };
      const file = path.join(tmp, `${sample}.bootstrap.yaml`);
      writeFileSync(file, sidecarBootstrap(sample));
      const args = sidecarArgs(sample, facts);
      args[args.indexOf('-c') + 1] = file;
      const r = await new Promise<{ code: number; out: string }>((resolve) =>
        execFile(envoyForSidecars(), [...args, '--mode', 'validate', '--disable-hot-restart'], (err, stdout, stderr) => resolve({ code: err ? 1 : 0, out: stdout + stderr })),
      );
      expect(r.out, sample).toContain('configuration');
      expect(r.code, r.out).toBe(0);
    }
  });
});
