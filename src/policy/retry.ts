/**
 * The Retry policy (`policy.flomesh.io/v1alpha1`, kind Retry): parse and validate its spec. Pure: returns
 * the spec or every problem with its field path; never throws on user input.
 */
import { isObjectName } from '../model/names.js';
import { durationOf, parseGoDuration, type Duration } from './duration.js';

export const RETRY_API_VERSION = 'policy.flomesh.io/v1alpha1';

/** Envoy's `retry_on` conditions for HTTP (router filter) and gRPC. Exact and case-sensitive. */
export const HTTP_RETRY_ON = [
  '5xx',
  'gateway-error',
  'reset',
  'reset-before-request',
  'connect-failure',
  'envoy-ratelimited',
  'retriable-4xx',
  'refused-stream',
  'retriable-status-codes',
  'retriable-headers',
  'http3-post-connect-failure',
] as const;
export const GRPC_RETRY_ON = ['cancelled', 'deadline-exceeded', 'internal', 'resource-exhausted', 'unavailable'] as const;
const KNOWN = new Set<string>([...HTTP_RETRY_ON, ...GRPC_RETRY_ON]);
/** The conditions a Retry may name (retriable-headers needs headers a Retry cannot give); the CRD lists the same. */
export const RETRY_ON_CONDITIONS: readonly string[] = [...KNOWN].filter((c) => c !== 'retriable-headers');

export interface Problem {
  readonly field: string;
  readonly message: string;
  /** Where the field is written, when the object came from a file. */
  readonly line?: number;
}

export interface RetrySpec {
  readonly source: { readonly namespace: string; readonly name: string };
  /** Service destinations; others are reported in `skipped`. */
  readonly destinations: readonly { readonly namespace: string; readonly name: string }[];
  /** Destinations of a kind other than Service: skipped, each with a message. */
  readonly skipped: readonly Problem[];
  /** Envoy retry_on tokens, in the order written, without duplicates. */
  readonly retryOn: readonly string[];
  /** HTTP status codes written in retryOn (they become retriable-status-codes). */
  readonly retriableStatusCodes: readonly number[];
  readonly perTryTimeout?: Duration;
  readonly numRetries?: number;
  readonly backoffBaseInterval?: Duration;
}

export type RetryParse = { ok: true; spec: RetrySpec } | { ok: false; problems: Problem[] };


function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function checkName(value: unknown, field: string, problems: Problem[]): string | undefined {
  if (typeof value !== 'string' || value === '') {
    problems.push({ field, message: 'is required (a non-empty string)' });
    return undefined;
  }
  if (!isObjectName(value)) {
    problems.push({ field, message: `"${value}" is not a valid Kubernetes name` });
    return undefined;
  }
  return value;
}

function checkUnknown(obj: Record<string, unknown>, allowed: string[], path: string, problems: Problem[]): void {
  for (const k of Object.keys(obj)) {
    if (!allowed.includes(k)) problems.push({ field: `${path}.${k}`, message: `unknown field (known: ${allowed.join(', ')})` });
  }
}

function positiveDuration(value: unknown, field: string, problems: Problem[]): Duration | undefined {
  if (value === undefined || value === null) return undefined;
  if (typeof value !== 'string') {
    problems.push({ field, message: `must be a duration string such as "1s" or "250ms", got ${JSON.stringify(value)}` });
    return undefined;
  }
  const d = parseGoDuration(value);
  if ('error' in d) {
    problems.push({ field, message: d.error });
    return undefined;
  }
  if (d.nanos <= 0n) {
    problems.push({ field, message: `must be greater than 0, got "${value}"` });
    return undefined;
  }
  if (d.nanos % 1_000_000n !== 0n) {
    problems.push({ field, message: `"${value}" is finer than Envoy's millisecond resolution` });
    return undefined;
  }
  return durationOf(d.nanos);
}

/** Parses `retryOn`: Envoy condition tokens and numeric HTTP status codes, comma separated. */
export function parseRetryOn(value: unknown, problems: Problem[]): { tokens: string[]; codes: number[] } {
  const field = 'spec.retryPolicy.retryOn';
  const tokens: string[] = [];
  const codes: number[] = [];
  if (typeof value !== 'string' || value.trim() === '') {
    problems.push({ field, message: 'is required: comma-separated Envoy retry conditions such as "5xx" or "unavailable"' });
    return { tokens, codes };
  }
  const parts = value.split(',').map((p) => p.trim());
  parts.forEach((p, i) => {
    if (p === '') {
      problems.push({ field, message: `empty condition at position ${i + 1} in "${value}"` });
    } else if (/^[0-9]+$/.test(p)) {
      const code = Number(p);
      if (code < 100 || code > 599) problems.push({ field, message: `"${p}" is not an HTTP status code (100-599)` });
      else if (!codes.includes(code)) codes.push(code);
    } else if (p === 'retriable-headers') {
      problems.push({ field, message: '"retriable-headers" needs retriable_headers, which a Retry policy cannot set' });
    } else if (!KNOWN.has(p)) {
      const lower = p.toLowerCase();
      const hint = KNOWN.has(lower) ? `; conditions are case-sensitive: did you mean "${lower}"?` : '';
      problems.push({
        field,
        message: `unknown retryOn condition "${p}" (Envoy would silently ignore it${hint}); known: ${RETRY_ON_CONDITIONS.join(', ')}, or an HTTP status code`,
      });
    } else if (!tokens.includes(p)) tokens.push(p);
  });
  if (codes.length && !tokens.includes('retriable-status-codes')) tokens.push('retriable-status-codes');
  return { tokens, codes };
}

/** Validates a Retry spec as written in a manifest. */
export function parseRetrySpec(spec: unknown): RetryParse {
  const problems: Problem[] = [];
  if (!isObject(spec)) return { ok: false, problems: [{ field: 'spec', message: 'is required (an object)' }] };
  checkUnknown(spec, ['source', 'destinations', 'retryPolicy'], 'spec', problems);

  let source: RetrySpec['source'] | undefined;
  if (!isObject(spec.source)) problems.push({ field: 'spec.source', message: 'is required: {kind: ServiceAccount, name, namespace}' });
  else {
    checkUnknown(spec.source, ['kind', 'name', 'namespace'], 'spec.source', problems);
    if (spec.source.kind !== 'ServiceAccount') {
      problems.push({ field: 'spec.source.kind', message: `must be "ServiceAccount", got ${JSON.stringify(spec.source.kind)}` });
    }
    const name = checkName(spec.source.name, 'spec.source.name', problems);
    const namespace = checkName(spec.source.namespace, 'spec.source.namespace', problems);
    if (name && namespace) source = { namespace, name };
  }

  const destinations: { namespace: string; name: string }[] = [];
  const skipped: Problem[] = [];
  if (!Array.isArray(spec.destinations) || spec.destinations.length === 0) {
    problems.push({ field: 'spec.destinations', message: 'is required: a non-empty list of {kind: Service, name, namespace}' });
  } else {
    spec.destinations.forEach((d: unknown, i: number) => {
      const path = `spec.destinations[${i}]`;
      if (!isObject(d)) {
        problems.push({ field: path, message: 'must be an object {kind, name, namespace}' });
        return;
      }
      checkUnknown(d, ['kind', 'name', 'namespace'], path, problems);
      const name = checkName(d.name, `${path}.name`, problems);
      const namespace = checkName(d.namespace, `${path}.namespace`, problems);
      if (typeof d.kind !== 'string' || d.kind === '') {
        problems.push({ field: `${path}.kind`, message: 'is required (Service)' });
      } else if (d.kind !== 'Service') {
        skipped.push({ field: `${path}.kind`, message: `destination kind "${d.kind}" is not supported (only Service); skipped` });
      } else if (name && namespace && !destinations.some((x) => x.name === name && x.namespace === namespace)) {
        destinations.push({ namespace, name });
      }
    });
  }

  let retryOn = { tokens: [] as string[], codes: [] as number[] };
  let perTryTimeout: Duration | undefined;
  let numRetries: number | undefined;
  let backoffBaseInterval: Duration | undefined;
  const rp = spec.retryPolicy;
  if (!isObject(rp)) problems.push({ field: 'spec.retryPolicy', message: 'is required: {retryOn, perTryTimeout, numRetries, retryBackoffBaseInterval}' });
  else {
    checkUnknown(rp, ['retryOn', 'perTryTimeout', 'numRetries', 'retryBackoffBaseInterval'], 'spec.retryPolicy', problems);
    retryOn = parseRetryOn(rp.retryOn, problems);
    perTryTimeout = positiveDuration(rp.perTryTimeout, 'spec.retryPolicy.perTryTimeout', problems);
    backoffBaseInterval = positiveDuration(rp.retryBackoffBaseInterval, 'spec.retryPolicy.retryBackoffBaseInterval', problems);
    if (rp.numRetries !== undefined && rp.numRetries !== null) {
      const n = rp.numRetries;
      if (typeof n !== 'number' || !Number.isInteger(n) || n < 0 || n > 4294967295) {
        problems.push({ field: 'spec.retryPolicy.numRetries', message: `must be an integer from 0 to 4294967295, got ${JSON.stringify(n)}` });
      } else numRetries = n;
    }
  }
  if (problems.length || !source) return { ok: false, problems };
  return {
    ok: true,
    spec: {
      source,
      destinations,
      skipped,
      retryOn: retryOn.tokens,
      retriableStatusCodes: retryOn.codes,
      perTryTimeout,
      numRetries,
      backoffBaseInterval,
    },
  };
}
