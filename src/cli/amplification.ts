/**
 * `mesh-xds policy amplification -f FILE_OR_DIR... [-o json] [--max N]`: offline, like `validate`: the manifests are
 * read as the folder source reads them and compiled, and every call path of Retries in force is printed, worst
 * first (compile/amplification.ts). With --max N, exit 1 when a path makes more than N attempts, naming each.
 */
import { amplification, attemptsOf, describePath } from '../compile/amplification.js';
import { compile } from '../compile/compile.js';
import { convertObjects, meshStateOf, parseManifestText, type Located } from '../sources/manifests.js';
import { outputFormat, parseFlags, type Usage } from './args.js';
import { UsageError } from './errors.js';
import { readInputs } from './inputs.js';
import { table } from './output.js';

const USAGE: Usage = {
  command: 'policy amplification',
  usage: 'mesh-xds policy amplification -f FILE_OR_DIR [-f ...] [-o json] [--max N]',
  positionalHint: (arg) => `manifests are given with -f: mesh-xds policy amplification -f ${arg}`,
};

export async function amplificationCommand(args: string[]): Promise<number> {
  const parsed = parseFlags(USAGE, args, { filename: { type: 'string', short: 'f', multiple: true }, output: { type: 'string', short: 'o' }, max: { type: 'string' } });
  if (!parsed) return 0;
  const json = outputFormat(USAGE.command, parsed.values.output) === 'json';
  const maxFlag = parsed.values.max;
  const max = maxFlag === undefined ? undefined : Number(maxFlag);
  if (max !== undefined && (!/^\d+$/.test(maxFlag!) || max < 1)) throw new UsageError(`${USAGE.command}: --max ${maxFlag}: a whole number of attempts, at least 1`);
  const names = parsed.values.filename ?? [];
  if (!names.length) throw new UsageError(`${USAGE.command}: which manifests? give -f FILE_OR_DIR; usage: ${USAGE.usage}`);
  const located: Located[] = [];
  for (const input of await readInputs(USAGE.command, names)) {
    if (input.text === undefined) {
      process.stderr.write(`mesh-xds: ${input.file}: ${input.error}\n`);
      continue;
    }
    const parsedText = parseManifestText(input.text, input.file);
    for (const e of parsedText.errors) process.stderr.write(`mesh-xds: ${e.file}${e.line ? `:${e.line}` : ''}: ${e.message}\n`);
    located.push(...parsedText.objects);
  }
  const ir = compile(meshStateOf(convertObjects(located).objects, 'mesh-xds'));
  const report = amplification(ir);
  // A saturated path makes a million attempts or more: over any --max.
  const over = max === undefined ? [] : report.paths.filter((p) => p.saturated || p.attempts > max!);
  if (json) process.stdout.write(`${JSON.stringify(report, null, 2)}\n`);
  else {
    if (!ir.enableRetryPolicy) process.stdout.write('retry policies are disabled in this mesh (featureFlags.enableRetryPolicy=false): no Retry is in force\n');
    else if (!report.paths.length) process.stdout.write('no call path of Retries in force\n');
    else process.stdout.write(table(['ATTEMPTS', 'WORST TIME', 'CYCLE', 'PATH'], report.paths.map((p) => [attemptsOf(p), p.latency, p.cycle ? 'yes' : '', describePath(p)])));
    if (report.truncated) process.stdout.write('(the call graph is too dense to search whole: the worst paths are listed, some less bad ones are missing)\n');
  }
  for (const p of over) process.stderr.write(`mesh-xds: ${attemptsOf(p)} attempts (over --max ${max}): ${describePath(p)}\n`);
  return over.length ? 1 : 0;
}
