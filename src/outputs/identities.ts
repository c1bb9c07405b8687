/**
 * The identity Secrets of Kubernetes mode: for every ServiceAccount of an enrolled namespace, a Secret
 * `mesh-xds-identity-<service account>` of type kubernetes.io/tls in that namespace, with the identity's
 * certificate, key and the mesh CA, which the sidecars mount. Written by the Lease holder only, with server-side
 * apply (so the control plane never reads a Secret: its RBAC has no get or list on them), renewed when two thirds
 * of a certificate's life have passed, deleted when the ServiceAccount or the namespace's enrolment goes. Each
 * Secret is owned by its ServiceAccount, so Kubernetes' garbage collector removes it with the account even when
 * no replica is running.
 */
import type * as k8s from '@kubernetes/client-node';
import type { Logger } from 'pino';
import { issue, notAfter, type KeyPair } from '../security/ca.js';
import { spiffeId } from '../security/spiffe.js';
import { asMap } from '../model/plain.js';
import type { MeshAccount } from '../sources/kubernetes.js';
import { kubeJson } from './lease.js';

import { identitySdsFiles, identitySecretName } from '../inject/template.js';

export { identitySecretName };

/** A service account the mesh holds an identity Secret for. */
export type IdentityAccount = MeshAccount;

export interface IdentitySecretsOptions {
  kc: k8s.KubeConfig;
  /** The signing CA (replaced by setCa when the mesh CA rotates). */
  ca: KeyPair;
  trustDomain: string;
  /** The control plane's namespace: the sidecars' SDS file for the mesh CA names its identity. */
  controlPlaneNamespace: string;
  /** Lifetime of each certificate (renewed after two thirds of it). */
  ttlMs: number;
  log: Logger;
}

interface Kept {
  account: IdentityAccount;
  timer?: NodeJS.Timeout;
  notAfter?: Date;
}

const key = (a: { namespace: string; name: string }): string => `${a.namespace}/${a.name}`;
const b64 = (s: string): string => Buffer.from(s).toString('base64');

export class IdentitySecrets {
  private readonly kept = new Map<string, Kept>();
  private desired = new Map<string, IdentityAccount>();
  private leader = false;
  private stopped = false;
  /** One API call at a time, in order. */
  private queue: Promise<void> = Promise.resolve();
  writes = 0;
  deletes = 0;

  constructor(private readonly o: IdentitySecretsOptions) {}

  /** A new mesh CA: every Secret is issued again from it (the sidecars then trust the bundle it comes with). */
  setCa(ca: KeyPair): void {
    this.o.ca = ca;
    if (!this.leader) return;
    for (const [k, kept] of this.kept) {
      clearTimeout(kept.timer);
      this.enqueue(() => this.write(k));
    }
  }

  /** The accounts that should have a Secret now; acts if this replica holds the lease. */
  update(accounts: readonly IdentityAccount[]): void {
    this.desired = new Map(accounts.map((a) => [key(a), a]));
    if (this.leader) this.reconcile();
  }

  /** Gaining the lease: (re)issue every Secret (a predecessor's are of unknown age); losing it: stop renewing. */
  setLeader(leader: boolean): void {
    this.leader = leader;
    for (const k of this.kept.values()) clearTimeout(k.timer);
    this.kept.clear();
    if (leader) this.reconcile();
  }

  stop(): void {
    this.stopped = true;
    for (const k of this.kept.values()) clearTimeout(k.timer);
  }

  info(): Record<string, unknown> {
    return { secrets: this.kept.size, writes: this.writes, deletes: this.deletes };
  }

  private reconcile(): void {
    for (const [k, account] of this.desired) {
      const kept = this.kept.get(k);
      if (kept && kept.account.uid === account.uid) continue;
      if (kept) clearTimeout(kept.timer);
      this.kept.set(k, { account });
      this.enqueue(() => this.write(k));
    }
    for (const [k, kept] of this.kept) {
      if (this.desired.has(k)) continue;
      clearTimeout(kept.timer);
      this.kept.delete(k);
      this.enqueue(() => this.remove(kept.account));
    }
  }

  private enqueue(op: () => Promise<void>): void {
    this.queue = this.queue.then(() => (this.stopped || !this.leader ? undefined : op())).catch((e) => this.o.log.warn({ err: (e as Error).message }, 'identity Secret operation failed'));
  }

  private schedule(k: string, ms: number): void {
    const kept = this.kept.get(k);
    if (!kept || this.stopped) return;
    clearTimeout(kept.timer);
    kept.timer = setTimeout(() => this.enqueue(() => this.write(k)), ms).unref();
  }

  private async write(k: string): Promise<void> {
    const kept = this.kept.get(k);
    if (!kept) return;
    const { namespace, name, uid } = kept.account;
    const id = spiffeId(this.o.trustDomain, namespace, name);
    const bundle = await issue(this.o.ca, { trustDomain: this.o.trustDomain, namespace, serviceAccount: name, ttlMs: this.o.ttlMs });
    const secret = identitySecretName(name);
    const res = await kubeJson(
      this.o.kc,
      'PATCH',
      `/api/v1/namespaces/${namespace}/secrets/${secret}?fieldManager=mesh-xds&force=true`,
      {
        apiVersion: 'v1',
        kind: 'Secret',
        metadata: {
          name: secret,
          namespace,
          labels: { 'app.kubernetes.io/managed-by': 'mesh-xds' },
          annotations: { 'mesh-xds.flomesh.io/spiffe-id': id, 'mesh-xds.flomesh.io/not-after': notAfter(bundle.cert).toISOString() },
          ownerReferences: [{ apiVersion: 'v1', kind: 'ServiceAccount', name, uid }],
        },
        type: 'kubernetes.io/tls',
        // The certificate, key and CA, and the SDS files through which the injected sidecar reads them (template.ts).
        data: {
          'tls.crt': b64(bundle.cert),
          'tls.key': b64(bundle.key),
          'ca.crt': b64(bundle.ca),
          ...Object.fromEntries(Object.entries(identitySdsFiles({ controlPlaneNamespace: this.o.controlPlaneNamespace, trustDomain: this.o.trustDomain })).map(([k, v]) => [k, b64(v)])),
        },
      },
      'application/apply-patch+yaml',
    ).catch((e: Error) => ({ status: 0, body: { message: e.message } }));
    if (res.status !== 200 && res.status !== 201) {
      this.o.log.warn({ secret: `${namespace}/${secret}`, status: res.status, err: asMap(res.body).message ?? res.body }, 'cannot write the identity Secret; retrying in 10 s');
      this.schedule(k, 10_000);
      return;
    }
    this.writes++;
    kept.notAfter = notAfter(bundle.cert);
    this.o.log.info({ secret: `${namespace}/${secret}`, spiffe: id, notAfter: kept.notAfter.toISOString() }, 'identity Secret written');
    this.schedule(k, (this.o.ttlMs * 2) / 3);
  }

  private async remove(a: IdentityAccount): Promise<void> {
    const secret = identitySecretName(a.name);
    const res = await kubeJson(this.o.kc, 'DELETE', `/api/v1/namespaces/${a.namespace}/secrets/${secret}`);
    if (res.status === 404) return;
    if (res.status !== 200 && res.status !== 202) {
      this.o.log.warn({ secret: `${a.namespace}/${secret}`, status: res.status, err: asMap(res.body).message ?? res.body }, 'cannot delete the identity Secret');
      return;
    }
    this.deletes++;
    this.o.log.info({ secret: `${a.namespace}/${secret}` }, 'identity Secret deleted (its service account or namespace left the mesh)');
  }
}
