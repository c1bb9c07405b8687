/**
 * The page for people (`/ui` on the debug port): its files, read once at start and served from memory (the page,
 * its script and style from `ui/`, and Cytoscape.js's own minified build from its npm package: no CDN, works
 * offline), and the live feed (`/debug/events`, server-sent events) that tells open pages what changed so they fetch
 * it again. Read-only: the page only reads the debug endpoints, under their authorization.
 */
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import type http from 'node:http';
import { packagePath } from '../paths.js';

export interface Asset {
  readonly body: Buffer;
  readonly type: string;
  readonly etag: string;
}

const require = createRequire(import.meta.url);

/** `/ui` and the files it loads, by path; a file that is not installed is left out (its path answers 404). */
export function loadUiAssets(): { assets: Map<string, Asset>; missing: string[] } {
  const assets = new Map<string, Asset>();
  const missing: string[] = [];
  const add = (path: string, file: () => string, type: string): void => {
    try {
      const body = readFileSync(file());
      assets.set(path, { body, type, etag: `"${createHash('sha256').update(body).digest('base64url').slice(0, 22)}"` });
    } catch (e) {
      missing.push(`${path}: ${(e as Error).message}`);
    }
  };
  add('/ui', () => packagePath('ui/index.html'), 'text/html; charset=utf-8');
  add('/ui/app.js', () => packagePath('ui/app.js'), 'text/javascript; charset=utf-8');
  add('/ui/app.css', () => packagePath('ui/app.css'), 'text/css; charset=utf-8');
  add('/ui/cytoscape.min.js', () => require.resolve('cytoscape/dist/cytoscape.min.js'), 'text/javascript; charset=utf-8');
  return { assets, missing };
}

/**
 * The page's own scripts only (nothing inline, no other origin), no framing; the page makes no request but to the
 * debug endpoints of this origin. Inline styles are allowed: Cytoscape.js adds its own stylesheet (styles run no code).
 */
export const UI_HEADERS = {
  'content-security-policy': "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
  'x-content-type-options': 'nosniff',
  'x-frame-options': 'DENY',
  'referrer-policy': 'no-referrer',
  'cache-control': 'no-cache',
};

export function serveAsset(req: http.IncomingMessage, res: http.ServerResponse, a: Asset): void {
  if (req.headers['if-none-match'] === a.etag) {
    res.writeHead(304, { etag: a.etag, ...UI_HEADERS });
    return void res.end();
  }
  res.writeHead(200, { 'content-type': a.type, 'content-length': a.body.length, etag: a.etag, ...UI_HEADERS });
  res.end(req.method === 'HEAD' ? undefined : a.body);
}

export type UiEvent = 'mesh' | 'proxies';

/**
 * Open pages, each told at most every `coalesceMs` which kinds of things changed (`event: mesh` or `proxies`): the
 * page fetches them again. At most `max` at once (the answer beyond is 429); a page that does not read is skipped
 * (nothing is queued for it), and a comment every 15 s keeps idle connections open through proxies.
 */
export class UiEvents {
  /** Each open page, with the kinds of change it has not been told of because it was not reading. */
  private readonly clients = new Map<http.ServerResponse, Set<UiEvent>>();
  private readonly pending = new Set<UiEvent>();
  private timer?: NodeJS.Timeout;
  private readonly keepalive: NodeJS.Timeout;

  constructor(
    readonly max = 16,
    private readonly coalesceMs = 250,
  ) {
    this.keepalive = setInterval(() => {
      for (const res of this.clients.keys()) if (!res.writableNeedDrain) res.write(': keepalive\n\n');
    }, 15_000);
    this.keepalive.unref();
  }

  get size(): number {
    return this.clients.size;
  }

  /** Takes a page's request for the feed; false when there are `max` already (answer 429). */
  open(req: http.IncomingMessage, res: http.ServerResponse): boolean {
    if (this.clients.size >= this.max) return false;
    res.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-store', connection: 'keep-alive', 'x-accel-buffering': 'no' });
    // The page reconnects after 1 s if the feed drops, and fetches everything when it does.
    res.write('retry: 1000\nevent: hello\ndata: {}\n\n');
    this.clients.set(res, new Set());
    const drop = (): void => void this.clients.delete(res);
    req.on('close', drop);
    res.on('error', drop);
    return true;
  }

  /** Something of this kind changed: open pages hear of it within `coalesceMs`. */
  changed(what: UiEvent): void {
    if (!this.clients.size) return;
    this.pending.add(what);
    this.timer ??= setTimeout(() => {
      this.timer = undefined;
      const kinds = [...this.pending];
      this.pending.clear();
      for (const [res, missed] of this.clients) this.tell(res, missed, kinds);
    }, this.coalesceMs);
  }

  /** Writes the kinds to a page; one not reading (its buffer full) is told once it has read (nothing piles up). */
  private tell(res: http.ServerResponse, missed: Set<UiEvent>, kinds: Iterable<UiEvent>): void {
    if (res.writableNeedDrain) {
      if (!missed.size) res.once('drain', () => this.tell(res, missed, []));
      for (const k of kinds) missed.add(k);
      return;
    }
    const all = new Set([...missed, ...kinds]);
    missed.clear();
    if (all.size) res.write([...all].map((k) => `event: ${k}\ndata: {}\n\n`).join(''));
  }

  close(): void {
    clearInterval(this.keepalive);
    clearTimeout(this.timer);
    for (const res of this.clients.keys()) res.end();
    this.clients.clear();
  }
}
