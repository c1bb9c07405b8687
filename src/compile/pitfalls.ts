/**
 * Retry settings that cannot do what they seem to (pure): named in the policy's status (condition Pitfall), in
 * `validate` where the file alone shows it, and in `policy explain`. Warnings: the policy stays Accepted.
 */
import { GRPC_RETRY_ON, type RetrySpec } from '../policy/retry.js';
import type { ServiceIR } from './ir.js';

/** More retries than this is no longer a retry policy but a storm waiting for a slow dependency. */
export const MAX_SENSIBLE_RETRIES = 10;

const GRPC = new Set<string>(GRPC_RETRY_ON);

/** What the spec alone shows (`validate` runs this one). */
export function specPitfalls(spec: RetrySpec): string[] {
  const out: string[] = [];
  if (spec.numRetries !== undefined && spec.numRetries > MAX_SENSIBLE_RETRIES) {
    out.push(`retryPolicy.numRetries: ${spec.numRetries} retries is more than any service needs (more than ${MAX_SENSIBLE_RETRIES}): each failure costs ${spec.numRetries + 1} attempts, and a slow dependency becomes a retry storm`);
  }
  return out;
}

/** What the spec shows on one destination service. */
export function retryPitfalls(spec: RetrySpec, service: ServiceIR): string[] {
  const out = specPitfalls(spec);
  const key = `${service.namespace}/${service.name}`;
  const http = service.ports.filter((p) => p.protocol === 'http');
  if (!http.length) {
    out.push(`Service ${key} has only TCP ports: Envoy retries HTTP requests, so this Retry never applies to it`);
  } else if (spec.retryOn.length && spec.retryOn.every((c) => GRPC.has(c)) && spec.retriableStatusCodes.length === 0 && !http.some((p) => p.http2)) {
    out.push(
      `retryPolicy.retryOn: ${spec.retryOn.join(',')} are gRPC conditions, which never fire on Service ${key}: its ports speak plain HTTP (for a gRPC service, name the port grpc-... or set appProtocol: grpc)`,
    );
  }
  return out;
}
