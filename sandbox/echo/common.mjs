// What the echo server and client share: Go's header-key canonical form, Go durations, and the gRPC service the
// Gateway API mesh conformance suite reaches through the client (Istio echo's `proto.EchoTestService`, whose Echo
// takes and returns a message with one string field, number 1). See docs/conformance/README.md.

/** Go's http.CanonicalHeaderKey: `x-foo-bar` -> `X-Foo-Bar`; a key with a byte outside a token is left as it is. */
export function canonicalKey(key) {
  if (!/^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/.test(key)) return key;
  return key.toLowerCase().replace(/(^|-)([a-z])/g, (_, dash, c) => dash + c.toUpperCase());
}

/** A Go duration (`5s`, `1m30s`, `250ms`, `1.5s`) in milliseconds; undefined when it is not one. */
export function goDuration(text) {
  const units = { ns: 1e-6, us: 1e-3, 'µs': 1e-3, ms: 1, s: 1000, m: 60_000, h: 3_600_000 };
  if (!/^(\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+$/.test(text)) return text === '0' ? 0 : undefined;
  let ms = 0;
  for (const [, n, , u] of text.matchAll(/(\d+(\.\d+)?)(ns|us|µs|ms|s|m|h)/g)) ms += Number(n) * units[u];
  return ms;
}

/** Protobuf for `message { string message = 1; }`: the only shape Echo's request and response have. */
export function encodeMessage(text) {
  const bytes = Buffer.from(text ?? '', 'utf8');
  if (bytes.length === 0) return Buffer.alloc(0);
  const len = [];
  let n = bytes.length;
  while (n > 0x7f) {
    len.push((n & 0x7f) | 0x80);
    n >>>= 7;
  }
  len.push(n);
  return Buffer.concat([Buffer.from([0x0a, ...len]), bytes]);
}

/** The string field 1 of a message; other fields are skipped as protobuf says; a malformed message throws. */
export function decodeMessage(buf) {
  let i = 0;
  let out = '';
  const varint = () => {
    let v = 0;
    let shift = 0;
    for (;;) {
      if (i >= buf.length) throw new Error('truncated varint');
      const b = buf[i++];
      v += (b & 0x7f) * 2 ** shift;
      if (b < 0x80) return v;
      shift += 7;
      if (shift > 63) throw new Error('varint too long');
    }
  };
  while (i < buf.length) {
    const tag = varint();
    const wire = tag % 8;
    if (wire === 0) varint();
    else if (wire === 1) i += 8;
    else if (wire === 5) i += 4;
    else if (wire === 2) {
      const len = varint();
      if (i + len > buf.length) throw new Error('truncated field');
      if (Math.floor(tag / 8) === 1) out = buf.subarray(i, i + len).toString('utf8');
      i += len;
    } else throw new Error(`wire type ${wire} not supported`);
    if (i > buf.length) throw new Error('truncated field');
  }
  return out;
}

const codec = { requestSerialize: encodeMessage, requestDeserialize: decodeMessage, responseSerialize: encodeMessage, responseDeserialize: decodeMessage };

/** grpc-js's definition of proto.EchoTestService/Echo (ForwardEcho is not served: the suite never calls it). */
export const ECHO_SERVICE = {
  Echo: { path: '/proto.EchoTestService/Echo', requestStream: false, responseStream: false, ...codec },
};
