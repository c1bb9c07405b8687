/**
 * The real API server for the Kubernetes tests (src/sandbox/kube.ts): what is missing fails the run under
 * CI=true and elsewhere skips, saying so; and `mesh-xds serve --kubernetes` as a process.
 */
import path from 'node:path';
import { kubeProblems } from '../../src/sandbox/kube.js';
import { Proc } from '../../src/sandbox/netns.js';
import { until } from '../../src/sandbox/sandbox.js';
import { ROOT } from './cli.js';

/** Problems that keep the real API server from running here (waits for a build in progress). */
export async function kubeMissing(): Promise<string[]> {
  const problems = await kubeProblems();
  if (problems.length) {
    const text = `real API server tests cannot run here:\n- ${problems.join('\n- ')}`;
    if (process.env.CI) throw new Error(`${text}\n(CI=true: .ci/run must install them)`);
    console.warn(`${text}\nThey are skipped.`);
  }
  return problems;
}

export interface Served {
  proc: Proc;
  debug: string;
  ads: string;
  get(pathAndQuery: string): Promise<any>;
  stop(): Promise<void>;
}

/** `mesh-xds serve --kubernetes --kubeconfig FILE` as a process, ready (listed everything, ADS serving). */
export async function serveKubernetes(kubeconfig: string, extra: string[] = [], env: NodeJS.ProcessEnv = {}): Promise<Served> {
  const proc = Proc.spawn(
    'mesh-xds serve --kubernetes',
    process.execPath,
    [path.join(ROOT, 'bin/mesh-xds.js'), 'serve', '--kubernetes', '--kubeconfig', kubeconfig, '--namespace', 'mesh-xds', '--ads-address', '127.0.0.1:0', '--debug-address', '127.0.0.1:0', ...extra],
    { env: { LOG_LEVEL: 'info', ...env } },
  );
  const line = JSON.parse(await proc.waitFor(/"msg":"listening"/, 20_000));
  const debug = `http://${line.debug}`;
  await until(async () => (await fetch(`${debug}/readyz`)).status === 200, 30_000, 'mesh-xds serve --kubernetes to be ready').catch((e) => {
    throw new Error(`${(e as Error).message}\n${proc.tail()}`);
  });
  return {
    proc,
    debug,
    ads: line.ads,
    get: async (p) => (await fetch(`${debug}${p}`)).json(),
    stop: () => proc.stop(10_000),
  };
}
