/**
 * The page (/ui) in a real browser (Debian's chromium, playwright-core) against the real server on a folder of
 * manifests: the guide's mesh with its Retry edge, a live edit appearing without a reload, a proxy's NACK in red with
 * its error (as text), the amplification chain's 24-attempt path highlighted, keyboard and search; and what the page
 * must not do: be read through another Host name (DNS rebinding), run anything but its own scripts.
 * UI_SCREENSHOTS=1 writes the screenshots docs/operating.md shows into docs/ui/.
 */
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import type { Browser, Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CLUSTER } from '../src/xds/resources/types.js';
import { RawAdsClient, node } from './helpers/ads-client.js';
import { browserMissing, launchBrowser } from './helpers/browser.js';
import { startDemo, type DemoServer } from './helpers/demo.js';

const SHOTS = path.join(import.meta.dirname, '..', 'docs', 'ui');
const shot = async (page: Page, name: string): Promise<void> => {
  if (!process.env.UI_SCREENSHOTS) return;
  mkdirSync(SHOTS, { recursive: true });
  await page.screenshot({ path: path.join(SHOTS, `${name}.png`) });
};

/** The chain of Retries a -> b -> c -> d (4 x 3 x 2 = 24 attempts), without its MeshConfig (the demo's enables retries) and without d -> b. */
const chain = (): string => {
  const text = readFileSync(path.join(import.meta.dirname, 'fixtures/amplification-chain.yaml'), 'utf8');
  const docs = text.slice(0, text.lastIndexOf('---')).split(/^---$/m);
  return docs.filter((d) => !/kind: MeshConfig/.test(d)).join('---');
};

describe.skipIf(browserMissing.length > 0)('the page (/ui) in a real browser', () => {
  let browser: Browser;
  let demo: DemoServer;
  const clients: RawAdsClient[] = [];

  beforeAll(async () => {
    browser = await launchBrowser();
    demo = await startDemo();
  }, 60_000);
  afterAll(async () => {
    for (const c of clients) c.close();
    await browser?.close();
    await demo?.close();
  });

  const open = async (url: string): Promise<Page> => {
    const page = await browser.newPage({ viewport: { width: 1280, height: 760 } });
    const errors: string[] = [];
    page.on('pageerror', (e) => errors.push(e.message));
    page.on('console', (m) => m.type() === 'error' && errors.push(m.text()));
    (page as unknown as { errors: string[] }).errors = errors;
    await page.goto(`${url}/ui`);
    await page.waitForFunction(() => (window as any).meshUi?.renders > 0 && (window as any).meshUi.loads >= 2, null, { timeout: 10_000 });
    return page;
  };
  const retryLabels = (page: Page): Promise<string[]> => page.evaluate(() => (window as any).meshUi.cy.edges('[kind="retry"]').map((e: any) => e.data('label')));

  it("renders the guide's mesh: services, identities and the Retry as an edge with numRetries and retryOn; the policy's Envoy retry_policy", async () => {
    const page = await open(demo.debug);
    expect(await retryLabels(page)).toEqual([expect.stringMatching(/^5 × 5xx · Accepted/)]);
    const nodes = await page.evaluate(() => (window as any).meshUi.cy.nodes().map((n: any) => `${n.data('kind')} ${n.data('key')}`).sort());
    expect(nodes).toEqual(expect.arrayContaining(['identity curl/curl', 'service httpbin/httpbin']));
    await shot(page, 'mesh');
    // Clicking the edge opens the policy: the retry_policy Envoy gets.
    await page.evaluate(() => (window as any).meshUi.cy.edges('[kind="retry"]').emit('tap'));
    await page.waitForSelector('#policy-detail:not([hidden])');
    expect(JSON.parse((await page.textContent('#policy-detail pre.retry-policy'))!)).toMatchObject({ retry_on: '5xx', num_retries: 5, per_try_timeout: '1s' });
    expect(await page.getAttribute('#tab-policies', 'aria-selected')).toBe('true');
    await shot(page, 'policy');
    expect((page as unknown as { errors: string[] }).errors).toEqual([]);
    await page.close();
  });

  it('keyboard and search: / focuses the search box, the arrows move between views, Enter opens a row', async () => {
    const page = await open(demo.debug);
    await page.keyboard.press('/');
    expect(await page.evaluate(() => document.activeElement?.id)).toBe('search');
    await page.keyboard.type('httpbin');
    const faded = await page.evaluate(() => (window as any).meshUi.cy.nodes('.faded').map((n: any) => n.data('key')));
    expect(faded).toContain('curl/curl');
    // The service httpbin/httpbin and the identity httpbin/httpbin.
    expect(await page.evaluate(() => (window as any).meshUi.cy.nodes('.match').map((n: any) => `${n.data('kind')} ${n.data('key')}`).sort())).toEqual(['identity httpbin/httpbin', 'service httpbin/httpbin']);
    await page.keyboard.press('Escape');
    await page.focus('#tab-graph');
    await page.keyboard.press('ArrowRight');
    expect(await page.evaluate(() => document.activeElement?.id)).toBe('tab-policies');
    expect(await page.isVisible('#policies')).toBe(true);
    await page.focus('#policies tbody tr');
    await page.keyboard.press('Enter');
    await page.waitForSelector('#policy-detail:not([hidden])');
    await page.close();
  });

  it('a live edit of numRetries appears within a second or two, without a reload', async () => {
    const page = await open(demo.debug);
    await page.evaluate(() => ((window as any).stayed = true));
    demo.edit('retry.yaml', (t) => t.replace('numRetries: 5', 'numRetries: 2'));
    const started = Date.now();
    await page.waitForFunction(() => (window as any).meshUi.cy.edges('[kind="retry"]').some((e: any) => /^2 × 5xx/.test(e.data('label'))), null, { timeout: 5_000 });
    const ms = Date.now() - started;
    // The file source's debounce and the page's fetch: well within the second or so here (not asserted: timing).
    console.log(`live edit shown after ${ms} ms`);
    expect(await page.evaluate(() => (window as any).stayed)).toBe(true);
    demo.edit('retry.yaml', (t) => t.replace('numRetries: 2', 'numRetries: 5'));
    await page.waitForFunction(() => (window as any).meshUi.cy.edges('[kind="retry"]').some((e: any) => /^5 × 5xx/.test(e.data('label'))), null, { timeout: 5_000 });
    await page.close();
  });

  it("a proxy's NACK shows red with its error text, as text; the proxy's config dump folds by type", async () => {
    const page = await open(demo.debug);
    await page.click('#tab-proxies');
    const client = new RawAdsClient(demo.ads);
    clients.push(client);
    const s = client.sotw();
    s.send({ node: node({ id: 'nacker', namespace: 'curl', serviceAccount: 'curl' }), type_url: CLUSTER });
    const r = await s.next();
    const error = 'cluster httpbin/httpbin|14001: <img src=x onerror=alert(1)> rejected';
    s.send({ type_url: CLUSTER, version_info: '', response_nonce: r.nonce, error_detail: { code: 3, message: error } });
    await page.waitForSelector('#proxies tbody tr.nacked[data-key="nacker"]', { timeout: 5_000 });
    const row = page.locator('#proxies tbody tr[data-key="nacker"]');
    expect(await row.locator('.badge.NACKED').textContent()).toBe('CDS NACKED');
    expect(await row.locator('td.nack').textContent()).toBe(`CDS: ${error}`);
    // Shown as text: no element came from the error.
    expect(await row.locator('img').count()).toBe(0);
    expect(await row.locator('td').first().evaluate((td) => getComputedStyle(td).backgroundColor)).toBe('rgb(254, 226, 226)');
    await shot(page, 'proxies');
    await row.click();
    await page.waitForSelector('#proxy-detail details.dump-section', { timeout: 5_000 }).catch(async (e) => {
      throw new Error(`${e.message}; the detail says: ${await page.textContent('#proxy-detail')}; page errors: ${(page as unknown as { errors: string[] }).errors.join('; ')}`);
    });
    const sections = await page.locator('#proxy-detail details.dump-section > summary').allTextContents();
    expect(sections[0]).toMatch(/^Clusters \(\d+\)$/);
    expect(sections).toEqual(expect.arrayContaining([expect.stringMatching(/^Routes/), expect.stringMatching(/^Listeners/)]));
    await page.close();
  });

  it('the amplification chain: the 24-attempt path is listed first and its three edges highlighted', async () => {
    const chained = await startDemo((dir) => writeFileSync(path.join(dir, 'chain.yaml'), chain()));
    try {
      const page = await open(chained.debug);
      expect(await page.getAttribute('#paths li.worst', 'data-attempts')).toBe('24');
      expect(await page.textContent('#paths li.worst')).toContain('chain/a → chain/b (×4) → chain/c (×3) → chain/d (×2)');
      const worst = await page.evaluate(() => (window as any).meshUi.cy.edges('.amp-worst').map((e: any) => `${e.source().data('key')}>${e.target().data('key')}`).sort());
      expect(worst).toEqual(['chain/a>chain/b', 'chain/b>chain/c', 'chain/c>chain/d']);
      await shot(page, 'amplification');
      await page.close();
    } finally {
      await chained.close();
    }
  });

  it('is refused for another Host name (DNS rebinding) and runs its own scripts only', async () => {
    const port = new URL(demo.debug).port;
    const status = (host: string, p: string): Promise<number> =>
      new Promise((resolve, reject) => http.get({ host: '127.0.0.1', port, path: p, headers: { host } }, (res) => (res.resume(), resolve(res.statusCode!))).on('error', reject));
    expect(await status('evil.example:80', '/ui')).toBe(403);
    expect(await status('evil.example', '/debug/events')).toBe(403);
    expect(await status(`localhost:${port}`, '/ui')).toBe(200);
    const res = await fetch(`${demo.debug}/ui`);
    expect(res.headers.get('content-security-policy')).toContain("script-src 'self'");
    expect(res.headers.get('x-frame-options')).toBe('DENY');
    // Read-only: anything but GET is refused.
    expect((await fetch(`${demo.debug}/ui`, { method: 'POST' })).status).toBe(405);
  });
});

describe('the live feed (/debug/events)', () => {
  it('tells an open page what changed, coalesced; at most 16 pages at once, 429 beyond', async () => {
    const demo = await startDemo();
    const reqs: http.ClientRequest[] = [];
    try {
      const port = new URL(demo.debug).port;
      const openFeed = (): Promise<{ status: number; text: () => string }> =>
        new Promise((resolve, reject) => {
          let text = '';
          const req = http.get({ host: '127.0.0.1', port, path: '/debug/events' }, (res) => {
            res.setEncoding('utf8');
            res.on('data', (d) => (text += d));
            resolve({ status: res.statusCode!, text: () => text });
          });
          req.on('error', reject);
          reqs.push(req);
        });
      const first = await openFeed();
      expect(first.status).toBe(200);
      await new Promise((r) => setTimeout(r, 100));
      expect(first.text()).toContain('event: hello');
      // Three edits in a row: the page hears of them, not necessarily three times.
      for (const n of [2, 3, 4]) demo.edit('retry.yaml', (t) => t.replace(/numRetries: \d+/, `numRetries: ${n}`));
      const until = Date.now() + 5_000;
      while (!first.text().includes('event: mesh') && Date.now() < until) await new Promise((r) => setTimeout(r, 50));
      expect(first.text()).toContain('event: mesh');
      const more = await Promise.all(Array.from({ length: 15 }, openFeed));
      expect(more.map((m) => m.status)).toEqual(Array(15).fill(200));
      expect((await openFeed()).status).toBe(429);
    } finally {
      for (const r of reqs) r.destroy();
      await demo.close();
    }
  });
});
