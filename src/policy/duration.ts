/** Go `time.ParseDuration` syntax (`1s`, `250ms`, `1m30s`, `1.5h`), as FSM's Retry CRD uses. */

const UNITS: Record<string, bigint> = {
  ns: 1n,
  us: 1_000n,
  'µs': 1_000n,
  'μs': 1_000n,
  ms: 1_000_000n,
  s: 1_000_000_000n,
  m: 60_000_000_000n,
  h: 3_600_000_000_000n,
};

/** Nanoseconds of a Go duration string, or an error message. */
export function parseGoDuration(text: string): { nanos: bigint } | { error: string } {
  let s = text.trim();
  if (s === '') return { error: 'empty duration' };
  let sign = 1n;
  if (s[0] === '-' || s[0] === '+') {
    if (s[0] === '-') sign = -1n;
    s = s.slice(1);
  }
  if (s === '0') return { nanos: 0n };
  const part = /^([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(ns|us|µs|μs|ms|s|m|h)/;
  let total = 0n;
  let rest = s;
  if (!rest) return { error: `invalid duration "${text}"` };
  while (rest) {
    const m = part.exec(rest);
    if (!m) {
      return { error: `invalid duration "${text}": expected a number followed by a unit (ns, us, ms, s, m, h), as in 1s, 250ms or 1m30s` };
    }
    const [whole, frac = ''] = m[1].split('.');
    const unit = UNITS[m[2]];
    const scale = 10n ** BigInt(frac.length);
    total += BigInt(whole || '0') * unit + (BigInt(frac || '0') * unit) / scale;
    rest = rest.slice(m[0].length);
  }
  if (total > 9_223_372_036_854_775_807n) return { error: `duration "${text}" is too large` };
  return { nanos: sign * total };
}

/** A duration as plain data (`google.protobuf.Duration`'s fields: seconds and the nanoseconds beyond them). */
export interface Duration {
  readonly seconds: number;
  readonly nanos: number;
}

export function durationOf(nanos: bigint): Duration {
  return { seconds: Number(nanos / 1_000_000_000n), nanos: Number(nanos % 1_000_000_000n) };
}

/** `google.protobuf.Duration` in the plain-object form the builders use (zero fields left out). */
export function protoDuration(d: Duration): { seconds?: number; nanos?: number } {
  return { ...(d.seconds ? { seconds: d.seconds } : {}), ...(d.nanos ? { nanos: d.nanos } : {}) };
}
