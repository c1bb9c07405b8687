/**
 * The gRPC server: ADS (SotW and delta) on one port, with responses assembled from pre-encoded pieces
 * (the service definition passes Buffers through untouched).
 */
import * as grpc from '@grpc/grpc-js';
import type { Logger } from 'pino';
import type { SnapshotCache } from './cache.js';
import { DeltaStream } from './delta.js';
import { SotwStream } from './sotw.js';
import type { ProxyRegistry } from './status.js';
import { LIMITS, type Limits } from './limits.js';
import type { DuplexCall, PeerCheckFn, StreamContext } from './stream.js';
import { TlsFront, type TlsServing } from '../security/tls.js';

export type { PeerCheckFn } from './stream.js';

const identity = (b: Buffer): Buffer => b;

/**
 * grpc-js copies every response into a new buffer with its 5-byte frame header (Buffer.allocUnsafe). Below half
 * of Buffer.poolSize that is a slice of a shared slab; above, a fresh ArrayBuffer each time, which cost 40 us per
 * response in the profile of one change at 10,000 proxies (13% of its CPU). Most responses are a few kB: with a
 * 256 kB pool, those under 128 kB come from the slab. A process-wide setting, made where the hot path is.
 */
const RESPONSE_POOL_SIZE = 256 * 1024;
if (Buffer.poolSize < RESPONSE_POOL_SIZE) Buffer.poolSize = RESPONSE_POOL_SIZE;

function bidi(path: string): grpc.MethodDefinition<Buffer, Buffer> {
  return {
    path,
    requestStream: true,
    responseStream: true,
    requestSerialize: identity,
    requestDeserialize: identity,
    responseSerialize: identity,
    responseDeserialize: identity,
  };
}

export const ADS_SERVICE: grpc.ServiceDefinition = {
  StreamAggregatedResources: bidi('/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources'),
  DeltaAggregatedResources: bidi('/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources'),
};

/** Channel options chosen on purpose: see README "Transport settings". */
export const SERVER_OPTIONS: grpc.ChannelOptions = {
  // Ping idle proxies every 30 s, drop them if no answer in 10 s: a dead proxy must not hold a stream.
  'grpc.keepalive_time_ms': 30_000,
  'grpc.keepalive_timeout_ms': 10_000,
  'grpc.keepalive_permit_without_calls': 1,
  // Envoy pings every 5 min by default; accept pings as often as every 10 s without calling it abuse.
  'grpc.http2.min_ping_interval_without_data_ms': 10_000,
  // Requests are small (names, versions, nonces); a full config for a large mesh is tens of MB.
  'grpc.max_receive_message_length': 4 * 1024 * 1024,
  'grpc.max_send_message_length': 256 * 1024 * 1024,
  // An Envoy opens one ADS stream per connection, a gRPC client one per channel: 1,000 is room for tools and tests.
  'grpc.max_concurrent_streams': 1_000,
  // No channelz service is served; its per-session and per-call bookkeeping was 6% of the server's CPU while
  // 10,000 proxies connected (issue 12's profile).
  'grpc.enable_channelz': 0,
};

export interface AdsServerOptions {
  cache: SnapshotCache;
  registry: ProxyRegistry;
  log: Logger;
  /** Bounds per stream (default: LIMITS); tests lower them. */
  limits?: Partial<Limits>;
  /** Extra services on the same port (CSDS). */
  services?: { definition: grpc.ServiceDefinition; implementation: grpc.UntypedServiceImplementation }[];
  /** mTLS: the certificates to serve with and the verifier of client certificates (default: plaintext). */
  tls?: TlsServing;
}

export class AdsServer {
  readonly server = new grpc.Server(SERVER_OPTIONS);
  private readonly streams = new Set<SotwStream | DeltaStream>();
  /** Ends streams whose client stopped reading (limits.unreadSeconds), checked every few seconds. */
  private readonly readingCheck: NodeJS.Timeout;
  readonly ctx: StreamContext;
  /** mTLS: TLS is ours (TlsFront), connections are handed to gRPC, and each call's peer is checked. */
  private readonly front?: TlsFront;
  private injector?: grpc.ConnectionInjector;
  /** With mTLS: what a call's client certificate proved (for CSDS too). */
  readonly peerCheck?: PeerCheckFn;
  port = 0;

  constructor(opts: AdsServerOptions) {
    if (opts.tls) {
      const { verifier } = opts.tls;
      const front = (this.front = new TlsFront(opts.tls, opts.log));
      this.peerCheck = (call) => verifier.check(front.peer(call.getPeer()));
    }
    this.ctx = {
      cache: opts.cache,
      registry: opts.registry,
      log: opts.log,
      limits: { ...LIMITS, ...opts.limits },
      peers: this.peerCheck,
    };
    this.readingCheck = setInterval(() => {
      for (const s of this.streams) s.checkReading();
    }, Math.min(5_000, this.ctx.limits.unreadSeconds * 500)).unref();
    const track = (s: SotwStream | DeltaStream, call: DuplexCall): void => {
      this.streams.add(s);
      call.on('close', () => this.streams.delete(s));
    };
    this.server.addService(ADS_SERVICE, {
      StreamAggregatedResources: (call: DuplexCall) => track(new SotwStream(this.ctx, call), call),
      DeltaAggregatedResources: (call: DuplexCall) => track(new DeltaStream(this.ctx, call), call),
    });
    for (const s of opts.services ?? []) this.server.addService(s.definition, s.implementation);
  }

  /** Binds `host:port` (port 0 picks a free one) and starts serving. */
  async listen(address: string): Promise<number> {
    if (this.front) {
      const m = /^\[?([^\]]*)\]?:(\d+)$/.exec(address)!;
      const injector = (this.injector = this.server.createConnectionInjector(grpc.ServerCredentials.createInsecure()));
      this.port = await this.front.listen(m[1], Number(m[2]), (socket) => injector.injectConnection(socket));
      return this.port;
    }
    return new Promise((resolve, reject) => {
      this.server.bindAsync(address, grpc.ServerCredentials.createInsecure(), (err, port) => {
        if (err) return reject(err);
        this.port = port;
        resolve(port);
      });
    });
  }

  /** Stops taking streams, ends the open ones, and waits (up to `graceMs`) for them to close. */
  async close(graceMs = 5_000): Promise<void> {
    clearInterval(this.readingCheck);
    this.front?.close();
    for (const s of [...this.streams]) s.close();
    this.injector?.drain(graceMs);
    await new Promise<void>((resolve) => {
      const timer = setTimeout(() => {
        this.server.forceShutdown();
        resolve();
      }, graceMs);
      this.server.tryShutdown(() => {
        clearTimeout(timer);
        this.injector?.destroy();
        resolve();
      });
    });
  }
}
