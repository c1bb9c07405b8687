/** What both golden stages share: the files a case's expected/ holds, and checking (or, updating, writing) one. */
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { expect } from 'vitest';

export const UPDATE = process.env.UPDATE_GOLDEN === '1';

/** A proxy key as a folder name (`sidecar:curl/curl` -> `sidecar_curl_curl`). */
export const proxyDir = (key: string): string => key.replace(/[:/]/g, '_');

/** Every file under a folder, relative, sorted. */
export function files(dir: string, prefix = ''): string[] {
  return readdirSync(dir, { withFileTypes: true })
    .flatMap((e) => (e.isDirectory() ? files(path.join(dir, e.name), `${prefix}${e.name}/`) : [`${prefix}${e.name}`]))
    .sort();
}

/** `value` against the case's expected/<name> (written instead, with UPDATE_GOLDEN=1). */
export function check(dir: string, name: string, value: unknown): void {
  const file = path.join(dir, 'expected', name);
  const text = `${JSON.stringify(value, null, 2)}\n`;
  if (UPDATE) {
    mkdirSync(path.dirname(file), { recursive: true });
    writeFileSync(file, text);
    return;
  }
  expect(existsSync(file), `${file} is missing: run npm run golden:update`).toBe(true);
  expect(JSON.parse(text), name).toEqual(JSON.parse(readFileSync(file, 'utf8')));
}
