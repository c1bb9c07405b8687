/**
 * Istio's outbound layout, built from mesh-xds's own output so that its cost can be measured (issue 12): each
 * filter chain of the outbound listener becomes a listener of its own (on the service's address and port, not
 * bound, reached through the 15001 listener's original-destination hand-off), and the 15001 listener keeps only
 * its passthrough. The side-by-side benchmark serves this through go-control-plane (`go-control-plane/split`);
 * mesh-xds itself serves one outbound listener.
 */
import { OUTBOUND_LISTENER } from '../../src/envoy/common.js';
import { decodeMessage, encodeMessage } from '../../src/xds/encode.js';
import { makeResource, Snapshot, TypeSet, type Resource } from '../../src/xds/snapshot.js';
import { LISTENER } from '../../src/xds/types.js';
import { lenField } from '../../src/xds/wire.js';

const MESSAGE = 'envoy.config.listener.v3.Listener';
const split = new WeakMap<Resource, Resource[]>();

/** Field 3 (`filter_chains`) of a piece of the listener: the FilterChain bytes inside it. */
function chainOf(piece: Uint8Array): Uint8Array {
  let i = 1;
  while (piece[i] & 0x80) i++;
  return piece.subarray(i + 1);
}

function splitListener(outbound: Resource): Resource[] {
  let out = split.get(outbound);
  if (out) return out;
  const [header, ...chains] = outbound.parts;
  const handOff = encodeMessage(MESSAGE, { use_original_dst: { value: true } });
  out = [makeResource(LISTENER, Buffer.concat([header, handOff]), OUTBOUND_LISTENER, [])];
  for (const piece of chains) {
    const chain = decodeMessage('envoy.config.listener.v3.FilterChain', chainOf(piece));
    const range = chain.filter_chain_match?.prefix_ranges?.[0];
    const port = chain.filter_chain_match?.destination_port?.value ?? 0;
    const head = encodeMessage(MESSAGE, {
      name: `${range?.address_prefix ?? '0.0.0.0'}_${port}`,
      address: { socket_address: { address: range?.address_prefix ?? '0.0.0.0', port_value: port } },
      bind_to_port: { value: false },
      traffic_direction: 'OUTBOUND',
    });
    // The chain as it was, without its match: the listener's address is the match now.
    const bare = encodeMessage('envoy.config.listener.v3.FilterChain', { ...chain, filter_chain_match: undefined });
    const body = Buffer.concat([head, lenField(3, bare)]);
    out.push(makeResource(LISTENER, body, `${range?.address_prefix ?? '0.0.0.0'}_${port}`, []));
  }
  split.set(outbound, out);
  return out;
}

/** The same snapshots with the outbound listener split per service port. */
export function splitOutbound(snapshots: Map<string, Snapshot>): Map<string, Snapshot> {
  const sets = new Map<TypeSet, TypeSet>();
  return new Map(
    [...snapshots].map(([id, snap]) => {
      const lds = snap.types.get(LISTENER)!;
      let next = sets.get(lds);
      if (!next) {
        const list = [...lds.resources.values()].flatMap((r) => (r.name === OUTBOUND_LISTENER ? splitListener(r) : [r]));
        sets.set(lds, (next = TypeSet.of(LISTENER, list, { trusted: true })));
      }
      return [id, new Snapshot(new Map([...snap.types].map(([url, set]) => [url, url === LISTENER ? next : set])))];
    }),
  );
}
