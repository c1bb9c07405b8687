/** Minimal protobuf wire helpers to assemble responses from pieces encoded once. */

export function varint(n: number): Buffer {
  const out: number[] = [];
  while (n > 0x7f) {
    out.push((n & 0x7f) | 0x80);
    n = Math.floor(n / 128);
  }
  out.push(n);
  return Buffer.from(out);
}

/** A length-delimited field: tag, length, bytes. */
export function lenField(fieldNo: number, bytes: Uint8Array | string): Buffer {
  const b = typeof bytes === 'string' ? Buffer.from(bytes) : bytes;
  return Buffer.concat([varint((fieldNo << 3) | 2), varint(b.length), b]);
}

/** A length-delimited field whose value is given in pieces: the header, then the pieces (not copied). */
export function lenFieldParts(fieldNo: number, parts: readonly Uint8Array[]): Uint8Array[] {
  let n = 0;
  for (const p of parts) n += p.length;
  return [Buffer.concat([varint((fieldNo << 3) | 2), varint(n)]), ...parts];
}

/** Reads a varint at `i`; returns [value, next index], or undefined past the end or beyond 2^53. */
function readVarint(buf: Uint8Array, i: number): [number, number] | undefined {
  let value = 0;
  for (let shift = 1; i < buf.length && shift < 2 ** 53; shift *= 128) {
    const b = buf[i++];
    value += (b & 0x7f) * shift;
    if (b < 0x80) return [value, i];
  }
  return undefined;
}

/**
 * The message without its top-level length-delimited field `fieldNo` (every occurrence), so that decoding skips
 * it; the buffer itself where the field is absent or the bytes cannot be walked (the decoder then says why).
 */
export function withoutField(buf: Buffer, fieldNo: number): Buffer {
  const keep: Buffer[] = [];
  let from = 0;
  let i = 0;
  while (i < buf.length) {
    const tag = readVarint(buf, i);
    if (!tag) return buf;
    const start = i;
    i = tag[1];
    const wire = tag[0] % 8;
    if (wire === 0) {
      const v = readVarint(buf, i);
      if (!v) return buf;
      i = v[1];
    } else if (wire === 1) i += 8;
    else if (wire === 5) i += 4;
    else if (wire === 2) {
      const len = readVarint(buf, i);
      if (!len) return buf;
      i = len[1] + len[0];
      if (Math.floor(tag[0] / 8) === fieldNo) {
        keep.push(buf.subarray(from, start));
        from = i;
      }
    } else return buf;
    if (i > buf.length) return buf;
  }
  if (from === 0) return buf;
  keep.push(buf.subarray(from));
  return Buffer.concat(keep);
}
