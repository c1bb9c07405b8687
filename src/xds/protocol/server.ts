/**
 * The ADS port: SotW and delta ADS (and CSDS) on one gRPC server (grpc.ts), with responses assembled from
 * pre-encoded pieces and written without a copy.
 */
import type * as grpc from '@grpc/grpc-js';
import type { Logger } from 'pino';
import type { SnapshotCache } from '../resources/cache.js';
import { DeltaStream } from './delta.js';
import { GrpcServer, peerTls, type GrpcServerOptions, type Handler } from '../transport/grpc.js';
import { SotwStream } from './sotw.js';
import type { ProxyRegistry } from './status.js';
import { LIMITS, type Limits } from './limits.js';
import type { PeerCheckFn, StreamContext } from './stream.js';
import type { PeerTls, TlsServing } from '../../security/tls.js';
import { TlsFront } from '../transport/tls-front.js';

export type { PeerCheckFn } from './stream.js';

const ADS = '/envoy.service.discovery.v3.AggregatedDiscoveryService';
export const ADS_PATHS = { sotw: `${ADS}/StreamAggregatedResources`, delta: `${ADS}/DeltaAggregatedResources` } as const;

const bytes = (b: Buffer): Buffer => b;
const bidi = (path: string): grpc.MethodDefinition<Buffer, Buffer> => ({ path, requestStream: true, responseStream: true, requestSerialize: bytes, requestDeserialize: bytes, responseSerialize: bytes, responseDeserialize: bytes });
/** ADS for gRPC clients (tests, benchmarks, tools), in raw bytes. */
export const ADS_SERVICE: grpc.ServiceDefinition = { StreamAggregatedResources: bidi(ADS_PATHS.sotw), DeltaAggregatedResources: bidi(ADS_PATHS.delta) };

/** Transport settings chosen on purpose: see docs/xds-server.md#transport-settings. */
export const TRANSPORT: GrpcServerOptions = {
  // Ping idle proxies every 30 s, drop them if no answer in 10 s: a dead proxy must not hold a stream.
  keepaliveMs: 30_000,
  keepaliveTimeoutMs: 10_000,
  // Requests are small (names, versions, nonces); responses are not bounded (a large mesh's config is tens of MB).
  maxReceive: 4 * 1024 * 1024,
  // What every stream together may hold of requests not yet complete. A real proxy's request is whole within
  // milliseconds (Envoy's first, with its node, is tens of kB): 64 MiB is thousands of them arriving at once.
  receiveBudget: 64 * 1024 * 1024,
  // Holds within one stream window are let complete (a busy server's window updates go out late: 2,000 proxies of the
  // big mesh held 117 MB for an instant), up to this in all; past it the heaviest client loses its largest stream
  // (30 connections x 1,000 streams x 65,000 B held 1.1-1.85 GB without it).
  receiveCeiling: 256 * 1024 * 1024,
  // A request message started must be complete within 10 s.
  messageTimeoutMs: 10_000,
  // Compressed requests (no Envoy sends them) inflate two at a time, on the thread pool.
  inflateConcurrency: 2,
  // An Envoy opens one ADS stream per connection, a gRPC client one per channel: 1,000 is room for tools and tests.
  maxConcurrentStreams: 1_000,
  // 10,000 proxies (one connection and one stream each, as Envoy) with room to reconnect and for tools. Both are
  // shared fairly by client (an mTLS stream's certificate identity, else the source address): when full, the client
  // holding the most gives one up, so one client can fill the port only while nobody else needs it.
  maxConnections: 25_000,
  maxStreams: 30_000,
};

export interface AdsServerOptions {
  cache: SnapshotCache;
  registry: ProxyRegistry;
  log: Logger;
  /** Bounds per stream (default: LIMITS); tests lower them. */
  limits?: Partial<Limits>;
  /** Other methods on the same port (CSDS), by path. */
  handlers?: Record<string, Handler>;
  /** mTLS: the certificates to serve with and the verifier of client certificates (default: plaintext). */
  tls?: TlsServing;
  /** Transport bounds (default: TRANSPORT); tests and benchmarks change them. */
  transport?: Partial<GrpcServerOptions>;
}

export class AdsServer {
  readonly grpc: GrpcServer;
  private readonly streams = new Set<SotwStream | DeltaStream>();
  /** Ends streams whose client stopped reading (limits.unreadSeconds), checked every few seconds. */
  private readonly readingCheck: NodeJS.Timeout;
  readonly ctx: StreamContext;
  /** mTLS: TLS is ours (TlsFront), connections are handed to gRPC, and each call's peer is checked. */
  private readonly front?: TlsFront;
  /** With mTLS: what a call's client certificate proved (for CSDS too). */
  readonly peerCheck?: PeerCheckFn;
  port = 0;

  constructor(opts: AdsServerOptions) {
    // With mTLS, a stream counts in the share of the identity its certificate proves (else its source address's).
    const identify = opts.tls && ((t: PeerTls): string | undefined => {
      const c = opts.tls!.verifier.check(t);
      return c.ok ? c.spiffe : undefined;
    });
    const transport = { ...TRANSPORT, ...(identify ? { identify } : {}), ...opts.transport };
    this.grpc = new GrpcServer(transport, {
      refused: (reason) => opts.registry.emit('refused', reason),
      dropped: () => opts.registry.emit('connectionRefused', 'too_many_connections'),
      error: (where, code) => opts.registry.emit('transportError', where, code),
      aged: () => opts.registry.emit('connectionAged'),
    });
    if (opts.tls) {
      const { verifier } = opts.tls;
      this.front = new TlsFront(opts.tls, opts.log, {
        maxConnections: transport.maxConnections,
        identify: (socket) => identify!(peerTls(socket)!),
        refused: (reason) => opts.registry.emit('connectionRefused', reason),
      });
      this.peerCheck = (call) => verifier.check(call.tls);
    }
    this.ctx = {
      cache: opts.cache,
      events: opts.registry,
      log: opts.log,
      limits: { ...LIMITS, ...opts.limits },
      peers: this.peerCheck,
    };
    this.readingCheck = setInterval(() => {
      for (const s of this.streams) s.checkReading();
    }, Math.min(5_000, this.ctx.limits.unreadSeconds * 500)).unref();
    const serve = (Stream: typeof SotwStream | typeof DeltaStream): Handler => (call) => {
      const s = new Stream(this.ctx, call);
      this.streams.add(s);
      call.on('close', () => this.streams.delete(s));
    };
    this.grpc.handle(ADS_PATHS.sotw, serve(SotwStream));
    this.grpc.handle(ADS_PATHS.delta, serve(DeltaStream));
    for (const [path, handler] of Object.entries(opts.handlers ?? {})) this.grpc.handle(path, handler);
  }

  /** Binds `host:port` (port 0 picks a free one) and starts serving. */
  async listen(address: string): Promise<number> {
    const m = /^\[?([^\]]*)\]?:(\d+)$/.exec(address);
    if (!m) throw new Error(`not a host:port address: ${address}`);
    const [host, port] = [m[1]!, Number(m[2])];
    this.port = this.front ? await this.front.listen(host, port, (socket) => this.grpc.accept(socket)) : await this.grpc.listen(host, port);
    return this.port;
  }

  /** Stops taking streams, ends the open ones, and waits (up to `graceMs`) for their connections to close. */
  async close(graceMs = 5_000): Promise<void> {
    clearInterval(this.readingCheck);
    this.front?.close();
    for (const s of [...this.streams]) s.close();
    await this.grpc.close(graceMs);
  }
}
