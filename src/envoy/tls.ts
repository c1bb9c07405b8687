/**
 * Sidecar-to-sidecar mutual TLS: the two SDS secrets every sidecar gets over ADS (its identity's certificate and
 * the mesh CA bundle) and the transport sockets that name them. The names are fixed (Istio's), so that a cluster or
 * a filter chain is the same bytes for every caller and stays shared: which certificate `default` is depends only
 * on the snapshot (the identity) it comes in.
 */
import { ADS_SOURCE } from './common.js';
import type { CommonTlsContext, Packed, Secret, TransportSocket, UpstreamTlsContext, DownstreamTlsContext } from './types.js';

/** The sidecar's own certificate and key (`tls_certificate`). */
export const IDENTITY_SECRET = 'default';
/** The mesh CA bundle peers are verified against (`validation_context`): during a CA rotation, old and new. */
export const CA_SECRET = 'ROOTCA';

const TLS_SOCKET = 'envoy.transport_sockets.tls';
const TLS = 'type.googleapis.com/envoy.extensions.transport_sockets.tls.v3';

/** PEM text of a workload certificate and its key. */
export interface IdentityCert {
  readonly cert: string;
  readonly key: string;
}

/** Sidecar-to-sidecar mTLS: the certificates the control plane issued, and the bundle peers are verified against. */
export interface MeshSecrets {
  /** The mesh CA bundle (PEM): during a rotation, the new CA and the old one. */
  readonly bundle: string;
  /** Each identity's (`ns/sa`) current certificate and key. */
  readonly certs: ReadonlyMap<string, IdentityCert>;
}

export function identitySecret(c: IdentityCert): Secret {
  return { name: IDENTITY_SECRET, tls_certificate: { certificate_chain: { inline_string: c.cert }, private_key: { inline_string: c.key } } };
}

export function caSecret(bundle: string): Secret {
  return { name: CA_SECRET, validation_context: { trusted_ca: { inline_string: bundle } } };
}

/** Both ends are Envoy: TLS 1.3 only, the certificate and the CA over SDS on the ADS stream. */
function common(sans: readonly string[] | undefined): CommonTlsContext {
  const validation = { name: CA_SECRET, sds_config: ADS_SOURCE };
  return {
    tls_params: { tls_minimum_protocol_version: 'TLSv1_3', tls_maximum_protocol_version: 'TLSv1_3' },
    tls_certificate_sds_secret_configs: [{ name: IDENTITY_SECRET, sds_config: ADS_SOURCE }],
    ...(sans
      ? {
          combined_validation_context: {
            default_validation_context: { match_typed_subject_alt_names: sans.map((exact) => ({ san_type: 'URI' as const, matcher: { exact } })) },
            validation_context_sds_secret_config: validation,
          },
        }
      : { validation_context_sds_secret_config: validation }),
  };
}

/**
 * A client to a mesh service: presents the caller's certificate, sends the service's host as SNI, and accepts only
 * a server whose certificate names one of `sans` (the SPIFFE ids of the service's pods).
 */
export function upstreamTls(sni: string, sans: readonly string[]): TransportSocket {
  const ctx: Packed<UpstreamTlsContext> = { '@type': `${TLS}.UpstreamTlsContext`, sni, common_tls_context: common(sans) };
  return { name: TLS_SOCKET, typed_config: ctx };
}

/** The inbound side: a client certificate from the mesh CA is required (any identity of the mesh may call). */
export function downstreamTls(): TransportSocket {
  const ctx: Packed<DownstreamTlsContext> = { '@type': `${TLS}.DownstreamTlsContext`, require_client_certificate: { value: true }, common_tls_context: common(undefined) };
  return { name: TLS_SOCKET, typed_config: ctx };
}
