/**
 * The README and docs/: every relative markdown link names a file that exists, and every #anchor a heading of its
 * target file (GitHub's slug of the heading); every docs/*.md is linked from the README.
 */
import { existsSync, mkdtempSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';

const ROOT = path.join(import.meta.dirname, '..');

/** The text outside fenced code blocks, with inline code spans blanked (a `[x](y)` in code is not a link). */
function prose(text: string): string {
  let fenced = false;
  const lines = text.split('\n').map((line) => {
    if (/^\s*(```|~~~)/.test(line)) {
      fenced = !fenced;
      return '';
    }
    return fenced ? '' : line;
  });
  return lines.join('\n').replace(/`[^`]*`/g, (m) => ' '.repeat(m.length));
}

/** GitHub's anchor for a heading: lowercase, punctuation dropped (but - and _), spaces to dashes. */
export function slug(heading: string): string {
  const text = heading
    .replace(/!?\[([^\]]*)\]\([^)]*\)/g, '$1') // a link's text
    .replace(/<[^>]+>/g, '')
    .trim()
    .toLowerCase();
  return text.replace(/[^\p{L}\p{N}\p{M} _-]/gu, '').replace(/ /g, '-');
}

/** The anchors of a markdown file's headings, with GitHub's -1, -2 for repeats. */
export function anchors(text: string): Set<string> {
  let fenced = false;
  const seen = new Map<string, number>();
  const out = new Set<string>();
  for (const line of text.split('\n')) {
    if (/^\s*(```|~~~)/.test(line)) fenced = !fenced;
    const m = fenced ? null : /^#{1,6}\s+(.*?)\s*#*\s*$/.exec(line);
    if (!m) continue;
    const base = slug(m[1]!);
    const n = seen.get(base) ?? 0;
    seen.set(base, n + 1);
    out.add(n ? `${base}-${n}` : base);
  }
  return out;
}

/** Relative link targets in a markdown text: `[text](target)` and `![alt](target)`. */
export function linkTargets(text: string): string[] {
  const out: string[] = [];
  for (const m of prose(text).matchAll(/!?\[(?:[^[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+"[^"]*")?\s*\)/g)) {
    const target = m[1]!;
    if (/^[a-z][a-z0-9+.-]*:/i.test(target)) continue; // http:, https:, mailto:
    out.push(target);
  }
  return out;
}

/** Every broken link of the given markdown files: "file: target: why". */
export function brokenLinks(files: string[]): string[] {
  const broken: string[] = [];
  for (const file of files) {
    const text = readFileSync(file, 'utf8');
    for (const target of linkTargets(text)) {
      const hash = target.indexOf('#');
      const rel = decodeURIComponent(hash < 0 ? target : target.slice(0, hash));
      const anchor = hash < 0 ? undefined : target.slice(hash + 1);
      const where = rel ? path.resolve(path.dirname(file), rel) : file;
      const say = (why: string): number => broken.push(`${path.relative(ROOT, file)}: ${target}: ${why}`);
      if (rel.startsWith('/')) say('an absolute path (GitHub resolves it from the site root, not the repository)');
      else if (!existsSync(where)) say(`${path.relative(ROOT, where)} does not exist`);
      else if (anchor !== undefined) {
        if (statSync(where).isDirectory() || !where.endsWith('.md')) say('an anchor into a file that is not markdown');
        else if (!anchors(readFileSync(where, 'utf8')).has(anchor)) say(`no heading of ${path.relative(ROOT, where)} has the anchor #${anchor}`);
      }
    }
  }
  return broken;
}

function markdownUnder(dir: string): string[] {
  return readdirSync(dir).flatMap((f) => {
    const p = path.join(dir, f);
    if (statSync(p).isDirectory()) return markdownUnder(p);
    return f.endsWith('.md') ? [p] : [];
  });
}

const DOCS = markdownUnder(path.join(ROOT, 'docs'));
const FILES = [path.join(ROOT, 'README.md'), ...DOCS];

describe('the README and docs/', () => {
  it('every relative link and #anchor resolves', () => {
    expect(DOCS.length).toBeGreaterThan(0);
    const links = FILES.flatMap((f) => linkTargets(readFileSync(f, 'utf8')));
    expect(links.filter((l) => l.includes('#')).length).toBeGreaterThan(10);
    expect(brokenLinks(FILES)).toEqual([]);
  });

  it('the README links every file of docs/', () => {
    const readme = path.join(ROOT, 'README.md');
    const linked = new Set(linkTargets(readFileSync(readme, 'utf8')).map((t) => path.resolve(ROOT, t.split('#')[0]!)));
    expect(DOCS.filter((d) => !linked.has(d)).map((d) => path.relative(ROOT, d))).toEqual([]);
  });

  it("slugs headings as GitHub does", () => {
    expect(slug('The page: `/ui`')).toBe('the-page-ui');
    expect(slug('Who may talk to the server: mTLS')).toBe('who-may-talk-to-the-server-mtls');
    expect(slug('Performance (measured on this 2-core machine; run them yourself)')).toBe('performance-measured-on-this-2-core-machine-run-them-yourself');
    expect(slug('install, uninstall')).toBe('install-uninstall');
    expect(slug('The guide, step by step')).toBe('the-guide-step-by-step');
    expect([...anchors('# A\n## A\n```\n# not a heading\n```\n## A\n')]).toEqual(['a', 'a-1', 'a-2']);
  });

  it('finds a missing file, a missing anchor and an absolute path, and not a link in code', () => {
    const dir = mkdtempSync(path.join(tmpdir(), 'docs-links-'));
    try {
      mkdirSync(path.join(dir, 'docs'));
      writeFileSync(path.join(dir, 'docs', 'b.md'), '# B\n\n## Some section\n');
      const a = path.join(dir, 'a.md');
      writeFileSync(
        a,
        [
          '# A',
          'good: [b](docs/b.md), [section](docs/b.md#some-section), [here](#a), [web](https://example.com/x#y)',
          'bad: [gone](docs/gone.md), [no such](docs/b.md#no-such-section), [self](#nowhere), [abs](/docs/b.md)',
          '`[in code](docs/gone.md)`',
          '```',
          '[in a fence](docs/gone.md)',
          '```',
        ].join('\n'),
      );
      expect(brokenLinks([a]).map((b) => b.replace(/^.*?a\.md: /, ''))).toEqual([
        expect.stringMatching(/^docs\/gone\.md: .*docs\/gone\.md does not exist$/),
        expect.stringMatching(/^docs\/b\.md#no-such-section: no heading .*#no-such-section$/),
        expect.stringMatching(/^#nowhere: no heading/),
        expect.stringMatching(/^\/docs\/b\.md: an absolute path/),
      ]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
