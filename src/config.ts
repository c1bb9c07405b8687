/** Flags of `mesh-xds serve`, validated once at start. */
import { existsSync, statSync } from 'node:fs';
import path from 'node:path';
import { parseFlags } from './cli/args.js';
import { UsageError } from './cli/errors.js';
import type { MeshConfig } from './model/mesh.js';
import { isDnsLabel } from './model/names.js';
import { parseGoDuration } from './policy/duration.js';
import { DEFAULT_TRUST_DOMAIN, isTrustDomain } from './security/spiffe.js';
import { parseSetFlag } from './sources/manifests.js';

export interface ServeConfig {
  adsAddress: string;
  debugAddress: string;
  manifests?: string;
  kubernetes: boolean;
  kubeconfig?: string;
  meshName: string;
  overrides: Partial<MeshConfig>;
  logLevel: string;
  /** Namespace of the control plane, where the MeshConfig lives (Kubernetes). */
  namespace: string;
  /** mTLS with a certificate, key and client CA from files laid out as a TLS Secret. */
  tlsDir?: string;
  /** mTLS with a serving certificate the server issues itself from the mesh CA in this directory. */
  caDir?: string;
  /** Extra DNS names of the self-issued serving certificate. */
  serverNames?: string[];
  trustDomain?: string;
  /** SPIFFE ids (or prefixes ending in `*`) that may read CSDS. */
  csdsAllow?: string[];
  /** Plaintext ADS on a non-loopback address, asked for. */
  plaintext?: boolean;
  /** Kubernetes with --ca-dir: lifetime of the identity Secrets' certificates (ms). */
  identityTtlMs?: number;
  /** With --ca-dir: lifetime of the server's own serving certificate (ms). */
  servingTtlMs?: number;
  /** With --ca-dir: lifetime of the sidecars' data-plane certificates sent over SDS (ms). */
  sidecarCertTtlMs?: number;
  /** The sidecar injection webhook (Kubernetes, with a certificate): HOST:PORT, or undefined when off. */
  webhookAddress?: string;
  /** The webhook's certificate from files (tls.crt, tls.key, ca.crt), instead of one from the mesh CA. */
  webhookTlsDir?: string;
  /** ADS connections older than this are sent GOAWAY (0 or absent: never; the CLI's default is 30 min). */
  maxConnectionAgeMs?: number;
  /** After GOAWAY at the maximum age, how long calls may go on before they are ended (default 10 s). */
  maxConnectionAgeGraceMs?: number;
  /** Images the webhook injects (default: the tested Envoy, and netshoot for the init container). */
  sidecarImage?: string;
  initImage?: string;
}

const LOOPBACK = /^(127\.\d+\.\d+\.\d+|\[::1\]|localhost):\d+$/;

/** A flag of `serve` (or another command) that cannot be used: exit 2, one line. */
export class ConfigError extends UsageError {}

export const SERVE_HELP = `Usage: mesh-xds serve (--manifests DIR | --kubernetes) [options]

  --manifests DIR          read and watch the manifests in DIR (.yaml, .yml, .json)
  --kubernetes             watch the Kubernetes API (in-cluster config, or KUBECONFIG / --kubeconfig)
  --kubeconfig FILE        kubeconfig to use with --kubernetes
  --ads-address HOST:PORT  gRPC ADS address (default 0.0.0.0:15128 with TLS, 127.0.0.1:15128 without)
  --tls-dir DIR            mTLS: DIR/tls.crt, DIR/tls.key and DIR/ca.crt (a TLS Secret's layout), re-read when they change
  --ca-dir DIR             mTLS: issue the serving certificate from the mesh CA in DIR (ca.crt, ca.key), renewed
  --server-name NAME       another DNS name for the issued serving certificate (repeatable)
  --trust-domain DOMAIN    SPIFFE trust domain of client certificates (default cluster.local)
  --csds-allow ID          a SPIFFE id (or a prefix ending in *) that may read CSDS (repeatable; with mTLS)
  --plaintext              serve ADS without TLS on a non-loopback address (development only)
  --serving-ttl DURATION   with --ca-dir: lifetime of the server's own certificate (default 24h; renewed after two thirds)
  --identity-ttl DURATION  with --kubernetes and --ca-dir: lifetime of the identity Secrets kept for every
                           service account of the mesh (default 24h; renewed after two thirds)
  --sidecar-cert-ttl DURATION
                           with --ca-dir: lifetime of the certificates sidecars get over SDS for mTLS between
                           them (default 24h; renewed after two thirds; without --ca-dir sidecars talk plaintext)
  --debug-address HOST:PORT debug and health HTTP address (default 127.0.0.1:9091)
  --mesh-name NAME         namespaces labelled flomesh.io/monitored-by=NAME are in the mesh (default mesh-xds)
  --set KEY=VALUE          override the mesh config, e.g. --set featureFlags.enableRetryPolicy=true
  --max-retry-amplification N
                           a Retry on a call path of more than N worst-case attempts at one service gets a
                           RetryAmplification warning in its status (default 10; see docs/retry-safety.md)
  --webhook-address HOST:PORT
                           the sidecar injection webhook, HTTPS, path /mutate-pod-creation (default 0.0.0.0:9443;
                           off: none); served with --kubernetes and a certificate (--ca-dir or --webhook-tls-dir)
  --webhook-tls-dir DIR    the webhook's certificate: DIR/tls.crt, DIR/tls.key, DIR/ca.crt (default: from --ca-dir)
  --sidecar-image IMAGE    the Envoy image the webhook injects (default envoyproxy/envoy:v1.40.0, the tested one)
  --init-image IMAGE       the init container's image: sh, iptables, ip6tables (default nicolaka/netshoot:v0.13)
  --max-connection-age DURATION
                           an ADS connection older than this (give or take 10%) is sent GOAWAY, and its streams
                           end 10 s later, so that proxies spread over the replicas after a scale-up or a
                           rollout (default 30m, as Istio; 0: never)
  --max-connection-age-grace DURATION
                           how long a connection's calls go on after its GOAWAY (default 10s)
  --namespace NS           the control plane's namespace (default: $POD_NAMESPACE or mesh-xds)
  --log-level LEVEL        trace, debug, info, warn, error (default info)
`;

function address(flag: string, value: string): string {
  const m = /^(\[[0-9a-fA-F:]+\]|[^:]+):(\d+)$/.exec(value);
  if (!m || Number(m[2]) > 65535) throw new ConfigError(`${flag} ${value}: expected HOST:PORT, e.g. 0.0.0.0:15128`);
  return value;
}

export function parseServeArgs(args: string[], env: NodeJS.ProcessEnv = process.env): ServeConfig {
  let values;
  try {
    ({ values } = parseFlags(
      { command: 'serve', usage: 'mesh-xds serve (--manifests DIR | --kubernetes) [options] (all of them: mesh-xds serve --help)', help: SERVE_HELP },
      args,
      {
        manifests: { type: 'string' },
        kubernetes: { type: 'boolean', default: false },
        kubeconfig: { type: 'string' },
        'ads-address': { type: 'string' },
        'tls-dir': { type: 'string' },
        'ca-dir': { type: 'string' },
        'server-name': { type: 'string', multiple: true, default: [] },
        'trust-domain': { type: 'string', default: DEFAULT_TRUST_DOMAIN },
        'csds-allow': { type: 'string', multiple: true, default: [] },
        plaintext: { type: 'boolean', default: false },
        'identity-ttl': { type: 'string', default: '24h' },
        'sidecar-cert-ttl': { type: 'string', default: '24h' },
        'serving-ttl': { type: 'string', default: '24h' },
        'debug-address': { type: 'string', default: '127.0.0.1:9091' },
        'mesh-name': { type: 'string', default: 'mesh-xds' },
        set: { type: 'string', multiple: true, default: [] },
        'max-retry-amplification': { type: 'string' },
        namespace: { type: 'string' },
        'log-level': { type: 'string', default: env.LOG_LEVEL ?? 'info' },
        'webhook-address': { type: 'string', default: '0.0.0.0:9443' },
        'max-connection-age': { type: 'string', default: '30m' },
        'max-connection-age-grace': { type: 'string', default: '10s' },
        'webhook-tls-dir': { type: 'string' },
        'sidecar-image': { type: 'string' },
        'init-image': { type: 'string' },
      },
    )!);
  } catch (e) {
    throw new ConfigError((e as Error).message);
  }
  if (!values.manifests === !values.kubernetes) throw new ConfigError('choose one source: --manifests DIR or --kubernetes');
  let overrides: Partial<MeshConfig> = {};
  for (const s of values.set ?? []) {
    try {
      overrides = { ...overrides, ...parseSetFlag(s) };
    } catch (e) {
      throw new ConfigError((e as Error).message);
    }
  }
  const amp = values['max-retry-amplification'];
  if (amp !== undefined) {
    const n = Number(amp);
    if (!/^\d+$/.test(amp) || n < 1) throw new ConfigError(`--max-retry-amplification ${amp}: a whole number of attempts, at least 1`);
    overrides = { ...overrides, maxRetryAmplification: n };
  }
  if (overrides.enablePermissiveTrafficPolicyMode === false) {
    throw new ConfigError('enablePermissiveTrafficPolicyMode=false is not supported: mesh-xds has no access-control (SMI traffic target) policies yet, so it only runs in permissive mode');
  }
  const levels = ['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'];
  if (!levels.includes(values['log-level']!)) throw new ConfigError(`--log-level must be one of ${levels.join(', ')}`);
  if (!isDnsLabel(values['mesh-name']!)) throw new ConfigError(`--mesh-name ${values['mesh-name']}: must be a Kubernetes label value`);
  if (values['tls-dir'] && values['ca-dir']) throw new ConfigError('choose one: --tls-dir (a certificate given) or --ca-dir (a certificate issued from the CA)');
  const tls = Boolean(values['tls-dir'] || values['ca-dir']);
  if (tls && values.plaintext) throw new ConfigError('--plaintext contradicts --tls-dir/--ca-dir');
  if (!isTrustDomain(values['trust-domain']!)) throw new ConfigError(`--trust-domain ${values['trust-domain']}: lowercase letters, digits, dots, dashes and underscores`);
  for (const id of values['csds-allow']!) {
    if (!id.startsWith('spiffe://')) throw new ConfigError(`--csds-allow ${id}: expected a SPIFFE id such as spiffe://cluster.local/ns/mesh-xds/sa/admin, or a prefix ending in *`);
  }
  if (values['csds-allow']!.length && !tls) throw new ConfigError('--csds-allow needs mTLS (--tls-dir or --ca-dir): without it no caller can prove who it is');
  const durationFlag = (flag: 'identity-ttl' | 'serving-ttl' | 'sidecar-cert-ttl'): number => {
    const d = parseGoDuration(values[flag]!);
    if ('error' in d || d.nanos < 1_000_000_000n) throw new ConfigError(`--${flag} ${values[flag]}: a Go duration of at least 1s, such as 24h`);
    return Number(d.nanos / 1_000_000n);
  };
  const adsAddress = address('--ads-address', values['ads-address'] ?? (tls ? '0.0.0.0:15128' : '127.0.0.1:15128'));
  if (!tls && !values.plaintext && !LOOPBACK.test(adsAddress)) {
    throw new ConfigError(
      `--ads-address ${adsAddress}: plaintext ADS on an address other than loopback lets anyone who reaches it claim any proxy's identity and read its configuration; serve mTLS (--tls-dir or --ca-dir), bind to 127.0.0.1, or say --plaintext`,
    );
  }
  const age = parseGoDuration(values['max-connection-age']!);
  if ('error' in age || (age.nanos !== 0n && age.nanos < 1_000_000_000n)) throw new ConfigError(`--max-connection-age ${values['max-connection-age']}: a Go duration of at least 1s, such as 30m, or 0 for never`);
  const grace = parseGoDuration(values['max-connection-age-grace']!);
  if ('error' in grace) throw new ConfigError(`--max-connection-age-grace ${values['max-connection-age-grace']}: a Go duration, such as 10s`);
  const webhookAddress = values['webhook-address'] === 'off' ? undefined : address('--webhook-address', values['webhook-address']!);
  if (values['webhook-tls-dir'] && !webhookAddress) throw new ConfigError('--webhook-tls-dir with --webhook-address off: choose one');
  return {
    maxConnectionAgeMs: Number(age.nanos / 1_000_000n),
    maxConnectionAgeGraceMs: Number(grace.nanos / 1_000_000n),
    webhookAddress: values.kubernetes && (values['ca-dir'] || values['webhook-tls-dir']) ? webhookAddress : undefined,
    webhookTlsDir: values['webhook-tls-dir'],
    sidecarImage: values['sidecar-image'],
    initImage: values['init-image'],
    adsAddress,
    debugAddress: address('--debug-address', values['debug-address']!),
    manifests: values.manifests,
    kubernetes: values.kubernetes!,
    kubeconfig: values.kubeconfig,
    meshName: values['mesh-name']!,
    overrides,
    logLevel: values['log-level']!,
    namespace: values.namespace ?? env.POD_NAMESPACE ?? 'mesh-xds',
    tlsDir: values['tls-dir'],
    caDir: values['ca-dir'],
    serverNames: values['server-name']!,
    trustDomain: values['trust-domain']!,
    csdsAllow: values['csds-allow']!,
    plaintext: values.plaintext!,
    identityTtlMs: durationFlag('identity-ttl'),
    servingTtlMs: durationFlag('serving-ttl'),
    sidecarCertTtlMs: durationFlag('sidecar-cert-ttl'),
  };
}

/**
 * The files and folders the flags name, checked before anything listens, each failure one line that says what
 * to do: a folder of manifests that does not exist, a certificate directory without its files.
 */
export function checkServePaths(cfg: ServeConfig): void {
  const dir = (flag: string, value: string, files: string[], make: string): void => {
    let isDir: boolean;
    try {
      isDir = statSync(value).isDirectory();
    } catch {
      throw new ConfigError(`${flag} ${value}: no such directory; ${make}`);
    }
    if (!isDir) throw new ConfigError(`${flag} ${value}: not a directory; ${make}`);
    const missing = files.filter((f) => !existsSync(path.join(value, f)));
    if (missing.length) throw new ConfigError(`${flag} ${value}: ${missing.join(' and ')} missing (it holds ${files.join(', ')}); ${make}`);
  };
  if (cfg.manifests) dir('--manifests', cfg.manifests, [], 'give the folder of your manifests, e.g. --manifests deploy/demo');
  const tlsFiles = ['tls.crt', 'tls.key', 'ca.crt'];
  const issue = (flag: string, d: string): string => `issue one into it with: mesh-xds ca issue --ca-dir CA_DIR --namespace NS --service-account SA --server --out ${d} (after mesh-xds ca init --dir CA_DIR), or fix ${flag}`;
  if (cfg.tlsDir) dir('--tls-dir', cfg.tlsDir, tlsFiles, issue('--tls-dir', cfg.tlsDir));
  if (cfg.webhookTlsDir) dir('--webhook-tls-dir', cfg.webhookTlsDir, tlsFiles, issue('--webhook-tls-dir', cfg.webhookTlsDir));
  if (cfg.caDir) dir('--ca-dir', cfg.caDir, ['ca.crt', 'ca.key'], `make the mesh CA there with: mesh-xds ca init --dir ${cfg.caDir}`);
  if (cfg.kubeconfig && !existsSync(cfg.kubeconfig)) throw new ConfigError(`--kubeconfig ${cfg.kubeconfig}: no such file; give the kubeconfig of your cluster (or leave the flag out to use KUBECONFIG or ~/.kube/config)`);
}
