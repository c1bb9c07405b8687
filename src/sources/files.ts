/**
 * The folder source: every .yaml/.yml/.json file of a directory (recursively), watched. A change is applied
 * 200 ms after the last one, and at least once a second while changes keep coming. Every failure stays with
 * its file or object: a file that cannot be read or parsed (syntax, an alias bomb, too big, a symlink loop,
 * no permission) or an unreadable directory is one error naming it, listed in /debug/mesh and /metrics, and
 * keeps its last good objects; every other file's edits keep applying. Nothing here can throw out of a timer
 * or watcher, and large trees are read without blocking the event loop for long.
 */
import { watch, type FSWatcher } from 'node:fs';
import { Worker } from 'node:worker_threads';
import { readdir, readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from 'pino';
import type { MeshConfig, MeshState } from '../model/mesh.js';
import { convertObjects, emptyObjects, meshStateOf, objectLabel, parseManifestText, type Located, type ManifestError, type MeshObjects } from './manifests.js';
import type { RetrySchemaCheck } from './crd.js';

const EXTENSIONS = new Set(['.yaml', '.yml', '.json']);
const KINDS = Object.keys(emptyObjects()) as (keyof MeshObjects)[];
/** Files larger than this are not read (an error says so): a YAML document costs many times its size to parse. */
export const MAX_MANIFEST_BYTES = 4 * 1024 * 1024;
const DEBOUNCE_MS = 200;
/** A steady stream of edits is still applied at least this often. */
const MAX_WAIT_MS = 1000;
/** Work done between two yields to the event loop while reading a folder. */
const SLICE_MS = 20;

/** One object a file defines, converted, with where it is written. */
interface GoodObject {
  objects: MeshObjects;
  label: string;
  doc?: number;
  line?: number;
}

interface FileState {
  /** The path relative to the folder, as messages name the file. */
  rel: string;
  /** Last good objects of this file, by kind/namespace/name. */
  good: Map<string, GoodObject>;
  errors: ManifestError[];
  /** `mtime:size` of what was read, or `error:CODE` for a file that could not be: unchanged means no re-read. */
  signature: string;
}

export interface FileSourceOptions {
  dir: string;
  meshName: string;
  overrides?: Partial<MeshConfig>;
  log: Logger;
  retrySchema?: RetrySchemaCheck;
  debounceMs?: number;
  /** The parsing worker's memory and time bounds (PARSE_HEAP_MB, PARSE_TIMEOUT_MS unless set). */
  parseLimits?: Partial<ParseLimits>;
  /** Called with every new mesh (after the initial load too). */
  onChange: (state: MeshState) => void;
}

function objectKey(o: Located['object'], defaultNs: string): string {
  return `${o.kind}/${o.metadata?.namespace ?? defaultNs}/${o.metadata?.name}`;
}

/** File system requests in flight at once while reading the folder. */
const IO_CONCURRENCY = 32;

const yieldToEventLoop = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

/** `fn` over `items`, at most `limit` at a time, results in order. */
async function mapLimit<T, R>(items: readonly T[], limit: number, fn: (item: T) => Promise<R>): Promise<R[]> {
  const out: R[] = new Array(items.length);
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < items.length) {
      const i = next++;
      out[i] = await fn(items[i]);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return out;
}

/** What a filesystem error says, for a person: the code and the message. */
function fsError(e: unknown): string {
  const err = e as NodeJS.ErrnoException;
  return err.code ? `${err.code}: ${err.message.replace(/^[A-Z]+: /, '')}` : String(err?.message ?? e);
}

/**
 * The manifest files under `dir` (sorted), the directories walked, and an error per directory that cannot be
 * read. Symlinks to files are followed when read; symlinks to directories are not walked (no loops).
 */
export async function listManifestFiles(dir: string): Promise<{ files: string[]; dirs: string[]; errors: ManifestError[] }> {
  const files: string[] = [];
  const dirs: string[] = [];
  const errors: ManifestError[] = [];
  const walk = async (d: string): Promise<void> => {
    let entries;
    try {
      entries = await readdir(d, { withFileTypes: true });
    } catch (e) {
      errors.push({ file: path.relative(dir, d) || '.', message: `cannot read directory: ${fsError(e)}; its files are kept as last read` });
      return;
    }
    dirs.push(d);
    for (const entry of entries) {
      if (entry.name.startsWith('.')) continue;
      const p = path.join(d, entry.name);
      if (entry.isDirectory()) await walk(p);
      else if (EXTENSIONS.has(path.extname(entry.name).toLowerCase())) files.push(p);
    }
  };
  await walk(dir);
  return { files: files.sort(), dirs, errors };
}

/** One object of a file: its key and where it is written, and what it converted to or why it failed. */
interface FileEntry {
  key: string;
  label: string;
  doc?: number;
  line?: number;
  good?: MeshObjects;
  errors?: ManifestError[];
}

/** What a file's text holds, as plain data (it crosses from the parsing worker). */
export interface FileObjects {
  /** The file's own errors (syntax, an alias bomb): none of its objects is used. */
  readonly fileErrors: ManifestError[];
  readonly entries: FileEntry[];
  readonly skipped: string[];
}

/** Converts what a parse found, object by object (pure: no file I/O, no state). */
function objectsOf(parsed: { objects: Located[]; errors: ManifestError[] }, file: string, retrySchema?: RetrySchemaCheck): FileObjects {
  if (parsed.errors.length > MAX_ERRORS_PER_FILE) {
    const more = parsed.errors.length - MAX_ERRORS_PER_FILE + 1;
    return { fileErrors: [...parsed.errors.slice(0, MAX_ERRORS_PER_FILE - 1), { file, message: `and ${more} more errors in this file (the first ${MAX_ERRORS_PER_FILE - 1} are listed)` }], entries: [], skipped: [] };
  }
  if (parsed.errors.length) return { fileErrors: parsed.errors, entries: [], skipped: [] };
  const entries: FileEntry[] = [];
  const skipped: string[] = [];
  const seen = new Map<string, FileEntry>();
  for (const located of parsed.objects) {
    const { object, origin } = located;
    const entry: FileEntry = { key: objectKey(object, 'default'), label: objectLabel(object), doc: origin.doc, line: origin.line };
    const first = seen.get(entry.key);
    if (first) {
      entries.push({ ...entry, errors: [{ file, doc: origin.doc, line: origin.line, object: entry.label, message: `is defined twice in ${file} (first at line ${first.line}, which is used); this definition is ignored` }] });
      continue;
    }
    seen.set(entry.key, entry);
    if (object.kind === 'Retry' && retrySchema) {
      const problems = retrySchema(object);
      if (problems.length) {
        entries.push({ ...entry, errors: problems.map((p) => ({ file, doc: origin.doc, line: located.lineOf?.(p.field) ?? origin.line, object: entry.label, field: p.field, message: `${p.message} (Retry CRD schema)` })) });
        continue;
      }
    }
    const converted = convertObjects([located]);
    if (converted.errors.length) entries.push({ ...entry, errors: converted.errors });
    else if (converted.skipped.length) {
      seen.delete(entry.key);
      skipped.push(`${file}: document ${origin.doc} (line ${origin.line}): kind ${object.kind} is not used by mesh-xds; skipped`);
    } else entries.push({ ...entry, good: converted.objects });
  }
  return { fileErrors: [], entries, skipped };
}

/** Parses and converts a file's text (what the parsing worker runs). */
export function readManifestText(text: string, file: string, retrySchema?: RetrySchemaCheck): FileObjects {
  return objectsOf(parseManifestText(text, file), file, retrySchema);
}

/**
 * A file's good objects and errors: an object that fails keeps its last good version (if the file had one); a
 * file that does not parse keeps all its last good objects.
 */
function keepLastGood(r: FileObjects, previous: Map<string, GoodObject> | undefined): { good: Map<string, GoodObject>; errors: ManifestError[] } {
  if (r.fileErrors.length) return { good: previous ?? new Map(), errors: r.fileErrors };
  const good = new Map<string, GoodObject>();
  const errors: ManifestError[] = [];
  for (const e of r.entries) {
    if (e.good) good.set(e.key, { objects: e.good, label: e.label, doc: e.doc, line: e.line });
    else {
      errors.push(...e.errors!);
      const last = previous?.get(e.key);
      if (last && !good.has(e.key)) good.set(e.key, last);
    }
  }
  return { good, errors };
}

/**
 * Reads one file's text into good objects and errors (see keepLastGood). Errors carry the line of the field at
 * fault where there is one.
 */
export function loadFileText(
  text: string,
  file: string,
  previous: Map<string, GoodObject> | undefined,
  retrySchema?: RetrySchemaCheck,
): { good: Map<string, GoodObject>; errors: ManifestError[]; skipped: string[]; located: Located[] } {
  const parsed = parseManifestText(text, file);
  const r = objectsOf(parsed, file, retrySchema);
  return { ...keepLastGood(r, previous), skipped: r.skipped, located: parsed.objects };
}

/** Files at least this big are parsed in a worker thread: YAML costs about 0.7 s per MB, too long for the event loop. */
export const WORKER_PARSE_BYTES = 64 * 1024;

/**
 * Heap the parsing worker may use (V8's old generation), in MiB. The yaml library holds about 112 bytes of heap
 * per byte of a legitimate manifest while it builds a document (a 3.8 MB EndpointSlice of 65,000 endpoints: 432
 * MB live after a full GC; a 3.6 MB JSON one: 418 MB), so the largest file read (MAX_MANIFEST_BYTES) gets 128
 * bytes a byte: 512 MiB. A parse that needs more (repetition a legitimate file does not have: a million empty
 * documents, millions of one-character items) ends the worker, not the process, and is that file's error.
 */
export const PARSE_HEAP_MB = (MAX_MANIFEST_BYTES * 128) / 2 ** 20;
/** V8's young generation for the worker (its default for a heap this size); counted apart from PARSE_HEAP_MB. */
const PARSE_YOUNG_MB = 32;
/**
 * A worker whose heap is larger than this after a parse is replaced (its memory goes back to the system: V8 keeps
 * what a heap grew to). A fresh worker's heap is about 10 MB; parsing a file under a megabyte stays under this.
 */
export const PARSE_RECYCLE_HEAP_MB = 64;
/** A parse that takes longer is stopped (the worker is replaced) and is the file's error: 4 MiB parse in 3 s. */
export const PARSE_TIMEOUT_MS = 120_000;
/** Errors kept for one file (nesting or junk can make the parser report one per character). */
export const MAX_ERRORS_PER_FILE = 20;

/** The parsing worker's bounds (the defaults above; a test may lower them). */
export interface ParseLimits {
  readonly heapMb: number;
  readonly timeoutMs: number;
}

interface ParseJob {
  readonly text: string;
  readonly file: string;
  readonly resolve: (r: FileObjects) => void;
}

/** What the worker answers: the file's objects, and the size of its heap once done. */
interface ParseAnswer {
  readonly result: FileObjects;
  readonly heapBytes: number;
}

/** A file's text that could not be read: one error naming it (its last good objects are kept, keepLastGood). */
const unreadable = (file: string, message: string): FileObjects => ({ fileErrors: [{ file, message }], entries: [], skipped: [] });

/**
 * A worker thread that parses and converts big files, one at a time, so that health checks, ADS and the debug
 * server are answered meanwhile. Its memory and time are bounded (PARSE_HEAP_MB, PARSE_TIMEOUT_MS): a file that
 * needs more is an error naming it, the worker is replaced, and the next file goes to a new one; a worker grown
 * by a big parse is replaced too (PARSE_RECYCLE_HEAP_MB). Where it cannot start at all (its script missing),
 * files are parsed inline.
 */
class ParseWorker {
  private worker?: Worker;
  /** The worker's script has loaded (it said so): a failure after that is the file's, not the script's. */
  private ready = false;
  private inline = false;
  private stopped = false;
  private readonly queue: ParseJob[] = [];
  private timer?: NodeJS.Timeout;
  /** Workers started, and replaced after a parse that grew them, ran out of memory or took too long. */
  readonly stats = { started: 0, recycled: 0, outOfMemory: 0, timedOut: 0 };

  constructor(
    private readonly log: Logger,
    private readonly retrySchema: RetrySchemaCheck | undefined,
    private readonly limits: ParseLimits,
  ) {}

  parse(text: string, file: string): Promise<FileObjects> {
    if (this.stopped) return Promise.resolve(unreadable(file, 'not read: the folder source stopped'));
    if (text.length < WORKER_PARSE_BYTES || this.inline) return Promise.resolve(readManifestText(text, file, this.retrySchema));
    return new Promise((resolve) => {
      this.queue.push({ text, file, resolve });
      if (this.queue.length === 1) this.next();
    });
  }

  /** Sends the job at the head of the queue to the worker (started if need be). */
  private next(): void {
    const job = this.queue[0];
    if (!job) return;
    const worker = this.start();
    if (!worker) {
      this.drainInline();
      return;
    }
    worker.postMessage({ text: job.text, file: job.file });
    this.timer = setTimeout(() => {
      this.stats.timedOut++;
      this.log.warn({ file: job.file, ms: this.limits.timeoutMs }, 'a manifest took too long to parse; replacing the parsing worker');
      this.replace();
      this.finish(unreadable(job.file, `took more than ${this.limits.timeoutMs / 1000} s to parse; not read, its last good objects are kept`));
    }, this.limits.timeoutMs);
    this.timer.unref();
  }

  /** The head job is answered; the next one goes. */
  private finish(result: FileObjects): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    this.queue.shift()?.resolve(result);
    this.next();
  }

  private start(): Worker | undefined {
    if (this.worker || this.inline || this.stopped) return this.worker;
    // Compiled next to this file; the tests run the TypeScript source, whose build is in dist/.
    const script = new URL(import.meta.url.endsWith('.ts') ? '../../dist/src/sources/parse-worker.js' : './parse-worker.js', import.meta.url);
    let w: Worker;
    try {
      w = new Worker(script, {
        workerData: { schema: Boolean(this.retrySchema) },
        resourceLimits: { maxOldGenerationSizeMb: this.limits.heapMb, maxYoungGenerationSizeMb: PARSE_YOUNG_MB },
      });
    } catch (e) {
      this.cannotStart(e as Error);
      return undefined;
    }
    this.worker = w;
    this.ready = false;
    this.stats.started++;
    w.unref();
    let failure: Error | undefined;
    w.on('message', (m: 'ready' | ParseAnswer) => {
      if (w !== this.worker) return;
      if (m === 'ready') {
        this.ready = true;
        return;
      }
      // A heap grown by this parse goes back to the system with its worker; the next file gets a new one.
      if (m.heapBytes > PARSE_RECYCLE_HEAP_MB * 2 ** 20) {
        this.stats.recycled++;
        this.replace();
      }
      this.finish(m.result);
    });
    w.on('error', (e) => (failure = e));
    w.on('exit', (code) => {
      if (w !== this.worker) return; // replaced or stopped on purpose
      this.worker = undefined;
      const e = failure ?? new Error(`exited with code ${code}`);
      if (!this.ready) return this.cannotStart(e);
      const job = this.queue[0];
      if (!job) return;
      const oom = (e as NodeJS.ErrnoException).code === 'ERR_WORKER_OUT_OF_MEMORY';
      if (oom) this.stats.outOfMemory++;
      this.log.warn({ file: job.file, err: e.message }, 'the manifest parsing worker stopped on a file; starting a new one for the next');
      this.finish(
        unreadable(
          job.file,
          oom
            ? `needs more than the ${this.limits.heapMb} MiB of memory a manifest may take to parse (repeated or nested far beyond a Kubernetes object); not read, its last good objects are kept`
            : `could not be parsed: the parsing worker stopped (${e.message}); its last good objects are kept`,
        ),
      );
    });
    return w;
  }

  /** Ends the current worker (its memory is released); a new one starts for the next file. */
  private replace(): void {
    const w = this.worker;
    this.worker = undefined;
    void w?.terminate();
  }

  /** The worker cannot run here (its script missing): files are parsed on the main thread from now on. */
  private cannotStart(e: Error): void {
    this.worker = undefined;
    if (this.inline) return;
    this.inline = true;
    this.log.warn({ err: e.message }, 'the manifest parsing worker cannot start; big files are parsed on the main thread');
    this.drainInline();
  }

  private drainInline(): void {
    clearTimeout(this.timer);
    for (const job of this.queue.splice(0)) job.resolve(readManifestText(job.text, job.file, this.retrySchema));
  }

  stop(): void {
    this.stopped = true;
    clearTimeout(this.timer);
    this.replace();
    // Whatever waits is answered (a stopped source applies nothing).
    for (const job of this.queue.splice(0)) job.resolve(unreadable(job.file, 'not read: the folder source stopped'));
  }
}

export class FileSource {
  private readonly files = new Map<string, FileState>();
  private readonly watchers = new Map<string, FSWatcher>();
  private dirErrors: ManifestError[] = [];
  /** Objects defined in more than one file, and Services on a ClusterIP taken: the first in path order wins. */
  private duplicateErrors: ManifestError[] = [];
  private timer?: NodeJS.Timeout;
  private firstPending?: number;
  private poller?: NodeJS.Timeout;
  private running = false;
  private again = false;
  private polling = false;
  private stopped = false;
  private lastObjects?: MeshObjects;
  private readonly parser: ParseWorker;
  synced = false;

  constructor(private readonly opts: FileSourceOptions) {
    this.parser = new ParseWorker(opts.log, opts.retrySchema, { heapMb: PARSE_HEAP_MB, timeoutMs: PARSE_TIMEOUT_MS, ...opts.parseLimits });
  }

  /** The parsing worker's life so far: workers started, and replaced after a grown heap, running out of memory or time. */
  get parserStats(): Readonly<ParseWorker['stats']> {
    return { ...this.parser.stats };
  }

  /** Every current error, for the debug endpoint, metrics and `validate`. */
  get errors(): ManifestError[] {
    return [...this.dirErrors, ...[...this.files.values()].flatMap((f) => f.errors), ...this.duplicateErrors];
  }

  /** Loads the folder once and starts watching it. */
  async start(): Promise<MeshState> {
    const dir = this.opts.dir;
    const st = await stat(dir).catch(() => undefined);
    if (!st?.isDirectory()) throw new Error(`--manifests ${dir}: not a directory`);
    const state = await this.reload();
    this.synced = true;
    // fs.watch misses events on some file systems (network mounts, editors that rename): poll as a safety net.
    this.poller = setInterval(() => void this.pollChanges(), 1000);
    this.poller.unref();
    return state;
  }

  stop(): void {
    this.stopped = true;
    this.parser.stop();
    for (const w of this.watchers.values()) w.close();
    this.watchers.clear();
    if (this.timer) clearTimeout(this.timer);
    if (this.poller) clearInterval(this.poller);
  }

  /** One non-recursive watcher per directory (Node 20's recursive watch on Linux walks and blocks on big trees). */
  private syncWatchers(dirs: string[]): void {
    const wanted = new Set(dirs);
    for (const [d, w] of this.watchers) {
      if (!wanted.has(d)) {
        w.close();
        this.watchers.delete(d);
      }
    }
    for (const d of dirs) {
      if (this.watchers.has(d) || this.stopped) continue;
      try {
        const w = watch(d, () => this.schedule());
        w.on('error', (err) => {
          this.opts.log.warn({ dir: d, err: err.message }, 'watch error; polling this directory every second');
          w.close();
          this.watchers.delete(d);
        });
        this.watchers.set(d, w);
      } catch (err) {
        this.opts.log.warn({ dir: d, err: (err as Error).message }, 'cannot watch directory; polling it every second');
      }
    }
  }

  /** Applies changes 200 ms after the last one, but never later than a second after the first. */
  private schedule(): void {
    if (this.stopped) return;
    const now = Date.now();
    this.firstPending ??= now;
    if (this.timer) clearTimeout(this.timer);
    const wait = Math.max(0, Math.min(this.opts.debounceMs ?? DEBOUNCE_MS, this.firstPending + MAX_WAIT_MS - now));
    this.timer = setTimeout(() => void this.apply(), wait);
  }

  private async apply(): Promise<void> {
    this.timer = undefined;
    this.firstPending = undefined;
    if (this.running) {
      this.again = true;
      return;
    }
    this.running = true;
    try {
      const state = await this.reload();
      if (!this.stopped) this.opts.onChange(state);
    } catch (err) {
      this.opts.log.error({ err: (err as Error).message }, 'reloading the manifests folder failed; keeping the last mesh');
    } finally {
      this.running = false;
      if (this.again) {
        this.again = false;
        this.schedule();
      }
    }
  }

  /** What stat says of a file, as compared between reads. */
  private static async signature(file: string): Promise<{ sig: string; size?: number; error?: string }> {
    try {
      const st = await stat(file);
      if (!st.isFile()) return { sig: 'error:not-a-file', error: 'not a regular file' };
      return { sig: `${st.mtimeMs}:${st.size}`, size: st.size };
    } catch (e) {
      return { sig: `error:${(e as NodeJS.ErrnoException).code ?? 'unknown'}`, error: `cannot read: ${fsError(e)}` };
    }
  }

  private async pollChanges(): Promise<void> {
    if (this.polling || this.running || this.timer || this.stopped) return;
    this.polling = true;
    try {
      const { files, errors } = await listManifestFiles(this.opts.dir);
      let changed = JSON.stringify(errors) !== JSON.stringify(this.dirErrors) || this.gone(files, errors).length > 0 || files.some((f) => !this.files.has(f));
      if (!changed) changed = (await mapLimit(files, IO_CONCURRENCY, (f) => FileSource.signature(f))).some((s, i) => s.sig !== this.files.get(files[i])?.signature);
      if (changed) this.schedule();
    } catch (err) {
      this.opts.log.warn({ err: (err as Error).message }, 'polling the manifests folder failed');
    } finally {
      this.polling = false;
    }
  }

  /** Known files no longer listed; a file in a directory that could not be read is not gone (it keeps its objects). */
  private gone(listed: string[], dirErrors: ManifestError[]): string[] {
    const present = new Set(listed);
    const unreadable = dirErrors.map((e) => path.join(this.opts.dir, e.file) + path.sep);
    return [...this.files.keys()].filter((f) => !present.has(f) && !unreadable.some((d) => f.startsWith(d)));
  }

  /** Re-reads what changed and assembles the mesh, yielding to the event loop as it goes. */
  private async reload(): Promise<MeshState> {
    const log = this.opts.log;
    const { files, dirs, errors: dirErrors } = await listManifestFiles(this.opts.dir);
    for (const e of dirErrors) if (!this.dirErrors.some((x) => x.file === e.file && x.message === e.message)) log.error({ file: e.file }, e.message);
    this.dirErrors = dirErrors;
    this.syncWatchers(dirs);
    for (const gone of this.gone(files, dirErrors)) {
      this.files.delete(gone);
      log.info({ file: path.relative(this.opts.dir, gone) }, 'manifest file removed');
    }
    // The file system is asked in parallel (a few dozen at a time); parsing goes file by file, yielding.
    const signatures = await mapLimit(files, IO_CONCURRENCY, (f) => FileSource.signature(f));
    const changed = files.map((file, i) => ({ file, ...signatures[i] })).filter(({ file, sig }) => this.files.get(file)?.signature !== sig);
    let slice = performance.now();
    for (let c = 0; c < changed.length; c += IO_CONCURRENCY) {
      const batch = changed.slice(c, c + IO_CONCURRENCY);
      const texts = await mapLimit(batch, IO_CONCURRENCY, ({ file, error, size }) =>
        error || size! > MAX_MANIFEST_BYTES ? Promise.resolve(undefined) : readFile(file, 'utf8').catch((e: unknown) => e as Error),
      );
      for (const [j, { file, sig, size, error }] of batch.entries()) {
        if (performance.now() - slice > SLICE_MS) {
          await yieldToEventLoop();
          slice = performance.now();
        }
        const known = this.files.get(file);
        const rel = path.relative(this.opts.dir, file) || file;
        const keep = (message: string): void => {
          this.files.set(file, { rel, good: known?.good ?? new Map(), errors: [{ file: rel, message }], signature: sig });
          log.error({ file: rel }, message);
        };
        const text = texts[j];
        if (error) keep(`${error}; its last good objects are kept`);
        else if (size! > MAX_MANIFEST_BYTES) keep(`is ${size} bytes, over the ${MAX_MANIFEST_BYTES}-byte limit for a manifest file; not read, its last good objects are kept`);
        else if (typeof text !== 'string') keep(`cannot read: ${fsError(text)}; its last good objects are kept`);
        else {
          const read = await this.parser.parse(text, rel);
          slice = performance.now();
          const { good, errors } = keepLastGood(read, known?.good);
          const skipped = read.skipped;
          this.files.set(file, { rel, good, errors, signature: sig });
          for (const s of skipped) log.info(s);
          for (const e of errors) log.error({ file: e.file, doc: e.doc, line: e.line, object: e.object, field: e.field }, e.message);
        }
      }
    }
    return meshStateOf(this.stable(this.assemble()), this.opts.meshName, this.opts.overrides);
  }

  /**
   * Every file's good objects, in path order; an object a previous file already defines is an error, and so is a
   * Service whose ClusterIP an earlier Service holds (a folder has no allocator: it would take over that Service's
   * listener in every sidecar).
   */
  private assemble(): MeshObjects {
    const objects = emptyObjects();
    const owner = new Map<string, { file: string; line?: number }>();
    const addressOwner = new Map<string, { label: string; file: string; line?: number }>();
    const duplicates: ManifestError[] = [];
    const at = (o: { file: string; line?: number }): string => `${o.file}${o.line ? `:${o.line}` : ''}`;
    for (const file of [...this.files.keys()].sort()) {
      const { rel, good } = this.files.get(file)!;
      for (const [key, g] of good) {
        const first = owner.get(key);
        if (first) {
          duplicates.push({
            file: rel,
            doc: g.doc,
            line: g.line,
            object: g.label,
            message: `is also defined in ${at(first)}, which is used (the first file in path order wins); this definition is ignored`,
          });
          continue;
        }
        const ip = g.objects.services[0]?.clusterIP;
        const holder = ip === undefined ? undefined : addressOwner.get(ip);
        if (holder) {
          duplicates.push({
            file: rel,
            doc: g.doc,
            line: g.line,
            object: g.label,
            field: 'spec.clusterIP',
            message: `spec.clusterIP ${ip} is already the address of ${holder.label} (${at(holder)}), which keeps it (the first in path order); this Service is ignored until one of them changes its address`,
          });
          continue;
        }
        if (ip !== undefined) addressOwner.set(ip, { label: g.label, file: rel, line: g.line });
        owner.set(key, { file: rel, line: g.line });
        for (const k of KINDS) if (g.objects[k].length) (objects[k] as unknown[]).push(...g.objects[k]);
      }
    }
    const before = new Set(this.duplicateErrors.map((e) => JSON.stringify(e)));
    for (const e of duplicates) if (!before.has(JSON.stringify(e))) this.opts.log.error({ file: e.file, line: e.line, object: e.object }, e.message);
    this.duplicateErrors = duplicates;
    return objects;
  }

  /**
   * Keeps the previous array of a kind when its content did not change, so the pipeline can skip work. Objects
   * of files that were not re-read are the same objects: only those of re-read files are compared by content.
   */
  private stable(objects: MeshObjects): MeshObjects {
    const prev = this.lastObjects ?? emptyObjects();
    const out = { ...objects };
    const same = (a: readonly unknown[], b: readonly unknown[]): boolean => a.length === b.length && a.every((x, i) => x === b[i] || JSON.stringify(x) === JSON.stringify(b[i]));
    for (const k of KINDS) if (same(objects[k], prev[k])) (out as Record<keyof MeshObjects, unknown>)[k] = prev[k];
    this.lastObjects = out;
    return out;
  }
}
