/**
 * A real browser for the page's tests (sandbox/browser.ts). Under CI=true a missing browser fails the run; elsewhere
 * the tests skip, saying what is missing.
 */
import { existsSync } from 'node:fs';
import { CHROMIUM } from '../../sandbox/browser.js';

export { CHROMIUM, launchBrowser } from '../../sandbox/browser.js';

export const browserMissing: string[] = existsSync(CHROMIUM) ? [] : [`no browser at ${CHROMIUM} (as root: apt-get install chromium, or npm test, which installs it; CHROMIUM=path for another)`];

if (browserMissing.length) {
  const text = `browser tests cannot run here:\n- ${browserMissing.join('\n- ')}`;
  if (process.env.CI) throw new Error(`${text}\n(CI=true: .ci/run must install it)`);
  console.warn(`${text}\nThey are skipped.`);
}
