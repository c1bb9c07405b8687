/**
 * Real-Envoy tests need the sandbox's parts (Linux, root, Envoy, httpbin, iptables). Under CI=true a missing
 * part fails the run; elsewhere the tests skip, and this says exactly what is missing and how to get it.
 */
import { sandboxProblems } from '../../sandbox/parts.js';

export const sandboxMissing = sandboxProblems();

if (sandboxMissing.length) {
  const text = `real-Envoy tests cannot run here:\n- ${sandboxMissing.join('\n- ')}`;
  if (process.env.CI) throw new Error(`${text}\n(CI=true: .ci/run must install them)`);
  console.warn(`${text}\nThey are skipped.`);
}
