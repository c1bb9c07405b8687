import { compile } from '../../src/compile/compile.js';
import type { MeshIR } from '../../src/compile/ir.js';
import type { MeshConfig } from '../../src/model/mesh.js';
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
