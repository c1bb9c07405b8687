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

it('on a terminal, says for people where ADS and the page are and that the mesh was translated, one line each', async () => {
  // script(1) gives the server a pseudo-terminal for its output, as a person's shell does.
  const cmd = `${process.execPath} ${path.join(ROOT, 'bin/mesh-xds.js')} serve --manifests deploy/demo --ads-address 127.0.0.1:0 --debug-address 127.0.0.1:0`;
  const child = spawn('script', ['-qfec', cmd, '/dev/null'], { cwd: ROOT, stdio: ['pipe', 'pipe', 'pipe'] });
  let out = '';
  child.stdout.on('data', (d) => (out += d));
  const exited = new Promise<void>((resolve) => child.on('exit', () => resolve()));
  try {
    for (let i = 0; i < 300 && !/mesh translated/.test(out); i++) await new Promise((r) => setTimeout(r, 50));
    const lines = out.split(/\r?\n/);
    const page = lines.find((l) => l.startsWith('mesh-xds: the page on '));
    expect(page, out).toMatch(/^mesh-xds: the page on http:\/\/127\.0\.0\.1:\d+\/ui$/);
    expect(lines.find((l) => l.startsWith('mesh-xds: ADS (point Envoy here) on '))).toMatch(/on 127\.0\.0\.1:\d+$/);
    expect(lines.find((l) => l.startsWith('mesh-xds: mesh translated: '))).toMatch(/: 1 policies, \d+ configurations rebuilt, 0 failed, in [\d.]+ ms$/);
    // No JSON on a terminal; the page answers where it says.
    expect(out).not.toContain('{"level"');
    expect((await fetch(page!.slice('mesh-xds: the page on '.length))).status).toBe(200);
  } finally {
    child.kill('SIGTERM');
    await exited;
  }
});
