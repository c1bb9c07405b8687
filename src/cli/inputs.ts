/**
 * The manifests of the offline commands (`validate`, `policy amplification`, `policy explain -f`), named by `-f` as
 * kubectl takes them: a file, a folder (its .yaml, .yml and .json files, read as `serve --manifests` reads it,
 * subfolders too), or `-` for stdin. A name that does not exist is a usage error; a file that cannot be read, or
 * one bigger than the server would read, is that file's error.
 */
import { readFileSync, readSync, statSync } from 'node:fs';
import { listManifestFiles, MAX_MANIFEST_BYTES } from '../sources/files.js';
import { UsageError } from './errors.js';

export interface Input {
  /** As messages name it: the path given, or the folder's path joined with the file's. */
  readonly file: string;
  readonly text?: string;
  /** Why it could not be read. */
  readonly error?: string;
}

export async function readInputs(command: string, names: readonly string[]): Promise<Input[]> {
  const out: Input[] = [];
  for (const name of names) {
    if (name === '-') {
      out.push(read('-', 0));
      continue;
    }
    let isDir: boolean;
    try {
      isDir = statSync(name).isDirectory();
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      throw new UsageError(`${command}: -f ${name}: ${code === 'ENOENT' ? 'no such file or directory' : (e as Error).message}`);
    }
    if (!isDir) {
      out.push(read(name, name));
      continue;
    }
    const listed = await listManifestFiles(name);
    for (const e of listed.errors) out.push({ file: e.file === '.' ? name : `${name}/${e.file}`, error: e.message });
    if (!listed.files.length && !listed.errors.length) throw new UsageError(`${command}: -f ${name}: a folder without any .yaml, .yml or .json file`);
    for (const file of listed.files) out.push(read(file, file));
  }
  return out;
}

const TOO_BIG = `bigger than ${MAX_MANIFEST_BYTES / 1024 / 1024} MiB, which the server does not read either`;

/** Standard input, up to one byte over the bound (no more is held, however much comes). */
function readStdin(): Buffer | undefined {
  const buf = Buffer.alloc(MAX_MANIFEST_BYTES + 1);
  let n = 0;
  for (;;) {
    let got: number;
    try {
      got = readSync(0, buf, n, buf.length - n, null);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'EAGAIN') continue;
      if ((e as NodeJS.ErrnoException).code === 'EOF') break;
      throw e;
    }
    if (got === 0) break;
    n += got;
    if (n > MAX_MANIFEST_BYTES) return undefined;
  }
  return buf.subarray(0, n);
}

/** One file, or `-` for standard input, bounded as the server reads files. */
export function readInput(name: string): Input {
  return read(name, name === '-' ? 0 : name);
}

function read(file: string, from: string | 0): Input {
  try {
    if (from === 0) {
      const buf = readStdin();
      return buf ? { file, text: buf.toString('utf8') } : { file, error: TOO_BIG };
    }
    if (statSync(from).size > MAX_MANIFEST_BYTES) return { file, error: TOO_BIG };
    const text = readFileSync(from, 'utf8');
    if (text.length > MAX_MANIFEST_BYTES) return { file, error: TOO_BIG };
    return { file, text };
  } catch (e) {
    return { file, error: `cannot read: ${(e as Error).message}` };
  }
}
