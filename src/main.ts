/** Wiring: config -> sources -> pipeline -> ADS server -> debug server. */
import { isIP } from 'node:net';
import pino, { type Logger } from 'pino';
import type { ServeConfig } from './config.js';
import { DebugServer } from './debug/http.js';
import { Metrics } from './debug/metrics.js';
import { STATS_FLUSH, type MeshState } from './model/mesh.js';
import { Pipeline } from './pipeline/pipeline.js';
import { loadRetrySchema } from './sources/crd.js';
import { FileSource } from './sources/files.js';
import { SnapshotCache } from './xds/resources/cache.js';
import { loadEnvoyProtos } from './xds/resources/protos.js';
import { AdsServer, type PeerCheckFn } from './xds/protocol/server.js';
import { csdsHandlers, type CsdsAuthorizer } from './xds/protocol/csds.js';
import { Code } from './xds/transport/grpc.js';
import { allowed, DEFAULT_TRUST_DOMAIN, spiffeId } from './security/spiffe.js';
import { readCaDir, type KeyPair } from './security/ca.js';
import { WorkloadCerts } from './security/workload-certs.js';
import type { KubernetesWriters } from './outputs/kubernetes.js';
import { ProgrammedTracker } from './outputs/programmed.js';
import type { MeshSource } from './sources/source.js';
import { tlsFromCa, tlsFromDir, type PeerCheck, type TlsServing } from './security/tls.js';
import { ProxyRegistry } from './xds/protocol/status.js';
import type { InjectionWebhook } from './inject/webhook.js';
import type { NamespaceFacts } from './inject/inject.js';
import { cachedLookup } from './inject/namespaces.js';
import { packagePath } from './paths.js';
import { readFileSync } from 'node:fs';
import { ExitError } from './cli/errors.js';
import { ObservedRetries } from './observed/retries.js';
import { metricsServiceHandler } from './observed/metrics-service.js';
import { ControlPlaneClientCert, controlPlaneOnly, localShare, replicaShareHandler, ReplicaShares, servingAsClient } from './outputs/replica-share.js';

export interface Running {
  adsPort: number;
  debugPort: number;
  /** The injection webhook's port, when it serves. */
  webhookPort?: number;
  cache: SnapshotCache;
  registry: ProxyRegistry;
  pipeline: Pipeline;
  /** What the sidecars' retry counters say, summed per policy. */
  observed: ObservedRetries;
  /** The debug port's server. */
  debug: DebugServer;
  close(): Promise<void>;
}

export type { MeshSource } from './sources/source.js';

/** The server cannot start: one line saying why and what to do; exit 1, or 2 for what a flag must change. */
export class StartError extends ExitError {
  constructor(message: string, exitCode = 1) {
    super(message, exitCode);
  }
}

/** A listen that failed for a reason the user can fix (a busy port, a privileged one, an address not here): which flag moves it. */
function listenError(flag: string, address: string): (e: unknown) => never {
  return (e) => {
    const code = (e as NodeJS.ErrnoException).code ?? /\b(EADDRINUSE|EACCES|EADDRNOTAVAIL)\b/.exec(String((e as Error)?.message))?.[1];
    if (code === 'EADDRINUSE') throw new StartError(`${address} is in use: another mesh-xds may be running (stop it), or move this one with ${flag} HOST:PORT`, 2);
    if (code === 'EACCES') throw new StartError(`${address}: no permission to listen there (ports below 1024 need root): move it with ${flag} HOST:PORT`, 2);
    if (code === 'EADDRNOTAVAIL') throw new StartError(`${address}: no such address on this machine: give one of its own with ${flag} HOST:PORT`, 2);
    throw e;
  };
}

/** How long a review naming a namespace the watch does not know yet waits for it (the watch is ms behind the API). */
const NAMESPACE_WAIT_MS = 2_000;

/** mTLS as the flags say (a certificate given, or issued from the CA), or plaintext (undefined). */
async function serving(cfg: ServeConfig, log: Logger, onCa?: (ca: KeyPair) => void): Promise<TlsServing | undefined> {
  const trustDomain = cfg.trustDomain ?? DEFAULT_TRUST_DOMAIN;
  if (cfg.tlsDir) return tlsFromDir(cfg.tlsDir, trustDomain, log);
  if (!cfg.caDir) return undefined;
  const ns = cfg.namespace;
  const host = cfg.adsAddress.replace(/:\d+$/, '').replace(/^\[|\]$/g, '');
  return tlsFromCa(
    cfg.caDir,
    {
      trustDomain,
      namespace: ns,
      serviceAccount: 'mesh-xds',
      // The Service's names (deploy/control-plane), any given, and the address it listens on if it is one.
      dnsNames: ['mesh-xds', `mesh-xds.${ns}`, `mesh-xds.${ns}.svc`, `mesh-xds.${ns}.svc.${trustDomain}`, 'localhost', ...(cfg.serverNames ?? [])],
      ipAddresses: ['127.0.0.1', ...(isIP(host) && host !== '0.0.0.0' && host !== '::' ? [host] : [])],
      ttlMs: cfg.servingTtlMs,
    },
    log,
    onCa,
  );
}

/** CSDS with mTLS: only callers whose certificate's SPIFFE id is on the allow list. */
function csdsAuthorizer(check: PeerCheckFn, allow: readonly string[], log: Logger): CsdsAuthorizer {
  return (call) => {
    const peer = check(call);
    const refusal = !peer.ok
      ? { code: Code.UNAUTHENTICATED, details: peer.message, reason: peer.reason }
      : !allowed(peer.spiffe, allow)
        ? { code: Code.PERMISSION_DENIED, details: `${peer.spiffe} may not read CSDS (not on --csds-allow)`, reason: 'csds_not_allowed' }
        : undefined;
    if (refusal) log.warn({ code: Code[refusal.code], details: refusal.details, reason: refusal.reason, peer: call.getPeer() }, 'CSDS request refused');
    return refusal;
  };
}

function permissiveProblem(state: MeshState): string | undefined {
  return state.meshConfig.enablePermissiveTrafficPolicyMode
    ? undefined
    : 'mesh config traffic.enablePermissiveTrafficPolicyMode=false is not supported: mesh-xds has no access-control policies yet, so it only runs in permissive mode';
}

export async function serve(cfg: ServeConfig, log: Logger = pino({ level: cfg.logLevel })): Promise<Running> {
  const { loadMs } = loadEnvoyProtos();
  log.info({ ms: Math.round(loadMs) }, 'Envoy protos loaded');
  const cache = new SnapshotCache();
  const registry = new ProxyRegistry();
  const metrics = new Metrics(registry);
  // With the mesh CA at hand, sidecars talk mTLS to each other with certificates this process issues (SDS).
  const certs = cfg.caDir
    ? new WorkloadCerts({
        ca: readCaDir(cfg.caDir),
        trustDomain: cfg.trustDomain ?? DEFAULT_TRUST_DOMAIN,
        ttlMs: cfg.sidecarCertTtlMs,
        log,
        onChange: (ids) => pipeline.secretsChanged(ids),
      })
    : undefined;
  /** Open pages (/ui) hear of each new mesh (the debug server is made below). */
  let meshChanged = (): void => {};
  const pipeline: Pipeline = new Pipeline(
    cache,
    log,
    {
      built: (r, ir) => {
        metrics.built(r, ir);
        meshChanged();
      },
    },
    certs,
  );
  metrics.ir = () => pipeline.ir;
  if (certs) metrics.sidecarCerts = () => ({ issued: certs.issued, held: certs.held });
  let adsServing = false;

  /** The MeshConfig's sidecar stats flush interval: injected pods take it; a proxy silent for 3 of them is not reporting. */
  let statsFlushSeconds: number = STATS_FLUSH.defaultSeconds;
  const statsFlushMs = (): number => statsFlushSeconds * 1000;
  const onChange = (state: MeshState): void => {
    const problem = permissiveProblem(state);
    if (problem) {
      log.error(`${problem}; keeping the last mesh`);
      return;
    }
    statsFlushSeconds = state.meshConfig.statsFlushSeconds ?? STATS_FLUSH.defaultSeconds;
    void pipeline.submit(state);
  };

  // The sidecars' counters (the metrics service on the ADS port), read per Retry against the mesh in force.
  const observed = new ObservedRetries(() => pipeline.ir, Date.now, undefined, () => 3 * statsFlushMs());
  const forget = setInterval(() => observed.sweep(), 60_000).unref();
  metrics.observed = () => observed;

  let source: MeshSource;
  /** Kubernetes: the namespace facts the injection webhook asks for (the watch's cache, else the API). */
  let namespaceOf: ((name: string) => Promise<NamespaceFacts | undefined>) | undefined;
  let kubeConfig: import('@kubernetes/client-node').KubeConfig | undefined;
  /** Kubernetes: what the control plane writes back (statuses, identity Secrets), fed by the pipeline. */
  let writers: KubernetesWriters | undefined;
  /** Kubernetes: whether the proxies hold each policy, and the other replicas' shares of the live part (summed by the leader). */
  let programmed: ProgrammedTracker | undefined;
  let shares: ReplicaShares | undefined;
  const controlPlane = spiffeId(cfg.trustDomain ?? DEFAULT_TRUST_DOMAIN, cfg.namespace, 'mesh-xds');
  if (cfg.manifests) {
    const files = new FileSource({ dir: cfg.manifests, meshName: cfg.meshName, overrides: cfg.overrides, log, retrySchema: loadRetrySchema(), onChange });
    source = { start: () => files.start(), stop: () => files.stop(), info: () => ({ source: 'manifests', dir: cfg.manifests, manifestErrors: files.errors }) };
    metrics.sourceErrors = () => files.errors.length;
  } else {
    const { KubernetesSource } = await import('./sources/kubernetes.js');
    const { KubernetesWriters } = await import('./outputs/kubernetes.js');
    const kube = new KubernetesSource({
      meshName: cfg.meshName,
      overrides: cfg.overrides,
      namespace: cfg.namespace,
      kubeconfig: cfg.kubeconfig,
      log,
      onChange: (state) => {
        onChange(state);
        writers?.meshChanged();
      },
    });
    programmed = new ProgrammedTracker({ registry, cache, failedKeys: () => (pipeline.lastReport?.failed ?? []).map((f) => f.key) });
    const out = (writers = new KubernetesWriters({
      kc: kube.kc,
      namespace: cfg.namespace,
      log,
      source: kube,
      // With the CA at hand, every service account of the mesh gets its identity Secret.
      identities: cfg.caDir ? { ca: readCaDir(cfg.caDir), trustDomain: cfg.trustDomain ?? DEFAULT_TRUST_DOMAIN, ttlMs: cfg.identityTtlMs ?? 86_400_000 } : undefined,
      // The live part of Retry statuses: the sidecars' numbers, and whether the proxies hold each policy.
      live: { observed: () => observed.view(), programmed, replicas: (shares = new ReplicaShares({ kc: kube.kc, namespace: cfg.namespace, spiffe: controlPlane, log })) },
    }));
    source = { start: () => kube.start(), stop: () => kube.stop(), info: () => ({ ...kube.info(), ...out.info() }) };
    kubeConfig = kube.kc;
    // From the watch's cache only, waiting briefly for a namespace created a moment ago (src/inject/namespaces.ts).
    namespaceOf = cachedLookup((name) => kube.namespace(name), NAMESPACE_WAIT_MS);
    metrics.sourceErrors = () => kube.errors;
    metrics.statusWriter = () => out.elector.leader;
    pipeline.onPolicies = (ir) => void out.policies(ir);
  }

  // The leader asks the other replicas for their shares with a client certificate of the control plane's identity.
  const clientCert = cfg.caDir && shares ? new ControlPlaneClientCert(readCaDir(cfg.caDir), { trustDomain: cfg.trustDomain ?? DEFAULT_TRUST_DOMAIN, namespace: cfg.namespace }) : undefined;
  const tls = await serving(cfg, log, (ca) => {
    writers?.setCa(ca);
    certs?.setCa(ca);
    clientCert?.setCa(ca);
  });
  const ads: AdsServer = new AdsServer({
    cache,
    registry,
    log,
    tls,
    transport: { maxConnectionAgeMs: cfg.maxConnectionAgeMs, maxConnectionAgeGraceMs: cfg.maxConnectionAgeGraceMs },
    handlers: {
      ...csdsHandlers(registry, cache, (reason) => registry.emit('refused', reason), tls && csdsAuthorizer((call): PeerCheck => ads.peerCheck!(call), cfg.csdsAllow ?? [], log)),
      ...metricsServiceHandler({
        observed,
        log,
        peers: tls && ((call): PeerCheck => ads.peerCheck!(call)),
        events: { refused: (reason) => registry.emit('refused', reason), dropped: (reason, n) => metrics.statsDropped(reason, n), added: (n) => metrics.statsAdded(n) },
      }),
      // This replica's share of the live part of Retry statuses, for the leader (the control plane's identity) only.
      ...(shares && writers
        ? replicaShareHandler({
            share: ((s) => () => localShare(s.replica, s.instance, observed.view(), pipeline.ir && programmed?.tallies(pipeline.ir)))(shares),
            authorize: tls && controlPlaneOnly((call): PeerCheck => ads.peerCheck!(call), controlPlane),
            log,
            onRefused: (reason) => registry.emit('refused', reason),
          })
        : {}),
    },
  });
  const adsPort = await ads.listen(cfg.adsAddress).catch(listenError('--ads-address', cfg.adsAddress));
  shares?.serving({ port: adsPort, tls: clientCert ? () => clientCert.get() : tls && servingAsClient(tls.credentials) });
  adsServing = true;
  metrics.transport = () => ({ receiving: ads.grpc.receiving, streams: ads.grpc.open });
  let webhook: InjectionWebhook | undefined;
  let webhookPort: number | undefined;
  let webhookTls: TlsServing | undefined;
  let caBundle: import('./outputs/webhook-ca.js').WebhookCaBundle | undefined;
  if (cfg.webhookAddress && namespaceOf && kubeConfig) {
    const trustDomain = cfg.trustDomain ?? DEFAULT_TRUST_DOMAIN;
    const creds = cfg.webhookTlsDir ? (webhookTls = tlsFromDir(cfg.webhookTlsDir, trustDomain, log)) : tls;
    if (!creds) throw new StartError('the injection webhook needs a certificate: --ca-dir or --webhook-tls-dir');
    const { InjectionWebhook } = await import('./inject/webhook.js');
    const { WebhookCaBundle } = await import('./outputs/webhook-ca.js');
    const bundle = (caBundle = new WebhookCaBundle(kubeConfig, log));
    creds.credentials.watch((c) => bundle.set(c.ca.toString()));
    webhook = new InjectionWebhook({
      credentials: creds.credentials,
      namespace: namespaceOf,
      log,
      onResult: (r) => metrics.admission(r),
      meshName: cfg.meshName,
      controlPlaneNamespace: cfg.namespace,
      trustDomain,
      mtls: Boolean(cfg.caDir || cfg.tlsDir),
      version: (JSON.parse(readFileSync(packagePath('package.json'), 'utf8')) as { version: string }).version,
      envoyImage: cfg.sidecarImage,
      mesh: () => ({ statsFlushSeconds }),
      initImage: cfg.initImage,
    });
    webhookPort = await webhook.listen(cfg.webhookAddress).catch(listenError('--webhook-address', cfg.webhookAddress));
  }
  const debug = new DebugServer({
    cache,
    registry,
    metrics,
    log,
    ir: () => pipeline.ir,
    observed: (o) => observed.view(o),
    preview: (key) => pipeline.preview(key),
    ready: () => adsServing && cache.ready,
    meshInfo: () => ({ lastBuild: pipeline.lastReport ?? null, ...(source.info?.() ?? {}) }),
  });
  meshChanged = () => debug.meshChanged();
  const debugPort = await debug.listen(cfg.debugAddress).catch(listenError('--debug-address', cfg.debugAddress));
  log.info({ ads: cfg.adsAddress.replace(/:\d+$/, `:${adsPort}`), debug: cfg.debugAddress.replace(/:\d+$/, `:${debugPort}`), ...(webhookPort !== undefined ? { webhook: cfg.webhookAddress!.replace(/:\d+$/, `:${webhookPort}`) } : {}) }, 'listening');

  writers?.start();
  const first = await source.start();
  writers?.meshChanged();
  const problem = permissiveProblem(first);
  if (problem) {
    caBundle?.stop();
    webhookTls?.close();
    certs?.stop();
    await Promise.all([ads.close(0), debug.close(), source.stop(), writers?.stop(), webhook?.close()]);
    throw new StartError(problem);
  }
  statsFlushSeconds = first.meshConfig.statsFlushSeconds ?? STATS_FLUSH.defaultSeconds;
  pipeline.update(first);

  return {
    adsPort,
    debugPort,
    webhookPort,
    cache,
    registry,
    pipeline,
    debug,
    observed,
    async close() {
      adsServing = false;
      clearInterval(forget);
      tls?.close();
      certs?.stop();
      webhookTls?.close();
      caBundle?.stop();
      await webhook?.close();
      await source.stop();
      await writers?.stop();
      await ads.close();
      await debug.close();
    },
  };
}
