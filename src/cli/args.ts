/**
 * Flags of the CLI's commands, read as node:util's parseArgs reads them (`--flag value`, `--flag=value`, `-f value`,
 * `-fvalue`), with every mistake a one-line usage error in the command's own terms: an unknown flag (and the
 * nearest known one), a flag without its value, a value where none is taken, a flag given twice, an argument
 * where none is taken.
 */
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { nearest, UsageError } from './errors.js';

type Options = NonNullable<ParseArgsConfig['options']>;

export interface Usage {
  /** How messages name the command: `validate`, `policy explain`. */
  readonly command: string;
  /** One line: `mesh-xds validate -f FILE_OR_DIR... [-o json]`. */
  readonly usage: string;
  /** Printed for --help / -h, ending in a newline (default: the usage line). */
  readonly help?: string;
  /** How many arguments that are not flags it takes (default none). */
  readonly positionals?: number;
  /** Said of an argument it does not take, e.g. `give files with -f`. */
  readonly positionalHint?: (arg: string) => string;
}

/**
 * The flags of `args`, or undefined when --help or -h asked for the usage (it is printed on stdout). Throws a
 * UsageError naming the mistake, followed by the usage line.
 */
export function parseFlags<const O extends Options>(u: Usage, args: string[], options: O): ReturnType<typeof parseStrict<O>> | undefined {
  const end = args.indexOf('--');
  const flags = end < 0 ? args : args.slice(0, end);
  if (!('help' in options) && (flags.includes('--help') || flags.includes('-h'))) {
    process.stdout.write(u.help ?? `usage: ${u.usage}\n`);
    return undefined;
  }
  const fail = (what: string): never => {
    throw new UsageError(`${u.command}: ${what}; usage: ${u.usage}`);
  };
  const names = Object.keys(options);
  const spelled = (name: string): string => (options[name].short ? `-${options[name].short}, --${name}` : `--${name}`);
  const { tokens } = parseArgs({ args, options, strict: false, allowPositionals: true, tokens: true });
  const seen = new Map<string, string>();
  let positionals = 0;
  for (const t of tokens) {
    if (t.kind === 'positional') {
      if (++positionals > (u.positionals ?? 0)) fail(`unexpected argument "${t.value}"${u.positionalHint ? ` (${u.positionalHint(t.value)})` : ''}`);
      continue;
    }
    if (t.kind !== 'option') continue;
    const spec = options[t.name];
    if (!spec) {
      const near = nearest(t.name, names) ?? names.find((n) => t.name.length >= 2 && n.startsWith(t.name.slice(0, 2)));
      fail(`unknown flag ${t.rawName}${near ? ` (did you mean ${spelled(near)}?)` : `; its flags: ${names.map((n) => `--${n}`).join(' ')}`}`);
    }
    if (spec.type === 'string') {
      if (t.value === undefined) fail(`${t.rawName} needs a value`);
      if (!t.inlineValue && t.value!.length > 1 && t.value!.startsWith('-')) fail(`${t.rawName} needs a value, not the flag ${t.value} (a value that starts with "-": ${t.rawName.startsWith('--') ? `${t.rawName}=VALUE` : `${t.rawName}VALUE`})`);
    } else if (t.value !== undefined) fail(`${t.rawName} takes no value (given "${t.value}")`);
    if (!spec.multiple) {
      const before = seen.get(t.name);
      if (before !== undefined) fail(`${spelled(t.name)} given twice${spec.type === 'string' ? ` (${before} and ${t.value})` : ''}: give it once`);
      seen.set(t.name, t.value ?? '');
    }
  }
  return parseStrict(args, options);
}

function parseStrict<const O extends Options>(args: string[], options: O) {
  return parseArgs({ args, options, strict: true, allowPositionals: true });
}

/** `-o`/`--output`: json, or the default table. */
export function outputFormat(command: string, value: string | undefined): 'json' | 'table' {
  if (value === undefined || value === 'json' || value === 'table') return value === 'json' ? 'json' : 'table';
  throw new UsageError(`${command}: -o ${value}: the output is a table, or json with -o json`);
}
