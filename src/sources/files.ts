/**
 * The folder source: every .yaml/.yml/.json file of a directory (recursively), watched. A change is picked up
 * within a second (debounced). A file that fails keeps its last good objects; everything else goes on.
 */
import { readdirSync, readFileSync, statSync, watch, type FSWatcher } from 'node:fs';
import path from 'node:path';
import type { Logger } from 'pino';
import type { MeshConfig, MeshState } from '../model/mesh.js';
import { convertObjects, emptyObjects, meshStateOf, parseManifestText, type Located, type ManifestError, type MeshObjects } from './manifests.js';
import type { RetrySchemaCheck } from './crd.js';

const EXTENSIONS = new Set(['.yaml', '.yml', '.json']);

interface FileState {
  /** Last good objects of this file, by kind/namespace/name, as model data. */
  good: Map<string, MeshObjects>;
  errors: ManifestError[];
  mtimeMs: number;
  size: number;
}

export interface FileSourceOptions {
  dir: string;
  meshName: string;
  overrides?: Partial<MeshConfig>;
  log: Logger;
  retrySchema?: RetrySchemaCheck;
  debounceMs?: number;
  /** Called with every new mesh (after the initial load too). */
  onChange: (state: MeshState) => void;
}

function objectKey(o: Located['object'], defaultNs: string): string {
  return `${o.kind}/${o.metadata?.namespace ?? defaultNs}/${o.metadata?.name}`;
}

export function listManifestFiles(dir: string): string[] {
  const out: string[] = [];
  const walk = (d: string): void => {
    for (const entry of readdirSync(d, { withFileTypes: true })) {
      if (entry.name.startsWith('.')) continue;
      const p = path.join(d, entry.name);
      if (entry.isDirectory()) walk(p);
      else if (EXTENSIONS.has(path.extname(entry.name).toLowerCase())) out.push(p);
    }
  };
  walk(dir);
  return out.sort();
}

/**
 * Reads one file's text into good objects and errors. Objects that fail keep their last good version (if
 * the file had one); a file that does not parse keeps all its last good objects.
 */
export function loadFileText(
  text: string,
  file: string,
  previous: Map<string, MeshObjects> | undefined,
  retrySchema?: RetrySchemaCheck,
): { good: Map<string, MeshObjects>; errors: ManifestError[]; skipped: string[] } {
  const parsed = parseManifestText(text, file);
  if (parsed.errors.length) return { good: previous ?? new Map(), errors: parsed.errors, skipped: [] };
  const good = new Map<string, MeshObjects>();
  const errors: ManifestError[] = [];
  const skipped: string[] = [];
  for (const located of parsed.objects) {
    const key = objectKey(located.object, 'default');
    const label = `${located.object.kind} ${located.object.metadata?.namespace ?? 'default'}/${located.object.metadata?.name}`;
    const fail = (errs: ManifestError[]): void => {
      errors.push(...errs);
      const last = previous?.get(key);
      if (last) good.set(key, last);
    };
    if (good.has(key)) {
      fail([{ file, doc: located.origin.doc, line: located.origin.line, object: label, message: `defined twice in ${file}; the first definition is used` }]);
      continue;
    }
    if (located.object.kind === 'Retry' && retrySchema) {
      const problems = retrySchema(located.object);
      if (problems.length) {
        fail(problems.map((p) => ({ file, doc: located.origin.doc, line: located.origin.line, object: label, field: p.field, message: `${p.message} (Retry CRD schema)` })));
        continue;
      }
    }
    const converted = convertObjects([located]);
    if (converted.errors.length) {
      fail(converted.errors);
      continue;
    }
    if (converted.skipped.length) {
      skipped.push(`${file}: document ${located.origin.doc} (line ${located.origin.line}): kind ${located.object.kind} is not used by mesh-xds; skipped`);
      continue;
    }
    good.set(key, converted.objects);
  }
  return { good, errors, skipped };
}

export class FileSource {
  private readonly files = new Map<string, FileState>();
  private watcher?: FSWatcher;
  private timer?: NodeJS.Timeout;
  private poller?: NodeJS.Timeout;
  private lastObjects?: MeshObjects;
  synced = false;

  constructor(private readonly opts: FileSourceOptions) {}

  /** Every current error, for the debug endpoint and `validate`. */
  get errors(): ManifestError[] {
    return [...this.files.values()].flatMap((f) => f.errors);
  }

  /** Loads the folder once and starts watching it. */
  start(): MeshState {
    const dir = this.opts.dir;
    if (!statSync(dir, { throwIfNoEntry: false })?.isDirectory()) throw new Error(`--manifests ${dir}: not a directory`);
    const state = this.reload();
    this.synced = true;
    try {
      this.watcher = watch(dir, { recursive: true }, () => this.schedule());
      this.watcher.on('error', (err) => this.opts.log.warn({ err: err.message }, 'watch error; falling back to polling'));
    } catch (err) {
      this.opts.log.warn({ err: (err as Error).message }, 'cannot watch the folder; polling it every second');
    }
    // fs.watch misses events on some file systems (network mounts, editors that rename): poll as a safety net.
    this.poller = setInterval(() => this.pollChanges(), 1000);
    this.poller.unref();
    return state;
  }

  stop(): void {
    this.watcher?.close();
    if (this.timer) clearTimeout(this.timer);
    if (this.poller) clearInterval(this.poller);
  }

  private schedule(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      this.timer = undefined;
      try {
        this.opts.onChange(this.reload());
      } catch (err) {
        this.opts.log.error({ err: (err as Error).message }, 'reloading the manifests folder failed; keeping the last mesh');
      }
    }, this.opts.debounceMs ?? 200);
  }

  private pollChanges(): void {
    let files: string[];
    try {
      files = listManifestFiles(this.opts.dir);
    } catch {
      return;
    }
    const changed =
      files.length !== this.files.size ||
      files.some((f) => {
        const st = statSync(f, { throwIfNoEntry: false });
        const known = this.files.get(f);
        return !known || !st || st.mtimeMs !== known.mtimeMs || st.size !== known.size;
      });
    if (changed && !this.timer) this.schedule();
  }

  /** Re-reads changed files and assembles the mesh. */
  private reload(): MeshState {
    const log = this.opts.log;
    const files = listManifestFiles(this.opts.dir);
    for (const gone of [...this.files.keys()].filter((f) => !files.includes(f))) {
      this.files.delete(gone);
      log.info({ file: gone }, 'manifest file removed');
    }
    for (const file of files) {
      const st = statSync(file, { throwIfNoEntry: false });
      if (!st) continue;
      const known = this.files.get(file);
      if (known && known.mtimeMs === st.mtimeMs && known.size === st.size) continue;
      const rel = path.relative(this.opts.dir, file) || file;
      let text: string;
      try {
        text = readFileSync(file, 'utf8');
      } catch (err) {
        log.warn({ file: rel, err: (err as Error).message }, 'cannot read manifest file; keeping its last good objects');
        continue;
      }
      const { good, errors, skipped } = loadFileText(text, rel, known?.good, this.opts.retrySchema);
      this.files.set(file, { good, errors, mtimeMs: st.mtimeMs, size: st.size });
      for (const s of skipped) log.info(s);
      for (const e of errors) log.error({ file: e.file, doc: e.doc, line: e.line, object: e.object, field: e.field }, e.message);
    }
    const objects = emptyObjects();
    for (const f of this.files.values()) {
      for (const model of f.good.values()) {
        for (const k of Object.keys(objects) as (keyof MeshObjects)[]) (objects[k] as unknown[]).push(...model[k]);
      }
    }
    return meshStateOf(this.stable(objects), this.opts.meshName, this.opts.overrides);
  }

  /** Keeps the previous array of a kind when its content did not change, so the pipeline can skip work. */
  private stable(objects: MeshObjects): MeshObjects {
    const prev = this.lastObjects ?? emptyObjects();
    const out = { ...objects };
    for (const k of Object.keys(objects) as (keyof MeshObjects)[]) {
      if (JSON.stringify(objects[k]) === JSON.stringify(prev[k])) (out as any)[k] = prev[k];
    }
    this.lastObjects = out;
    return out;
  }
}
