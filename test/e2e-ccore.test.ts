/**
 * A second real xDS client: gRPC C-core (Debian's python3-grpcio, installed by scripts/install-real-parts.sh) against the server
 * serving the demo mesh; attempts counted at the backend.
 */
import { execFile, execFileSync } from 'node:child_process';
import path from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import * as grpc from '@grpc/grpc-js';
import { bootstrap, startBackend, type Backend } from './helpers/grpc-xds.js';
import { startDemo, useBackend, type DemoServer } from './helpers/demo.js';

const PYTHON = '/usr/bin/python3';
function hasCCore(): boolean {
  try {
    execFileSync(PYTHON, ['-c', 'import grpc'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}
// npm test installs python3-grpcio (as root); a machine without it skips (and says so), CI never does.
const available = hasCCore();
if (!available && process.env.CI) throw new Error('python3-grpcio is missing: scripts/install-real-parts.sh installs it (apt-get install python3-grpcio)');

let backend: Backend;
let demo: DemoServer;

beforeAll(async () => {
  if (!available) return;
  backend = await startBackend(grpc.status.UNAVAILABLE);
  demo = await startDemo((dir) => useBackend(dir, backend.port, 'retryOn: unavailable\nnumRetries: 3\nretryBackoffBaseInterval: 10ms'));
});

afterAll(async () => {
  await demo?.close();
  await backend?.close();
});

function pythonCalls(identity: { namespace: string; serviceAccount: string }, n: number): Promise<string[]> {
  const env = {
    ...process.env,
    GRPC_XDS_BOOTSTRAP_CONFIG: JSON.stringify(bootstrap(demo.ads, { nodeId: `ccore-${identity.serviceAccount}`, ...identity })),
    // C-core is slow to ACK without it (REFERENCE §5).
    GRPC_CLIENT_CHANNEL_BACKUP_POLL_INTERVAL_MS: '10',
  };
  return new Promise((resolve, reject) =>
    execFile(PYTHON, [path.join(import.meta.dirname, 'clients/xds_call.py'), 'xds:///httpbin.httpbin.svc.cluster.local:14001', String(n)], { env, timeout: 60_000 }, (err, stdout, stderr) =>
      err ? reject(new Error(`${err.message}\n${stderr}`)) : resolve(stdout.trim().split('\n')),
    ),
  );
}

it.skipIf(!available)('gRPC C-core applies the served Retry: 4 attempts for curl/curl, 1 for other/other', async () => {
  const nacks: string[] = [];
  demo.running.registry.observe({ nacked: (c, _t, n) => nacks.push(`${c.identity.nodeId}: ${n.error}`) });
  let before = backend.attempts;
  expect(await pythonCalls({ namespace: 'curl', serviceAccount: 'curl' }, 2)).toEqual(['UNAVAILABLE', 'UNAVAILABLE']);
  expect(backend.attempts - before).toBe(8);
  before = backend.attempts;
  expect(await pythonCalls({ namespace: 'other', serviceAccount: 'other' }, 1)).toEqual(['UNAVAILABLE']);
  expect(backend.attempts - before).toBe(1);
  // C-core accepted everything it was sent.
  expect(nacks).toEqual([]);
});
