/**
 * Golden tests of the xDS stage alone (as Envoy Gateway's translator testdata): test/golden-xds/<case>/case.json names
 * its input IR (`ir`: the compile stage's reviewed output, test/golden/<case>/expected/ir.json, which test/golden checks
 * against compile(input.yaml): so an input here can never be an IR compile does not make) and the proxies, -> per
 * proxy expected/<proxy>/<CDS|EDS|LDS|RDS|SDS>.json. A change of the builders shows here on its own, with the mTLS
 * variants test/golden has not. Regenerate with `npm run golden:update`, then review.
 */
import { existsSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import type { MeshIR } from '../src/compile/ir.js';
import { SnapshotBuilder } from '../src/pipeline/build.js';
import { snapshotToJson } from './helpers/xds-json.js';
import { meshFromYaml } from './helpers/mesh.js';
import { check, files, proxyDir, UPDATE } from './helpers/golden.js';

const ROOT = path.join(import.meta.dirname, 'golden-xds');
const cases = readdirSync(ROOT)
  .filter((d) => existsSync(path.join(ROOT, d, 'case.json')))
  .sort();

describe('golden, xDS stage (IR -> Envoy resources)', () => {
  it('has cases', () => {
    expect(cases).toEqual(expect.arrayContaining(['guide', 'two-ports', 'headless-overlap', 'same-namespace']));
  });

  for (const c of cases) {
    it(c, () => {
      const dir = path.join(ROOT, c);
      const cfg: { ir: string; proxies?: string[]; mtls?: { trustDomain: string } } = JSON.parse(readFileSync(path.join(dir, 'case.json'), 'utf8'));
      // The compile stage's own output (checked by test/golden), never a hand-kept IR.
      const ir = JSON.parse(readFileSync(path.join(dir, cfg.ir), 'utf8')) as MeshIR;
      expect(Object.keys(ir).sort()).toEqual(Object.keys(meshFromYaml('').ir).sort());
      const builder = new SnapshotBuilder({ trustDomain: cfg.mtls?.trustDomain });
      builder.update(ir);
      // mTLS: stand-in PEM text per identity (the builder inlines it; the private key shows redacted, as in a dump).
      if (cfg.mtls) builder.setSecrets({ bundle: 'CA BUNDLE\n', certs: new Map(ir.identities.map((id) => [id, { cert: `CERT ${id}\n`, key: `KEY ${id}\n` }])) });
      if (UPDATE) rmSync(path.join(dir, 'expected'), { recursive: true, force: true });
      const written: string[] = [];
      for (const key of cfg.proxies ?? builder.eagerKeys()) {
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
