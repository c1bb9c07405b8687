/**
 * What SotW and delta ADS streams share: reading the node, finding the proxy's snapshot, waiting until one
 * exists, writing responses in ADS order, recording ACKs and NACKs, and tearing down.
 */
import type protobuf from 'protobufjs';
import type { Logger } from 'pino';
import type { SnapshotCache } from '../resources/cache.js';
import { Code, type ServerCall } from '../transport/grpc.js';
import { RateLimit, clip, type Limits } from './limits.js';
import type { PeerCheck, PeerRefusal } from '../../security/tls.js';
import { IdentityError, IdentityMismatch, identityFromNode, proxyKey, type CertifiedIdentity, type ProxyIdentity, type XdsNode } from './node.js';
import { lookupType } from '../resources/protos.js';
import { withoutField } from '../resources/wire.js';
import type { Resource, Snapshot } from '../resources/snapshot.js';
import type { HeldNames, StreamCallbacks, StreamRef } from './status.js';
import { RESOURCE_TYPES, resourceType, type ResourceType } from '../resources/types.js';

const MAX_TIMER_MS = 2 ** 31 - 1;

let nextStreamId = 1;

/** A decoded DiscoveryRequest or DeltaDiscoveryRequest: the fields the protocol reads. */
export interface XdsRequest {
  readonly type_url?: string;
  readonly node?: XdsNode;
  readonly version_info?: string;
  readonly response_nonce?: string;
  readonly resource_names?: readonly string[];
  readonly resource_names_subscribe?: readonly string[];
  readonly resource_names_unsubscribe?: readonly string[];
  readonly initial_resource_versions?: Readonly<Record<string, string>>;
  /** A NACK's error (google.rpc.Status). */
  readonly error_detail?: { readonly code?: number; readonly message?: string } | null;
}

export interface StreamContext {
  readonly cache: SnapshotCache;
  /** Told what each stream does (the registry of connected proxies implements it). */
  readonly events: StreamCallbacks;
  readonly log: Logger;
  /** What one stream may make the server hold or do (limits.ts). */
  readonly limits: Limits;
  /** With mTLS: checks the client certificate of each stream, whose identity it then is. */
  readonly peers?: PeerCheckFn;
}

/** What the client certificate of a call's connection proved (mTLS). */
export type PeerCheckFn = (call: Pick<ServerCall, 'tls'>) => PeerCheck;

export interface SyncInputs {
  readonly version: string;
  readonly subRev: number;
  readonly rev: number;
}

/** A set of resource names that keeps the count of their characters, for a stream's bounds without recounting. */
export class NameSet extends Set<string> {
  // Not a field initializer: Set's constructor adds through `add` before initializers would run.
  declare chars: number;
  constructor() {
    super();
    this.chars = 0;
  }
  override add(name: string): this {
    if (!this.has(name)) this.chars += name.length;
    return super.add(name);
  }
  override delete(name: string): boolean {
    const had = super.delete(name);
    if (had) this.chars -= name.length;
    return had;
  }
  override clear(): void {
    this.chars = 0;
    super.clear();
  }
}

/** A map keyed by resource names that keeps the count of their characters (as NameSet). */
export class NameMap<V> extends Map<string, V> {
  declare chars: number;
  constructor() {
    super();
    this.chars = 0;
  }
  override set(name: string, value: V): this {
    if (!this.has(name)) this.chars += name.length;
    return super.set(name, value);
  }
  override delete(name: string): boolean {
    const had = super.delete(name);
    if (had) this.chars -= name.length;
    return had;
  }
  override clear(): void {
    this.chars = 0;
    super.clear();
  }
}

export interface BaseTypeState {
  /** A request for this type has been seen on this stream. */
  seen: boolean;
  wildcard: boolean;
  names: NameSet;
  /** Latest nonce sent for this type. */
  nonce?: string;
  /** Send EDS again even if unchanged: clusters were updated and Envoy re-warms them. */
  force: boolean;
  /** Bumped on every send to the client (or change of what it holds). */
  rev: number;
  /** Bumped on every subscription change. */
  subRev: number;
  /** Inputs of the last decision per mode (holding removals or not), to make an unchanged push O(1). */
  lastKey: { hold?: SyncInputs; free?: SyncInputs };
  /** The latest response of this type is neither ACKed nor NACKed yet. */
  awaiting: boolean;
  /** Its version, and when it was sent (monotonic, for the push-to-ACK latency). */
  sentVersion?: string;
  sentHr?: number;
}

/** Why the server ended a stream: the reason label of `mesh_xds_streams_refused_total`. */
export type RefusalReason = 'no_request' | 'bad_request' | 'bad_node' | 'too_many_names' | 'name_too_long' | 'too_many_requests' | 'not_reading' | PeerRefusal | 'identity_mismatch';

export abstract class AdsStream<S extends BaseTypeState> {
  protected identity?: ProxyIdentity;
  /** The identity the client certificate proved (mTLS). */
  private certified?: CertifiedIdentity;
  /** What the callbacks are told this stream is, once its node is known. */
  protected ref?: StreamRef;
  protected snapshot?: Snapshot;
  protected readonly states = new Map<string, S>();
  private unwatch?: () => void;
  private nonceCounter = 0;
  private closed = false;
  private readonly rate: RateLimit;
  /** Bytes written and not yet taken by the client, and when each pending write was made (oldest first). */
  private queuedBytes = 0;
  private readonly pendingSince: number[] = [];
  /** Ends the stream when its client certificate expires (mTLS). */
  private expiry?: NodeJS.Timeout;
  /** A stream must send its first request within limits.firstRequestSeconds (an idle stream only holds a slot). */
  private firstRequest?: NodeJS.Timeout;

  private readonly requestType: protobuf.Type;
  /** The request's `node` field: decoded on the first request only (Envoy repeats it unless told not to). */
  private readonly nodeField: number;

  constructor(
    protected readonly ctx: StreamContext,
    protected readonly call: ServerCall,
    private readonly kind: 'sotw' | 'delta',
    requestMessage: string,
  ) {
    this.requestType = lookupType(requestMessage);
    this.nodeField = this.requestType.fields.node.id;
    this.rate = new RateLimit(ctx.limits.requestBurst, ctx.limits.requestsPerSecond);
    call.on('data', (buf: Buffer) => this.onData(buf));
    this.firstRequest = setTimeout(
      () => this.fail(Code.DEADLINE_EXCEEDED, `no request within ${ctx.limits.firstRequestSeconds} s of the stream's start: a stream holds a slot of the server only while it asks for config`, 'no_request'),
      ctx.limits.firstRequestSeconds * 1000,
    ).unref();
    call.on('end', () => this.close());
    call.on('cancelled', () => this.close());
    if (ctx.peers) {
      const peer = ctx.peers(call);
      if (!peer.ok) this.fail(Code.UNAUTHENTICATED, peer.message, peer.reason);
      else {
        this.certified = { namespace: peer.id.namespace, serviceAccount: peer.id.serviceAccount, spiffe: peer.spiffe };
        this.endAt(peer.notAfter);
      }
    }
  }

  /**
   * A stream lives no longer than the certificate that proved its identity: at its expiry the stream ends with
   * UNAUTHENTICATED, and the proxy reconnects with its renewed one.
   */
  private endAt(notAfter: Date): void {
    const wait = notAfter.getTime() - Date.now();
    // A timer holds at most 24.8 days: a longer wait is taken in steps.
    this.expiry = setTimeout(() => (wait > MAX_TIMER_MS ? this.endAt(notAfter) : this.fail(Code.UNAUTHENTICATED, `the client certificate (${this.certified!.spiffe}) expired at ${notAfter.toISOString()}; reconnect with a renewed one`, 'expired_certificate')), Math.max(0, Math.min(wait + 1, MAX_TIMER_MS)));
    this.expiry.unref();
  }

  protected abstract newState(): S;
  /** The collections of names a type's state holds (subscriptions, known versions...), for the bounds. */
  protected abstract nameSets(state: S): readonly (NameSet | NameMap<unknown>)[];
  /** Applies one request (subscriptions, ACK/NACK) to the state of its type. */
  protected abstract apply(type: ResourceType, state: S, req: XdsRequest): void;
  /** Sends what this type needs, given the current snapshot; returns whether something was sent. */
  protected abstract sync(type: ResourceType, state: S, snapshot: Snapshot, holdRemovals: boolean): boolean;

  /** Syncs a type unless nothing changed since it last did (the case for every ACK): O(1), no allocation. */
  private syncIfChanged(type: ResourceType, st: S, snapshot: Snapshot, holdRemovals: boolean): boolean {
    const set = snapshot.get(type.typeUrl)!;
    const last = holdRemovals ? st.lastKey.hold : st.lastKey.free;
    if (!st.force && last && last.version === set.version && last.subRev === st.subRev && last.rev === st.rev) return false;
    const seen = { version: set.version, subRev: st.subRev, rev: st.rev };
    if (holdRemovals) st.lastKey.hold = seen;
    else st.lastKey.free = seen;
    return this.sync(type, st, snapshot, holdRemovals);
  }

  private onData(buf: Buffer): void {
    if (this.closed) return;
    clearTimeout(this.firstRequest);
    try {
      this.handle(buf);
    } catch (e) {
      // Nothing a client sends may throw out of the stream: whatever slipped through ends this stream only.
      this.ctx.log.error({ node: clip(this.identity?.nodeId ?? ''), err: (e as Error).stack ?? String(e) }, 'request handling failed; stream ended');
      this.fail(Code.INTERNAL, `the server failed to handle the request: ${(e as Error).message}`, 'bad_request');
    }
  }

  private handle(buf: Buffer): void {
    let req: XdsRequest;
    try {
      // Once the stream has its identity, a repeated node (tens of kB with Envoy's extension list) is not decoded.
      req = this.requestType.decode(this.identity ? withoutField(buf, this.nodeField) : buf) as XdsRequest;
    } catch (e) {
      this.fail(Code.INVALID_ARGUMENT, `cannot decode request: ${(e as Error).message}`, 'bad_request');
      return;
    }
    const type = resourceType(req.type_url ?? '');
    if (this.ctx.log.isLevelEnabled('debug')) {
      const names = req.resource_names ?? req.resource_names_subscribe ?? [];
      this.ctx.log.debug({ node: clip(this.identity?.nodeId ?? ''), type: type?.short ?? clip(String(req.type_url)), version: clip(req.version_info ?? '', 64), nonce: clip(req.response_nonce ?? '', 64), names: names.length, nack: Boolean(req.error_detail) }, 'request');
    }
    let state = type && this.states.get(type.typeUrl);
    // The first answer to the latest push of a type (an ACK or NACK) is the server's own doing: not counted.
    const answersPush = state && req.response_nonce && req.response_nonce === state.nonce && state.awaiting;
    if (!answersPush && !this.rate.take()) {
      this.fail(
        Code.RESOURCE_EXHAUSTED,
        `more than ${this.ctx.limits.requestBurst} requests at once or ${this.ctx.limits.requestsPerSecond} per second on one stream (answers to pushes not counted)`,
        'too_many_requests',
      );
      return;
    }
    if (!this.identity && !this.start(req.node)) return;
    if (!type) {
      this.ctx.log.warn({ node: clip(this.identity!.nodeId), typeUrl: clip(String(req.type_url)) }, 'request for an unsupported resource type ignored');
      return;
    }
    // Secrets (private keys) go only to a stream whose client certificate proved the identity they belong to.
    if (type.redact && !this.certified) {
      this.ctx.log.warn({ node: clip(this.identity!.nodeId), type: type.short }, 'request for secrets on a stream without a client certificate ignored');
      return;
    }
    if (!this.namesFit(req)) return;
    if (!state) this.states.set(type.typeUrl, (state = this.newState()));
    const subRev = state.subRev;
    this.apply(type, state, req);
    state.seen = true;
    if (state.subRev !== subRev && !this.countNames()) return;
    this.flush();
  }

  /** Every name a request would have the stream hold is within the bound of one name's length; else the stream ends. */
  private namesFit(req: XdsRequest): boolean {
    const max = this.ctx.limits.nameLength;
    const long = (names: Iterable<string> | undefined): string | undefined => {
      for (const n of names ?? []) if (n.length > max) return n;
      return undefined;
    };
    const n = long(req.resource_names) ?? long(req.resource_names_subscribe) ?? long(req.initial_resource_versions && Object.keys(req.initial_resource_versions));
    if (n === undefined) return true;
    this.fail(Code.INVALID_ARGUMENT, `resource name of ${n.length} characters (at most ${max}): ${clip(n, 64)}`, 'name_too_long');
    return false;
  }

  /**
   * The names the stream's states hold, against the stream's bounds; ends the stream (false) if one is crossed. The
   * collections keep their own counts: a subscription of two names more costs two names, not all of them again.
   */
  private countNames(): boolean {
    let total = 0;
    let totalBytes = 0;
    for (const st of this.states.values()) {
      for (const names of this.nameSets(st)) {
        total += names.size;
        totalBytes += names.chars;
      }
    }
    if (total > this.ctx.limits.namesPerStream || totalBytes > this.ctx.limits.nameBytesPerStream) {
      this.fail(
        Code.RESOURCE_EXHAUSTED,
        `the stream holds ${total} resource names (${totalBytes} characters); at most ${this.ctx.limits.namesPerStream} names and ${this.ctx.limits.nameBytesPerStream} characters per stream`,
        'too_many_names',
      );
      return false;
    }
    return true;
  }

  private start(node: XdsNode | undefined): boolean {
    try {
      this.identity = identityFromNode(node, this.certified);
    } catch (e) {
      if (e instanceof IdentityMismatch) {
        this.fail(Code.PERMISSION_DENIED, e.message, 'identity_mismatch');
        return false;
      }
      if (!(e instanceof IdentityError)) throw e;
      this.fail(Code.INVALID_ARGUMENT, e.message, 'bad_node');
      return false;
    }
    const key = proxyKey(this.identity);
    this.ref = { id: nextStreamId++, identity: this.identity, key, stream: this.kind, peer: this.call.getPeer() };
    this.ctx.events.opened(this.ref);
    this.ctx.log.info({ node: clip(this.identity.nodeId), key, stream: this.kind, peer: this.ref.peer, ...(this.certified ? { spiffe: this.certified.spiffe } : {}) }, 'stream opened');
    this.unwatch = this.ctx.cache.watch(key, (s) => {
      this.snapshot = s;
      this.flush();
    });
    this.snapshot = this.ctx.cache.get(key);
    return true;
  }

  /** Sends, in ADS order, whatever each subscribed type is missing. */
  protected flush(): void {
    const snapshot = this.snapshot;
    if (this.closed || !snapshot) return;
    const types = RESOURCE_TYPES.filter((t) => this.states.get(t.typeUrl)?.seen);
    // Make-before-break: a full-state type (CDS, LDS) first keeps the resources it is dropping; they go only
    // once every type after it has settled, so no listener or route points at a cluster already deleted.
    for (const type of types) {
      const state = this.states.get(type.typeUrl)!;
      const sent = this.syncIfChanged(type, state, snapshot, type.fullState);
      // A type that must follow a change of this one is sent again (EDS after CDS: Envoy re-warms clusters).
      const follower = sent && type.rewarms ? this.states.get(type.rewarms) : undefined;
      if (follower?.seen) follower.force = true;
      state.force = false;
    }
    const unsettled = (after: ResourceType): boolean =>
      types.some((t) => t.order > after.order && this.states.get(t.typeUrl)!.awaiting);
    for (const type of types) {
      if (type.fullState && !unsettled(type)) this.syncIfChanged(type, this.states.get(type.typeUrl)!, snapshot, false);
    }
  }

  /**
   * A subscribed name as the snapshot's resource spells it: one string held for every stream subscribed to it, not
   * one per stream (thousands of streams each subscribed to thousands of names).
   */
  protected interned(type: ResourceType, name: string): string {
    return this.snapshot?.get(type.typeUrl)?.resources.get(name)?.name ?? name;
  }

  protected nextNonce(): string {
    return (++this.nonceCounter).toString(36);
  }

  /** Writes a response and records it as sent. */
  protected send(type: ResourceType, pieces: Buffer | readonly Uint8Array[], version: string, nonce: string, names: HeldNames): void {
    let length = 0;
    for (const p of Buffer.isBuffer(pieces) ? [pieces] : pieces) length += p.length;
    const state = this.states.get(type.typeUrl)!;
    state.nonce = nonce;
    state.rev++;
    state.awaiting = true;
    state.sentVersion = version;
    state.sentHr = performance.now();
    this.queuedBytes += length;
    this.pendingSince.push(performance.now());
    this.call.write(pieces, () => {
      // Called once the client's flow control let the bytes out: the client is reading.
      this.queuedBytes -= length;
      this.pendingSince.shift();
    });
    this.ctx.events.sent(this.ref!, type.typeUrl, { version, nonce, names, bytes: length });
    if (this.ctx.log.isLevelEnabled('debug')) {
      this.ctx.log.debug({ node: clip(this.identity!.nodeId), type: type.short, version, nonce, resources: names.size }, 'push');
    }
    if (this.queuedBytes > this.ctx.limits.queuedBytesPerStream) {
      this.fail(Code.RESOURCE_EXHAUSTED, `the client is not reading its responses (${this.queuedBytes} bytes unread; at most ${this.ctx.limits.queuedBytesPerStream})`, 'not_reading');
    }
  }

  /** Ends the stream if a response has waited longer than the bound for the client to read it. */
  checkReading(now = performance.now()): void {
    const oldest = this.pendingSince[0];
    if (!this.closed && oldest !== undefined && now - oldest > this.ctx.limits.unreadSeconds * 1000) {
      this.fail(Code.RESOURCE_EXHAUSTED, `the client has not read a response for ${this.ctx.limits.unreadSeconds} s (${this.queuedBytes} bytes unread)`, 'not_reading');
    }
  }

  /** The client ACKed the latest response of this type. */
  protected ack(type: ResourceType, state: S, version: string): void {
    const latency = state.awaiting && state.sentHr !== undefined ? performance.now() - state.sentHr : undefined;
    state.awaiting = false;
    this.ctx.events.acked(this.ref!, type.typeUrl, version, latency);
  }

  /** The client already holds `version` of this type (a SotW reconnect): nothing is sent, it counts as ACKed. */
  protected resumed(type: ResourceType, state: S, version: string, names: HeldNames): void {
    state.sentVersion = version;
    state.awaiting = false;
    this.ctx.events.resumed(this.ref!, type.typeUrl, { version, names });
  }

  protected nack(type: ResourceType, state: S, error: XdsRequest['error_detail']): void {
    const nack = {
      version: state.sentVersion ?? '',
      error: clip(String(error?.message ?? ''), this.ctx.limits.nackDetail) || `code ${error?.code ?? '?'}`,
      at: new Date(),
    };
    state.awaiting = false;
    this.ctx.events.nacked(this.ref!, type.typeUrl, nack);
    this.ctx.log.warn({ node: clip(this.identity!.nodeId), type: type.short, version: nack.version, error: clip(nack.error, 1024) }, 'NACK');
  }

  protected static sorted(resources: Iterable<Resource>): Resource[] {
    return [...resources].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  }

  private fail(code: Code, details: string, reason: RefusalReason): void {
    if (this.closed) return;
    this.ctx.log.warn({ code: Code[code], details, reason, node: clip(this.identity?.nodeId ?? ''), peer: this.call.getPeer(), ...(this.certified ? { spiffe: this.certified.spiffe } : {}) }, 'stream refused');
    this.ctx.events.refused(reason);
    this.call.end({ code, details });
    this.close();
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this.expiry);
    clearTimeout(this.firstRequest);
    this.unwatch?.();
    if (this.ref) {
      this.ctx.events.closed(this.ref);
      this.ctx.log.info({ node: clip(this.identity!.nodeId), stream: this.kind }, 'stream closed');
    }
    this.call.end();
  }
}
