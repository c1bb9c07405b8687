/**
 * The benchmarks' child processes: spoken to in JSON lines (bench:peer's and bench:churn's server and Go clients),
 * killed when the driver exits however it exits, and measured from /proc.
 */
import type { ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import readline from 'node:readline';

/** Every child, killed when the driver exits. */
const children = new Set<ChildProcess>();
process.on('exit', () => {
  for (const c of children) c.kill('SIGKILL');
});

/** A child process spoken to in JSON lines. */
export class Child {
  private readonly lines: any[] = [];
  private wake?: () => void;
  constructor(readonly proc: ChildProcess) {
    children.add(proc);
    proc.on('exit', () => children.delete(proc));
    readline.createInterface({ input: proc.stdout! }).on('line', (l) => {
      this.lines.push(JSON.parse(l));
      this.wake?.();
    });
    proc.on('exit', (code) => {
      this.lines.push({ exited: code });
      this.wake?.();
    });
  }
  send(m: object): void {
    this.proc.stdin!.write(`${JSON.stringify(m)}\n`);
  }
  /** The first line that matches; throws if the child exits first or after `ms` (saying it waited for `what`). */
  async next(match: (m: any) => boolean, ms = 600_000, what = this.proc.spawnargs[1]): Promise<any> {
    const m = await this.maybe(match, ms);
    if (m === undefined) throw new Error(`timed out waiting for ${what}`);
    return m;
  }
  /** The first line that matches, or undefined after `ms`; throws if the child exits first. */
  async maybe(match: (m: any) => boolean, ms: number): Promise<any> {
    const until = Date.now() + ms;
    for (;;) {
      const i = this.lines.findIndex((m) => match(m) || 'exited' in m);
      if (i >= 0) {
        const m = this.lines.splice(i, 1)[0];
        if ('exited' in m) throw new Error(`${this.proc.spawnargs.join(' ')} exited (${m.exited})`);
        return m;
      }
      if (Date.now() > until) return undefined;
      await new Promise<void>((r) => {
        this.wake = r;
        setTimeout(r, 100);
      });
    }
  }
  stop(): void {
    this.proc.kill('SIGKILL');
  }
}

/** CPU seconds (user + system, every thread) and RSS / peak RSS in bytes of a process, from /proc. */
export function usage(pid: number): { cpu: number; rss: number; peak: number } {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kb = (k: string): number => Number(new RegExp(`${k}:\\s+(\\d+)`).exec(status)![1]) * 1024;
  return { cpu: (Number(f[11]) + Number(f[12])) / 100, rss: kb('VmRSS'), peak: kb('VmHWM') };
}
