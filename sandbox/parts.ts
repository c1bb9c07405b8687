/**
 * The real parts a sandbox runs (Envoy, httpbin, Linux network namespaces and iptables), where they are, and
 * what is missing. `scripts/install-real-parts.sh` installs them (pinned) into `.cache/`.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { accessSync, chmodSync, constants, copyFileSync, existsSync, mkdirSync, renameSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { packagePath } from '../src/paths.js';

/** The one Envoy version of the project (the sidecar template's image), and the sidecars' uid. */
export { ENVOY_VERSION, PROXY_UID } from '../src/inject/template.js';
import { ENVOY_VERSION, PROXY_UID } from '../src/inject/template.js';
export const INSTALL_HINT = 'bash scripts/install-real-parts.sh (as root; npm test and npm run demo run it)';

export const ENVOY_BIN = packagePath('.cache/bin/envoy');
export const GUNICORN_BIN = packagePath('.cache/bin/gunicorn');

function runs(cmd: string, args: string[]): boolean {
  return spawnSync(cmd, args, { stdio: 'ignore', timeout: 10_000 }).status === 0;
}

function onPath(cmd: string): boolean {
  return runs('sh', ['-c', `command -v ${cmd} || test -x /usr/sbin/${cmd} || test -x /sbin/${cmd}`]);
}

/** What a sandbox needs that this machine lacks, each with how to get it; empty when everything is here. */
export function sandboxProblems(): string[] {
  const problems: string[] = [];
  if (process.platform !== 'linux') return [`the sandbox needs Linux network namespaces (this is ${process.platform})`];
  if (process.getuid?.() !== 0) problems.push('the sandbox must run as root (network namespaces, iptables, running Envoy as uid 1500)');
  for (const [cmd, pkg] of [['ip', 'iproute2'], ['iptables', 'iptables'], ['setpriv', 'util-linux'], ['curl', 'curl']]) {
    if (!onPath(cmd)) problems.push(`${cmd} is missing (apt-get install ${pkg}, or ${INSTALL_HINT})`);
  }
  if (!existsSync(ENVOY_BIN)) problems.push(`Envoy ${ENVOY_VERSION} is missing at ${ENVOY_BIN} (${INSTALL_HINT})`);
  else {
    const version = spawnSync(ENVOY_BIN, ['--version'], { encoding: 'utf8', timeout: 10_000 }).stdout ?? '';
    if (!version.includes(`/${ENVOY_VERSION}/`)) problems.push(`${ENVOY_BIN} is not Envoy ${ENVOY_VERSION} (${version.trim() || 'it does not run'}; ${INSTALL_HINT})`);
  }
  if (!existsSync(GUNICORN_BIN)) problems.push(`httpbin and gunicorn are missing at ${GUNICORN_BIN} (${INSTALL_HINT})`);
  return problems;
}

let sidecarEnvoy: string | undefined;

/**
 * The Envoy binary as the sidecars' uid can run it. When a directory above `.cache` is closed to other users
 * (a checkout under /root), a copy is kept in the system's temp folder, once per version.
 */
export function envoyForSidecars(): string {
  if (sidecarEnvoy) return sidecarEnvoy;
  const real = execFileSync('realpath', [ENVOY_BIN], { encoding: 'utf8' }).trim();
  if (runs('setpriv', [`--reuid=${PROXY_UID}`, `--regid=${PROXY_UID}`, '--clear-groups', real, '--version'])) return (sidecarEnvoy = real);
  const dir = path.join(os.tmpdir(), `mesh-xds-envoy-${ENVOY_VERSION}`);
  const copy = path.join(dir, 'envoy');
  if (!existsSync(copy)) {
    mkdirSync(dir, { recursive: true, mode: 0o755 });
    chmodSync(dir, 0o755);
    copyFileSync(real, `${copy}.tmp`);
    chmodSync(`${copy}.tmp`, 0o755);
    renameSync(`${copy}.tmp`, copy);
  }
  accessSync(copy, constants.X_OK);
  return (sidecarEnvoy = copy);
}
