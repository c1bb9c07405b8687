/**
 * The sidecars' data-plane certificates (sidecar-to-sidecar mTLS): one per identity (`ns/sa`), issued from the mesh
 * CA by this process, its key made here and held in memory only, and sent over SDS on the ADS stream whose client
 * certificate proves that identity. Renewed after two thirds of its life; all issued again from a new CA (a
 * rotation): first the new bundle goes out with the current certificates, then, `rotationDelayMs` later, the
 * certificates of the new CA, so that no sidecar meets a peer's certificate from a CA it does not trust yet.
 */
import type { Logger } from 'pino';
import { workloadIssuer, type KeyPair, type TlsBundle, type WorkloadIssueOptions } from './ca.js';
import type { IdentityCert, MeshSecrets } from '../envoy/tls.js';

export interface WorkloadCertsOptions {
  ca: KeyPair;
  trustDomain: string;
  /** Lifetime of each certificate (default 24 h); renewed after two thirds of it. */
  ttlMs?: number;
  /** After a new CA's bundle went out, how long until certificates of the new CA follow (default 15 s). */
  rotationDelayMs?: number;
  log: Logger;
  /** Certificates issued or renewed, or the bundle changed (`undefined`: every identity). */
  onChange: (identities: readonly string[] | undefined) => void;
}

interface Held {
  cert: IdentityCert;
  notAfter: number;
  timer?: NodeJS.Timeout;
}

/**
 * Certificates are made synchronously (about 0.2 ms each: a key pair and a signature) for at most this long, then
 * the event loop turns (I/O, timers) before the next slice: a renewal wave of thousands holds it a slice at a time.
 */
const SLICE_MS = 10;

export class WorkloadCerts {
  private readonly byIdentity = new Map<string, Held>();
  /** The certificates alone, as `secrets()` hands them out (kept in step with byIdentity, never copied). */
  private readonly certs = new Map<string, IdentityCert>();
  private wanted = new Set<string>();
  private pending = new Set<string>();
  private issuing?: Promise<void>;
  private sign: (o: WorkloadIssueOptions) => TlsBundle;
  private bundle: string;
  private rotation?: NodeJS.Timeout;
  private stopped = false;
  private view?: MeshSecrets;
  issued = 0;

  /** Throws, with the reason, when the CA's certificate or key is not usable. */
  constructor(private readonly o: WorkloadCertsOptions) {
    this.bundle = o.ca.cert;
    this.sign = workloadIssuer(o.ca);
  }

  get trustDomain(): string {
    return this.o.trustDomain;
  }

  private get ttlMs(): number {
    return this.o.ttlMs ?? 86_400_000;
  }

  /**
   * What the snapshot builder takes: the bundle and the current certificates. A new object when the bundle changes;
   * its map of certificates is live (copying 10,000 of them after each slice of issuing cost more than issuing).
   */
  secrets(): MeshSecrets {
    return (this.view ??= { bundle: this.bundle, certs: this.certs });
  }

  /** Identities holding a certificate. */
  get held(): number {
    return this.byIdentity.size;
  }

  has(identity: string): boolean {
    return this.byIdentity.has(identity);
  }

  /**
   * The identities that need a certificate now (the mesh's, and those of connected sidecars): missing ones are
   * issued in the background, `first` first; those no longer wanted are dropped.
   */
  want(identities: Iterable<string>, first: Iterable<string> = []): void {
    this.wanted = new Set(identities);
    for (const [id, h] of this.byIdentity) {
      if (this.wanted.has(id)) continue;
      clearTimeout(h.timer);
      this.byIdentity.delete(id);
      this.certs.delete(id);
    }
    // Those in `first` (sidecars connected and waiting for their config) before the others.
    const missing = (ids: Iterable<string>): string[] => [...ids].filter((id) => this.wanted.has(id) && !this.byIdentity.has(id));
    this.pending = new Set([...missing(first), ...this.pending, ...missing(this.wanted)]);
    this.drain();
  }

  /** A new mesh CA: its bundle first, then every certificate again from it (one that cannot sign: nothing changes). */
  setCa(ca: KeyPair): void {
    try {
      this.sign = workloadIssuer(ca);
    } catch (e) {
      this.o.log.error({ err: (e as Error).message }, 'the new mesh CA cannot issue sidecar certificates; keeping the one in use');
      return;
    }
    this.bundle = ca.cert;
    this.view = undefined;
    this.o.log.info({ identities: this.byIdentity.size, delayMs: this.o.rotationDelayMs ?? 15_000 }, 'mesh CA changed: new bundle sent to the sidecars; their certificates follow');
    this.o.onChange(undefined);
    clearTimeout(this.rotation);
    this.rotation = setTimeout(() => {
      for (const id of this.byIdentity.keys()) this.pending.add(id);
      this.drain();
    }, this.o.rotationDelayMs ?? 15_000);
    this.rotation.unref();
  }

  /** Issues an identity's certificate again now (as at two thirds of its life). */
  renew(identity: string): void {
    if (!this.byIdentity.has(identity)) return;
    this.pending.add(identity);
    this.drain();
  }

  /** Settles when nothing is waiting to be issued (tests, benchmarks). */
  async settled(): Promise<void> {
    while (this.issuing) await this.issuing;
  }

  stop(): void {
    this.stopped = true;
    clearTimeout(this.rotation);
    for (const h of this.byIdentity.values()) clearTimeout(h.timer);
  }

  private drain(): void {
    if (this.issuing || this.pending.size === 0 || this.stopped) return;
    this.issuing = this.run().finally(() => {
      this.issuing = undefined;
      this.drain();
    });
  }

  private async run(): Promise<void> {
    while (this.pending.size && !this.stopped) {
      const done: string[] = [];
      const until = performance.now() + SLICE_MS;
      for (const id of this.pending) {
        this.pending.delete(id);
        if (this.wanted.has(id) && this.issueOne(id)) done.push(id);
        if (performance.now() >= until) break;
      }
      if (done.length) {
        this.o.log.debug({ identities: done.length }, 'sidecar certificates issued');
        this.o.onChange(done);
      }
      await new Promise((resolve) => setImmediate(resolve));
    }
  }

  private issueOne(id: string): boolean {
    const [namespace, serviceAccount] = id.split('/') as [string, string];
    try {
      const b = this.sign({ trustDomain: this.o.trustDomain, namespace, serviceAccount, ttlMs: this.ttlMs });
      clearTimeout(this.byIdentity.get(id)?.timer);
      const held: Held = { cert: { cert: b.cert, key: b.key }, notAfter: Date.now() + this.ttlMs };
      // Renewed after two thirds of its life.
      held.timer = setTimeout(() => {
        this.pending.add(id);
        this.drain();
      }, (this.ttlMs * 2) / 3);
      held.timer.unref();
      this.byIdentity.set(id, held);
      this.certs.set(id, held.cert);
      this.issued++;
      return true;
    } catch (e) {
      this.o.log.error({ identity: id, err: (e as Error).message }, 'cannot issue the sidecar certificate; retrying in 5 s');
      setTimeout(() => {
        this.pending.add(id);
        this.drain();
      }, 5_000).unref();
      return false;
    }
  }
}
