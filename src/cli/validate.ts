/** `mesh-xds validate -f FILE...`: the server's own checks (CRD schema, then semantics), offline. */
import { readFileSync } from 'node:fs';
import { parseRetrySpec } from '../policy/retry.js';
import { loadRetrySchema } from '../sources/crd.js';
import { parseManifestText } from '../sources/manifests.js';
import { loadFileText } from '../sources/files.js';
import { table, wantsJson } from './output.js';

interface Row {
  file: string;
  object: string;
  line?: number;
  valid: boolean;
  problems: { field?: string; message: string }[];
}

export function validateCommand(args: string[]): number {
  const files: string[] = [];
  for (let i = 0; i < args.length; i++) if ((args[i] === '-f' || args[i] === '--filename') && args[i + 1]) files.push(args[++i]);
  if (files.length === 0) {
    process.stderr.write('usage: mesh-xds validate -f FILE [-f FILE...] [-o json]\n');
    return 2;
  }
  const schema = loadRetrySchema();
  const rows: Row[] = [];
  for (const file of files) {
    let text: string;
    try {
      text = file === '-' ? readFileSync(0, 'utf8') : readFileSync(file, 'utf8');
    } catch (e) {
      rows.push({ file, object: '-', valid: false, problems: [{ message: (e as Error).message }] });
      continue;
    }
    const { errors } = loadFileText(text, file, undefined, schema);
    const parsed = parseManifestText(text, file);
    const bad = new Set(errors.map((e) => e.object));
    for (const e of errors.filter((x) => !x.object)) rows.push({ file, object: '-', line: e.line, valid: false, problems: [{ message: e.message }] });
    for (const { object, origin } of parsed.objects) {
      if (object.kind !== 'Retry') continue;
      const label = `Retry ${object.metadata?.namespace ?? 'default'}/${object.metadata?.name}`;
      const problems = errors.filter((e) => e.object === label).map((e) => ({ field: e.field, message: e.message }));
      if (!bad.has(label)) {
        const semantic = parseRetrySpec(object.spec);
        if (!semantic.ok) problems.push(...semantic.problems);
      }
      rows.push({ file, object: label, line: origin.line, valid: problems.length === 0, problems });
    }
  }
  const ok = rows.every((r) => r.valid);
  if (wantsJson(args)) process.stdout.write(`${JSON.stringify({ valid: ok, objects: rows }, null, 2)}\n`);
  else {
    process.stdout.write(
      table(
        ['FILE', 'LINE', 'OBJECT', 'RESULT'],
        rows.flatMap((r) =>
          r.valid
            ? [[r.file, String(r.line ?? ''), r.object, 'valid']]
            : r.problems.map((p, i) => [i ? '' : r.file, i ? '' : String(r.line ?? ''), i ? '' : r.object, `${p.field ? `${p.field}: ` : ''}${p.message}`]),
        ),
      ),
    );
    if (rows.length === 0) process.stdout.write('no Retry objects found\n');
  }
  return ok ? 0 : 1;
}
