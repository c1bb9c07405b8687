/**
 * From saving an edit of the Retry file to the real Envoy holding the new route: the guide's sandbox (real
 * sidecars, `mesh-xds serve --manifests`), N edits of retry.yaml (numRetries alternating), each timed until the
 * curl sidecar's RDS config (its own update counter, read by a watcher inside the pod) changes.
 * Run: npm run build && npm run bench:envoy-edit [-- N]   (Linux, root, the real parts installed)
 */
import { Sandbox, guideWorkloads } from '../sandbox/sandbox.js';

const N = Number(process.argv[2] ?? 20);
const STAT = 'http.outbound_14001.rds.httpbin.httpbin.svc.cluster.local_14001.update_success';

// Polls the sidecar's admin from inside the pod every 2 ms; prints "<epoch ms> <value>" when the value changes.
const WATCHER = `
const url = 'http://127.0.0.1:15000/stats?filter=' + encodeURIComponent('^${STAT.replace(/\./g, '\\\\.')}$');
let last;
(async () => {
  for (;;) {
    const text = await fetch(url).then((r) => r.text(), () => '');
    const m = /: (\\d+)/.exec(text);
    if (m && m[1] !== last) { last = m[1]; console.log(Date.now() + ' ' + last); }
    await new Promise((r) => setTimeout(r, 2));
  }
})();
`;

const sb = await Sandbox.start({ workloads: guideWorkloads() });
try {
  const curl = sb.workload('curl');
  const watcher = curl.pod.spawn('watcher', process.execPath, ['-e', WATCHER]);
  await watcher.waitFor(/^\d+ \d+$/);
  const text = sb.readManifest('retry.yaml');
  const times: number[] = [];
  for (let i = 0; i < N; i++) {
    const seen = watcher.lines().length;
    await new Promise((r) => setTimeout(r, 300));
    const saved = Date.now();
    sb.writeManifest('retry.yaml', text.replace('numRetries: 5', `numRetries: ${i % 2 ? 5 : 4}`));
    const deadline = saved + 10_000;
    while (watcher.lines().length === seen && Date.now() < deadline) await new Promise((r) => setTimeout(r, 1));
    const line = watcher.lines()[seen];
    if (!line) throw new Error(`edit ${i + 1}: the sidecar did not take a new route within 10 s`);
    times.push(Number(line.split(' ')[0]) - saved);
  }
  const sorted = [...times].sort((a, b) => a - b);
  const median = sorted.length % 2 ? sorted[(sorted.length - 1) / 2] : (sorted[sorted.length / 2 - 1] + sorted[sorted.length / 2]) / 2;
  console.log(`${N} edits of retry.yaml -> the real Envoy's RDS updated: median ${median} ms, min ${sorted[0]} ms, max ${sorted.at(-1)} ms`);
  console.log(`each: ${times.join(' ')} ms (the folder source debounces changes by 200 ms)`);
  console.log(`rejected updates: ${JSON.stringify(await curl.sidecar.rejected())}`);
} finally {
  await sb.close();
}
