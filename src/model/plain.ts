/**
 * Reading plain data whose shape is not known for sure (manifests, JSON from an API, Envoy's printed config):
 * each accessor narrows, and answers nothing rather than throwing where the shape is not what was hoped.
 */

/** A mapping's fields, each to be checked before use. */
export type Fields = Readonly<Record<string, unknown>>;

/** The fields of a value that should be a mapping (none if it is not one). */
export const asMap = (v: unknown): Fields => (v !== null && typeof v === 'object' && !Array.isArray(v) ? (v as Fields) : {});

/** The items of a value that should be a list (none if it is not one). */
export const asList = (v: unknown): readonly unknown[] => (Array.isArray(v) ? v : []);

/** A value that should be a string ('' if it is not one). */
export const asString = (v: unknown): string => (typeof v === 'string' ? v : '');

/**
 * A client-supplied string cut to `max` characters for a log line, a status or a denial, saying how long it was:
 * what a client sends is never copied whole into what others read.
 */
export function clip(s: string, max = 256): string {
  return s.length <= max ? s : `${s.slice(0, max)}…(${s.length} chars)`;
}
