/**
 * Loads the Envoy v3 API protos from the pinned `@grpc/grpc-js-xds` package (see protos/README.md).
 * One protobufjs Root for the whole process: messages from different roots do not mix.
 */
import { createRequire } from 'node:module';
import { existsSync } from 'node:fs';
import path from 'node:path';
import protobuf from 'protobufjs';
import { packagePath } from '../../paths.js';

const require = createRequire(import.meta.url);

export const PROTO_FILES = [
  'envoy/service/discovery/v3/ads.proto',
  'envoy/service/status/v3/csds.proto',
  'envoy/config/listener/v3/listener.proto',
  'envoy/config/route/v3/route.proto',
  'envoy/config/cluster/v3/cluster.proto',
  'envoy/config/endpoint/v3/endpoint.proto',
  'envoy/extensions/filters/network/http_connection_manager/v3/http_connection_manager.proto',
  'envoy/extensions/filters/network/tcp_proxy/v3/tcp_proxy.proto',
  'envoy/extensions/filters/http/router/v3/router.proto',
  'envoy/extensions/filters/listener/original_dst/v3/original_dst.proto',
  'envoy/extensions/upstreams/http/v3/http_protocol_options.proto',
  'envoy/extensions/retry/host/previous_hosts/v3/previous_hosts.proto',
  'envoy/config/bootstrap/v3/bootstrap.proto',
  // The sidecars' mTLS to the control plane (deploy/samples: UpstreamTlsContext, file-based SDS Secrets).
  'envoy/extensions/transport_sockets/tls/v3/tls.proto',
  'envoy/extensions/transport_sockets/tls/v3/secret.proto',
  'envoy/admin/v3/config_dump.proto',
  // The sidecars' counters, streamed back (src/observed/): the sink's config and the service.
  'envoy/config/metrics/v3/metrics_service.proto',
  'envoy/service/metrics/v3/metrics_service.proto',
];

function importRoots(): string[] {
  const xdsPkg = path.dirname(require.resolve('@grpc/grpc-js-xds/package.json'));
  const pbPkg = path.dirname(require.resolve('protobufjs/package.json'));
  const deps = path.join(xdsPkg, 'deps');
  return [
    path.join(deps, 'envoy-api'),
    path.join(deps, 'xds'),
    path.join(deps, 'googleapis'),
    path.join(deps, 'protoc-gen-validate'),
    // io/prometheus/client/metrics.proto, which grpc-js-xds does not ship (protos/README.md).
    packagePath('protos'),
    pbPkg,
  ];
}

let cached: { root: protobuf.Root; loadMs: number } | undefined;

/** The process-wide Root with every file of PROTO_FILES loaded and resolved. */
export function envoyRoot(): protobuf.Root {
  return loadEnvoyProtos().root;
}

export function loadEnvoyProtos(): { root: protobuf.Root; loadMs: number } {
  if (cached) return cached;
  const started = performance.now();
  const roots = importRoots();
  const root = new protobuf.Root();
  root.resolvePath = (origin: string, target: string): string => {
    for (const dir of roots) {
      const candidate = path.join(dir, target);
      if (existsSync(candidate)) return candidate;
    }
    return protobuf.util.path.resolve(origin, target);
  };
  root.loadSync(PROTO_FILES, { keepCase: true });
  root.resolveAll();
  cached = { root, loadMs: performance.now() - started };
  return cached;
}

const typeCache = new Map<string, protobuf.Type>();

/** A message type by full name or type URL (`type.googleapis.com/...`), memoized; throws if unknown. */
export function lookupType(nameOrUrl: string): protobuf.Type {
  let t = typeCache.get(nameOrUrl);
  if (!t) {
    t = envoyRoot().lookupType(nameOrUrl.slice(nameOrUrl.lastIndexOf('/') + 1));
    typeCache.set(nameOrUrl, t);
  }
  return t;
}

const names = new WeakMap<protobuf.ReflectionObject, string>();

/** Full name without the leading dot, memoized (protobufjs recomputes `fullName` on every access). */
export function nameOf(t: protobuf.ReflectionObject): string {
  let n = names.get(t);
  if (n === undefined) names.set(t, (n = t.fullName.slice(1)));
  return n;
}
