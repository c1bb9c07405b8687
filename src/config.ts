/** Flags of `mesh-xds serve`, validated once at start. */
import { parseArgs } from 'node:util';
import type { MeshConfig } from './model/mesh.js';
import { isDnsLabel } from './model/names.js';
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
}

export class ConfigError extends Error {}

export const SERVE_HELP = `Usage: mesh-xds serve (--manifests DIR | --kubernetes) [options]

  --manifests DIR          read and watch the manifests in DIR (.yaml, .yml, .json)
  --kubernetes             watch the Kubernetes API (in-cluster config, or KUBECONFIG / --kubeconfig)
  --kubeconfig FILE        kubeconfig to use with --kubernetes
  --ads-address HOST:PORT  gRPC ADS address (default 0.0.0.0:15128)
  --debug-address HOST:PORT debug and health HTTP address (default 127.0.0.1:9091)
  --mesh-name NAME         namespaces labelled flomesh.io/monitored-by=NAME are in the mesh (default mesh-xds)
  --set KEY=VALUE          override the mesh config, e.g. --set featureFlags.enableRetryPolicy=true
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
    ({ values } = parseArgs({
      args,
      strict: true,
      allowPositionals: false,
      options: {
        manifests: { type: 'string' },
        kubernetes: { type: 'boolean', default: false },
        kubeconfig: { type: 'string' },
        'ads-address': { type: 'string', default: '0.0.0.0:15128' },
        'debug-address': { type: 'string', default: '127.0.0.1:9091' },
        'mesh-name': { type: 'string', default: 'mesh-xds' },
        set: { type: 'string', multiple: true, default: [] },
        namespace: { type: 'string' },
        'log-level': { type: 'string', default: env.LOG_LEVEL ?? 'info' },
      },
    }));
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
  if (overrides.enablePermissiveTrafficPolicyMode === false) {
    throw new ConfigError('enablePermissiveTrafficPolicyMode=false is not supported: mesh-xds has no access-control (SMI traffic target) policies yet, so it only runs in permissive mode');
  }
  const levels = ['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'];
  if (!levels.includes(values['log-level']!)) throw new ConfigError(`--log-level must be one of ${levels.join(', ')}`);
  if (!isDnsLabel(values['mesh-name']!)) throw new ConfigError(`--mesh-name ${values['mesh-name']}: must be a Kubernetes label value`);
  return {
    adsAddress: address('--ads-address', values['ads-address']!),
    debugAddress: address('--debug-address', values['debug-address']!),
    manifests: values.manifests,
    kubernetes: values.kubernetes!,
    kubeconfig: values.kubeconfig,
    meshName: values['mesh-name']!,
    overrides,
    logLevel: values['log-level']!,
    namespace: values.namespace ?? env.POD_NAMESPACE ?? 'mesh-xds',
  };
}
