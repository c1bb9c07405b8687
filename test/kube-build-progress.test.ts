/** `demo:kubernetes` on a fresh machine: while the Kubernetes binaries build, it says what builds and what is left. */
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { expect, it } from 'vitest';
import { kubeBuildProgress } from '../sandbox/kube.js';
import { tempDir } from './helpers/tmp.js';

it('names the binary building, the time so far and roughly what is left, from the last build here or a cold one', () => {
  const dir = tempDir('mesh-xds-kube-progress-');
  const files = { pid: path.join(dir, 'build.pid'), log: path.join(dir, 'build.log'), times: path.join(dir, 'build-times') };
  const now = Math.floor(Date.now() / 1000) * 1000;
  // A build whose process is alive (this one), 60 s into kube-apiserver.
  writeFileSync(files.pid, String(process.pid));
  writeFileSync(files.log, `building etcd at ${Math.floor(now / 1000) - 150}\nbuilt etcd in 90 s\nbuilding kube-apiserver at ${Math.floor(now / 1000) - 60}\n`);
  expect(kubeBuildProgress(now, files)).toBe('building kube-apiserver (2 of 4): 1 min 0 s so far, about 9 min 0 s left (from a cold build on 2 cores; log: .cache/kube/build.log)');
  writeFileSync(files.times, 'etcd 80\nkube-apiserver 400\nkube-controller-manager 100\n');
  expect(kubeBuildProgress(now, files)).toBe('building kube-apiserver (2 of 4): 1 min 0 s so far, about 7 min 50 s left (from the last build here; log: .cache/kube/build.log)');
  // Nothing building: the process is gone.
  writeFileSync(files.pid, '999999999');
  expect(kubeBuildProgress(now, files)).toBeUndefined();
});
