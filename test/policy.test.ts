import { describe, expect, it } from 'vitest';
import { parseGoDuration } from '../src/policy/duration.js';
import { parseRetrySpec } from '../src/policy/retry.js';
import { envoyRetryPolicy } from '../src/envoy/routes.js';

const spec = (retryPolicy: object, extra: object = {}) => ({
  source: { kind: 'ServiceAccount', name: 'curl', namespace: 'curl' },
  destinations: [{ kind: 'Service', name: 'httpbin', namespace: 'httpbin' }],
  retryPolicy,
  ...extra,
});

describe('Go durations', () => {
  it.each([
    ['1s', 1_000_000_000n],
    ['250ms', 250_000_000n],
    ['1m30s', 90_000_000_000n],
    ['1.5h', 5_400_000_000_000n],
    ['.5s', 500_000_000n],
    ['0', 0n],
  ])('%s', (text, nanos) => {
    expect(parseGoDuration(text)).toEqual({ nanos });
  });
  it.each(['', '1', '1 s', 's', '1d', '1s2'])('rejects "%s"', (text) => {
    expect(parseGoDuration(text)).toHaveProperty('error');
  });
});

/** What every sidecar's retry policy adds: another host on retry (docs/retry-safety.md#another-host). */
const ANOTHER_HOST = {
  retry_host_predicate: [{ name: 'envoy.retry_host_predicates.previous_hosts', typed_config: { '@type': 'type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate' } }],
  host_selection_retry_max_attempts: 5,
};

describe('Retry spec', () => {
  it("parses the guide's policy", () => {
    const r = parseRetrySpec(spec({ retryOn: '5xx', perTryTimeout: '1s', numRetries: 5, retryBackoffBaseInterval: '1s' }));
    expect(r.ok).toBe(true);
    if (!r.ok) return;
    expect(envoyRetryPolicy(r.spec, { proxyless: false })).toEqual({
      retry_on: '5xx',
      num_retries: { value: 5 },
      per_try_timeout: { seconds: 1 },
      retry_back_off: { base_interval: { seconds: 1 } },
      ...ANOTHER_HOST,
    });
  });

  it('turns HTTP codes into retriable-status-codes and leaves omitted fields to Envoy', () => {
    const r = parseRetrySpec(spec({ retryOn: '503, 502,connect-failure' }));
    if (!r.ok) throw new Error(JSON.stringify(r.problems));
    expect(envoyRetryPolicy(r.spec, { proxyless: false })).toEqual({
      retry_on: 'connect-failure,retriable-status-codes',
      retriable_status_codes: [503, 502],
      ...ANOTHER_HOST,
    });
  });

  it('keeps numRetries 0 for Envoy and drops the policy for gRPC clients, which reject it', () => {
    const r = parseRetrySpec(spec({ retryOn: 'unavailable', numRetries: 0 }));
    if (!r.ok) throw new Error('invalid');
    expect(envoyRetryPolicy(r.spec, { proxyless: false })).toMatchObject({ num_retries: { value: 0 } });
    expect(envoyRetryPolicy(r.spec, { proxyless: true })).toBeUndefined();
  });

  it('reports every problem with its field', () => {
    const r = parseRetrySpec({
      source: { kind: 'Pod', name: 'Curl' },
      destinations: [{ kind: 'Service', name: 'x' }, 'y'],
      retryPolicy: { retryOn: '5XX,,teapot', perTryTimeout: '-1s', numRetries: 1.5, retryBackoffBaseInterval: 10, extra: 1 },
    });
    expect(r.ok).toBe(false);
    if (r.ok) return;
    expect(r.problems.map((p) => p.field)).toEqual([
      'spec.source.kind',
      'spec.source.name',
      'spec.source.namespace',
      'spec.destinations[0].namespace',
      'spec.destinations[1]',
      'spec.retryPolicy.extra',
      'spec.retryPolicy.retryOn',
      'spec.retryPolicy.retryOn',
      'spec.retryPolicy.retryOn',
      'spec.retryPolicy.perTryTimeout',
      'spec.retryPolicy.retryBackoffBaseInterval',
      'spec.retryPolicy.numRetries',
    ]);
    expect(r.problems[6].message).toMatch(/unknown retryOn condition "5XX" \(Envoy would silently ignore it; conditions are case-sensitive: did you mean "5xx"\?\)/);
    expect(r.problems[9].message).toMatch(/greater than 0/);
  });

  it('rejects numRetries beyond uint32 and sub-millisecond durations', () => {
    const r = parseRetrySpec(spec({ retryOn: '5xx', numRetries: 4294967296, perTryTimeout: '100us' }));
    expect(r.ok ? [] : r.problems.map((p) => p.field)).toEqual(['spec.retryPolicy.perTryTimeout', 'spec.retryPolicy.numRetries']);
  });
});
