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
