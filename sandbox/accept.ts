/**
 * Does a real client accept everything the server publishes for a mesh? The server serves a manifests folder on
 * the sandbox's bridge; for every identity of the mesh a real Envoy sidecar (per ADS flavour, each in a pod of
 * its own) and, optionally, a proxyless gRPC client (grpc-js-xds) connect. Every problem is reported: a NACK, an
 * update Envoy rejected, a listener left warming, a cluster not initialised, a type never ACKed, and (optionally)
 * a difference between the server's /debug/config_dump and Envoy's own.
 */
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import * as grpcXds from '@grpc/grpc-js-xds';
import pino from 'pino';
import { serve, type Running } from '../src/main.js';
import type { MeshConfig } from '../src/model/mesh.js';
import { syncState } from '../src/xds/protocol/status.js';
import { RESOURCE_TYPES, SECRET } from '../src/xds/resources/types.js';
import { BOOTSTRAP_SECRETS } from '../src/inject/template.js';
import type { Network, Pod } from './netns.js';
import { startSidecar, until, type AdsFlavour, type Sidecar } from './sandbox.js';

grpcXds.register();

/** Pods made by acceptMesh so far (their names must differ, also between meshes checked at once). */
let podCount = 0;

export interface AcceptOptions {
  /** A folder the sidecars' uid can read (bootstraps). */
  tmp: string;
  overrides?: Partial<MeshConfig>;
  flavours?: AdsFlavour[];
  /** Also a proxyless gRPC client per identity (for a service with an HTTP port, if the mesh has one). */
  proxyless?: boolean;
  /** Compare the server's /debug/config_dump of each sidecar with Envoy's own. */
  compareDumps?: boolean;
  /**
   * Later contents of the folder's `mesh.yaml`, each different from the one before, applied one after another to
   * the same running clients (the identities should stay); after each, every check runs again, its problems
   * prefixed with the change.
   */
  changes?: readonly string[];
  timeoutMs?: number;
}

export interface Checked {
  identity: string;
  client: string;
  nodeId: string;
}

export interface Verdict {
  checked: Checked[];
  problems: string[];
}

/** The dynamic resources of a ConfigDump that Envoy prints by default (clusters, listeners, routes), by name. */
export function dynamicResources(dump: any): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  const bootstrap = new Set<string>(Object.values(BOOTSTRAP_SECRETS));
  for (const t of RESOURCE_TYPES.filter((x) => x.dump.byDefault)) {
    const section = dump.configs.find((c: any) => c['@type'] === `type.googleapis.com/${t.dump.message}`) ?? {};
    for (const [name, r] of Object.entries(t.dump.read(section))) {
      // The bootstrap's file-based secrets (the ADS connection's own certificate) are not the control plane's.
      if (t.typeUrl === SECRET && bootstrap.has(name)) continue;
      out[`${t.short} ${name}`] = r;
    }
  }
  return out;
}

const id = (b: Buffer): Buffer => b;
const ProbeClient = grpc.makeGenericClientConstructor(
  { Call: { path: '/meshxds.probe.Probe/Call', requestStream: false, responseStream: false, requestSerialize: id, requestDeserialize: id, responseSerialize: id, responseDeserialize: id } },
  'Probe',
);

/** Serves the folder `dir` and checks every identity with real clients; removes what it made before returning. */
export async function acceptMesh(net: Network, dir: string, o: AcceptOptions): Promise<Verdict> {
  const problems: string[] = [];
  const checked: Checked[] = [];
  let running: Running | undefined;
  const pods: Pod[] = [];
  const sidecars: { sidecar: Sidecar; identity: string; flavour: AdsFlavour }[] = [];
  const clients: grpc.Client[] = [];
  try {
    running = await serve(
      { adsAddress: `${net.gateway}:0`, debugAddress: '127.0.0.1:0', manifests: dir, kubernetes: false, meshName: 'mesh-xds', overrides: o.overrides ?? {}, logLevel: 'silent', namespace: 'mesh-xds' },
      pino({ level: 'silent' }),
    );
    const ads = `${net.gateway}:${running.adsPort}`;
    const ir = running.pipeline.ir!;
    for (const identity of ir.identities) {
      const [namespace, serviceAccount] = identity.split('/');
      for (const flavour of o.flavours ?? ['GRPC']) {
        const name = `${serviceAccount.slice(0, 30)}-${++podCount}`;
        const pod = await net.pod(name);
        pods.push(pod);
        // With changes, a removed listener drains for a second, not Envoy's 10 minutes (it holds its routes meanwhile).
        const drainSeconds = o.changes?.length ? 1 : undefined;
        const sidecar = startSidecar(pod, { sample: 'curl.yaml', facts: { name, namespace, serviceAccount, ip: pod.ip }, dir: o.tmp, flavour, adsAddress: ads, drainSeconds });
        sidecars.push({ sidecar, identity, flavour });
        checked.push({ identity, client: `envoy ${flavour}`, nodeId: sidecar.nodeId });
      }
      const target = ir.services.flatMap((s) => s.ports.filter((p) => p.protocol === 'http').map((p) => `${s.name}.${s.namespace}.svc.cluster.local:${p.dialPort}`))[0];
      // Not with changes: grpc-js-xds 1.14.1 throws out of its resolver, ending its process, when a change takes
      // away the virtual host of its target (resolver-xds.js reads typed_per_filter_config of a null match).
      if (o.proxyless && !o.changes?.length && target) {
        const nodeId = `proxyless-${namespace}-${serviceAccount}`;
        const bootstrap = {
          xds_servers: [{ server_uri: ads, channel_creds: [{ type: 'insecure' }], server_features: ['xds_v3'] }],
          node: { id: nodeId, locality: {}, metadata: { namespace, serviceAccount } },
        };
        const c = new ProbeClient(`xds:///${target}`, grpc.credentials.createInsecure(), { 'grpc.TEST_ONLY_DO_NOT_USE_IN_PROD.xds_bootstrap_config': JSON.stringify(bootstrap) }) as any;
        clients.push(c);
        // The call makes the client fetch its config; its outcome (the endpoints are not real) does not matter.
        c.Call(Buffer.from('x'), { deadline: Date.now() + 3000 }, () => {});
        checked.push({ identity, client: 'grpc-js-xds', nodeId });
      }
    }
    const timeout = o.timeoutMs ?? 60_000;
    const live = running;
    /** Every check of every client, on the config being served now. */
    const checkAll = async (label: string): Promise<void> => {
      // The types a client must ask for: the full-state ones, and the others where its snapshot has something (a
      // mesh without HTTP ports has no route configuration for Envoy to ask for).
      const expected = (c: Checked): typeof RESOURCE_TYPES => {
        const snapshot = live.cache.peek(live.registry.byNodeId(c.nodeId)?.key ?? '');
        return RESOURCE_TYPES.filter((t) => t.fullState || (snapshot?.get(t.typeUrl)?.resources.size ?? 0) > 0);
      };
      // Every client has an answer (ACK or NACK) for every type it must ask for.
      await until(
        () =>
          checked.every((c) => {
            const conn = live.registry.byNodeId(c.nodeId);
            return conn !== undefined && expected(c).every((t) => conn.types.has(t.typeUrl)) && [...conn.types.values()].every((s) => syncState(s) === 'SYNCED' || syncState(s) === 'NACKED');
          }),
        timeout,
        'every client to answer every type',
      ).catch((e) => problems.push(label + (e as Error).message));
      for (const c of checked) {
        const conn = live.registry.byNodeId(c.nodeId);
        if (!conn) {
          problems.push(label + `${c.identity} (${c.client}): never connected`);
          continue;
        }
        const must = expected(c);
        for (const t of RESOURCE_TYPES) {
          const s = conn.types.get(t.typeUrl);
          if (!s) {
            if (must.includes(t)) problems.push(label + `${c.identity} (${c.client}): never asked for ${t.short}`);
          } else if (s.lastNack) problems.push(label + `${c.identity} (${c.client}): NACK of ${t.short} ${s.lastNack.version}: ${s.lastNack.error}`);
          else if (syncState(s) !== 'SYNCED') problems.push(label + `${c.identity} (${c.client}): ${t.short} ${syncState(s)}`);
        }
      }
      for (const { sidecar, identity, flavour } of sidecars) {
        const who = `${identity} (envoy ${flavour})`;
        try {
          const rejected = await sidecar.rejected();
          if (Object.keys(rejected).length) problems.push(label + `${who}: rejected ${JSON.stringify(rejected)}`);
          const stats = await sidecar.stats();
          if (stats.get('listener_manager.total_listeners_warming')) problems.push(label + `${who}: ${stats.get('listener_manager.total_listeners_warming')} listener(s) warming`);
          if (stats.get('cluster_manager.warming_clusters')) problems.push(label + `${who}: ${stats.get('cluster_manager.warming_clusters')} cluster(s) warming`);
          if (!stats.get('listener_manager.total_listeners_active')) problems.push(label + `${who}: no active listener`);
          if (o.compareDumps) {
            const compare = async (): Promise<string[]> => {
              const ours = await fetch(`http://127.0.0.1:${live.debugPort}/debug/config_dump?proxy=${encodeURIComponent(sidecar.nodeId)}`).then((r) => r.json());
              const theirs = dynamicResources(await sidecar.configDump());
              const mine = dynamicResources(ours);
              const keys = [...new Set([...Object.keys(mine), ...Object.keys(theirs)])].filter((k) => JSON.stringify(sortKeys(mine[k])) !== JSON.stringify(sortKeys(theirs[k])));
              return keys.map((k) => `${k} (${!(k in mine) ? "Envoy's only" : !(k in theirs) ? 'ours only' : 'content'})`);
            };
            // After a change, what a removed listener held goes once it has drained: a few seconds at most.
            let differ = await compare();
            for (let i = 0; differ.length && label && i < 20; i++) {
              await new Promise((r) => setTimeout(r, 250));
              differ = await compare();
            }
            if (differ.length) problems.push(label + `${who}: /debug/config_dump differs from Envoy's /config_dump in ${differ.join(', ')}`);
          }
        } catch (e) {
          problems.push(label + `${who}: ${(e as Error).message}\n${sidecar.proc.tail(10)}`);
        }
      }
    };
    await checkAll('');
    for (const [i, yaml] of (o.changes ?? []).entries()) {
      const before = live.pipeline.lastReport;
      writeFileSync(path.join(dir, 'mesh.yaml'), yaml);
      const label = `change ${i + 1}: `;
      await until(() => live.pipeline.lastReport !== before, timeout, `${label}the new mesh.yaml to be applied`).catch((e) => problems.push(label + (e as Error).message));
      await checkAll(label);
    }
  } finally {
    for (const c of clients) c.close();
    await running?.close();
    for (const pod of pods) await net.removePod(pod);
  }
  return { checked, problems };
}

/** Plain JSON with object keys sorted, for comparing documents whatever their key order. */
export function sortKeys(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(sortKeys);
  if (v && typeof v === 'object') return Object.fromEntries(Object.keys(v).sort().map((k) => [k, sortKeys((v as Record<string, unknown>)[k])]));
  return v;
}
