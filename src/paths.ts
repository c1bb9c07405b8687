/** Where this package's own files are, from src/ (tests) or dist/src/ (built). */
import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

function findRoot(): string {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  while (!existsSync(path.join(dir, 'package.json')) || !existsSync(path.join(dir, 'deploy'))) {
    const up = path.dirname(dir);
    if (up === dir) throw new Error('mesh-xds: cannot find the package root (package.json beside deploy/)');
    dir = up;
  }
  return dir;
}

/** The package root: package.json, deploy/, bin/, .cache/. */
export const PACKAGE_ROOT = findRoot();

export const packagePath = (...parts: string[]): string => path.join(PACKAGE_ROOT, ...parts);
