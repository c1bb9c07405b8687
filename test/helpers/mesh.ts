import { compile } from '../../src/compile/compile.js';
import type { MeshIR } from '../../src/compile/ir.js';
import type { MeshConfig, MeshState } from '../../src/model/mesh.js';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { SnapshotBuilder } from '../../src/pipeline/build.js';
import { convertObjects, meshStateOf, parseManifestText } from '../../src/sources/manifests.js';

/** Manifests text -> IR and a builder ready to make snapshots (what the file source and pipeline do). */
export function meshFromYaml(text: string, overrides: Partial<MeshConfig> = {}, meshName = 'mesh-xds'): { ir: MeshIR; builder: SnapshotBuilder; errors: unknown[] } {
  const parsed = parseManifestText(text, 'input.yaml');
  const converted = convertObjects(parsed.objects);
  const ir = compile(meshStateOf(converted.objects, meshName, overrides));
  const builder = new SnapshotBuilder();
  builder.update(ir);
  return { ir, builder, errors: [...parsed.errors, ...converted.errors] };
}

/** Manifests text -> the MeshState the file source would deliver. */
export function stateFromYaml(text: string, overrides: Partial<MeshConfig> = {}, meshName = 'mesh-xds'): MeshState {
  return meshStateOf(convertObjects(parseManifestText(text, 'input.yaml').objects).objects, meshName, overrides);
}

/** The MeshState of a golden case's input (test/golden/<name>/input.yaml). */
export function loadMesh(name: string): MeshState {
  return stateFromYaml(readFileSync(path.join(import.meta.dirname, '..', 'golden', name, 'input.yaml'), 'utf8'));
}
