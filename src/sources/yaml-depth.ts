/**
 * How deep a YAML text nests, checked before it is parsed (issue 33). The yaml library builds and reads a
 * document recursively: 2 MB of `[` cost its parser 1.8 GB and a minute, and nesting past the thread's stack is
 * worse than an error (two files of 5,000 `[` and `{` made V8 abort the whole process, "RegExpCompiler
 * Allocation failed", when a regular expression was first compiled at the stack's end). The check runs the
 * library's own lexer (streaming, little memory, stops at the first excess) and bounds two things:
 * - flow collections (`[ ]`, `{ }`, all of JSON) open at once: at most MAX_FLOW_DEPTH, as Envoy and protobuf
 *   bound a message's recursion at 100;
 * - the column where a line's block content starts (after its indentation and its `- ` and `? ` indicators):
 *   at most MAX_BLOCK_COLUMN. A block collection inside another starts at least one column further right, except
 *   a sequence under a mapping key, so block nesting is at most twice that column (plus two).
 * Nesting the parser may reach is then at most 2 x 200 + 2 + 100 levels; it overflowed at 630-1,250 levels on
 * the main thread's stack, by shape (measured with yaml 2.9 on Node 20).
 */
import { Lexer } from 'yaml';

export const MAX_FLOW_DEPTH = 100;
export const MAX_BLOCK_COLUMN = 200;

/** The first place `text` nests deeper than the bounds above, with its line (1-based), or undefined. */
export function nestingProblem(text: string): { line: number; message: string } | undefined {
  let line = 1;
  let column = 0;
  let flow = 0;
  /** No content yet on this line (indentation, `- `, `? ` and `: ` do not count). */
  let lineStart = true;
  /** The next token is a plain or block scalar's text (the lexer marks it). */
  let scalar = false;
  const advance = (token: string): void => {
    const nl = token.lastIndexOf('\n');
    if (nl < 0) column += token.length;
    else {
      for (let i = 0; i <= nl; i++) if (token.charCodeAt(i) === 10) line++;
      column = token.length - nl - 1;
    }
  };
  for (const token of new Lexer().lex(text)) {
    if (scalar) {
      scalar = false;
      lineStart = false;
      advance(token);
      continue;
    }
    const c = token[0];
    if (c === '\n' || c === '\r') {
      advance(token);
      lineStart = true;
      continue;
    }
    if (token === '---' || token === '...') {
      flow = 0;
      lineStart = false;
    } else if (c === '\x1f') {
      // A scalar's text comes next: it starts this line's content.
      if (flow === 0 && lineStart && column > MAX_BLOCK_COLUMN) return blockProblem(line, column);
      scalar = true;
      continue;
    } else if (c === '[' || c === '{') {
      if (flow === 0 && lineStart && column > MAX_BLOCK_COLUMN) return blockProblem(line, column);
      lineStart = false;
      if (++flow > MAX_FLOW_DEPTH) return { line, message: `nests flow collections ([ ], { }) more than ${MAX_FLOW_DEPTH} deep; not parsed` };
    } else if (c === ']' || c === '}') {
      if (flow > 0) flow--;
      lineStart = false;
    } else if ((c === '-' || c === '?' || c === ':') && token.length === 1) {
      // Block indicators open a collection where they stand (after content, `:` only follows a key).
      if (flow === 0 && lineStart && column > MAX_BLOCK_COLUMN) return blockProblem(line, column);
    } else if (c !== ' ' && c !== '\t' && c !== '#' && c !== '\x02' && c !== '\ufeff') {
      // Anything else written (a quoted scalar, an anchor, a tag, an alias) is content.
      if (flow === 0 && lineStart && column > MAX_BLOCK_COLUMN) return blockProblem(line, column);
      lineStart = false;
    }
    advance(token);
  }
  return undefined;
}

function blockProblem(line: number, column: number): { line: number; message: string } {
  return { line, message: `nests block collections too deep: content starts at column ${column + 1}, more than ${MAX_BLOCK_COLUMN} columns in; not parsed` };
}
