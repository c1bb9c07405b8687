/** Small helpers for CLI output: aligned tables for people, JSON for scripts. */

export function table(headers: string[], rows: string[][]): string {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]): string => cells.map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i]))).join('   ').trimEnd();
  return [line(headers), ...rows.map(line)].join('\n') + '\n';
}

export function flag(args: string[], ...names: string[]): string | undefined {
  for (const n of names) {
    const i = args.indexOf(n);
    if (i >= 0) return args[i + 1];
    const eq = args.find((a) => a.startsWith(`${n}=`));
    if (eq) return eq.slice(n.length + 1);
  }
  return undefined;
}

export function wantsJson(args: string[]): boolean {
  return flag(args, '-o', '--output') === 'json';
}

export class UsageError extends Error {}
