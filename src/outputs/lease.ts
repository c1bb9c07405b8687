/**
 * Leader election on a `coordination.k8s.io/v1` Lease, as client-go's leaderelection does: the holder renews
 * it every `retryMs`; another replica takes it over once `leaseSeconds` have passed without a renewal. Only the
 * holder writes Retry statuses, so two replicas (or two versions during a rollout) never make them flap. Every
 * replica serves ADS whatever the lease says.
 */
import http from 'node:http';
import https from 'node:https';
import os from 'node:os';
import type * as k8s from '@kubernetes/client-node';
import type { Logger } from 'pino';
import { asMap } from '../model/plain.js';

/** What a Lease's spec holds (coordination.k8s.io/v1). */
interface LeaseSpec {
  readonly holderIdentity?: string;
  readonly renewTime?: string;
  readonly leaseDurationSeconds?: number;
  readonly leaseTransitions?: number;
}

export interface LeaseOptions {
  kc: k8s.KubeConfig;
  namespace: string;
  name: string;
  log: Logger;
  /** This replica's name in the lease (default: host name and pid). */
  identity?: string;
  leaseSeconds?: number;
  retryMs?: number;
  /** Called when this replica becomes the holder (true) or stops being it (false). */
  onChange?: (leader: boolean) => void;
}

/** One JSON request to the API server with the kubeconfig's TLS and credentials. */
export async function kubeJson(kc: k8s.KubeConfig, method: string, path: string, body?: unknown, contentType = 'application/json'): Promise<{ status: number; body: unknown }> {
  const cluster = kc.getCurrentCluster();
  if (!cluster) throw new Error('no current cluster in the kubeconfig');
  const url = new URL(`${cluster.server.replace(/\/$/, '')}${path}`);
  const opts: https.RequestOptions = { method, headers: { accept: 'application/json', ...(body ? { 'content-type': contentType } : {}) } };
  await kc.applyToHTTPSOptions(opts);
  const text = await new Promise<{ status: number; text: string }>((resolve, reject) => {
    const req = (url.protocol === 'https:' ? https : http).request(url, opts, (res) => {
      let t = '';
      res.setEncoding('utf8');
      res.on('data', (c) => (t += c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, text: t }));
    });
    req.on('error', reject);
    req.setTimeout(10_000, () => req.destroy(new Error(`${method} ${path}: no answer in 10 s`)));
    req.end(body ? JSON.stringify(body) : undefined);
  });
  let parsed: unknown = text.text;
  try {
    parsed = JSON.parse(text.text);
  } catch {
    /* not JSON */
  }
  return { status: text.status, body: parsed };
}

/** Kubernetes MicroTime: RFC 3339 with microseconds. */
const microTime = (d: Date): string => d.toISOString().replace(/\.(\d{3})Z$/, '.$1000Z');

export class LeaseElector {
  leader = false;
  readonly identity: string;
  readonly name: string;
  private timer?: NodeJS.Timeout;
  private stopped = false;
  private readonly path: string;
  private readonly leaseSeconds: number;
  private readonly retryMs: number;

  constructor(private readonly o: LeaseOptions) {
    this.identity = o.identity ?? `${os.hostname()}_${process.pid}`;
    this.name = `${o.namespace}/${o.name}`;
    this.path = `/apis/coordination.k8s.io/v1/namespaces/${o.namespace}/leases`;
    this.leaseSeconds = o.leaseSeconds ?? 15;
    this.retryMs = o.retryMs ?? 2_000;
  }

  start(): void {
    const tick = async (): Promise<void> => {
      try {
        await this.tryAcquireOrRenew();
      } catch (err) {
        this.o.log.warn({ lease: `${this.o.namespace}/${this.o.name}`, err: (err as Error).message }, 'lease: cannot reach the API server');
        // Without a renewal we cannot know we still hold it: stop writing before someone else may start.
        this.set(false);
      }
      if (!this.stopped) this.timer = setTimeout(() => void tick(), this.retryMs);
    };
    void tick();
  }

  private set(leader: boolean): void {
    if (leader === this.leader) return;
    this.leader = leader;
    this.o.log.info({ lease: `${this.o.namespace}/${this.o.name}`, identity: this.identity }, leader ? 'lease acquired: this replica writes Retry statuses and identity Secrets' : 'lease lost: another replica writes Retry statuses and identity Secrets');
    this.o.onChange?.(leader);
    for (const l of this.listeners) l(leader);
  }

  private readonly listeners = new Set<(leader: boolean) => void>();

  /** Calls `l` whenever this replica gains or loses the lease. */
  observe(l: (leader: boolean) => void): void {
    this.listeners.add(l);
  }

  private async tryAcquireOrRenew(): Promise<void> {
    const now = new Date();
    const got = await kubeJson(this.o.kc, 'GET', `${this.path}/${this.o.name}`);
    const spec = { holderIdentity: this.identity, leaseDurationSeconds: this.leaseSeconds, renewTime: microTime(now) };
    if (got.status === 404) {
      const created = await kubeJson(this.o.kc, 'POST', this.path, {
        apiVersion: 'coordination.k8s.io/v1',
        kind: 'Lease',
        metadata: { name: this.o.name, namespace: this.o.namespace },
        spec: { ...spec, acquireTime: microTime(now), leaseTransitions: 0 },
      });
      this.set(created.status === 201);
      if (created.status !== 201 && created.status !== 409) throw new Error(`create lease: ${created.status} ${JSON.stringify(created.body).slice(0, 200)}`);
      return;
    }
    if (got.status !== 200) throw new Error(`read lease: ${got.status} ${JSON.stringify(got.body).slice(0, 200)}`);
    const lease = asMap(got.body);
    const current = asMap(lease.spec) as LeaseSpec;
    const holder = current.holderIdentity || undefined;
    const renewed = current.renewTime ? Date.parse(current.renewTime) : 0;
    const expired = now.getTime() > renewed + (current.leaseDurationSeconds ?? this.leaseSeconds) * 1000;
    if (holder !== this.identity && holder && !expired) return this.set(false);
    const takeover = holder !== this.identity;
    const updated = await kubeJson(this.o.kc, 'PUT', `${this.path}/${this.o.name}`, {
      ...lease,
      spec: {
        ...current,
        ...spec,
        ...(takeover ? { acquireTime: microTime(now), leaseTransitions: (current.leaseTransitions ?? 0) + 1 } : {}),
      },
    });
    // 409: someone else wrote it first (took it, or renewed): not ours this round.
    if (updated.status === 409) return this.set(false);
    if (updated.status !== 200) throw new Error(`update lease: ${updated.status} ${JSON.stringify(updated.body).slice(0, 200)}`);
    this.set(true);
  }

  /** Stops renewing; a holder gives the lease up so another replica takes over at once. */
  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    if (!this.leader) return;
    try {
      const got = await kubeJson(this.o.kc, 'GET', `${this.path}/${this.o.name}`);
      const lease = asMap(got.body);
      if (got.status === 200 && asMap(lease.spec).holderIdentity === this.identity) {
        await kubeJson(this.o.kc, 'PUT', `${this.path}/${this.o.name}`, { ...lease, spec: { ...asMap(lease.spec), holderIdentity: '', leaseDurationSeconds: 1 } });
      }
    } catch {
      /* the lease expires by itself */
    }
    this.leader = false;
  }
}
