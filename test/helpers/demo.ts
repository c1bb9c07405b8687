/** A copy of deploy/demo in a temp folder, served by the real server wiring (files, pipeline, ADS, debug). */
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pino from 'pino';
import type { ServeConfig } from '../../src/config.js';
import { serve, type Running } from '../../src/main.js';

export const DEMO = path.join(import.meta.dirname, '../../deploy/demo');

export interface DemoServer {
  dir: string;
  running: Running;
  ads: string;
  debug: string;
  /** Rewrites a file of the folder with `edit` applied to its text. */
  edit(file: string, edit: (text: string) => string): void;
  close(): Promise<void>;
}

export async function startDemo(prepare: (dir: string) => void = () => {}, log = pino({ level: process.env.LOG_LEVEL ?? 'silent' }), config: Partial<ServeConfig> = {}): Promise<DemoServer> {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'mesh-xds-demo-'));
  cpSync(DEMO, dir, { recursive: true });
  prepare(dir);
  const running = await serve(
    {
      adsAddress: '127.0.0.1:0',
      debugAddress: '127.0.0.1:0',
      manifests: dir,
      kubernetes: false,
      meshName: 'mesh-xds',
      overrides: {},
      logLevel: 'silent',
      namespace: 'mesh-xds',
      ...config,
    },
    log,
  );
  return {
    dir,
    running,
    ads: `127.0.0.1:${running.adsPort}`,
    debug: `http://127.0.0.1:${running.debugPort}`,
    edit(file, fn) {
      const p = path.join(dir, file);
      writeFileSync(p, fn(readFileSync(p, 'utf8')));
    },
    async close() {
      await running.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Points the demo's httpbin endpoints at a local backend port and sets the Retry's retryPolicy. */
export function useBackend(dir: string, port: number, retryPolicy: string): void {
  const hb = path.join(dir, 'httpbin.yaml');
  writeFileSync(hb, readFileSync(hb, 'utf8').replace(/port: 14001\n {4}protocol: TCP/, `port: ${port}\n    protocol: TCP`));
  setRetryPolicy(dir, retryPolicy);
}

export function setRetryPolicy(dir: string, retryPolicy: string): void {
  const r = path.join(dir, 'retry.yaml');
  writeFileSync(r, readFileSync(r, 'utf8').replace(/ {2}retryPolicy:[\s\S]*$/, `  retryPolicy:\n${retryPolicy.replace(/^/gm, '    ')}\n`));
}
