/** Printing a demo's transcript: a line, and a command's output indented under it. */
export function write(line = ''): void {
  process.stdout.write(`${line}\n`);
}

export const indent = (text: string): string =>
  text
    .trim()
    .split('\n')
    .map((l) => `   ${l.trimEnd()}`)
    .join('\n');
