#!/usr/bin/env node
/**
 * The `mesh-xds` command. Each command's module is loaded when it runs, so that a command loads only what it uses
 * (`validate` needs neither protobufjs nor gRPC). The process ends once stdout and stderr have drained: a pipe
 * (`mesh-xds inject -f F | kubectl apply -f -`) gets the whole output.
 */
import { existsSync, readFileSync } from 'node:fs';
import { pathToFileURL } from 'node:url';
import { EXIT, EXIT_PIPE_CLOSED, ExitError, nearest } from './errors.js';

const HELP = `mesh-xds: an Envoy xDS control plane for Retry policies (policy.flomesh.io/v1alpha1)

Usage: mesh-xds <command> [options]

Commands:
  serve                      run the ADS server (see mesh-xds serve --help)
  validate -f FILE_OR_DIR    check Retry manifests offline with the server's own checks
  proxy status               table of connected proxies and their sync state
  proxy get <what> <pod> -n <ns>
                             read a sidecar's Envoy admin: stats, config_dump or clusters
  policy explain --from NS/SA --to NS/SVC [-f FILE_OR_DIR]
                             which Retry applies, and the route it yields (-f: offline, from manifests)
  policy amplification -f FILE_OR_DIR [--max N]
                             call paths of Retries in force, worst first (offline); exit 1 over N attempts
  policy stats [NAME] [-n NS] [--paths]
                             what each Retry did: the sidecars' retry counters summed per Retry, live
  install [--set KEY=VALUE]... [--dry-run]
                             install mesh-xds on the cluster, as fsm install (see mesh-xds install --help)
  uninstall [--purge]        remove what install made
  namespace add|remove NS [--disable-sidecar-injection]
                             enroll a namespace in the mesh, its pods injected (Kubernetes)
  inject -f FILE             print FILE's workloads with the sidecar, as the webhook would inject them
  ca init|issue              the mesh CA and the certificates it issues (see mesh-xds ca --help)
  demo [--kubernetes]        the user guide on this machine with real Envoy sidecars (Linux, root; npm run demo);
                             --kubernetes: against a real local Kubernetes control plane (npm run demo:kubernetes)

Common options: -o json (machine-readable output), --debug-url URL (default http://127.0.0.1:9091),
  --debug (a stack trace with an error), -h/--help (a command's usage)
Exit codes: 0 ok, 1 problem found (invalid policy, proxy not synced), 2 usage error, 3 cannot reach server
  (141: the reader of the output closed it early, as \`| head\`)
`;

const COMMANDS = ['serve', 'validate', 'proxy', 'policy', 'install', 'uninstall', 'namespace', 'inject', 'ca', 'demo', 'version', 'help'];

async function main(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  switch (cmd) {
    case 'serve': {
      const { SERVE_HELP, checkServePaths, parseServeArgs } = await import('../config.js');
      if (rest.includes('--help') || rest.includes('-h')) {
        process.stdout.write(SERVE_HELP);
        return 0;
      }
      const cfg = parseServeArgs(rest);
      checkServePaths(cfg);
      const [{ serve }, { serverLog }] = await Promise.all([import('../main.js'), import('../log.js')]);
      // On a terminal, lines for people (the ADS address, the page's, each mesh translated); JSON elsewhere.
      const running = await serve(cfg, serverLog(cfg.logLevel, Boolean(process.stdout.isTTY)));
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
      return (await import('./validate.js')).validateCommand(rest);
    case 'proxy':
      return (await import('./ops.js')).proxyCommand(rest);
    case 'policy':
      return (await import('./ops.js')).policyCommand(rest);
    case 'namespace':
      return (await import('./ops.js')).namespaceCommand(rest);
    case 'install':
    case 'uninstall':
      return (await import('./install.js')).installCommand(rest, cmd === 'uninstall');
    case 'inject':
      return (await import('./inject.js')).injectCommand(rest);
    case 'ca':
      return (await import('./ca.js')).caCommand(rest);
    case 'demo': {
      // Test and demo infrastructure (sandbox/), not part of the product: loaded only where it was built.
      const { packagePath } = await import('../paths.js');
      const demo = packagePath('dist-dev/sandbox/demo.js');
      if (!existsSync(demo)) {
        process.stderr.write('mesh-xds: demo needs the sandbox (sandbox/ of the repository, built by `npm run build` into dist-dev/); this installation has none\n');
        return EXIT.usage;
      }
      const { demoCommand } = (await import(pathToFileURL(demo).href)) as { demoCommand: (args: string[]) => Promise<number> };
      return demoCommand(rest);
    }
    case '--version':
    case 'version': {
      const { packagePath } = await import('../paths.js');
      const pkg = JSON.parse(readFileSync(packagePath('package.json'), 'utf8'));
      process.stdout.write(`mesh-xds ${pkg.version}\n`);
      return 0;
    }
    case undefined:
      process.stderr.write(HELP);
      return EXIT.usage;
    case 'help':
    case '--help':
    case '-h':
      process.stdout.write(HELP);
      return 0;
    default: {
      const near = nearest(cmd, COMMANDS);
      process.stderr.write(`mesh-xds: unknown command "${cmd}"${near ? ` (did you mean ${near}?)` : ''}; the commands: mesh-xds --help\n`);
      return EXIT.usage;
    }
  }
}

/** Resolves once what was written to `stream` before has been handed to the OS (a pipe's reader may be slow). */
function drained(stream: NodeJS.WriteStream): Promise<void> {
  return new Promise((resolve) => stream.write('', () => resolve()));
}

/** Ends the process with `code` after stdout and stderr have drained; nothing else keeps it alive. */
async function exit(code: number): Promise<never> {
  await Promise.all([drained(process.stdout), drained(process.stderr)]);
  process.exit(code);
}

// The reader went away (`| head`): nothing more can be said to it; end quietly, as a process SIGPIPE ends would.
for (const stream of [process.stdout, process.stderr]) {
  stream.on('error', (e: NodeJS.ErrnoException) => process.exit(e.code === 'EPIPE' ? EXIT_PIPE_CLOSED : EXIT.problem));
}

const args = process.argv.slice(2);
const debug = args.includes('--debug');
main(args.filter((a) => a !== '--debug')).then(exit, (err: unknown) => {
  if (err instanceof ExitError) {
    process.stderr.write(`mesh-xds: ${err.message}\n${debug && err.stack ? `${err.stack}\n` : ''}`);
    return exit(err.exitCode);
  }
  // A crash: what it was and where, and a way to report it.
  process.stderr.write(`mesh-xds: ${(err as Error)?.stack ?? String(err)}\n(an unexpected error: please report it with the command that caused it)\n`);
  return exit(EXIT.problem);
});
