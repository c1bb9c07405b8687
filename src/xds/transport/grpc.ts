/**
 * gRPC over node:http2 for the ADS port: the part of a gRPC server that ADS and CSDS use (streams of
 * length-prefixed messages, a status in trailers, keepalive pings, deadlines), written for the hot path.
 *
 * grpc-js served this port before. At 10,000 proxies its per-call machinery (interceptors, metadata objects,
 * a copy of every response into a framed buffer, a decoder stream per call) was a third of the server's CPU
 * during the initial sync (issue 12). Here a response is written as its 5-byte prefix and the body shared by
 * every stream sent the same bytes (no copy), and a request that arrives in one DATA frame is delivered as a
 * view of it. Requests compressed with gzip or deflate are accepted; responses are not compressed.
 *
 * What a client can make it hold is bounded (docs/xds-server.md#transport-settings): connections and streams at once, each
 * message's size, the bytes of messages not yet complete across the process (the receive budget: over it, the
 * stream holding the most is refused), how long a message may stay incomplete, inflation (off the event loop, a
 * few at a time, bounded as it runs), and nothing is read on a call the server has ended (it is reset).
 */
import { EventEmitter } from 'node:events';
import http2 from 'node:http2';
import type net from 'node:net';
import type tls from 'node:tls';
import zlib from 'node:zlib';
import { status as Code } from '@grpc/grpc-js';
import { FairShare, sourceOf } from '../../doors/shares.js';
import type { PeerTls } from '../../security/tls.js';

export { Code };

export interface GrpcStatus {
  readonly code: Code;
  readonly details: string;
}

const OK: GrpcStatus = { code: Code.OK, details: '' };

/** `grpc-message` is percent-encoded outside printable ASCII (gRPC over HTTP/2). */
function encodeDetails(s: string): string {
  if (/^[\x20-\x24\x26-\x7e]*$/.test(s)) return s;
  let out = '';
  for (const b of Buffer.from(s)) out += b >= 0x20 && b <= 0x7e && b !== 0x25 ? String.fromCharCode(b) : `%${b.toString(16).toUpperCase().padStart(2, '0')}`;
  return out;
}

/** `grpc-timeout`: an integer of up to 8 digits and a unit. */
const TIMEOUT_UNITS: Record<string, number> = { H: 3_600_000, M: 60_000, S: 1_000, m: 1, u: 1e-3, n: 1e-6 };
function timeoutMs(header: unknown): number | undefined {
  const m = typeof header === 'string' ? /^(\d{1,8})([HMSmun])$/.exec(header) : null;
  return m ? Number(m[1]) * TIMEOUT_UNITS[m[2]!]! : undefined;
}

/** `ip:port` of a connection's client (`[ip]:port` for IPv6). */
export function peerOf(socket: { remoteAddress?: string; remotePort?: number } | undefined): string {
  const ip = socket?.remoteAddress ?? 'unknown';
  return `${ip.includes(':') ? `[${ip}]` : ip}:${socket?.remotePort ?? 0}`;
}

/** The handshake's findings, read from a connection's socket (a TLS one: the TLS front handed it over). */
export function peerTls(socket: net.Socket | tls.TLSSocket | undefined): PeerTls | undefined {
  // The session's socket is a proxy of the real one: its methods are there to be read, not to be found with `in`.
  const t = socket as tls.TLSSocket | undefined;
  if (typeof t?.getPeerX509Certificate !== 'function') return undefined;
  return { cert: t.getPeerX509Certificate(), authorized: t.authorized, error: t.authorizationError ? String(t.authorizationError) : undefined };
}

export interface CallLimits {
  /** Largest request message (bytes, after decompression). */
  readonly maxReceive: number;
  /** Bytes of request messages received and not yet complete, across every call of the server. */
  readonly receiveBudget: number;
  /**
   * What the calls may hold together even of holds within one stream window (which the budget lets complete): past
   * it, the client (identity, else source address) holding the most gives up its largest call.
   */
  readonly receiveCeiling: number;
  /** How long a request message may stay incomplete once its first byte arrived. */
  readonly messageTimeoutMs: number;
  /** Compressed messages inflated at once (each off the event loop, on the thread pool). */
  readonly inflateConcurrency: number;
}

/** Why the transport refused a stream or a connection (the reason label of its counter). */
export type TransportRefusal = 'receive_budget' | 'incomplete_message' | 'message_too_large' | 'too_many_streams' | 'bad_message';

/** Bytes of one stream's request headers (HTTP/2 SETTINGS_MAX_HEADER_LIST_SIZE, advertised to every client). */
const MAX_HEADER_LIST = 16 * 1024;

/** The HTTP/2 receive window of each stream (the protocol's default, set explicitly: the receive budget relies on it). */
const STREAM_WINDOW = 65_535;

/**
 * The bytes every call holds of request messages not yet complete. Over the bound, the call holding the most is
 * refused (its bytes dropped): a well-behaved client's small request is not refused because another client holds
 * big partial ones. The bound is checked once the reads of a turn of the event loop are done, not at each piece,
 * and a call holding no more than one stream window is not refused: after a busy turn, 2,000 proxies of a
 * 1,000-service mesh each had part of a 60 kB request (the names of its 2,000 route configurations) waiting for
 * the server's window update, 117 MB together, and 772 of them were dropped.
 */
class ReceiveBudget {
  used = 0;
  /** Calls holding bytes of an incomplete message. */
  readonly holders = new Set<ServerCall>();
  /** The same bytes by client: past the ceiling, the heaviest client's largest call is refused at once. */
  private readonly ceiling: FairShare<ServerCall>;
  private checking = false;
  constructor(
    readonly limit: number,
    ceiling: number,
  ) {
    this.ceiling = new FairShare({ total: ceiling }, (call) => call.overBudget(this.used, ceiling, `its client (${call.client}) held the most`));
  }

  change(call: ServerCall, delta: number, holds: boolean): void {
    this.used += delta;
    if (holds) this.holders.add(call);
    else this.holders.delete(call);
    if (!holds) this.ceiling.release(call);
    else {
      const member = this.ceiling.has(call);
      // Past the ceiling, the call is refused (its bytes dropped) if its client holds the most: a member was
      // evicted by the share itself (refused already); a call the share would not take is refused here.
      if (!this.ceiling.admit(call, call.client, call.held)) {
        if (!member) call.overBudget(this.used, this.ceiling.bounds.total, `its client (${call.client}) held the most`);
        return;
      }
    }
    if (this.used <= this.limit || this.checking) return;
    this.checking = true;
    setImmediate(() => {
      this.checking = false;
      this.enforce();
    });
  }

  private enforce(): void {
    while (this.used > this.limit && this.holders.size) {
      let worst: ServerCall | undefined;
      for (const c of this.holders) if (!worst || c.held > worst.held) worst = c;
      // No more than one stream window: what HTTP/2 flow control lets any client have in flight, which completes as
      // the server reads (a busy server's WINDOW_UPDATEs go out late). Beyond it a client kept sending into a
      // message the server was holding: that is what the budget refuses. (Window-sized holds are bounded in all
      // by the ceiling.)
      if (worst!.held <= STREAM_WINDOW) return;
      worst!.overBudget(this.used, this.limit, 'this stream held the most');
    }
  }
}

/** At most `max` inflations at once; the others wait their turn in order. */
class Turns {
  private active = 0;
  private readonly waiting: (() => void)[] = [];
  constructor(private readonly max: number) {}
  take(run: () => void): void {
    if (this.active < this.max) {
      this.active++;
      run();
    } else this.waiting.push(run);
  }
  done(): void {
    const next = this.waiting.shift();
    if (next) next();
    else this.active--;
  }
}

/** What the calls of one server share. */
interface CallShared {
  readonly limits: CallLimits;
  readonly budget: ReceiveBudget;
  readonly inflations: Turns;
  readonly refused: (reason: TransportRefusal) => void;
}

/**
 * One call. Events: 'data' (a request message), 'end' (the client sent its last message), 'cancelled' (the call
 * ended without the handler ending it: the client reset it, the connection went, the deadline passed, or its
 * input was refused, which the status sent says), 'close' (the HTTP/2 stream is gone; always last).
 */
export class ServerCall extends EventEmitter {
  /** A status was sent (or can no longer be): nothing more is written or delivered. */
  private ended = false;
  private trailers?: http2.OutgoingHttpHeaders;
  private readonly chunks: Buffer[] = [];
  private queued = 0;
  /** The length of the message being received, once its prefix is in (-1: waiting for a prefix). */
  private need = -1;
  private compressed = false;
  /** A compressed message is being inflated: what arrives meanwhile waits behind it. */
  private inflating = false;
  /** Its compressed bytes (counted as held until it is delivered). */
  private inflatingBytes = 0;
  /** The client sent its last message (END_STREAM). */
  private clientEnded = false;
  private deadline?: NodeJS.Timeout;
  private readonly peer: string;
  private readonly limits: CallLimits;
  /** Bytes this call holds of incomplete messages (counted in the receive budget), and since when. */
  held = 0;
  partialSince?: number;

  constructor(
    private readonly stream: http2.ServerHttp2Stream,
    private readonly headers: http2.IncomingHttpHeaders,
    private readonly shared: CallShared,
    /** Whose share the call counts in: its certificate's identity, else its connection's source address. */
    readonly client: string,
  ) {
    super();
    this.limits = shared.limits;
    this.peer = peerOf(stream.session?.socket);
    this.tls = peerTls(stream.session?.socket);
    stream.on('data', (chunk: Buffer) => this.receive(chunk));
    stream.on('end', () => {
      this.clientEnded = true;
      this.finishInput();
    });
    stream.on('wantTrailers', () => {
      stream.sendTrailers(this.trailers ?? { 'grpc-status': '0' });
      // A client still sending is told to stop: RST_STREAM(NO_ERROR) after the status (gRPC over HTTP/2). The
      // trailers are written on a later turn (nghttp2 sends what was submitted in a scheduled write): reset after.
      if (!this.clientEnded) setImmediate(() => stream.destroyed || stream.close(http2.constants.NGHTTP2_NO_ERROR));
    });
    stream.on('close', () => {
      clearTimeout(this.deadline);
      this.drop();
      if (!this.ended) this.cancel();
      this.emit('close');
    });
    const ms = timeoutMs(headers['grpc-timeout']);
    // Beyond what a timer holds (24.8 days) there is no deadline to keep.
    if (ms !== undefined && ms < 2 ** 31) {
      this.deadline = setTimeout(() => this.refuse(Code.DEADLINE_EXCEEDED, 'Deadline exceeded'), ms);
    }
  }

  getPeer(): string {
    return this.peer;
  }

  /** What the TLS handshake of the call's connection established about its client (none: plaintext). */
  readonly tls?: PeerTls;

  private cancel(): void {
    this.ended = true;
    this.emit('cancelled');
  }

  private sendHeaders(): void {
    if (!this.stream.headersSent) {
      this.stream.respond({ ':status': 200, 'content-type': 'application/grpc+proto', 'grpc-accept-encoding': 'identity,deflate,gzip' }, { waitForTrailers: true });
    }
  }

  /**
   * Writes one response message, whole or in pieces; `written` is called once HTTP/2 flow control let it out (the
   * client is reading). Returns false if the call has ended.
   */
  write(body: Uint8Array | readonly Uint8Array[], written?: () => void): boolean {
    // A stream the client's connection took down is closed a moment before it is destroyed: writing then throws
    // (ERR_HTTP2_INVALID_STREAM) out of the handler's turn, so both mean the call has ended.
    if (this.ended || this.stream.destroyed || this.stream.closed) return false;
    this.sendHeaders();
    const pieces = body instanceof Uint8Array ? [body] : body;
    let length = 0;
    for (const p of pieces) length += p.length;
    const prefix = Buffer.allocUnsafe(5);
    prefix[0] = 0;
    prefix.writeUInt32BE(length, 1);
    // Corked: all go out in one write, and the pieces (shared by every stream sent the same bytes) are not copied.
    this.stream.cork();
    this.stream.write(prefix, pieces.length ? undefined : written);
    for (let i = 0; i < pieces.length; i++) this.stream.write(pieces[i], i === pieces.length - 1 ? written : undefined);
    this.stream.uncork();
    return true;
  }

  /** Ends the call with a status (OK by default); later calls do nothing. */
  end(status: GrpcStatus = OK): void {
    if (this.ended) return;
    this.ended = true;
    clearTimeout(this.deadline);
    // Nothing more is read: what is held is dropped, and what arrives later is not kept.
    this.drop();
    const s = this.stream;
    if (s.destroyed || s.closed) return;
    const trailers = { 'grpc-status': String(status.code), ...(status.details ? { 'grpc-message': encodeDetails(status.details) } : {}) };
    if (!s.headersSent) {
      // Trailers-only: nothing was sent, the status is the whole response; a client still sending is reset.
      s.respond({ ':status': 200, 'content-type': 'application/grpc+proto', ...trailers }, { endStream: true });
      if (!this.clientEnded) s.close(http2.constants.NGHTTP2_NO_ERROR);
      return;
    }
    this.trailers = trailers;
    s.end();
  }

  /** Drops what is held of incomplete messages and leaves the receive budget. */
  private drop(): void {
    this.chunks.length = 0;
    this.queued = 0;
    this.need = -1;
    this.account();
  }

  /** Refused by the receive budget (it holds the most while the server holds too much). */
  overBudget(used: number, limit: number, why: string): void {
    const held = this.held;
    this.shared.refused('receive_budget');
    this.refuse(
      Code.RESOURCE_EXHAUSTED,
      `the server holds ${used} bytes of request messages not yet complete, over its bound of ${limit} bytes; ${why} (this stream ${held} bytes), now dropped`,
    );
  }

  /** Refused by the message deadline: a message that stayed incomplete too long. */
  incomplete(): void {
    this.shared.refused('incomplete_message');
    this.refuse(
      Code.DEADLINE_EXCEEDED,
      `a request message stayed incomplete for ${this.limits.messageTimeoutMs / 1000} s (${this.need >= 0 ? `${this.queued} of ${this.need} bytes` : `${this.queued} bytes of its 5-byte prefix`} received)`,
    );
  }

  /** Counts what this call holds in the receive budget (and since when it holds an incomplete message). */
  private account(): void {
    const now = this.queued;
    if (now === 0) this.partialSince = undefined;
    else this.partialSince ??= performance.now();
    const delta = now - this.held;
    this.held = now;
    if (delta !== 0 || (now === 0) === this.shared.budget.holders.has(this)) this.shared.budget.change(this, delta, now > 0);
  }

  /** Ends the call for what the transport refuses (bad input, a deadline passed, its connection's age), telling the handler ('cancelled'). */
  refuse(code: Code, details: string): void {
    this.end({ code, details });
    this.emit('cancelled');
  }

  private receive(chunk: Buffer): void {
    // After the status, nothing is kept (the stream is being reset).
    if (this.ended) return;
    this.chunks.push(chunk);
    this.queued += chunk.length;
    this.pump();
    if (!this.ended) this.account();
  }

  /** Delivers every complete message held, in order; a compressed one is inflated first, off the event loop. */
  private pump(): void {
    while (!this.ended && !this.inflating) {
      if (this.need < 0) {
        if (this.queued < 5) return;
        const prefix = this.take(5);
        this.compressed = prefix[0] !== 0;
        this.need = prefix.readUInt32BE(1);
        if (this.need > this.limits.maxReceive) {
          this.shared.refused('message_too_large');
          return this.refuse(Code.RESOURCE_EXHAUSTED, `request message of ${this.need} bytes; at most ${this.limits.maxReceive}`);
        }
      }
      if (this.queued < this.need) return;
      const message = this.take(this.need);
      this.need = -1;
      // A message completed: the next one's deadline starts with its own first byte.
      this.partialSince = undefined;
      if (this.compressed) this.inflate(message);
      else this.deliver(message);
    }
  }

  /** The client ended its side: the call ends for the handler once every message is delivered. */
  private finishInput(): void {
    if (this.ended || this.inflating) return;
    if (this.queued > 0 || this.need >= 0) {
      const got = this.need >= 0 ? `${this.queued} of the ${this.need} bytes its prefix announced` : `${this.queued} bytes of a 5-byte prefix`;
      this.shared.refused('bad_message');
      return this.refuse(Code.INVALID_ARGUMENT, `the request ended inside a message: ${got}`);
    }
    // A handler that throws on the end of input ends its own call, never the process (as deliver).
    try {
      this.emit('end');
    } catch (e) {
      this.refuse(Code.INTERNAL, `the server failed to handle the end of the request: ${(e as Error)?.message ?? e}`);
    }
  }

  /** Hands a message to the handler; a handler that throws ends its own call, never the process. */
  private deliver(message: Buffer): void {
    try {
      this.emit('data', message);
    } catch (e) {
      this.refuse(Code.INTERNAL, `the server failed to handle the request: ${(e as Error)?.message ?? e}`);
    }
  }

  /** The next n bytes received: a view of one chunk when they are in one (the usual case), else a copy. */
  private take(n: number): Buffer {
    this.queued -= n;
    const first = this.chunks[0];
    if (first && first.length >= n) {
      if (first.length === n) this.chunks.shift();
      else this.chunks[0] = first.subarray(n);
      return first.subarray(0, n);
    }
    const out = Buffer.allocUnsafe(n);
    for (let at = 0; at < n; ) {
      const c = this.chunks[0]!;
      const k = Math.min(c.length, n - at);
      c.copy(out, at, 0, k);
      at += k;
      if (k === c.length) this.chunks.shift();
      else this.chunks[0] = c.subarray(k);
    }
    return out;
  }

  /**
   * Inflates a compressed message on the thread pool (a few at a time across the server), bounded as it runs:
   * past the size bound it stops and the call is refused. Messages after it wait, in order.
   */
  private inflate(message: Buffer): void {
    const encoding = this.headers['grpc-encoding'] ?? 'identity';
    const inflate = encoding === 'gzip' ? zlib.gunzip : encoding === 'deflate' ? zlib.inflate : undefined;
    if (!inflate) {
      const why = encoding === 'identity' ? 'a compressed message with grpc-encoding identity' : `grpc-encoding ${String(encoding).slice(0, 64)} is not supported (identity, deflate, gzip)`;
      this.refuse(encoding === 'identity' ? Code.INTERNAL : Code.UNIMPLEMENTED, why);
      return;
    }
    this.inflating = true;
    this.inflatingBytes = message.length;
    this.queued += message.length;
    this.shared.inflations.take(() => {
      if (this.ended) return this.inflated();
      inflate(message, { maxOutputLength: this.limits.maxReceive, chunkSize: INFLATE_CHUNK }, (err, plain) => {
        this.inflated();
        if (this.ended) return;
        if (err) {
          const tooBig = (err as NodeJS.ErrnoException).code === 'ERR_BUFFER_TOO_LARGE';
          if (tooBig) this.shared.refused('message_too_large');
          this.refuse(tooBig ? Code.RESOURCE_EXHAUSTED : Code.INTERNAL, tooBig ? `request message of more than ${this.limits.maxReceive} bytes decompressed` : `cannot decompress the request: ${err.message}`);
          return;
        }
        this.deliver(plain);
        this.pump();
        if (this.ended) return;
        this.account();
        if (this.clientEnded) this.finishInput();
      });
    });
  }

  private inflated(): void {
    this.shared.inflations.done();
    if (!this.ended) this.queued -= this.inflatingBytes;
    this.inflating = false;
    this.inflatingBytes = 0;
  }
}

/** Output of one inflation step on the thread pool: each step's hand-over to the event loop stays short. */
const INFLATE_CHUNK = 256 * 1024;

export type Handler = (call: ServerCall) => void;

/**
 * A unary method: one request in, one response (or a status) out. `answer` returns the response's bytes or a
 * status to end with.
 */
export function unary(answer: (request: Buffer, call: ServerCall) => Buffer | GrpcStatus): Handler {
  return (call) => {
    let request: Buffer | undefined;
    let count = 0;
    call.on('data', (b: Buffer) => {
      request = b;
      if (++count === 2) call.end({ code: Code.INVALID_ARGUMENT, details: 'more than one request message for a unary method' });
    });
    call.on('end', () => {
      if (!request) return call.end({ code: Code.INVALID_ARGUMENT, details: 'no request message for a unary method' });
      const r = answer(request, call);
      if (Buffer.isBuffer(r)) {
        call.write(r);
        call.end();
      } else call.end(r);
    });
  };
}

export interface GrpcServerOptions extends CallLimits {
  /** Streams a connection may have open at once (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS). */
  readonly maxConcurrentStreams: number;
  /** Streams open at once across every connection; more are refused with RESOURCE_EXHAUSTED. */
  readonly maxStreams: number;
  /** Connections open at once; more are closed as they arrive (counted). */
  readonly maxConnections: number;
  /** Ping each connection this often, and drop it if no answer comes within the timeout. */
  readonly keepaliveMs: number;
  readonly keepaliveTimeoutMs: number;
  /**
   * A connection older than this (give or take 10%, so that connections made together do not all go at once) is sent
   * GOAWAY: no new streams on it; after `maxConnectionAgeGraceMs` the calls still open end with UNAVAILABLE and
   * the client reconnects, to whichever replica its Service picks now. 0: connections live as long as they answer.
   */
  readonly maxConnectionAgeMs?: number;
  readonly maxConnectionAgeGraceMs?: number;
  /**
   * The identity a connection's client proved (its certificate's), whose share its streams count in; none: its
   * source address's.
   */
  readonly identify?: (tls: PeerTls) => string | undefined;
}

/** What the transport tells its owner (metrics). */
export interface TransportEvents {
  /** A stream refused for what its client sent or held. */
  refused?(reason: TransportRefusal): void;
  /** A connection closed as it arrived: too many open. */
  dropped?(): void;
  /** An error of a connection or of a stream (its code: ECONNRESET, ERR_HTTP2_STREAM_ERROR...): each ends only its own. */
  error?(where: 'session' | 'stream', code: string): void;
  /** A connection reached its maximum age and was sent GOAWAY. */
  aged?(): void;
}

/** The code of a transport error, for a label: Node's own codes only (an unknown one is `other`). */
const errorCode = (e: unknown): string => {
  const code = (e as NodeJS.ErrnoException)?.code;
  return typeof code === 'string' && /^[A-Z0-9_]{1,64}$/.test(code) ? code : 'other';
};

/** An HTTP/2 server whose streams are gRPC calls, routed by path to their handler. */
export class GrpcServer {
  private readonly h2: http2.Http2Server;
  private readonly handlers = new Map<string, Handler>();
  private readonly sessions = new Set<http2.ServerHttp2Session>();
  /** The calls of each connection (what its maximum age ends). */
  private readonly calls = new WeakMap<http2.Http2Session, Set<ServerCall>>();
  private readonly shared: CallShared;
  private readonly sweep: NodeJS.Timeout;
  /** Streams, and the connections this server accepts itself (plaintext), shared fairly by client. */
  private readonly streams: FairShare<ServerCall>;
  private readonly connections: FairShare<net.Socket>;
  /** Connections handed over by the TLS front (which bounds them itself), and each connection's client. */
  private readonly fronted = new WeakSet<net.Socket>();
  private readonly clientOf = new WeakMap<http2.Http2Session, string>();

  constructor(
    private readonly opts: GrpcServerOptions,
    private readonly events: TransportEvents = {},
  ) {
    this.shared = {
      limits: opts,
      budget: new ReceiveBudget(opts.receiveBudget, opts.receiveCeiling),
      inflations: new Turns(opts.inflateConcurrency),
      refused: (reason) => events.refused?.(reason),
    };
    this.h2 = http2.createServer({
      // Request headers: 16 KiB a stream (an Envoy's are a few hundred bytes; grpc-js allows 8 KiB of metadata); the
      // default, 64 KiB, let 30,000 idle streams hold 1.2 GB of headers outside the receive budget.
      settings: { maxConcurrentStreams: opts.maxConcurrentStreams, initialWindowSize: STREAM_WINDOW, maxHeaderListSize: MAX_HEADER_LIST },
      // A push of a large mesh is tens of MB per stream: Node's default of 10 MB per session would reset it.
      // What a client makes the server hold is bounded by the calls (the receive budget), not here.
      maxSessionMemory: Number.MAX_SAFE_INTEGER,
      maxSendHeaderBlockLength: Number.MAX_SAFE_INTEGER,
    });
    this.h2.setTimeout(0);
    // When the server is full, the client holding the most streams gives one up (RESOURCE_EXHAUSTED: it reconnects).
    this.streams = new FairShare({ total: opts.maxStreams }, (call, client) => {
      this.shared.refused('too_many_streams');
      call.end({ code: Code.RESOURCE_EXHAUSTED, details: `the server has ${opts.maxStreams} streams open, its bound, and this stream's client (${client}) the most; try again later` });
    });
    // Connections by source address (no identity yet); when full, the source holding the most loses one.
    this.connections = new FairShare({ total: opts.maxConnections }, (socket) => {
      events.dropped?.();
      socket.destroy();
    });
    this.h2.on('connection', (socket: net.Socket) => {
      if (this.fronted.has(socket)) return;
      if (!this.connections.admit(socket, sourceOf(socket))) {
        events.dropped?.();
        return socket.destroy();
      }
      socket.once('close', () => this.connections.release(socket));
    });
    this.h2.on('session', (session) => this.track(session));
    this.h2.on('stream', (stream, headers) => this.route(stream, headers));
    // Incomplete messages past their deadline, checked a few times a second.
    const every = Math.max(50, Math.min(1_000, opts.messageTimeoutMs / 4));
    this.sweep = setInterval(() => {
      const before = performance.now() - opts.messageTimeoutMs;
      for (const call of [...this.shared.budget.holders]) if (call.partialSince !== undefined && call.partialSince < before) call.incomplete();
    }, every).unref();
  }

  /** Bytes of incomplete request messages the server holds now (the receive budget in use). */
  get receiving(): number {
    return this.shared.budget.used;
  }

  /** Streams open now. */
  get open(): number {
    return this.streams.used;
  }

  /** Serves `path` (`/package.Service/Method`) with `handler`. */
  handle(path: string, handler: Handler): void {
    this.handlers.set(path, handler);
  }

  private route(stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders): void {
    // Errors come with a 'close' that the call handles; they are counted, never thrown.
    stream.on('error', (e) => this.events.error?.('stream', errorCode(e)));
    const type = headers['content-type'];
    if (typeof type !== 'string' || !type.startsWith('application/grpc')) {
      stream.respond({ ':status': 415 }, { endStream: true });
      stream.close(http2.constants.NGHTTP2_NO_ERROR);
      return;
    }
    const call = new ServerCall(stream, headers, this.shared, this.client(stream.session));
    const mine = stream.session && this.calls.get(stream.session);
    mine?.add(call);
    stream.once('close', () => {
      this.streams.release(call);
      mine?.delete(call);
    });
    if (!this.streams.admit(call, call.client)) {
      this.shared.refused('too_many_streams');
      return call.end({ code: Code.RESOURCE_EXHAUSTED, details: `the server has ${this.opts.maxStreams} streams open, its bound, and this client (${call.client}) holds no fewer than any other; try again later` });
    }
    const path = String(headers[':path']);
    const handler = headers[':method'] === 'POST' ? this.handlers.get(path) : undefined;
    if (!handler) return call.end({ code: Code.UNIMPLEMENTED, details: `the server does not implement ${headers[':method']} ${path.slice(0, 256)}` });
    try {
      handler(call);
    } catch (e) {
      call.end({ code: Code.INTERNAL, details: `the server failed to start the call: ${(e as Error)?.message ?? e}` });
    }
  }

  /** Whose share a connection's calls count in: the identity its certificate proved at its address, else its address. */
  private client(session: http2.Http2Session | undefined): string {
    if (!session) return 'unknown';
    let c = this.clientOf.get(session);
    if (c === undefined) {
      // An identity is shared by every replica of a Deployment: each replica (identity at its address) is a client of
      // its own, so a tenant's many identities cannot make a big Deployment the heaviest client and cut its streams.
      const tls = peerTls(session.socket);
      const id = tls && this.opts.identify?.(tls);
      c = id ? `${id} at ${sourceOf(session.socket)}` : sourceOf(session.socket);
      this.clientOf.set(session, c);
    }
    return c;
  }

  /** Keepalive: a ping after each quiet interval; a connection that does not answer in time is dropped. */
  private track(session: http2.ServerHttp2Session): void {
    this.sessions.add(session);
    session.on('error', (e) => this.events.error?.('session', errorCode(e)));
    let timer: NodeJS.Timeout | undefined;
    const schedule = (): void => {
      timer = setTimeout(() => {
        // A connection closing (GOAWAY sent: its maximum age, or shutdown) is no longer pinged: its grace ends it.
        if (session.destroyed || session.closed) return;
        let answered = false;
        const wait = (): void => {
          const armed = performance.now();
          timer = setTimeout(() => {
            // Late by half the timeout or more, the server itself was busy (a push to thousands of proxies holds the
            // event loop): the answer may be waiting to be read. The client gets another timeout of our attention.
            if (performance.now() - armed >= this.opts.keepaliveTimeoutMs * 1.5) return wait();
            // Judged after this turn's reads (timers run before them): an answer already on the socket counts.
            setImmediate(() => answered || session.destroyed || session.destroy());
          }, this.opts.keepaliveTimeoutMs).unref();
        };
        wait();
        try {
          session.ping((err) => {
            answered = true;
            clearTimeout(timer);
            if (err) session.destroy();
            else schedule();
          });
        } catch {
          session.destroy();
        }
      }, this.opts.keepaliveMs).unref();
    };
    schedule();
    this.calls.set(session, new Set());
    const age = this.opts.maxConnectionAgeMs ?? 0;
    let aged: NodeJS.Timeout | undefined;
    if (age > 0) aged = setTimeout(() => this.retire(session), age * (0.9 + Math.random() * 0.2)).unref();
    session.on('close', () => {
      clearTimeout(timer);
      clearTimeout(aged);
      this.sessions.delete(session);
    });
  }

  /** A connection at its maximum age: GOAWAY now, its calls ended with UNAVAILABLE after the grace period. */
  private retire(session: http2.ServerHttp2Session): void {
    if (session.closed || session.destroyed) return;
    this.events.aged?.();
    session.close();
    setTimeout(() => {
      for (const call of this.calls.get(session) ?? []) call.refuse(Code.UNAVAILABLE, 'the connection reached its maximum age (--max-connection-age): reconnect');
      // The statuses are written on a later turn; then nothing is left to wait for.
      setTimeout(() => session.destroyed || session.destroy(), 1_000).unref();
    }, this.opts.maxConnectionAgeGraceMs ?? 10_000).unref();
  }

  /** Serves a connection accepted elsewhere (the TLS front, which bounds its own connections). */
  accept(socket: net.Socket): void {
    this.fronted.add(socket);
    this.h2.emit('connection', socket);
  }

  listen(host: string, port: number): Promise<number> {
    return new Promise((resolve, reject) => {
      this.h2.once('error', reject);
      this.h2.listen(port, host, () => {
        this.h2.off('error', reject);
        resolve((this.h2.address() as net.AddressInfo).port);
      });
    });
  }

  /** Stops accepting, sends GOAWAY on every connection, and destroys those still open after `graceMs`. */
  async close(graceMs: number): Promise<void> {
    clearInterval(this.sweep);
    this.h2.close();
    const open = [...this.sessions];
    for (const s of open) s.close();
    const closed = Promise.all(open.map((s) => (s.closed ? undefined : new Promise((r) => s.once('close', r)))));
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([closed, new Promise<void>((r) => (timer = setTimeout(r, graceMs)))]);
    clearTimeout(timer);
    for (const s of this.sessions) s.destroy();
  }
}
