/**
 * The errors that end a command with one line on stderr and the documented exit code (0 ok, 1 problem found,
 * 2 usage error, 3 cannot reach server). Anything else is a crash, and only a crash (or --debug) prints a stack.
 * No imports: every command and the flag parser of `serve` load this without loading anything else.
 */

export const EXIT = { ok: 0, problem: 1, usage: 2, unreachable: 3 } as const;

/** The exit code when the reader of the output went away early (`mesh-xds ... | head`): 128 + SIGPIPE, as a shell reports a process the signal ended. */
export const EXIT_PIPE_CLOSED = 141;

export class ExitError extends Error {
  constructor(
    message: string,
    readonly exitCode: number,
  ) {
    super(message);
  }
}

/** A flag missing, unknown, given twice, of a bad value, or at odds with another: exit 2. */
export class UsageError extends ExitError {
  constructor(message: string) {
    super(message, EXIT.usage);
  }
}

/** The server, the Envoy admin or the Kubernetes API could not be reached: exit 3. */
export class UnreachableError extends ExitError {
  constructor(message: string) {
    super(message, EXIT.unreachable);
  }
}

/** Optimal string alignment distance (Levenshtein with transpositions: `Retyr` is 1 from `Retry`). */
export function editDistance(a: string, b: string): number {
  const d: number[][] = Array.from({ length: a.length + 1 }, (_, i) => [i, ...new Array<number>(b.length).fill(0)]);
  for (let j = 1; j <= b.length; j++) d[0][j] = j;
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      d[i][j] = Math.min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) d[i][j] = Math.min(d[i][j], d[i - 2][j - 2] + 1);
    }
  }
  return d[a.length][b.length];
}

/** The known word nearest to `word` (case aside), if it is near enough to be a slip: at most 2 edits, and fewer than half its letters. */
export function nearest(word: string, known: readonly string[]): string | undefined {
  let best: { k: string; d: number } | undefined;
  for (const k of known) {
    const d = editDistance(word.toLowerCase(), k.toLowerCase());
    if (!best || d < best.d) best = { k, d };
  }
  return best && best.d <= Math.min(2, Math.floor(Math.max(word.length, best.k.length) / 2)) ? best.k : undefined;
}
