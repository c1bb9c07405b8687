/**
 * Golden tests, one stage each (as Envoy Gateway keeps them): test/golden/<case>/input.yaml (+ case.json: mesh
 * config overrides, proxies) -> expected/ir.json (the compiled mesh: services, identities, which Retry applies,
 * every policy's status, diagnostics) and expected/manifest-errors.json (what the source refused), then per proxy
 * expected/<proxy>/<CDS|EDS|LDS|RDS>.json: its resources in the proto3 JSON Envoy's own /config_dump prints.
 * Regenerate with `npm run golden:update`, then review the diff by hand.
 */
import { existsSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { check, files, proxyDir, UPDATE } from './helpers/golden.js';
import { meshFromYaml } from './helpers/mesh.js';
import { snapshotToJson } from './helpers/xds-json.js';

const ROOT = path.join(import.meta.dirname, 'golden');

interface CaseConfig {
  /** Input of another case, relative to this one (to vary only the mesh config). */
  input?: string;
  set?: Record<string, boolean>;
  proxies?: string[];
}

const cases = readdirSync(ROOT)
  .filter((d) => existsSync(path.join(ROOT, d, 'input.yaml')) || existsSync(path.join(ROOT, d, 'case.json')))
  .sort();

describe('golden', () => {
  it('has the cases the translation must cover', () => {
    expect(cases).toEqual(expect.arrayContaining(['guide', 'flag-off', 'invalid-and-valid', 'conflict', 'two-ports', 'same-namespace', 'headless', 'tcp-port', 'no-endpoints', 'headless-shared-target', 'headless-overlap']));
  });

  for (const c of cases) {
    it(c, () => {
      const dir = path.join(ROOT, c);
      const cfg: CaseConfig = existsSync(path.join(dir, 'case.json')) ? JSON.parse(readFileSync(path.join(dir, 'case.json'), 'utf8')) : {};
      const input = path.join(dir, cfg.input ?? 'input.yaml');
      const { ir, builder, errors } = meshFromYaml(readFileSync(input, 'utf8'), cfg.set ?? {});
      if (UPDATE) rmSync(path.join(dir, 'expected'), { recursive: true, force: true });
      check(dir, 'manifest-errors.json', errors);
      // The IR is plain data: it prints as it is.
      check(dir, 'ir.json', ir);
      const keys = cfg.proxies ?? builder.eagerKeys();
      const written = ['ir.json', 'manifest-errors.json'];
      for (const key of keys) {
        // build() runs every check the server runs before publishing (protos, validate rules, references).
        for (const [type, resources] of Object.entries(snapshotToJson(builder.build(key)))) {
          check(dir, `${proxyDir(key)}/${type}.json`, resources);
          written.push(`${proxyDir(key)}/${type}.json`);
        }
      }
      if (!UPDATE) expect(files(path.join(dir, 'expected'))).toEqual(written.sort());
    });
  }
});
