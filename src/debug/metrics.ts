/** Prometheus metrics (prom-client), fed by protocol and pipeline events. */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import { amplificationOf } from '../compile/amplification.js';
import type { MeshIR } from '../compile/ir.js';
import type { BuildReport } from '../pipeline/pipeline.js';
import type { ProxyRegistry } from '../xds/protocol/status.js';
import { resourceType } from '../xds/resources/types.js';
import type { ObservedRetries } from '../observed/retries.js';

/** Paths with a Retry given series on /metrics, at most (beyond: counted in mesh_xds_observed_paths_omitted). */
export const OBSERVED_SERIES_PATHS = 2_000;

export class Metrics {
  readonly registry = new Registry();
  private readonly connected = new Gauge({ name: 'mesh_xds_connected_proxies', help: 'Connected ADS streams', labelNames: ['stream', 'kind'], registers: [this.registry] });
  private readonly pushes = new Counter({ name: 'mesh_xds_pushes_total', help: 'xDS responses sent', labelNames: ['type'], registers: [this.registry] });
  private readonly bytes = new Counter({ name: 'mesh_xds_pushed_bytes_total', help: 'Bytes of xDS responses sent', labelNames: ['type'], registers: [this.registry] });
  private readonly acks = new Counter({ name: 'mesh_xds_acks_total', help: 'ACKs received', labelNames: ['type'], registers: [this.registry] });
  private readonly nacks = new Counter({ name: 'mesh_xds_nacks_total', help: 'NACKs received', labelNames: ['type'], registers: [this.registry] });
  private readonly ackLatency = new Histogram({
    name: 'mesh_xds_push_ack_seconds',
    help: 'Time from sending a response to its ACK',
    labelNames: ['type'],
    buckets: [0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
    registers: [this.registry],
  });
  private readonly buildTime = new Histogram({
    name: 'mesh_xds_snapshot_build_seconds',
    help: 'Time to translate the mesh and build changed snapshots',
    buckets: [0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
    registers: [this.registry],
  });
  private readonly connectionsAged = new Counter({
    name: 'mesh_xds_connections_aged_total',
    help: 'ADS connections sent GOAWAY at their maximum age (--max-connection-age), so that proxies spread over the replicas',
    registers: [this.registry],
  });
  private readonly admissions = new Counter({
    name: 'mesh_xds_admission_reviews_total',
    help: 'Pod admission reviews of the injection webhook: injected, skipped (left alone), denied, ignored (not a pod creation), bad_request',
    labelNames: ['result'],
    registers: [this.registry],
  });
  private readonly buildFailures = new Counter({ name: 'mesh_xds_snapshot_failures_total', help: 'Snapshots that failed their checks and were not published', registers: [this.registry] });
  private readonly refused = new Counter({
    name: 'mesh_xds_streams_refused_total',
    help: 'Streams and requests the server ended because of what the client sent, by the bound or rule crossed',
    labelNames: ['reason'],
    registers: [this.registry],
  });
  private readonly connectionsRefused = new Counter({
    name: 'mesh_xds_connections_refused_total',
    help: 'ADS connections closed by a bound: too many open (too_many_connections: the source holding the most loses one), a TLS handshake that failed (tls_handshake_failed), or no identity proved (anonymous_connection: too many such, or one past its few seconds)',
    labelNames: ['reason'],
    registers: [this.registry],
  });
  private readonly transportErrors = new Counter({
    name: 'mesh_xds_transport_errors_total',
    help: 'Errors of ADS connections (session) and streams (stream), by Node error code; each ends only its own',
    labelNames: ['where', 'code'],
    registers: [this.registry],
  });
  private readonly policies = new Gauge({ name: 'mesh_xds_policies', help: 'Retry policies by status', labelNames: ['state'], registers: [this.registry] });

  /** Errors the source currently reports (folder: files and objects that fail; their last good objects stay). */
  sourceErrors: () => number = () => 0;
  /** Kubernetes: whether this replica holds the Lease that lets it write Retry statuses. */
  statusWriter?: () => boolean;
  /** The mesh as last translated (for what is computed from it when scraped). */
  ir?: () => MeshIR | undefined;
  /** Sidecar mTLS: certificates issued so far and identities holding one (never their content). */
  sidecarCerts?: () => { issued: number; held: number };
  /** What the sidecars' retry counters say (the metrics service). */
  observed?: () => ObservedRetries;
  private readonly statsAddedTotal = new Counter({ name: 'mesh_xds_observed_counters_total', help: 'Per-cluster counter deltas the sidecars sent that were added to the observed retries', registers: [this.registry] });
  private readonly statsDroppedTotal = new Counter({
    name: 'mesh_xds_observed_dropped_total',
    help: 'Sidecar metrics not read, by reason: messages over the per-stream rate (rate) or cut at the series bound (too_many_series); series of an identity or cluster not in the mesh, an unknown counter, a bad value, a metric that is not a counter, or no room for another (identity, cluster) pair (pairs_full)',
    labelNames: ['reason'],
    registers: [this.registry],
  });
  /** The ADS port: bytes of request messages held incomplete, and streams open. */
  transport?: () => { receiving: number; streams: number };

  constructor(proxies: ProxyRegistry) {
    const errors = (): number => this.sourceErrors();
    const writer = (): boolean | undefined => this.statusWriter?.();
    new Gauge({
      name: 'mesh_xds_status_writer',
      help: 'Kubernetes: 1 when this replica holds the Lease mesh-xds-status-writer and writes Retry statuses, else 0',
      registers: [this.registry],
      collect() {
        this.set(writer() ? 1 : 0);
      },
    });
    new Gauge({
      name: 'mesh_xds_source_errors',
      help: 'Current errors of the source (manifest files, directories and objects it cannot use; Kubernetes resources whose list or watch fails), each listed in /debug/mesh',
      registers: [this.registry],
      collect() {
        this.set(errors());
      },
    });
    const transport = (): { receiving: number; streams: number } | undefined => this.transport?.();
    new Gauge({
      name: 'mesh_xds_receive_held_bytes',
      help: 'ADS port: bytes of request messages received and not yet complete, held for every stream together (bounded by the receive budget and ceiling, docs/security.md)',
      registers: [this.registry],
      collect() {
        this.set(transport()?.receiving ?? 0);
      },
    });
    new Gauge({
      name: 'mesh_xds_streams_open',
      help: 'ADS port: gRPC streams open (ADS, CSDS), every client together (bounded, shared fairly by client)',
      registers: [this.registry],
      collect() {
        this.set(transport()?.streams ?? 0);
      },
    });
    const certs = (): { issued: number; held: number } | undefined => this.sidecarCerts?.();
    new Gauge({
      name: 'mesh_xds_sidecar_certificates',
      help: 'Sidecar mTLS: identities holding a data-plane certificate issued by this replica (sent over SDS)',
      registers: [this.registry],
      collect() {
        this.set(certs()?.held ?? 0);
      },
    });
    new Counter({
      name: 'mesh_xds_sidecar_certificates_issued_total',
      help: 'Sidecar mTLS: data-plane certificates issued by this replica (new identities, renewals, a CA rotation)',
      registers: [this.registry],
      collect() {
        const c = certs();
        if (!c) return;
        this.reset();
        this.inc(c.issued);
      },
    });
    const ir = (): MeshIR | undefined => this.ir?.();
    new Gauge({
      name: 'mesh_xds_retry_amplification_max',
      help: 'Worst-case attempts at the last service of the worst call path of Retries in force, for one request at its first (1: no retries in force); /debug/amplification lists the paths',
      registers: [this.registry],
      collect() {
        const mesh = ir();
        this.set(mesh ? (amplificationOf(mesh).paths[0]?.attempts ?? 1) : 1);
      },
    });
    this.observedSeries();
    collectDefaultMetrics({ register: this.registry, prefix: 'mesh_xds_process_' });
    const short = (url: string): string => resourceType(url)?.short ?? url;
    proxies.observe({
      connected: (c) => this.connected.inc({ stream: c.stream, kind: c.identity.kind }),
      disconnected: (c) => this.connected.dec({ stream: c.stream, kind: c.identity.kind }),
      pushed: (_c, url, n) => {
        this.pushes.inc({ type: short(url) });
        this.bytes.inc({ type: short(url) }, n);
      },
      acked: (_c, url, ms) => {
        this.acks.inc({ type: short(url) });
        if (ms !== undefined) this.ackLatency.observe({ type: short(url) }, ms / 1000);
      },
      nacked: (_c, url) => this.nacks.inc({ type: short(url) }),
      refused: (reason) => this.refused.inc({ reason }),
      connectionRefused: (reason) => this.connectionsRefused.inc({ reason }),
      transportError: (where, code) => this.transportErrors.inc({ where, code }),
      connectionAged: () => this.connectionsAged.inc(),
    });
  }

  statsAdded(n: number): void {
    this.statsAddedTotal.inc(n);
  }

  statsDropped(reason: string, n: number): void {
    this.statsDroppedTotal.inc({ reason }, n);
  }

  /**
   * What the retries did, since each path began under its Retry: one series per path with a Retry in force (labels
   * policy, source identity, destination service), so the series are as many as the Retries' destinations, and at
   * most OBSERVED_SERIES_PATHS paths (worst retry rate first is not chosen: sorted by name, the rest counted).
   * Paths without a Retry have no series: /debug/retries lists them.
   */
  private observedSeries(): void {
    const view = (): ReturnType<ObservedRetries['view']> | undefined => this.observed?.().view({ paths: 'retries', maxPaths: OBSERVED_SERIES_PATHS });
    let last: ReturnType<ObservedRetries['view']> | undefined;
    let lastAt = 0;
    /** One view per scrape (each series' collect runs in turn), and at most one a second however many scrape. */
    const current = (): ReturnType<ObservedRetries['view']> | undefined => {
      if (!last || Date.now() - lastAt > 1_000) [last, lastAt] = [view(), Date.now()];
      return last;
    };
    const fields = [
      ['requests', 'requests', 'Requests (first tries) the sidecars of the source identity sent to the destination'],
      ['retries', 'retries', 'Retries the sidecars made (upstream_rq_retry)'],
      ['retries_succeeded', 'retriesSucceeded', 'Retries whose attempt succeeded (upstream_rq_retry_success)'],
      ['retries_exhausted', 'retriesExhausted', 'Requests that ran out of retries (upstream_rq_retry_limit_exceeded)'],
      ['retries_refused', 'retriesRefused', 'Retries the retry budget or circuit breaker refused (upstream_rq_retry_overflow)'],
    ] as const;
    for (const [name, field, help] of fields) {
      new Counter({
        name: `mesh_xds_observed_${name}_total`,
        help: `${help}, summed over every reporting sidecar, per Retry in force; since the path began under it`,
        labelNames: ['policy', 'source', 'destination'],
        registers: [this.registry],
        collect() {
          this.reset();
          const v = current();
          for (const p of v?.paths ?? []) {
            this.inc({ policy: p.policy!, source: p.source, destination: p.destination }, p.windows.total[field]);
          }
        },
      });
    }
    new Gauge({
      name: 'mesh_xds_observed_paths_omitted',
      help: `Paths with a Retry in force and numbers, beyond the ${OBSERVED_SERIES_PATHS} given series`,
      registers: [this.registry],
      collect() {
        this.set(current()?.pathsOmitted ?? 0);
      },
    });
    new Gauge({
      name: 'mesh_xds_observed_proxies_reporting',
      help: 'Proxies that sent their counters within three stats flush intervals',
      registers: [this.registry],
      collect() {
        this.set(current()?.proxiesReporting ?? 0);
      },
    });
  }

  /** An admission review of the injection webhook, by outcome. */
  admission(result: string): void {
    this.admissions.inc({ result });
  }

  built(report: BuildReport, ir: MeshIR): void {
    this.buildTime.observe(report.ms / 1000);
    if (report.failed.length) this.buildFailures.inc(report.failed.length);
    for (const state of ['Accepted', 'Invalid', 'Ignored', 'Conflicted']) {
      this.policies.set({ state }, ir.policies.filter((p) => p.state === state).length);
    }
  }
}
