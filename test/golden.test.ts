/**
 * Golden tests: test/golden/<case>/input.yaml (+ case.json: mesh config overrides, proxies) -> expected/.
 * Regenerate with `npm run golden:update`, then review the diff by hand.
 */
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { meshFromYaml } from './helpers/mesh.js';
import { snapshotToJson } from '../src/xds/json.js';

const ROOT = path.join(import.meta.dirname, 'golden');
const UPDATE = process.env.UPDATE_GOLDEN === '1';

interface CaseConfig {
  /** Input of another case, relative to this one (to vary only the mesh config). */
  input?: string;
  set?: Record<string, boolean>;
  proxies?: string[];
}

function fileName(key: string): string {
  return `${key.replace(/[:/]/g, '_')}.json`;
}

function check(dir: string, name: string, value: unknown): void {
  const file = path.join(dir, 'expected', name);
  const text = `${JSON.stringify(value, null, 2)}\n`;
  if (UPDATE) {
    writeFileSync(file, text);
    return;
  }
  expect(existsSync(file), `${file} is missing: run npm run golden:update`).toBe(true);
  expect(JSON.parse(text)).toEqual(JSON.parse(readFileSync(file, 'utf8')));
}

const cases = readdirSync(ROOT)
  .filter((d) => existsSync(path.join(ROOT, d, 'input.yaml')) || existsSync(path.join(ROOT, d, 'case.json')))
  .sort();

describe('golden', () => {
  it('has the cases the translation must cover', () => {
    expect(cases).toEqual(expect.arrayContaining(['guide', 'flag-off', 'invalid-and-valid', 'conflict', 'two-ports', 'same-namespace', 'headless', 'tcp-port', 'no-endpoints']));
  });

  for (const c of cases) {
    it(c, () => {
      const dir = path.join(ROOT, c);
      const cfg: CaseConfig = existsSync(path.join(dir, 'case.json')) ? JSON.parse(readFileSync(path.join(dir, 'case.json'), 'utf8')) : {};
      const input = path.join(dir, cfg.input ?? 'input.yaml');
      const { ir, builder, errors } = meshFromYaml(readFileSync(input, 'utf8'), cfg.set ?? {});
      if (UPDATE) {
        rmSync(path.join(dir, 'expected'), { recursive: true, force: true });
        mkdirSync(path.join(dir, 'expected'));
      }
      check(dir, 'status.json', { manifestErrors: errors, policies: ir.policies, diagnostics: ir.diagnostics });
      const keys = cfg.proxies ?? builder.eagerKeys();
      for (const key of keys) {
        // build() runs every check the server runs before publishing (protos, validate rules, references).
        check(dir, fileName(key), snapshotToJson(builder.build(key)));
      }
      if (!UPDATE) {
        const expected = readdirSync(path.join(dir, 'expected')).sort();
        expect(expected).toEqual(['status.json', ...keys.map(fileName)].sort());
      }
    });
  }
});
