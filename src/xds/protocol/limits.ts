/**
 * Bounds on what one client can make the server hold or do. Crossing one ends that stream with a status that
 * names the bound (the proxy reconnects and resyncs as usual) and is counted in /metrics
 * (`mesh_xds_streams_refused_total{reason}`). Sized well above what a real proxy does: an Envoy subscribes to
 * one EDS name per cluster, and a 10,000-service mesh with 2 ports each is 20,000 names.
 */
export const LIMITS = {
  /** Seconds a stream may stay open before its first request (Envoy sends it at once). */
  firstRequestSeconds: 10,
  /** Characters of `node.id`. */
  nodeIdLength: 1024,
  /** Characters of one resource name in a request. */
  nameLength: 1024,
  /** Resource names one stream may hold across its types (subscribed, known, or reported absent). */
  namesPerStream: 100_000,
  /** Total characters of those names. */
  nameBytesPerStream: 8 * 1024 * 1024,
  /** Requests a stream may send at once, and per second after that (a token bucket). */
  requestBurst: 1_000,
  requestsPerSecond: 200,
  /** Response bytes written to a stream and not yet taken by the client. */
  queuedBytesPerStream: 64 * 1024 * 1024,
  /** Seconds a written response may wait for the client to read it. */
  unreadSeconds: 60,
  /** Characters of a client-supplied string in a log line or status (node ids, error details). */
  logField: 256,
  /** Characters of a NACK's error detail that are kept (debug endpoint, CSDS). */
  nackDetail: 4096,
} as const;

export type Limits = { readonly [K in keyof typeof LIMITS]: number };

/** A client-supplied string cut for logs and statuses (`LIMITS.logField` characters unless told). */
export { clip } from '../../model/plain.js';

/** A token bucket: `take()` is false once the client sends faster than the bucket refills. */
export class RateLimit {
  private tokens: number;
  private last = performance.now();
  constructor(
    private readonly burst: number,
    private readonly perSecond: number,
  ) {
    this.tokens = burst;
  }

  /** Takes `n` tokens (default one), or none and false when fewer are left. */
  take(n = 1): boolean {
    const now = performance.now();
    this.tokens = Math.min(this.burst, this.tokens + ((now - this.last) / 1000) * this.perSecond);
    this.last = now;
    if (this.tokens < n) return false;
    this.tokens -= n;
    return true;
  }
}
