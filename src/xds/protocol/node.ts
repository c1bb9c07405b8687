/** Who is on the other end of a stream: read from the xDS `node` of its first request. */
import { isDnsLabel, isObjectName } from '../../model/names.js';
import { LIMITS, clip } from './limits.js';

import type { ProxyKind } from '../../compile/plan.js';

export { parseProxyKey, proxyKey, type ProxyKind } from '../../compile/plan.js';

export interface ProxyIdentity {
  readonly nodeId: string;
  readonly namespace: string;
  readonly serviceAccount: string;
  readonly podName?: string;
  /** Envoy sidecars announce `user_agent_name: envoy`; anything else (gRPC C-core, grpc-js) is proxyless. */
  readonly kind: ProxyKind;
  readonly userAgent: string;
  /** With mTLS: the SPIFFE id its client certificate proved (the identity above is that one). */
  readonly spiffe?: string;
}

export class IdentityError extends Error {}
/** The node claims an identity that its client certificate does not prove. */
export class IdentityMismatch extends Error {}

/** An identity a client certificate proved (its SPIFFE id). */
export interface CertifiedIdentity {
  readonly namespace: string;
  readonly serviceAccount: string;
  readonly spiffe: string;
}

/** A decoded `envoy.config.core.v3.Node`: the fields read here (protobufjs's Struct has camelCase field names). */
export interface XdsNode {
  readonly id?: string;
  readonly user_agent_name?: string;
  readonly metadata?: { readonly fields?: Readonly<Record<string, { readonly stringValue?: unknown } | undefined>> };
}

function structString(struct: XdsNode['metadata'], key: string): string | undefined {
  const v = struct?.fields?.[key]?.stringValue;
  return typeof v === 'string' ? v : undefined;
}


/**
 * Reads the identity from a decoded `envoy.config.core.v3.Node`; throws IdentityError saying what is missing.
 * With a client certificate, the identity is the certificate's: the node's metadata may leave it out, and where it
 * says something else the stream is refused (IdentityMismatch, naming the field).
 */
export function identityFromNode(node: XdsNode | null | undefined, certified?: CertifiedIdentity): ProxyIdentity {
  if (!node) throw new IdentityError('the first request on a stream must carry a node');
  const nodeId = node.id ?? '';
  if (!nodeId) throw new IdentityError('node.id is empty');
  if (nodeId.length > LIMITS.nodeIdLength) throw new IdentityError(`node.id is ${nodeId.length} characters; at most ${LIMITS.nodeIdLength}: ${clip(nodeId, 64)}`);
  let namespace = structString(node.metadata, 'namespace');
  let serviceAccount = structString(node.metadata, 'serviceAccount');
  if (certified) {
    for (const [field, claimed, proved] of [['namespace', namespace, certified.namespace], ['serviceAccount', serviceAccount, certified.serviceAccount]] as const) {
      if (claimed !== undefined && claimed !== proved) {
        throw new IdentityMismatch(`node "${clip(nodeId)}": node.metadata.${field} "${clip(claimed, 64)}" disagrees with the client certificate, which is ${certified.spiffe}`);
      }
    }
    namespace = certified.namespace;
    serviceAccount = certified.serviceAccount;
  }
  const missing = [!namespace && 'namespace', !serviceAccount && 'serviceAccount'].filter(Boolean);
  if (missing.length) {
    throw new IdentityError(
      `node "${clip(nodeId)}" lacks string node.metadata.${missing.join(' and node.metadata.')} (the proxy's Kubernetes namespace and service account)`,
    );
  }
  for (const [field, value] of [['namespace', namespace!], ['serviceAccount', serviceAccount!]] as const) {
    if (field === 'namespace' ? !isDnsLabel(value) : !isObjectName(value)) {
      throw new IdentityError(`node "${clip(nodeId)}": node.metadata.${field} "${clip(value, 64)}" is not a valid Kubernetes name`);
    }
  }
  const userAgent = clip(node.user_agent_name ?? '', 64);
  const podName = structString(node.metadata, 'podName');
  return {
    nodeId,
    namespace: namespace!,
    serviceAccount: serviceAccount!,
    podName: podName === undefined ? undefined : clip(podName, 253),
    kind: userAgent === 'envoy' ? 'sidecar' : 'proxyless',
    userAgent,
    ...(certified ? { spiffe: certified.spiffe } : {}),
  };
}
