/**
 * Golden tests of the xDS stage alone (as Envoy Gateway's translator testdata): test/golden-xds/<case>/ir.json, a
 * MeshIR as plain data (+ case.json: the proxies), -> per proxy expected/<proxy>/<CDS|EDS|LDS|RDS>.json. The input
 * is the IR, not manifests: a change of the builders shows here on its own, whatever compile does; a change of
 * compile shows in test/golden (manifests -> IR -> xDS). Regenerate with `npm run golden:update`, then review.
 */
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import type { MeshIR } from '../src/compile/ir.js';
import { SnapshotBuilder } from '../src/pipeline/build.js';
import { snapshotToJson } from '../src/xds/resources/json.js';

const ROOT = path.join(import.meta.dirname, 'golden-xds');
const UPDATE = process.env.UPDATE_GOLDEN === '1';

const proxyDir = (key: string): string => key.replace(/[:/]/g, '_');

function files(dir: string, prefix = ''): string[] {
  return readdirSync(dir, { withFileTypes: true })
    .flatMap((e) => (e.isDirectory() ? files(path.join(dir, e.name), `${prefix}${e.name}/`) : [`${prefix}${e.name}`]))
    .sort();
}

const cases = readdirSync(ROOT)
  .filter((d) => existsSync(path.join(ROOT, d, 'ir.json')))
  .sort();

describe('golden, xDS stage (IR -> Envoy resources)', () => {
  it('has cases', () => {
    expect(cases).toEqual(expect.arrayContaining(['guide', 'two-ports', 'headless-overlap', 'same-namespace']));
  });

  for (const c of cases) {
    it(c, () => {
      const dir = path.join(ROOT, c);
      const ir = JSON.parse(readFileSync(path.join(dir, 'ir.json'), 'utf8')) as MeshIR;
      const cfg: { proxies?: string[] } = existsSync(path.join(dir, 'case.json')) ? JSON.parse(readFileSync(path.join(dir, 'case.json'), 'utf8')) : {};
      const builder = new SnapshotBuilder();
      builder.update(ir);
      if (UPDATE) rmSync(path.join(dir, 'expected'), { recursive: true, force: true });
      const written: string[] = [];
      for (const key of cfg.proxies ?? builder.eagerKeys()) {
        // build() runs every check the server runs before publishing (protos, validate rules, references).
        for (const [type, resources] of Object.entries(snapshotToJson(builder.build(key)))) {
          const name = `${proxyDir(key)}/${type}.json`;
          const file = path.join(dir, 'expected', name);
          const text = `${JSON.stringify(resources, null, 2)}\n`;
          written.push(name);
          if (UPDATE) {
            mkdirSync(path.dirname(file), { recursive: true });
            writeFileSync(file, text);
            continue;
          }
          expect(existsSync(file), `${file} is missing: run npm run golden:update`).toBe(true);
          expect(JSON.parse(text), name).toEqual(JSON.parse(readFileSync(file, 'utf8')));
        }
      }
      if (!UPDATE) expect(files(path.join(dir, 'expected'))).toEqual(written.sort());
    });
  }
});
