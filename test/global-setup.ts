/** Before and after the whole run: remove what sandboxes of test processes that no longer run left behind. */
import { sweepStaleSandboxes } from '../sandbox/netns.js';

export function setup(): void {
  sweepStaleSandboxes();
}

export function teardown(): void {
  sweepStaleSandboxes();
}
