/**
 * State of the world ADS (`StreamAggregatedResources`): per type a version and nonce; LDS/CDS carry the full
 * set, RDS/EDS the names asked for. The version of a response is the hash of exactly what it holds, so a
 * proxy that reconnects with the version it has is sent nothing, and a NACKed content is never resent.
 */
import type { Resource, Snapshot } from './snapshot.js';
import { versionOf } from './snapshot.js';
import { AdsStream, type BaseTypeState, type DuplexCall, type StreamContext } from './stream.js';
import type { TypeStatus } from './status.js';
import type { ResourceType } from './types.js';
import { lenField } from './wire.js';
import { envoyRoot } from './protos.js';

interface SotwState extends BaseTypeState {
  /** `version_info` of a request without nonce: what a reconnecting client already has. */
  clientVersion?: string;
  /** Version the client holds (sent, or claimed on reconnect). */
  current?: string;
  /** What that version holds. */
  held: Resource[];
  /** Bumped on every subscription change. */
  subRev: number;
}

const CONTROL_PLANE = lenField(6, lenField(1, 'mesh-xds'));

export class SotwStream extends AdsStream<SotwState> {
  private static requestType = envoyRoot().lookupType('envoy.service.discovery.v3.DiscoveryRequest');

  constructor(ctx: StreamContext, call: DuplexCall) {
    super(ctx, call, 'sotw');
  }

  protected decode(buf: Buffer): any {
    return SotwStream.requestType.decode(buf);
  }

  protected newState(): SotwState {
    return { seen: false, wildcard: false, names: new Set(), force: false, rev: 0, lastKey: {}, held: [], subRev: 0 };
  }

  protected apply(type: ResourceType, st: SotwState, req: any, status: TypeStatus): void {
    const nonce: string = req.response_nonce ?? '';
    if (nonce) {
      // Only the answer to the latest response counts; an older one is stale and ignored whole.
      if (nonce !== st.nonce) return;
      if (req.error_detail) this.nack(type, status, req.error_detail);
      else this.ack(type, status, req.version_info);
    } else if (req.version_info && st.current === undefined) {
      st.clientVersion = req.version_info;
    }
    const names: string[] = req.resource_names ?? [];
    // Legacy wildcard: an empty first request; later empty requests keep whatever the stream had.
    const wildcard = names.length === 0 ? (st.seen ? st.wildcard : true) : names.includes('*');
    const set = new Set(names.filter((n) => n !== '*'));
    if (wildcard !== st.wildcard || set.size !== st.names.size || [...set].some((n) => !st.names.has(n))) {
      st.wildcard = wildcard;
      st.names = set;
      st.subRev++;
    }
  }

  protected sync(type: ResourceType, st: SotwState, snapshot: Snapshot, holdRemovals: boolean): boolean {
    const set = snapshot.get(type.typeUrl)!;
    const mode = holdRemovals ? 'hold' : 'free';
    const key = `${set.version}|${st.subRev}|${st.rev}`;
    if (key === st.lastKey[mode] && !st.force) return false;
    st.lastKey[mode] = key;

    const all = type.fullState && st.wildcard;
    let list: Resource[] = all
      ? [...set.resources.values()]
      : [...st.names].map((n) => set.resources.get(n)).filter((r): r is Resource => r !== undefined);
    if (holdRemovals && st.held.length) {
      const kept = st.held.filter((r) => !set.resources.has(r.name) && (st.wildcard || st.names.has(r.name)));
      if (kept.length) list = list.concat(kept);
    }
    list = AdsStream.sorted(list);
    const version = all && list.length === set.resources.size ? set.version : versionOf(type.typeUrl, list);
    const status = this.conn!.status(type.typeUrl);

    if (st.current === undefined && st.clientVersion === version) {
      // Reconnect: the client already has exactly this.
      st.current = version;
      st.held = list;
      st.rev++;
      status.sentVersion = version;
      status.names = list.map((r) => r.name);
      this.ack(type, status, version);
      return false;
    }
    const changed = version !== st.current;
    if (!changed && !(st.force && list.length)) return false;
    if (!type.fullState && list.length === 0) {
      // Nothing the client asked for exists (or it unsubscribed everything): nothing to send, but remember
      // that it holds nothing, so a later subscription is answered.
      st.current = version;
      st.held = list;
      st.rev++;
      return false;
    }
    st.current = version;
    st.held = list;
    const body = this.ctx.bodies.get(`${type.typeUrl}|${version}`, () =>
      Buffer.concat([lenField(1, version), ...list.flatMap((r) => r.anyField(2)), lenField(4, type.typeUrl), CONTROL_PLANE]),
    );
    const nonce = this.nextNonce();
    this.send(type, Buffer.concat([body, lenField(5, nonce)]), version, nonce, list.map((r) => r.name));
    return true;
  }
}
