/**
 * The server's log: pino's JSON lines where the output is a pipe or a file (collectors read them), and lines for
 * people on a terminal: the ADS address, the page's address and each mesh translated on a line of their own, every
 * other event as `time LEVEL message key=value...`. Hand-written rather than pino-pretty: it leaves out colours,
 * nested objects spread over lines and custom formats; a value that is an object is printed as JSON.
 */
import pino, { type Logger } from 'pino';

const LEVELS: Record<number, string> = { 10: 'TRACE', 20: 'DEBUG', 30: 'INFO', 40: 'WARN', 50: 'ERROR', 60: 'FATAL' };
const OMIT = new Set(['level', 'time', 'pid', 'hostname', 'msg']);

/** One JSON log line as a person reads it (undefined: not a log line, written as it is). */
export function forPeople(line: string): string | undefined {
  let e: Record<string, unknown>;
  try {
    e = JSON.parse(line) as Record<string, unknown>;
  } catch {
    return undefined;
  }
  if (e.msg === 'listening') {
    const page = typeof e.debug === 'string' ? `http://${e.debug.replace(/^0\.0\.0\.0:/, '127.0.0.1:')}/ui` : undefined;
    return [
      `mesh-xds: ADS (point Envoy here) on ${String(e.ads)}`,
      ...(page ? [`mesh-xds: the page on ${page}`] : []),
      ...(typeof e.webhook === 'string' ? [`mesh-xds: the injection webhook on ${e.webhook}`] : []),
    ].join('\n');
  }
  if (e.msg === 'mesh translated') {
    return `mesh-xds: mesh translated: ${String(e.policies)} policies, ${String(e.rebuilt)} configurations rebuilt, ${String(e.failed)} failed, in ${String(e.ms)} ms`;
  }
  const time = typeof e.time === 'number' ? new Date(e.time).toISOString().slice(11, 19) : '';
  const fields = Object.entries(e)
    .filter(([k]) => !OMIT.has(k))
    .map(([k, v]) => `${k}=${typeof v === 'string' ? (/[\s"=]/.test(v) ? JSON.stringify(v) : v) : JSON.stringify(v)}`);
  return `${time} ${LEVELS[Number(e.level)] ?? e.level} ${String(e.msg ?? '')}${fields.length ? ` ${fields.join(' ')}` : ''}`;
}

/** The server's logger: for people on a terminal (`people`), else JSON. */
export function serverLog(level: string, people: boolean, out: NodeJS.WritableStream = process.stdout): Logger {
  if (!people) return pino({ level });
  return pino(
    { level },
    {
      write(chunk: string): void {
        for (const line of chunk.split('\n')) if (line) out.write(`${forPeople(line) ?? line}\n`);
      },
    },
  );
}
