/**
 * What each connected proxy was sent and what it said back, kept from the protocol's callbacks: the debug
 * endpoint, CSDS and metrics read it. Plain data; no I/O.
 */
import type { ProxyIdentity } from './node.js';
import { resourceType } from '../resources/types.js';
import type { TlsRefusal } from '../transport/tls-front.js';

export interface Nack {
  readonly version: string;
  readonly error: string;
  readonly at: Date;
}

export interface TypeStatus {
  sentVersion?: string;
  sentNonce?: string;
  sentAt?: Date;
  ackedVersion?: string;
  ackedAt?: Date;
  lastNack?: Nack;
  /** True while the last response sent has not been ACKed or NACKed. */
  awaiting: boolean;
  /** Names of the resources in the last response (SotW) or known to the client (delta). */
  names: HeldNames;
}

/**
 * Resource names as a stream reports them: a view, not a copy (a delta stream's is its live record of what the
 * client holds; copying thousands of names per response was most of a change's garbage).
 */
export interface HeldNames extends Iterable<string> {
  readonly size: number;
}

export const NO_NAMES: HeldNames = new Set<string>();

/** A list of names as HeldNames. */
export function listNames(list: readonly string[]): HeldNames {
  return { size: list.length, [Symbol.iterator]: () => list[Symbol.iterator]() };
}

export type SyncState = 'SYNCED' | 'NOT SENT' | 'STALE' | 'NACKED';

export function syncState(s: TypeStatus | undefined): SyncState {
  if (!s || s.sentVersion === undefined) return 'NOT SENT';
  if (s.lastNack && s.lastNack.version === s.sentVersion) return 'NACKED';
  if (s.awaiting || s.ackedVersion !== s.sentVersion) return 'STALE';
  return 'SYNCED';
}

export interface XdsEvents {
  connected?(c: ProxyConnection): void;
  disconnected?(c: ProxyConnection): void;
  pushed?(c: ProxyConnection, typeUrl: string, bytes: number): void;
  acked?(c: ProxyConnection, typeUrl: string, latencyMs: number | undefined): void;
  nacked?(c: ProxyConnection, typeUrl: string, nack: Nack): void;
  /** A stream or request the server ended because of what the client sent (the reason names the bound). */
  refused?(reason: string): void;
  /** A connection closed before any stream: too many open, or its TLS handshake failed. */
  connectionRefused?(reason: TlsRefusal): void;
  /** An error of an ADS connection or stream (a reset, a protocol error): it ended only its own. */
  transportError?(where: 'session' | 'stream', code: string): void;
  /** A connection reached its maximum age (--max-connection-age) and was sent GOAWAY. */
  connectionAged?(): void;
}

/** A stream as its callbacks know it: which proxy, which stream, from where. */
export interface StreamRef {
  readonly id: number;
  readonly identity: ProxyIdentity;
  readonly key: string;
  readonly stream: 'sotw' | 'delta';
  readonly peer: string;
}

/** What a response carried. */
export interface Sent {
  readonly version: string;
  readonly nonce: string;
  readonly names: HeldNames;
  readonly bytes: number;
}

/**
 * What the protocol reports of each stream, as go-control-plane's server Callbacks: a stream keeps only the state
 * the protocol needs, and reports; what each proxy was sent and said back is kept by whoever implements this
 * (ProxyRegistry, for the debug endpoints, CSDS and the metrics).
 */
export interface StreamCallbacks {
  opened(stream: StreamRef): void;
  closed(stream: StreamRef): void;
  sent(stream: StreamRef, typeUrl: string, sent: Sent): void;
  /** The client already holds `version` (a SotW reconnect with it): nothing was sent, and it counts as ACKed. */
  resumed(stream: StreamRef, typeUrl: string, held: { readonly version: string; readonly names: HeldNames }): void;
  acked(stream: StreamRef, typeUrl: string, version: string, latencyMs: number | undefined): void;
  nacked(stream: StreamRef, typeUrl: string, nack: Nack): void;
  /** A stream or request ended because of what the client sent (the reason names the bound). */
  refused(reason: string): void;
}

let nextId = 1;

export class ProxyConnection {
  readonly id = nextId++;
  readonly connectedAt = new Date();
  readonly types = new Map<string, TypeStatus>();
  constructor(
    readonly identity: ProxyIdentity,
    readonly key: string,
    readonly stream: 'sotw' | 'delta',
    readonly peer: string,
  ) {}

  status(typeUrl: string): TypeStatus {
    let s = this.types.get(typeUrl);
    if (!s) this.types.set(typeUrl, (s = { awaiting: false, names: NO_NAMES }));
    return s;
  }

  /** JSON-friendly view for the debug endpoint. */
  view(): Record<string, unknown> {
    return {
      nodeId: this.identity.nodeId,
      namespace: this.identity.namespace,
      serviceAccount: this.identity.serviceAccount,
      podName: this.identity.podName ?? null,
      kind: this.identity.kind,
      userAgent: this.identity.userAgent,
      // How the identity is known: the client certificate (mTLS) or the node's word (plaintext).
      spiffe: this.identity.spiffe ?? null,
      stream: this.stream,
      peer: this.peer,
      connectedSince: this.connectedAt.toISOString(),
      types: Object.fromEntries(
        [...this.types].map(([url, s]) => [
          resourceType(url)?.short ?? url,
          {
            state: syncState(s),
            sent: s.sentVersion ?? null,
            sentAt: s.sentAt?.toISOString() ?? null,
            acked: s.ackedVersion ?? null,
            ackedAt: s.ackedAt?.toISOString() ?? null,
            lastNack: s.lastNack ? { version: s.lastNack.version, error: s.lastNack.error, at: s.lastNack.at.toISOString() } : null,
            resources: s.names.size,
          },
        ]),
      ),
    };
  }
}

/**
 * Every connected stream, kept from the protocol's callbacks (what each was sent, ACKed, NACKed), with fan-out of
 * those events to observers (metrics, logs).
 */
export class ProxyRegistry implements StreamCallbacks {
  readonly connections = new Set<ProxyConnection>();
  private readonly byStream = new Map<number, ProxyConnection>();
  private readonly observers: XdsEvents[] = [];

  opened(ref: StreamRef): void {
    const c = new ProxyConnection(ref.identity, ref.key, ref.stream, ref.peer);
    this.byStream.set(ref.id, c);
    this.add(c);
  }

  closed(ref: StreamRef): void {
    const c = this.byStream.get(ref.id);
    this.byStream.delete(ref.id);
    if (c) this.remove(c);
  }

  sent(ref: StreamRef, typeUrl: string, sent: Sent): void {
    const c = this.byStream.get(ref.id);
    if (!c) return;
    const status = c.status(typeUrl);
    status.sentVersion = sent.version;
    status.sentNonce = sent.nonce;
    status.sentAt = new Date();
    status.awaiting = true;
    status.names = sent.names;
    this.emit('pushed', c, typeUrl, sent.bytes);
  }

  resumed(ref: StreamRef, typeUrl: string, held: { readonly version: string; readonly names: HeldNames }): void {
    const c = this.byStream.get(ref.id);
    if (!c) return;
    const status = c.status(typeUrl);
    status.sentVersion = held.version;
    status.names = held.names;
    this.acked(ref, typeUrl, held.version, undefined);
  }

  acked(ref: StreamRef, typeUrl: string, version: string, latencyMs: number | undefined): void {
    const c = this.byStream.get(ref.id);
    if (!c) return;
    const status = c.status(typeUrl);
    status.ackedVersion = version;
    status.ackedAt = new Date();
    status.awaiting = false;
    this.emit('acked', c, typeUrl, latencyMs);
  }

  nacked(ref: StreamRef, typeUrl: string, nack: Nack): void {
    const c = this.byStream.get(ref.id);
    if (!c) return;
    const status = c.status(typeUrl);
    status.lastNack = nack;
    status.awaiting = false;
    this.emit('nacked', c, typeUrl, nack);
  }

  refused(reason: string): void {
    this.emit('refused', reason);
  }

  observe(events: XdsEvents): void {
    this.observers.push(events);
  }

  emit<K extends keyof XdsEvents>(event: K, ...args: Parameters<NonNullable<XdsEvents[K]>>): void {
    for (const o of this.observers) (o[event] as ((...a: unknown[]) => void) | undefined)?.(...args);
  }

  add(c: ProxyConnection): void {
    this.connections.add(c);
    this.emit('connected', c);
  }

  remove(c: ProxyConnection): void {
    if (this.connections.delete(c)) this.emit('disconnected', c);
  }

  byNodeId(nodeId: string): ProxyConnection | undefined {
    let found: ProxyConnection | undefined;
    for (const c of this.connections) if (c.identity.nodeId === nodeId && (!found || c.id > found.id)) found = c;
    return found;
  }
}
