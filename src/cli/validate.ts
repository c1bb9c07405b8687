/**
 * `mesh-xds validate -f FILE...`: the server's own checks, offline: what the folder source reports for every
 * object (syntax, the Retry CRD schema, Kubernetes names and fields), then a Retry's semantics. Every problem
 * names its field and the line the field is written on.
 */
import { readFileSync } from 'node:fs';
import { specPitfalls } from '../compile/pitfalls.js';
import { parseRetrySpec } from '../policy/retry.js';
import { loadRetrySchema } from '../sources/crd.js';
import { loadFileText } from '../sources/files.js';
import { objectLabel } from '../sources/manifests.js';
import { table, wantsJson } from './output.js';

interface Problem {
  field?: string;
  line?: number;
  message: string;
}

interface Row {
  file: string;
  object: string;
  line?: number;
  valid: boolean;
  problems: Problem[];
}

/** The rows for one file's text: every object with a problem, and every Retry. */
export function validateText(text: string, file: string): Row[] {
  const { errors, located } = loadFileText(text, file, undefined, loadRetrySchema());
  const rows: Row[] = [];
  const problem = (e: { field?: string; line?: number; message: string }): Problem => ({ ...(e.field ? { field: e.field } : {}), ...(e.line ? { line: e.line } : {}), message: e.message });
  // Errors of the file itself (syntax, an alias bomb): no object to hang them on.
  for (const e of errors.filter((x) => !x.object)) rows.push({ file, object: '-', line: e.line, valid: false, problems: [problem(e)] });
  const seen = new Set<string>();
  for (const { object, origin, lineOf } of located) {
    const label = objectLabel(object);
    if (seen.has(label)) continue;
    seen.add(label);
    const problems = errors.filter((e) => e.object === label).map(problem);
    if (object.kind === 'Retry') {
      // The semantic checks, for the fields the schema did not already fault.
      const faulted = new Set(problems.map((p) => p.field));
      const semantic = parseRetrySpec(object.spec);
      if (!semantic.ok) for (const p of semantic.problems) if (!faulted.has(p.field)) problems.push(problem({ ...p, line: lineOf?.(p.field) }));
      // Warnings: valid, yet not what anyone means (the server says the same in the status, condition Pitfall).
      if (semantic.ok && problems.length === 0) {
        const warnings = specPitfalls(semantic.spec).map((message) => ({ field: 'spec.retryPolicy.numRetries', line: lineOf?.('spec.retryPolicy.numRetries'), message: `warning: ${message}` }));
        if (warnings.length) {
          rows.push({ file, object: label, line: origin.line, valid: true, problems: warnings.map(problem) });
          continue;
        }
      }
    } else if (problems.length === 0) continue;
    rows.push({ file, object: label, line: origin.line, valid: problems.length === 0, problems });
  }
  return rows;
}

export function validateCommand(args: string[]): number {
  const files: string[] = [];
  for (let i = 0; i < args.length; i++) if ((args[i] === '-f' || args[i] === '--filename') && args[i + 1]) files.push(args[++i]);
  if (files.length === 0) {
    process.stderr.write('usage: mesh-xds validate -f FILE [-f FILE...] [-o json]\n');
    return 2;
  }
  const rows: Row[] = [];
  for (const file of files) {
    let text: string;
    try {
      text = file === '-' ? readFileSync(0, 'utf8') : readFileSync(file, 'utf8');
    } catch (e) {
      rows.push({ file, object: '-', valid: false, problems: [{ message: (e as Error).message }] });
      continue;
    }
    rows.push(...validateText(text, file));
  }
  const ok = rows.every((r) => r.valid);
  if (wantsJson(args)) process.stdout.write(`${JSON.stringify({ valid: ok, objects: rows }, null, 2)}\n`);
  else {
    process.stdout.write(
      table(
        ['FILE', 'LINE', 'OBJECT', 'RESULT'],
        rows.flatMap((r) =>
          r.valid && r.problems.length === 0
            ? [[r.file, String(r.line ?? ''), r.object, 'valid']]
            : r.problems.map((p, i) => [i ? '' : r.file, String(p.line ?? r.line ?? ''), i ? '' : r.object, `${p.field ? `${p.field}: ` : ''}${p.message}`]),
        ),
      ),
    );
    if (rows.length === 0) process.stdout.write('no Retry objects found, and no problems\n');
  }
  return ok ? 0 : 1;
}
