/**
 * What each connected proxy was sent and what it said back: the protocol code records, the debug endpoint,
 * CSDS and metrics read. Plain data; no I/O.
 */
import type { ProxyIdentity } from './node.js';
import { resourceType } from '../resources/types.js';

export interface Nack {
  readonly version: string;
  readonly error: string;
  readonly at: Date;
}

export interface TypeStatus {
  sentVersion?: string;
  sentNonce?: string;
  sentAt?: Date;
  /** Monotonic time of the last send, for push-to-ACK latency. */
  sentHr?: number;
  ackedVersion?: string;
  ackedAt?: Date;
  lastNack?: Nack;
  /** True while the last response sent has not been ACKed or NACKed. */
  awaiting: boolean;
  /** Names of the resources in the last response (SotW) or known to the client (delta). */
  names: readonly string[];
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
  connectionRefused?(reason: 'too_many_connections' | 'tls_handshake_failed'): void;
  /** An error of an ADS connection or stream (a reset, a protocol error): it ended only its own. */
  transportError?(where: 'session' | 'stream', code: string): void;
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
    if (!s) this.types.set(typeUrl, (s = { awaiting: false, names: [] }));
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
            resources: s.names.length,
          },
        ]),
      ),
    };
  }
}

/** Every connected stream, with fan-out of protocol events to observers (metrics, logs). */
export class ProxyRegistry {
  readonly connections = new Set<ProxyConnection>();
  private readonly observers: XdsEvents[] = [];

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
