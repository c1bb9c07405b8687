import { defineConfig } from 'vitest/config';
import { BaseSequencer, type TestSpecification } from 'vitest/node';

/**
 * The real-API-server tests go last: on a fresh machine they wait for kube-apiserver and etcd to be built (in the
 * background, by scripts/install-real-parts.sh), and the other files run meanwhile instead of waiting behind them.
 * Last of all, the files that need the conformance suite built (its run, its echo parser): that build starts after theirs.
 */
class KubeLast extends BaseSequencer {
  override async sort(files: TestSpecification[]): Promise<TestSpecification[]> {
    const sorted = await super.sort(files);
    const rank = (f: TestSpecification): number => (/\/conformance\/(kube-suite|echo)\.test\.ts$/.test(f.moduleId) ? 2 : /\/kube-[^/]*\.test\.ts$/.test(f.moduleId) ? 1 : 0);
    return [0, 1, 2].flatMap((r) => sorted.filter((f) => rank(f) === r));
  }
}

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // Safety nets, not measurements: on a fresh machine the Kubernetes build shares the two cores with the tests.
    testTimeout: 60_000,
    hookTimeout: 60_000,
    pool: 'forks',
    // Two files at a time on two cores (vitest's default is one fewer than the cores): most files wait on real parts
    // (Envoy's retries and stats, an API server's watch) far more than they compute. Sandboxes claim their own
    // bridge and subnet, and every port is a free one, so files do not share anything.
    maxWorkers: 2,
    globalSetup: ['test/global-setup.ts'],
    sequence: { sequencer: KubeLast },
  },
});
