#!/usr/bin/env node
/** The `mesh-xds` command. */
import { existsSync, readFileSync } from 'node:fs';
import { pathToFileURL } from 'node:url';
import { ConfigError, SERVE_HELP, parseServeArgs } from '../config.js';
import { StartError, serve } from '../main.js';
import { packagePath } from '../paths.js';
import { validateCommand } from './validate.js';
import { proxyCommand, policyCommand, namespaceCommand } from './ops.js';

const HELP = `mesh-xds: an Envoy xDS control plane for Retry policies (policy.flomesh.io/v1alpha1)

Usage: mesh-xds <command> [options]

Commands:
  serve                      run the ADS server (see mesh-xds serve --help)
  validate -f FILE           check Retry manifests offline with the server's own checks
  proxy status               table of connected proxies and their sync state
  proxy get <what> <pod> -n <ns>
                             read a sidecar's Envoy admin: stats, config_dump or clusters
  policy explain --from NS/SA --to NS/SVC
                             which Retry applies, and the route it yields
  policy amplification -f FILE_OR_DIR [--max N]
                             call paths of Retries in force, worst first (offline); exit 1 over N attempts
  install [--set KEY=VALUE]... [--dry-run]
                             install mesh-xds on the cluster, as fsm install (see mesh-xds install --help)
  uninstall [--purge]        remove what install made
  namespace add|remove NS [--disable-sidecar-injection]
                             enroll a namespace in the mesh, its pods injected (Kubernetes)
  inject -f FILE             print FILE's workloads with the sidecar, as the webhook would inject them
  ca init|issue              the mesh CA and the certificates it issues (see mesh-xds ca --help)
  demo [--kubernetes]        the user guide on this machine with real Envoy sidecars (Linux, root; npm run demo);
                             --kubernetes: against a real local Kubernetes control plane (npm run demo:kubernetes)

Common options: -o json (machine-readable output), --debug-url URL (default http://127.0.0.1:9091)
Exit codes: 0 ok, 1 problem found (invalid policy, proxy not synced), 2 usage error, 3 cannot reach server
`;

async function main(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  switch (cmd) {
    case 'serve': {
      if (rest.includes('--help') || rest.includes('-h')) {
        process.stdout.write(SERVE_HELP);
        return 0;
      }
      const cfg = parseServeArgs(rest);
      const running = await serve(cfg);
      let stopping = false;
      const stop = (signal: string): void => {
        if (stopping) return;
        stopping = true;
        process.stderr.write(`${signal}: shutting down\n`);
        running.close().then(
          () => process.exit(0),
          () => process.exit(1),
        );
        setTimeout(() => process.exit(1), 10_000).unref();
      };
      process.on('SIGTERM', () => stop('SIGTERM'));
      process.on('SIGINT', () => stop('SIGINT'));
      return new Promise<number>(() => {});
    }
    case 'validate':
      return validateCommand(rest);
    case 'proxy':
      return proxyCommand(rest);
    case 'policy':
      return policyCommand(rest);
    case 'namespace':
      return namespaceCommand(rest);
    case 'install':
    case 'uninstall': {
      const { installCommand } = await import('./install.js');
      return installCommand(rest, cmd === 'uninstall');
    }
    case 'inject': {
      const { injectCommand } = await import('./inject.js');
      return injectCommand(rest);
    }
    case 'ca': {
      const { caCommand } = await import('./ca.js');
      return caCommand(rest);
    }
    case 'demo': {
      // Test and demo infrastructure (sandbox/), not part of the product: loaded only where it was built.
      const demo = packagePath('dist-dev/sandbox/demo.js');
      if (!existsSync(demo)) {
        process.stderr.write('mesh-xds demo needs the sandbox (sandbox/ of the repository, built by `npm run build` into dist-dev/); this installation has none\n');
        return 2;
      }
      const { demoCommand } = (await import(pathToFileURL(demo).href)) as { demoCommand: (args: string[]) => Promise<number> };
      return demoCommand(rest);
    }
    case '--version':
    case 'version': {
      const pkg = JSON.parse(readFileSync(packagePath('package.json'), 'utf8'));
      process.stdout.write(`mesh-xds ${pkg.version}\n`);
      return 0;
    }
    case undefined:
    case 'help':
    case '--help':
    case '-h':
      process.stdout.write(HELP);
      return cmd === undefined ? 2 : 0;
    default:
      process.stderr.write(`mesh-xds: unknown command "${cmd}"\n\n${HELP}`);
      return 2;
  }
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err) => {
    if (err instanceof ConfigError) {
      process.stderr.write(`mesh-xds: ${err.message}\n`);
      process.exit(2);
    }
    if (err instanceof StartError) {
      process.stderr.write(`mesh-xds: ${err.message}\n`);
      process.exit(1);
    }
    process.stderr.write(`mesh-xds: ${(err as Error).stack ?? err}\n`);
    process.exit(1);
  },
);
