/**
 * CSDS (`envoy.service.status.v3.ClientStatusDiscoveryService`) on the ADS port: per connected proxy, the
 * resources it was sent with their versions and client status, for standard xDS tooling.
 */
import type * as grpc from '@grpc/grpc-js';
import { RE2JS } from 're2js';
import type { SnapshotCache } from '../resources/cache.js';
import { shownBody } from '../resources/snapshot.js';
import { Code, unary, type GrpcStatus, type Handler, type ServerCall } from '../transport/grpc.js';
import { envoyRoot } from '../resources/protos.js';
import { syncState, type ProxyConnection, type ProxyRegistry } from './status.js';

const CONFIG_STATUS = { SYNCED: 'SYNCED', 'NOT SENT': 'NOT_SENT', STALE: 'STALE', NACKED: 'ERROR' } as const;

const REQUEST = envoyRoot().lookupType('envoy.service.status.v3.ClientStatusRequest');
const RESPONSE = envoyRoot().lookupType('envoy.service.status.v3.ClientStatusResponse');
const PREFIX = '/envoy.service.status.v3.ClientStatusDiscoveryService';

const codec = (type: typeof REQUEST) => ({
  serialize: (v: object) => Buffer.from(type.encode(type.fromObject(v)).finish()),
  deserialize: (b: Buffer) => type.toObject(type.decode(b), { enums: String, longs: Number, defaults: false }),
});
const [requests, responses] = [codec(REQUEST), codec(RESPONSE)];
const method = (name: string, stream: boolean): grpc.MethodDefinition<object, object> => ({
  path: `${PREFIX}/${name}`,
  requestStream: stream,
  responseStream: stream,
  requestSerialize: requests.serialize,
  requestDeserialize: requests.deserialize,
  responseSerialize: responses.serialize,
  responseDeserialize: responses.deserialize,
});
/** CSDS for gRPC clients (tests, tools), in plain objects. */
export const CSDS_SERVICE: grpc.ServiceDefinition = { StreamClientStatus: method('StreamClientStatus', true), FetchClientStatus: method('FetchClientStatus', false) };

/** Bounds on what a CSDS request may ask the server to evaluate. */
export const CSDS_LIMITS = { matchers: 64, regexLength: 1024 } as const;

/** A request the server refuses (the status says why); nothing a client sends can throw out of a handler. */
export class CsdsRequestError extends Error {
  constructor(
    readonly code: Code,
    message: string,
  ) {
    super(message);
  }
}

const invalid = (message: string): CsdsRequestError => new CsdsRequestError(Code.INVALID_ARGUMENT, message);

/** A decoded `envoy.type.matcher.v3.StringMatcher`: the fields read here. */
interface StringMatcher {
  readonly ignore_case?: boolean;
  readonly exact?: string;
  readonly prefix?: string;
  readonly suffix?: string;
  readonly contains?: string;
  readonly safe_regex?: { readonly regex?: string };
}

/** A decoded `envoy.service.status.v3.ClientStatusRequest`: the fields read here. */
export interface ClientStatusRequest {
  readonly node_matchers?: readonly { readonly node_id?: StringMatcher; readonly node_metadatas?: readonly unknown[] }[];
  readonly exclude_resource_contents?: boolean;
}

/**
 * An `envoy.type.matcher.v3.StringMatcher` as a predicate. `safe_regex` is RE2, as in Envoy: compiled once per
 * request with a linear-time engine (re2js), so no pattern can make matching slow; a pattern that does not
 * compile is INVALID_ARGUMENT.
 */
function stringMatcher(m: StringMatcher | undefined, field: string): (value: string) => boolean {
  if (!m) return () => true;
  const fold = m.ignore_case ? (v: string) => v.toLowerCase() : (v: string) => v;
  const want = (v: unknown) => fold(String(v));
  if (m.exact !== undefined) return (v) => fold(v) === want(m.exact);
  if (m.prefix !== undefined) return (v) => fold(v).startsWith(want(m.prefix));
  if (m.suffix !== undefined) return (v) => fold(v).endsWith(want(m.suffix));
  if (m.contains !== undefined) return (v) => fold(v).includes(want(m.contains));
  if (m.safe_regex !== undefined) {
    const regex = String(m.safe_regex.regex ?? '');
    if (regex.length > CSDS_LIMITS.regexLength) throw invalid(`${field}.safe_regex.regex is ${regex.length} characters; at most ${CSDS_LIMITS.regexLength}`);
    let re: RE2JS;
    try {
      re = RE2JS.compile(regex);
    } catch (e) {
      throw invalid(`${field}.safe_regex.regex: ${(e as Error).message}`);
    }
    return (v) => re.matches(v);
  }
  throw invalid(`${field}: no supported match (exact, prefix, suffix, contains or safe_regex)`);
}

/** The request's node matchers as one predicate on node ids. */
function nodeFilter(request: ClientStatusRequest | undefined): (nodeId: string) => boolean {
  const matchers = request?.node_matchers ?? [];
  if (matchers.length > CSDS_LIMITS.matchers) throw invalid(`${matchers.length} node_matchers; at most ${CSDS_LIMITS.matchers}`);
  const tests = matchers.map((m, i) => {
    if (m.node_metadatas?.length) throw invalid(`node_matchers[${i}].node_metadatas is not supported; match on node_id`);
    return stringMatcher(m.node_id, `node_matchers[${i}].node_id`);
  });
  return (id) => tests.length === 0 || tests.some((t) => t(id));
}

function timestamp(d: Date | undefined): object | undefined {
  return d ? { seconds: Math.floor(d.getTime() / 1000), nanos: (d.getTime() % 1000) * 1e6 } : undefined;
}

function clientConfig(c: ProxyConnection, cache: SnapshotCache, withContents: boolean): object {
  const snapshot = cache.peek(c.key);
  const generic: object[] = [];
  for (const [typeUrl, s] of [...c.types].sort(([a], [b]) => (a < b ? -1 : 1))) {
    const state = syncState(s);
    for (const name of s.names) {
      const r = snapshot?.get(typeUrl)?.resources.get(name);
      generic.push({
        type_url: typeUrl,
        name,
        version_info: s.sentVersion ?? '',
        // Secrets redacted, as Envoy's own CSDS and config dump show them.
        ...(withContents && r ? { xds_config: { type_url: typeUrl, value: shownBody(r) } } : {}),
        ...(s.sentAt ? { last_updated: timestamp(s.sentAt) } : {}),
        config_status: CONFIG_STATUS[state],
        client_status: state === 'NACKED' ? 'NACKED' : state === 'SYNCED' ? 'ACKED' : 'REQUESTED',
        ...(s.lastNack && state === 'NACKED'
          ? { error_state: { details: s.lastNack.error, version_info: s.lastNack.version, last_update_attempt: timestamp(s.lastNack.at) } }
          : {}),
      });
    }
  }
  const metadata = {
    fields: {
      namespace: { stringValue: c.identity.namespace },
      serviceAccount: { stringValue: c.identity.serviceAccount },
      ...(c.identity.podName ? { podName: { stringValue: c.identity.podName } } : {}),
    },
  };
  return { node: { id: c.identity.nodeId, user_agent_name: c.identity.userAgent, metadata }, generic_xds_configs: generic };
}

/** The answer to one ClientStatusRequest; throws CsdsRequestError for a request it refuses. */
export function clientStatus(request: ClientStatusRequest | undefined, registry: ProxyRegistry, cache: SnapshotCache): object {
  const matches = nodeFilter(request);
  const conns = [...registry.connections]
    .filter((c) => matches(c.identity.nodeId))
    .sort((a, b) => (a.identity.nodeId < b.identity.nodeId ? -1 : a.identity.nodeId > b.identity.nodeId ? 1 : a.id - b.id));
  return { config: conns.map((c) => clientConfig(c, cache, !request?.exclude_resource_contents)) };
}

/** An error as the gRPC status to end the call with: the request's own fault, or INTERNAL (never a throw). */
function statusOf(e: unknown): GrpcStatus {
  if (e instanceof CsdsRequestError) return { code: e.code, details: e.message };
  return { code: Code.INTERNAL, details: `CSDS failed: ${(e as Error)?.message ?? e}` };
}

/** Who may ask (mTLS): a refusal for a caller not allowed, else undefined. */
export type CsdsAuthorizer = (call: Pick<ServerCall, 'getPeer' | 'tls'>) => { code: Code; details: string; reason: string } | undefined;

/** CSDS's two methods (FetchClientStatus, StreamClientStatus), by path. */
export function csdsHandlers(registry: ProxyRegistry, cache: SnapshotCache, onRefused?: (reason: string) => void, authorize?: CsdsAuthorizer): Record<string, Handler> {
  const refused = (call: ServerCall): GrpcStatus | undefined => {
    const r = authorize?.(call);
    if (!r) return undefined;
    onRefused?.(r.reason);
    return { code: r.code, details: r.details };
  };
  /** The response's bytes, or the status that refuses the request. */
  const answer = (bytes: Buffer): Buffer | GrpcStatus => {
    let request: object;
    try {
      request = requests.deserialize(bytes);
    } catch (e) {
      onRefused?.('csds_invalid_request');
      return { code: Code.INVALID_ARGUMENT, details: `cannot decode the ClientStatusRequest: ${(e as Error).message}` };
    }
    try {
      return responses.serialize(clientStatus(request, registry, cache));
    } catch (e) {
      onRefused?.(e instanceof CsdsRequestError ? 'csds_invalid_request' : 'csds_internal');
      return statusOf(e);
    }
  };
  const fetch = unary((request) => answer(request));
  return {
    [`${PREFIX}/FetchClientStatus`]: (call) => {
      const denied = refused(call);
      if (denied) call.end(denied);
      else fetch(call);
    },
    [`${PREFIX}/StreamClientStatus`]: (call) => {
      const denied = refused(call);
      if (denied) return call.end(denied);
      call.on('data', (request: Buffer) => {
        const r = answer(request);
        if (Buffer.isBuffer(r)) call.write(r);
        else call.end(r);
      });
      call.on('end', () => call.end());
    },
  };
}
