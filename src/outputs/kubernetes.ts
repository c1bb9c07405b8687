/**
 * What the control plane writes back to Kubernetes, fed by the pipeline and reading the source's caches: Retry
 * statuses and the identity Secrets, by the replica that holds the Lease `mesh-xds-status-writer` only.
 */
import type * as k8s from '@kubernetes/client-node';
import type { Logger } from 'pino';
import type { MeshIR } from '../compile/ir.js';
import type { KeyPair } from '../security/ca.js';
import type { MeshAccount } from '../sources/kubernetes.js';
import type { KubeObject } from '../sources/manifests.js';
import { IdentitySecrets, type IdentitySecretsOptions } from './identities.js';
import { LeaseElector } from './lease.js';
import { RetryStatusWriter } from './retry-status.js';

export interface KubernetesWritersOptions {
  kc: k8s.KubeConfig;
  /** The control plane's namespace (where the Lease is). */
  namespace: string;
  log: Logger;
  /** What the source holds: each Retry as last seen, and the mesh's service accounts. */
  source: { retry(namespace: string, name: string): KubeObject | undefined; accounts(): MeshAccount[] };
  lease?: { name?: string; identity?: string; leaseSeconds?: number; retryMs?: number };
  /** mTLS: keep an identity Secret for every ServiceAccount of an enrolled namespace (issued from this CA). */
  identities?: Omit<IdentitySecretsOptions, 'kc' | 'log' | 'controlPlaneNamespace'>;
}

export class KubernetesWriters {
  /** Leader election: only the holder of the Lease writes. */
  readonly elector: LeaseElector;
  readonly identities?: IdentitySecrets;
  private readonly statuses: RetryStatusWriter;
  private lastIr?: MeshIR;
  /** Status writes run one after another, so two quick rebuilds never race to write the same object. */
  private writing = Promise.resolve();

  constructor(private readonly o: KubernetesWritersOptions) {
    this.statuses = new RetryStatusWriter(o.kc, o.log, (ns, name) => o.source.retry(ns, name));
    this.elector = new LeaseElector({
      kc: o.kc,
      namespace: o.namespace,
      name: o.lease?.name ?? 'mesh-xds-status-writer',
      identity: o.lease?.identity,
      leaseSeconds: o.lease?.leaseSeconds,
      retryMs: o.lease?.retryMs,
      log: o.log,
      // The new holder writes what the mesh says now (its predecessor may have missed the last change).
      onChange: (leader) => {
        if (leader && this.lastIr) void this.policies(this.lastIr);
      },
    });
    if (o.identities) {
      const identities = (this.identities = new IdentitySecrets({ ...o.identities, controlPlaneNamespace: o.namespace, kc: o.kc, log: o.log }));
      this.elector.observe((leader) => identities.setLeader(leader));
    }
  }

  start(): void {
    this.elector.start();
  }

  async stop(): Promise<void> {
    this.identities?.stop();
    await this.elector.stop();
  }

  /** A new IR: each Retry's status, written if this replica holds the Lease. */
  policies(ir: MeshIR): Promise<void> {
    this.lastIr = ir;
    this.writing = this.writing
      .then(() => (this.elector.leader ? this.statuses.write(ir) : undefined))
      .catch((err) => this.o.log.warn({ err: (err as Error).message }, 'status writes failed'));
    return this.writing;
  }

  /** The mesh changed: the identity Secrets follow its service accounts. */
  meshChanged(): void {
    this.identities?.update(this.o.source.accounts());
  }

  /** The mesh CA rotated: the identity Secrets are issued again from it. */
  setCa(ca: KeyPair): void {
    this.identities?.setCa(ca);
  }

  info(): Record<string, unknown> {
    return {
      statusWriter: { lease: this.elector.name, identity: this.elector.identity, leader: this.elector.leader, writes: this.statuses.writes },
      ...(this.identities ? { identitySecrets: this.identities.info() } : {}),
    };
  }
}
