/** `mesh-xds serve` as a subprocess: it becomes ready on the demo mesh and stops cleanly on SIGTERM. */
import { spawn } from 'node:child_process';
import path from 'node:path';
import { expect, it } from 'vitest';
import { ROOT } from './helpers/cli.js';

it('serves the demo, reports ready, and exits 0 on SIGTERM', async () => {
  const child = spawn(process.execPath, [path.join(ROOT, 'bin/mesh-xds.js'), 'serve', '--manifests', 'deploy/demo', '--ads-address', '127.0.0.1:0', '--debug-address', '127.0.0.1:0'], {
    cwd: ROOT,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  child.stdout.on('data', (d) => (out += d));
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  const debug = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no "listening" line:\n${out}`)), 15_000);
    child.stdout.on('data', () => {
      const line = out.split('\n').find((l) => l.includes('"msg":"listening"'));
      if (line) {
        clearTimeout(timer);
        resolve(JSON.parse(line).debug);
      }
    });
  });
  let ready = '';
  for (let i = 0; i < 100 && ready !== 'ready\n'; i++) {
    ready = await fetch(`http://${debug}/readyz`).then((r) => r.text());
    if (ready !== 'ready\n') await new Promise((r) => setTimeout(r, 50));
  }
  expect(ready).toBe('ready\n');
  // The log line comes through the pipe on its own time: /readyz may answer first.
  for (let i = 0; i < 100 && !out.includes('"msg":"mesh translated"'); i++) await new Promise((r) => setTimeout(r, 50));
  expect(out).toContain('"msg":"mesh translated"');
  child.kill('SIGTERM');
  expect(await exited).toBe(0);
});
