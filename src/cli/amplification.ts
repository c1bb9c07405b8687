/**
 * `mesh-xds policy amplification -f FILE_OR_DIR... [-o json] [--max N]`: offline, like `validate`: the manifests are
 * read as the folder source reads them and compiled, and every call path of Retries in force is printed, worst
 * first (compile/amplification.ts). With --max N, exit 1 when a path makes more than N attempts, naming each.
 */
import { readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { amplification, describePath } from '../compile/amplification.js';
import { compile } from '../compile/compile.js';
import { listManifestFiles } from '../sources/files.js';
import { convertObjects, meshStateOf, parseManifestText, type Located } from '../sources/manifests.js';
import { table, UsageError, wantsJson } from './output.js';

const USAGE = 'usage: mesh-xds policy amplification -f FILE_OR_DIR [-f ...] [-o json] [--max N]';


export async function amplificationCommand(args: string[]): Promise<number> {
  const inputs: string[] = [];
  let max: number | undefined;
  for (let i = 0; i < args.length; i++) {
    if ((args[i] === '-f' || args[i] === '--filename') && args[i + 1]) inputs.push(args[++i]!);
    else if (args[i] === '--max') {
      max = Number(args[++i]);
      if (!Number.isInteger(max) || max < 1) throw new UsageError(`--max ${args[i]}: a whole number of attempts, at least 1`);
    } else if (args[i] === '-o' || args[i] === '--output') i++;
    else throw new UsageError(`${args[i]}: unknown argument\n${USAGE}`);
  }
  if (!inputs.length) throw new UsageError(USAGE);
  const files: string[] = [];
  for (const input of inputs) {
    let isDir: boolean;
    try {
      isDir = statSync(input).isDirectory();
    } catch (e) {
      throw new UsageError(`-f ${input}: ${(e as Error).message}`);
    }
    files.push(...(isDir ? (await listManifestFiles(input)).files : [input]));
  }
  const located: Located[] = [];
  for (const file of files) {
    const parsed = parseManifestText(readFileSync(file, 'utf8'), path.relative('.', file) || file);
    for (const e of parsed.errors) process.stderr.write(`mesh-xds: ${e.file}${e.line ? `:${e.line}` : ''}: ${e.message}\n`);
    located.push(...parsed.objects);
  }
  const ir = compile(meshStateOf(convertObjects(located).objects, 'mesh-xds'));
  const report = amplification(ir);
  const over = max === undefined ? [] : report.paths.filter((p) => p.attempts > max!);
  if (wantsJson(args)) process.stdout.write(`${JSON.stringify(report, null, 2)}\n`);
  else {
    if (!ir.enableRetryPolicy) process.stdout.write('retry policies are disabled in this mesh (featureFlags.enableRetryPolicy=false): no Retry is in force\n');
    else if (!report.paths.length) process.stdout.write('no call path of Retries in force\n');
    else process.stdout.write(table(['ATTEMPTS', 'WORST TIME', 'CYCLE', 'PATH'], report.paths.map((p) => [String(p.attempts), p.latency, p.cycle ? 'yes' : '', describePath(p)])));
    if (report.truncated) process.stdout.write('(the call graph is too dense to walk whole: some paths are missing)\n');
  }
  for (const p of over) process.stderr.write(`mesh-xds: ${p.attempts} attempts (over --max ${max}): ${describePath(p)}\n`);
  return over.length ? 1 : 0;
}
