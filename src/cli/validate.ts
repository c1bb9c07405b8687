/**
 * `mesh-xds validate -f FILE_OR_DIR...`: the server's own checks, offline: what the folder source reports for every
 * object (syntax, the Retry CRD schema, Kubernetes names and fields), then a Retry's semantics, then what the
 * server's compile makes of the Retries together (one that loses a conflict is Conflicted). Every problem names its
 * field and the line the field is written on. A kind mesh-xds does not know that looks meant for it (a slip of a
 * known kind, or an apiVersion of its groups) is a problem naming the known kinds.
 */
import { compile } from '../compile/compile.js';
import { specPitfalls } from '../compile/pitfalls.js';
import { MONITORED_BY_LABEL } from '../model/mesh.js';
import { parseRetrySpec } from '../policy/retry.js';
import { parseRouteSpec } from '../compile/routes.js';
import { ROUTE_KINDS, type RouteKind } from '../model/mesh.js';
import { loadRetrySchema, type RetrySchemaCheck } from '../sources/crd.js';
import { loadFileText } from '../sources/files.js';
import { convertObjects, meshStateOf, objectLabel, SUPPORTED_KINDS, type Located } from '../sources/manifests.js';
import { outputFormat, parseFlags, type Usage } from './args.js';
import { nearest, UsageError } from './errors.js';
import { readInputs } from './inputs.js';
import { table } from './output.js';

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

/** The API groups of mesh-xds's own kinds: a kind of these it does not know is a mistake, not someone else's object. */
const OWN_GROUPS = ['policy.flomesh.io/', 'config.flomesh.io/'];

/** A kind not used by mesh-xds that looks meant for it: the problem, naming the known kinds and the nearest one. */
function unknownKind(kind: string, apiVersion: unknown): string | undefined {
  const near = nearest(kind, SUPPORTED_KINDS);
  if (!near && !OWN_GROUPS.some((g) => String(apiVersion ?? '').startsWith(g))) return undefined;
  return `kind "${kind}" is not one mesh-xds knows${near ? ` (did you mean ${near}?)` : ''}; it reads ${SUPPORTED_KINDS.join(', ')} and skips other Kubernetes kinds`;
}

/** The rows for one file's text: every object with a problem, and every Retry. */
export function validateText(text: string, file: string): Row[] {
  return checkText(text, file, loadRetrySchema()).rows;
}

/** The rows for one file's text, and its objects that the folder source would use. */
function checkText(text: string, file: string, schema: RetrySchemaCheck): { rows: Row[]; used: Located[] } {
  const { errors, located, good } = loadFileText(text, file, undefined, schema);
  const rows: Row[] = [];
  const labels = new Set([...good.values()].map((g) => g.label));
  const used = located.filter((l) => labels.has(objectLabel(l.object)));
  const problem = (e: { field?: string; line?: number; message: string }): Problem => ({ ...(e.field ? { field: e.field } : {}), ...(e.line ? { line: e.line } : {}), message: e.message });
  // Errors of the file itself (syntax, an alias bomb): no object to hang them on.
  for (const e of errors.filter((x) => !x.object)) rows.push({ file, object: '-', line: e.line, valid: false, problems: [problem(e)] });
  const seen = new Set<string>();
  for (const { object, origin, lineOf } of located) {
    const label = objectLabel(object);
    if (seen.has(label)) continue;
    seen.add(label);
    const problems = errors.filter((e) => e.object === label).map(problem);
    const unknown = object.kind && !SUPPORTED_KINDS.includes(object.kind) ? unknownKind(object.kind, object.apiVersion) : undefined;
    if (unknown) problems.push(problem({ field: 'kind', line: lineOf?.('kind'), message: unknown }));
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
    } else if (ROUTE_KINDS.includes(object.kind as RouteKind)) {
      // A route's semantic checks (what the CRD's schema cannot say: unsupported filters, regexes Envoy refuses, ...).
      const faulted = new Set(problems.map((p) => p.field));
      const ns = typeof object.metadata?.namespace === 'string' ? object.metadata.namespace : 'default';
      for (const p of parseRouteSpec(object.kind as RouteKind, ns, object.spec).problems) if (!faulted.has(p.field)) problems.push(problem({ ...p, line: lineOf?.(p.field) }));
    } else if (problems.length === 0) continue;
    rows.push({ file, object: label, line: origin.line, valid: problems.length === 0, problems });
  }
  return { rows, used };
}

/**
 * What the server's compile makes of the Retries of all the files together: one that loses every destination to
 * an older one is Conflicted (a problem), one that loses some keeps the rest (a warning). Judged as in a mesh that
 * holds their namespaces, with retry policies on: whether it does is the cluster's to say, not the files'.
 */
function conflicts(used: Located[], rows: Row[]): void {
  const { objects } = convertObjects(used);
  if (!objects.retries.length && !objects.routes.length) return;
  const meshName = 'mesh-xds';
  const namespaces = [...new Set([...objects.retries, ...objects.routes, ...objects.services].map((r) => r.namespace))].map((name) => ({ name, labels: { [MONITORED_BY_LABEL]: meshName } }));
  const ir = compile(meshStateOf({ ...objects, namespaces }, meshName, { enableRetryPolicy: true }));
  // Routes whose Services are in the files: what the server would write in their status (a route's parents and
  // backends elsewhere are the cluster's to say).
  if (objects.services.length) {
    for (const r of ir.routeReports) {
      const row = rows.find((x) => x.object === `${r.kind} ${r.namespace}/${r.name}`);
      if (!row || r.problems.length) continue;
      for (const parent of r.parents) {
        for (const c of parent.conditions.filter((x) => x.status === 'False')) {
          row.problems.push({ field: 'spec.parentRefs', ...(row.line ? { line: row.line } : {}), message: `${c.type === 'Accepted' ? '' : 'warning: '}the server sets ${c.type} False (${c.reason}) for parent ${parent.parentRef.namespace ?? r.namespace}/${parent.parentRef.name}: ${c.message}` });
          if (c.type === 'Accepted') row.valid = false;
        }
      }
    }
  }
  const stamped = objects.retries.some((r) => r.creationTimestamp);
  const order = stamped ? '' : ' (the files give no creationTimestamp: the first by namespace/name wins here; in a cluster, the first created)';
  for (const p of ir.policies) {
    const lost = p.messages.filter((m) => m.startsWith('conflicts with '));
    if (p.state !== 'Conflicted' && !lost.length) continue;
    const label = `Retry ${p.namespace}/${p.name}`;
    const row = rows.find((r) => r.object === label && r.file === p.origin?.file);
    if (!row) continue;
    const conflicted = p.state === 'Conflicted';
    const message = conflicted ? `the server marks it Conflicted: ${p.reason}${order}` : `warning: some destinations conflict: ${lost.join('; ')}${order}`;
    row.problems.push({ field: 'spec.destinations', ...(row.line ? { line: row.line } : {}), message });
    if (conflicted) row.valid = false;
  }
}

const USAGE: Usage = {
  command: 'validate',
  usage: 'mesh-xds validate -f FILE_OR_DIR [-f FILE_OR_DIR...] [-o json]',
  positionalHint: (arg) => `manifests are given with -f: mesh-xds validate -f ${arg}`,
};

export async function validateCommand(args: string[]): Promise<number> {
  const parsed = parseFlags(USAGE, args, { filename: { type: 'string', short: 'f', multiple: true }, output: { type: 'string', short: 'o' } });
  if (!parsed) return 0;
  const json = outputFormat('validate', parsed.values.output) === 'json';
  const names = parsed.values.filename ?? [];
  if (!names.length) throw new UsageError(`validate: which manifests? give -f FILE_OR_DIR (- for stdin); usage: ${USAGE.usage}`);
  const rows: Row[] = [];
  const used: Located[] = [];
  const schema = loadRetrySchema();
  for (const input of await readInputs('validate', names)) {
    if (input.text === undefined) {
      rows.push({ file: input.file, object: '-', valid: false, problems: [{ message: input.error! }] });
      continue;
    }
    const checked = checkText(input.text, input.file, schema);
    rows.push(...checked.rows);
    used.push(...checked.used);
  }
  conflicts(used, rows);
  const ok = rows.every((r) => r.valid);
  if (json) process.stdout.write(`${JSON.stringify({ valid: ok, objects: rows }, null, 2)}\n`);
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
    if (rows.length === 0) process.stdout.write('no Retry or route objects found, and no problems\n');
  }
  return ok ? 0 : 1;
}
