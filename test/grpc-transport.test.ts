/**
 * The ADS port's gRPC layer (src/xds/grpc.ts) against real clients: grpc-js for what a gRPC client does, and a
 * raw HTTP/2 client (and a raw socket) for what a well-behaved client never sends.
 */
import http2 from 'node:http2';
import net from 'node:net';
import zlib from 'node:zlib';
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { eventually } from './helpers/grpc-xds.js';
import { Code, GrpcServer, unary, type GrpcServerOptions, type ServerCall } from '../src/xds/transport/grpc.js';
import { TRANSPORT } from '../src/xds/protocol/server.js';

const bytes = (b: Buffer): Buffer => b;
const ECHO = { path: '/test.Echo/Chat', requestStream: true, responseStream: true, requestSerialize: bytes, requestDeserialize: bytes, responseSerialize: bytes, responseDeserialize: bytes };
const ONCE = { ...ECHO, path: '/test.Echo/Once', requestStream: false, responseStream: false };
const MISSING = { ...ECHO, path: '/test.Echo/Missing' };
const Client = grpc.makeGenericClientConstructor({ Chat: ECHO, Once: ONCE, Missing: MISSING }, 'Echo');

/** Larger than a stream's HTTP/2 window (64 KiB): a partial message of this size was sent into a message held. */
const MAX = 256 * 1024;
/** Bytes of incomplete messages the test server may hold: a few messages of the largest size. */
const BUDGET = 4 * MAX;
const MESSAGE_TIMEOUT_MS = 1_000;
const OPTIONS: GrpcServerOptions = { ...TRANSPORT, maxReceive: MAX, receiveBudget: BUDGET, receiveCeiling: 2 * BUDGET, messageTimeoutMs: MESSAGE_TIMEOUT_MS, maxConcurrentStreams: 10, keepaliveMs: 200, keepaliveTimeoutMs: 200 };
/** The reasons the server counted refusals for, and the transport errors it counted. */
const refusals: string[] = [];
const errors: string[] = [];
let server: GrpcServer;
let port: number;
/** What the server's calls saw, in order. */
const seen: { data: Buffer[]; events: string[]; turns: number[] }[] = [];
/** Turns of the event loop, counted by a test while it wants them. */
let turn = 0;

beforeAll(async () => {
  server = new GrpcServer(OPTIONS, { refused: (r) => refusals.push(r), error: (where, code) => errors.push(`${where} ${code}`) });
  server.handle(ECHO.path, (call: ServerCall) => {
    const log = { data: [] as Buffer[], events: [] as string[], turns: [] as number[] };
    seen.push(log);
    call.on('data', (b: Buffer) => {
      log.data.push(Buffer.from(b));
      log.turns.push(turn);
      const text = b.toString();
      if (text === 'throw') throw new Error('a bug in the handler');
      if (text.startsWith('fail:')) call.end({ code: Code.FAILED_PRECONDITION, details: text.slice(5) });
      else call.write(b);
    });
    for (const e of ['end', 'cancelled', 'close']) call.on(e, () => log.events.push(e));
    call.on('end', () => call.end());
  });
  server.handle(ONCE.path, unary((request) => Buffer.concat([Buffer.from('once:'), request])));
  port = await server.listen('127.0.0.1', 0);
});
afterAll(() => server.close(1_000));

/** The events of the latest call once its stream has closed. */
async function closedEvents(): Promise<string[]> {
  await eventually(() => seen.at(-1)!.events.includes('close'), 10_000, 'the call to close');
  return seen.at(-1)!.events;
}

const client = (options: grpc.ChannelOptions = {}): any => new Client(`127.0.0.1:${port}`, grpc.credentials.createInsecure(), options);

/** Sends each message on a bidi call, then ends it; resolves with the responses and the status. */
function chat(messages: Buffer[], options?: grpc.ChannelOptions, deadlineMs?: number): Promise<{ got: Buffer[]; status: grpc.StatusObject }> {
  return new Promise((resolve) => {
    const got: Buffer[] = [];
    const call = client(options).Chat(new grpc.Metadata(), deadlineMs ? { deadline: Date.now() + deadlineMs } : {});
    call.on('data', (b: Buffer) => got.push(b));
    call.on('error', () => {});
    call.on('status', (status: grpc.StatusObject) => resolve({ got, status }));
    for (const m of messages) call.write(m);
    if (!deadlineMs) call.end();
  });
}

/** One raw HTTP/2 request: the response headers, the body and the trailers. */
function raw(headers: http2.OutgoingHttpHeaders, body: Buffer[], keepOpen = false): Promise<{ headers: http2.IncomingHttpHeaders; body: Buffer; trailers: http2.IncomingHttpHeaders }> {
  return new Promise((resolve, reject) => {
    const session = http2.connect(`http://127.0.0.1:${port}`);
    session.on('error', reject);
    const req = session.request({ ':method': 'POST', ':path': ECHO.path, 'content-type': 'application/grpc', te: 'trailers', ...headers });
    const chunks: Buffer[] = [];
    let head: http2.IncomingHttpHeaders = {};
    let trailers: http2.IncomingHttpHeaders = {};
    req.on('response', (h) => (head = h));
    req.on('trailers', (t) => (trailers = t));
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('close', () => {
      session.close();
      resolve({ headers: head, body: Buffer.concat(chunks), trailers });
    });
    // Each buffer its own DATA frame.
    const next = (i: number): void => {
      if (i === body.length) return void (keepOpen || req.end());
      req.write(body[i], () => setTimeout(() => next(i + 1), 5));
    };
    next(0);
  });
}

const frame = (payload: Buffer, compressed = false): Buffer => {
  const prefix = Buffer.alloc(5);
  prefix[0] = compressed ? 1 : 0;
  prefix.writeUInt32BE(payload.length, 1);
  return Buffer.concat([prefix, payload]);
};

describe('gRPC transport of the ADS port', () => {
  it('echoes messages in order and ends with OK when the client ends', async () => {
    const { got, status } = await chat([Buffer.from('a'), Buffer.alloc(0), Buffer.from('c'.repeat(40_000))]);
    expect(status.code).toBe(grpc.status.OK);
    expect(got.map((b) => b.toString())).toEqual(['a', '', 'c'.repeat(40_000)]);
    expect(await closedEvents()).toEqual(['end', 'close']);
  });

  it('sends a status with any characters (percent-encoded) after messages', async () => {
    const details = 'bad: ünïcode, a newline\nand 100%';
    const { got, status } = await chat([Buffer.from('ok'), Buffer.from(`fail:${details}`)]);
    expect(got.map((b) => b.toString())).toEqual(['ok']);
    expect(status.code).toBe(grpc.status.FAILED_PRECONDITION);
    expect(status.details).toBe(details);
  });

  it('ends only its own call when a handler throws', async () => {
    const { status } = await chat([Buffer.from('throw')]);
    expect(status.code).toBe(grpc.status.INTERNAL);
    expect(status.details).toBe('the server failed to handle the request: a bug in the handler');
    expect((await chat([Buffer.from('next')])).got.map(String)).toEqual(['next']);
  });

  it('answers a unary method with one response', async () => {
    const res = await new Promise<Buffer>((resolve, reject) => client().Once(Buffer.from('x'), (err: Error | null, r: Buffer) => (err ? reject(err) : resolve(r))));
    expect(res.toString()).toBe('once:x');
  });

  it('refuses an unknown method with UNIMPLEMENTED, naming it', async () => {
    const err = await new Promise<grpc.ServiceError>((resolve) => {
      const call = client().Missing();
      call.on('error', resolve);
      call.end();
    });
    expect(err.code).toBe(grpc.status.UNIMPLEMENTED);
    expect(err.details).toContain('/test.Echo/Missing');
  });

  it('answers a request that is not gRPC with HTTP 415', async () => {
    const r = await raw({ 'content-type': 'text/plain' }, [Buffer.from('hello')]);
    expect(r.headers[':status']).toBe(415);
  });

  it('reassembles a message split over DATA frames, and reads two from one frame', async () => {
    const long = frame(Buffer.from('x'.repeat(3_000)));
    const two = Buffer.concat([frame(Buffer.from('one')), frame(Buffer.from('two'))]);
    const r = await raw({}, [long.subarray(0, 3), long.subarray(3, 1_000), long.subarray(1_000), two]);
    expect(r.trailers['grpc-status']).toBe('0');
    expect(seen.at(-1)!.data.map((b) => b.toString())).toEqual(['x'.repeat(3_000), 'one', 'two']);
    expect(r.body).toEqual(Buffer.concat([long, two]));
  });

  it('refuses a message over the size bound with RESOURCE_EXHAUSTED, and goes on serving', async () => {
    const { status } = await chat([Buffer.alloc(MAX + 1)]);
    expect(status.code).toBe(grpc.status.RESOURCE_EXHAUSTED);
    expect(status.details).toBe(`request message of ${MAX + 1} bytes; at most ${MAX}`);
    expect(await closedEvents()).toEqual(['cancelled', 'close']);
    expect((await chat([Buffer.from('still')])).got.map(String)).toEqual(['still']);
  });

  it('accepts gzip-compressed requests (a grpc-js channel compressing), bounded after decompression', async () => {
    const gzip = { 'grpc.default_compression_algorithm': 2 };
    const { got, status } = await chat([Buffer.from('z'.repeat(10_000))], gzip);
    expect(status.code).toBe(grpc.status.OK);
    expect(got.map(String)).toEqual(['z'.repeat(10_000)]);
    // 1 kB on the wire, more than the bound once inflated.
    const bomb = await raw({ 'grpc-encoding': 'gzip' }, [frame(zlib.gzipSync(Buffer.alloc(MAX * 4)), true)]);
    expect(bomb.trailers['grpc-status'] ?? bomb.headers['grpc-status']).toBe(String(grpc.status.RESOURCE_EXHAUSTED));
    const unknown = await raw({ 'grpc-encoding': 'snappy' }, [frame(Buffer.from('x'), true)]);
    expect(unknown.trailers['grpc-status'] ?? unknown.headers['grpc-status']).toBe(String(grpc.status.UNIMPLEMENTED));
  });

  it('ends a call at its deadline (grpc-timeout), telling the handler', async () => {
    // grpc-js's own deadline (the same 300 ms, in this process) may reach the server first, as its end of the call.
    const { status } = await chat([Buffer.from('slow')], {}, 300);
    expect(status.code).toBe(grpc.status.DEADLINE_EXCEEDED);
    expect(await closedEvents()).toEqual([expect.stringMatching(/^(cancelled|end)$/), 'close']);
    // The server's own doing, not the client's: a raw client that keeps its call open and never resets it.
    const session = http2.connect(`http://127.0.0.1:${port}`);
    const req = session.request({ ':method': 'POST', ':path': ECHO.path, 'content-type': 'application/grpc', 'grpc-timeout': '200m' });
    req.write(frame(Buffer.from('x')));
    const started = Date.now();
    const trailers = await new Promise<http2.IncomingHttpHeaders>((resolve) => req.on('trailers', resolve));
    expect(trailers['grpc-status']).toBe(String(grpc.status.DEADLINE_EXCEEDED));
    expect(Date.now() - started).toBeGreaterThanOrEqual(150);
    // The handler was told: cancelled, then closed (the server reset the call the client kept open).
    expect(await closedEvents()).toEqual(['cancelled', 'close']);
    session.destroy();
    // A deadline too far for a timer (11,000 years) is no deadline, not an immediate one.
    const far = await raw({ 'grpc-timeout': '99999999H' }, [frame(Buffer.from('far'))]);
    expect(far.trailers['grpc-status']).toBe('0');
    expect(far.body).toEqual(frame(Buffer.from('far')));
  });

  it('pings connections and drops one that does not answer', async () => {
    // A client that says hello in HTTP/2 and then reads nothing and answers no ping.
    const socket = net.connect(port, '127.0.0.1');
    socket.write(Buffer.concat([Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n'), Buffer.from([0, 0, 0, 4, 0, 0, 0, 0, 0])]));
    let received = Buffer.alloc(0);
    socket.on('data', (d) => (received = Buffer.concat([received, d])));
    const started = Date.now();
    await new Promise((r) => socket.on('close', r));
    // Dropped after the keepalive interval and its timeout (200 + 200 ms), and a PING frame (type 6) was sent.
    expect(Date.now() - started).toBeGreaterThanOrEqual(350);
    const types: number[] = [];
    for (let at = 0; at + 9 <= received.length; at += 9 + received.readUIntBE(at, 3)) types.push(received[at + 3]!);
    expect(types).toContain(6);
    // A client that answers pings (grpc-js) keeps its call open across several intervals.
    const got: string[] = [];
    const status = await new Promise<grpc.StatusObject>((resolve) => {
      const call = client().Chat();
      call.on('data', (b: Buffer) => got.push(b.toString()));
      call.on('status', resolve);
      call.write(Buffer.from('before'));
      setTimeout(() => {
        call.write(Buffer.from('after'));
        call.end();
      }, 1_000);
    });
    expect(status.code).toBe(grpc.status.OK);
    expect(got).toEqual(['before', 'after']);
  });

  it('resets a call it has answered and keeps nothing a client writes after the status (no certificate needed)', async () => {
    for (const path of [MISSING.path, ECHO.path]) {
      const session = http2.connect(`http://127.0.0.1:${port}`);
      const req = session.request({ ':method': 'POST', ':path': path, 'content-type': 'application/grpc' });
      let status: string | undefined;
      req.on('response', (h) => (status ??= h['grpc-status'] as string | undefined));
      req.on('trailers', (t) => (status ??= t['grpc-status'] as string | undefined));
      req.on('error', () => {});
      req.on('data', () => {});
      // The echo handler ends the call with a status on this message; the unknown method at once.
      req.write(frame(Buffer.from('fail:stop')));
      const closed = new Promise<void>((r) => req.on('close', r));
      // Then 64 MB more, as fast as flow control lets them go; the server must reset the stream instead of reading on.
      const chunk = Buffer.alloc(1024 * 1024, 1);
      let written = 0;
      let done = false;
      void closed.then(() => (done = true));
      while (!done && written < 64) {
        await new Promise<void>((r) => (req.write(chunk) ? setImmediate(r) : req.once('drain', r), setTimeout(r, 200)));
        written++;
      }
      await Promise.race([closed, new Promise((r) => setTimeout(r, 2_000))]);
      session.destroy();
      expect(done, `the ${path} call was still open after the client wrote ${written} MB`).toBe(true);
      expect(req.rstCode).toBe(http2.constants.NGHTTP2_NO_ERROR);
      expect(status).toBe(String(path === MISSING.path ? grpc.status.UNIMPLEMENTED : grpc.status.FAILED_PRECONDITION));
      expect(written).toBeLessThan(64);
      expect(server.receiving).toBe(0);
    }
  });

  it('ends a call whose client ends it inside a message with INVALID_ARGUMENT, never OK', async () => {
    const whole = frame(Buffer.from('x'.repeat(100)));
    const short = await raw({}, [whole.subarray(0, 50)]);
    expect(short.trailers['grpc-status'] ?? short.headers['grpc-status']).toBe(String(grpc.status.INVALID_ARGUMENT));
    expect(decodeURIComponent(String(short.trailers['grpc-message'] ?? short.headers['grpc-message']))).toBe('the request ended inside a message: 45 of the 100 bytes its prefix announced');
    const prefix = await raw({}, [Buffer.concat([frame(Buffer.from('ok')), whole.subarray(0, 3)])]);
    expect(prefix.body).toEqual(frame(Buffer.from('ok')));
    expect(prefix.trailers['grpc-status']).toBe(String(grpc.status.INVALID_ARGUMENT));
    expect(refusals.filter((r) => r === 'bad_message')).toHaveLength(2);
  });

  it('holds at most its receive budget of incomplete messages: the stream holding the most is refused, naming the bound; others are served', async () => {
    const before = refusals.filter((r) => r === 'receive_budget').length;
    const session = http2.connect(`http://127.0.0.1:${port}`);
    session.on('error', () => {});
    // Six streams, each a prefix for a message of the largest size and all of it but 16 bytes, then nothing.
    const statuses: Promise<{ status?: string; message?: string }>[] = [];
    for (let i = 0; i < 6; i++) {
      const req = session.request({ ':method': 'POST', ':path': ECHO.path, 'content-type': 'application/grpc' });
      req.on('error', () => {});
      statuses.push(
        new Promise((resolve) => {
          const out: { status?: string; message?: string } = {};
          const take = (h: http2.IncomingHttpHeaders): void => {
            if (h['grpc-status'] !== undefined) Object.assign(out, { status: h['grpc-status'], message: decodeURIComponent(String(h['grpc-message'] ?? '')) });
          };
          req.on('response', take);
          req.on('trailers', take);
          req.on('close', () => resolve(out));
        }),
      );
      req.write(frame(Buffer.alloc(MAX - 5 - i * 100)).subarray(0, MAX - 16 - i * 100));
      await new Promise((r) => setTimeout(r, 30));
      expect(server.receiving).toBeLessThanOrEqual(BUDGET);
    }
    // Meanwhile a well-behaved client is served.
    expect((await chat([Buffer.from('served')])).got.map(String)).toEqual(['served']);
    expect(server.receiving).toBeLessThanOrEqual(BUDGET);
    const refused = refusals.filter((r) => r === 'receive_budget').length - before;
    expect(refused).toBeGreaterThanOrEqual(2);
    // The biggest holders went first: the first streams (largest partial messages).
    const first = await statuses[0]!;
    expect(first.status).toBe(String(grpc.status.RESOURCE_EXHAUSTED));
    expect(first.message).toMatch(new RegExp(`over its bound of ${BUDGET} bytes; this stream held the most \\(this stream \\d+ bytes\\), now dropped`));
    session.destroy();
    await Promise.all(statuses);
  });

  it("keeps a connection whose ping answer waited on the server's own busy turn", async () => {
    // A raw HTTP/2 client that answers PINGs itself. On the server's first, the process (the server with it) is held
    // for three timeouts, and the answer leaves half a timeout after: when the server's timer, late, runs, the answer
    // is not on the socket yet (as behind a busy turn's other sockets). A server that judged the connection then, not
    // giving it another timeout, would drop it.
    const timeout = OPTIONS.keepaliveTimeoutMs;
    const socket = net.connect(port, '127.0.0.1');
    socket.write(Buffer.concat([Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n'), Buffer.from([0, 0, 0, 4, 0, 0, 0, 0, 0])]));
    let closed = false;
    socket.on('close', () => (closed = true));
    socket.on('error', () => {});
    let pings = 0;
    let pending = Buffer.alloc(0);
    socket.on('data', (d: Buffer) => {
      pending = Buffer.concat([pending, d]);
      while (pending.length >= 9 && pending.length >= 9 + pending.readUIntBE(0, 3)) {
        const length = pending.readUIntBE(0, 3);
        const [type, flags] = [pending[3]!, pending[4]!];
        const payload = Buffer.from(pending.subarray(9, 9 + length));
        pending = pending.subarray(9 + length);
        // SETTINGS: acknowledged; PING (not an ACK): answered with its payload.
        if (type === 4 && !(flags & 1)) socket.write(Buffer.from([0, 0, 0, 4, 1, 0, 0, 0, 0]));
        if (type !== 6 || flags & 1) continue;
        const ack = Buffer.concat([Buffer.from([0, 0, 8, 6, 1, 0, 0, 0, 0]), payload]);
        if (pings++ > 0) {
          socket.write(ack);
          continue;
        }
        const until = performance.now() + 3 * timeout;
        while (performance.now() < until);
        setTimeout(() => socket.write(ack), timeout / 2);
      }
    });
    // The server pings again only once it has taken the answer to the first; a connection it judged silent is closed.
    await eventually(() => pings > 1 || closed, 30_000, 'a second ping, or the connection closed');
    expect(closed).toBe(false);
    socket.destroy();
  });

  it('refuses no stream holding less than a stream window, even together over the budget: each completes and is served', async () => {
    const before = refusals.filter((r) => r === 'receive_budget').length;
    // 24 streams over 3 connections, each with 55,000 bytes of a 60,000-byte message: 1.3 MB, over the 1 MiB budget.
    const sessions = [0, 1, 2].map(() => http2.connect(`http://127.0.0.1:${port}`).on('error', () => {}));
    const message = frame(Buffer.alloc(60_000 - 5, 7));
    const echoes = sessions.flatMap((session) =>
      Array.from({ length: 8 }, () => {
        const req = session.request({ ':method': 'POST', ':path': ECHO.path, 'content-type': 'application/grpc' });
        req.on('error', () => {});
        const got = new Promise<number>((resolve) => {
          let bytes = 0;
          req.on('data', (d: Buffer) => (bytes += d.length));
          req.on('data', () => bytes >= message.length && resolve(bytes));
          req.on('close', () => resolve(bytes));
        });
        req.write(message.subarray(0, 55_000));
        return { req, got };
      }),
    );
    // Every byte sent is held (past the prefixes), over the budget: no stream was dropped on the way (a dropped one's
    // bytes leave the count, and it never comes back to the total).
    const sent = echoes.length * (55_000 - 5);
    await eventually(() => server.receiving === sent || refusals.filter((r) => r === 'receive_budget').length > before, 10_000, 'every partial message held');
    expect(refusals.filter((r) => r === 'receive_budget').length - before).toBe(0);
    expect(server.receiving).toBe(sent);
    expect(sent).toBeGreaterThan(BUDGET);
    for (const { req } of echoes) req.write(message.subarray(55_000));
    expect(await Promise.all(echoes.map((e) => e.got))).toEqual(echoes.map(() => message.length));
    expect(server.receiving).toBe(0);
    for (const s of sessions) s.destroy();
  });

  it('refuses a message still incomplete after its deadline, and drops what it held', async () => {
    const started = Date.now();
    const r = await raw({}, [frame(Buffer.from('y'.repeat(1_000))).subarray(0, 500)], true);
    expect(r.trailers['grpc-status'] ?? r.headers['grpc-status']).toBe(String(grpc.status.DEADLINE_EXCEEDED));
    expect(decodeURIComponent(String(r.trailers['grpc-message'] ?? r.headers['grpc-message']))).toBe(`a request message stayed incomplete for ${MESSAGE_TIMEOUT_MS / 1000} s (495 of 1000 bytes received)`);
    expect(Date.now() - started).toBeGreaterThanOrEqual(MESSAGE_TIMEOUT_MS - 50);
    expect(refusals).toContain('incomplete_message');
    expect(server.receiving).toBe(0);
  });

  it('inflates compressed messages off the event loop, in order with the others', async () => {
    // Twenty compressed messages in one DATA frame: inflated on the thread pool, so the event loop turns between
    // them (inflated at once, all twenty would be delivered within one turn).
    const texts = Array.from({ length: 20 }, (_, i) => `${i}:${'q'.repeat(20_000)}`);
    let running = true;
    const tick = (): void => {
      turn++;
      if (running) setImmediate(tick);
    };
    tick();
    const before = seen.length;
    const r = await raw({ 'grpc-encoding': 'gzip' }, [Buffer.concat([...texts.map((t) => frame(zlib.gzipSync(Buffer.from(t)), true)), frame(Buffer.from('plain'))])]);
    running = false;
    expect(r.trailers['grpc-status']).toBe('0');
    expect(seen[before]!.data.map(String)).toEqual([...texts, 'plain']);
    expect(r.body).toEqual(Buffer.concat([...texts, 'plain'].map((t) => frame(Buffer.from(t)))));
    expect(new Set(seen[before]!.turns).size).toBeGreaterThan(1);
  });

  it('bounds connections and streams: the one over is closed or refused with RESOURCE_EXHAUSTED, and counted', async () => {
    const events: string[] = [];
    const small = new GrpcServer({ ...OPTIONS, maxConnections: 2, maxStreams: 2 }, { refused: (r) => events.push(r), dropped: () => events.push('dropped') });
    small.handle(ECHO.path, (call) => call.on('data', (b: Buffer) => call.write(b)));
    const p = await small.listen('127.0.0.1', 0);
    try {
      const sessions = [http2.connect(`http://127.0.0.1:${p}`), http2.connect(`http://127.0.0.1:${p}`)];
      for (const s of sessions) s.on('error', () => {});
      await Promise.all(sessions.map((s) => new Promise((r) => s.once('connect', r))));
      const third = http2.connect(`http://127.0.0.1:${p}`);
      third.on('error', () => {});
      await new Promise((r) => third.once('close', r));
      expect(events).toEqual(['dropped']);
      const open = (s: http2.ClientHttp2Session): Promise<http2.IncomingHttpHeaders> =>
        new Promise((resolve) => {
          const req = s.request({ ':method': 'POST', ':path': ECHO.path, 'content-type': 'application/grpc' });
          req.on('error', () => {});
          req.on('response', resolve);
          req.write(frame(Buffer.from('hi')));
        });
      await open(sessions[0]!);
      await open(sessions[1]!);
      const over = await open(sessions[1]!);
      expect(over['grpc-status']).toBe(String(grpc.status.RESOURCE_EXHAUSTED));
      expect(over['grpc-message']).toBe('the server has 2 streams open, its bound, and this client (127.0.0.1) holds no fewer than any other; try again later');
      expect(events).toEqual(['dropped', 'too_many_streams']);
      for (const s of sessions) s.destroy();
    } finally {
      await small.close(100);
    }
  });

  it('counts the errors of connections and streams (by code) instead of swallowing them, and goes on serving', async () => {
    const before = errors.length;
    // A client whose connection is reset (TCP RST) in the middle of a call.
    const session = http2.connect(`http://127.0.0.1:${port}`);
    session.on('error', () => {});
    const req = session.request({ ':method': 'POST', ':path': ECHO.path, 'content-type': 'application/grpc' });
    req.on('error', () => {});
    await new Promise<void>((resolve) => {
      req.on('data', () => resolve());
      req.write(frame(Buffer.from('hello')));
    });
    (session.socket as net.Socket).resetAndDestroy();
    await eventually(() => errors.length >= before + 2, 10_000, 'the errors of the connection and its stream');
    expect(errors.slice(before).sort()).toEqual(['session ECONNRESET', 'stream ECONNRESET']);
    expect((await chat([Buffer.from('after')])).got.map(String)).toEqual(['after']);
  });
});

describe('a fair share per client (REFERENCE §16: one client held every stream, or gigabytes in window-sized pieces)', () => {
  const ATTACKER = '127.0.0.1';
  const PROXY = '127.0.0.2';
  /** A raw HTTP/2 connection from `from`. */
  const connect = async (p: number, from: string): Promise<http2.ClientHttp2Session> => {
    const s = http2.connect(`http://127.0.0.1:${p}`, { createConnection: () => net.connect({ host: '127.0.0.1', port: p, localAddress: from }) });
    s.on('error', () => {});
    await new Promise((r) => s.once('connect', r));
    return s;
  };
  /** A stream that sends `data` and holds; resolves with its status when it ends. */
  const holdStream = (s: http2.ClientHttp2Session, data: Buffer): { status: Promise<{ status?: string; message?: string }> } => {
    const req = s.request({ ':method': 'POST', ':path': ECHO.path, 'content-type': 'application/grpc' });
    req.on('error', () => {});
    const status = new Promise<{ status?: string; message?: string }>((resolve) => {
      const take = (h: http2.IncomingHttpHeaders): void => {
        if (h['grpc-status'] !== undefined) resolve({ status: String(h['grpc-status']), message: decodeURIComponent(String(h['grpc-message'] ?? '')) });
      };
      req.on('response', take);
      req.on('trailers', take);
      req.on('close', () => resolve({}));
    });
    req.write(data);
    return { status };
  };
  /** One echo round trip from `s`: the message comes back. */
  const echo = (s: http2.ClientHttp2Session, text: string): Promise<string> =>
    new Promise((resolve, reject) => {
      const req = s.request({ ':method': 'POST', ':path': ECHO.path, 'content-type': 'application/grpc' });
      req.on('error', reject);
      req.on('data', (b: Buffer) => resolve(b.subarray(5).toString()));
      req.on('trailers', (h) => reject(new Error(`ended: ${h['grpc-status']} ${decodeURIComponent(String(h['grpc-message']))}`)));
      req.on('response', (h) => h['grpc-status'] !== undefined && reject(new Error(`refused: ${h['grpc-status']} ${decodeURIComponent(String(h['grpc-message']))}`)));
      req.write(frame(Buffer.from(text)));
    });

  async function serve(options: Partial<GrpcServerOptions>): Promise<{ s: GrpcServer; p: number; events: string[] }> {
    const events: string[] = [];
    const s = new GrpcServer({ ...OPTIONS, maxConcurrentStreams: 1_000, ...options }, { refused: (r) => events.push(r), dropped: () => events.push('dropped') });
    s.handle(ECHO.path, (call) => call.on('data', (b: Buffer) => call.write(b)));
    return { s, p: await s.listen('127.0.0.1', 0), events };
  }

  it("one client's idle streams never lock another out: the client holding the most gives one up", async () => {
    const { s, p, events } = await serve({ maxStreams: 40 });
    try {
      const attacker = await Promise.all([0, 1].map(() => connect(p, ATTACKER)));
      const held = attacker.flatMap((c) => Array.from({ length: 25 }, () => holdStream(c, frame(Buffer.from('x')))));
      await eventually(() => events.filter((e) => e === 'too_many_streams').length === 10, 10_000, 'the attacker refused past the bound');
      const proxy = await connect(p, PROXY);
      for (let i = 0; i < 5; i++) expect(await echo(proxy, `served ${i}`)).toBe(`served ${i}`);
      // Each of the proxy's streams took one of the attacker's (all of it still open: the proxy's echo streams stay
      // open): five refusals more, counted by the server as it made them, and their statuses reach the attacker.
      expect(events.filter((e) => e === 'too_many_streams').length).toBe(15);
      const evicted: { status?: string; message?: string }[] = [];
      for (const h of held.slice(0, 40)) void h.status.then((x) => x.status === String(grpc.status.RESOURCE_EXHAUSTED) && evicted.push(x));
      await eventually(() => evicted.length >= 5, 10_000, "the evicted streams' statuses");
      expect(evicted[0]!.message).toContain(`this stream's client (${ATTACKER}) the most`);
      for (const c of [...attacker, proxy]) c.destroy();
    } finally {
      await s.close(100);
    }
  });

  it("one source's connections never keep another out", async () => {
    const { s, p, events } = await serve({ maxConnections: 4 });
    try {
      const attacker = [];
      for (let i = 0; i < 6; i++) attacker.push(await connect(p, ATTACKER).catch(() => undefined));
      await eventually(() => events.filter((e) => e === 'dropped').length >= 2, 10_000, 'the attacker dropped past the bound');
      const proxy = await connect(p, PROXY);
      expect(await echo(proxy, 'served')).toBe('served');
      expect(events.filter((e) => e === 'dropped').length).toBe(3);
      for (const c of [...attacker, proxy]) c?.destroy();
    } finally {
      await s.close(100);
    }
  });

  it('holds within a stream window are bounded in all (the ceiling): the heaviest client loses streams, a proxy is served', async () => {
    const { s, p, events } = await serve({});
    let most = 0;
    const watch = setInterval(() => (most = Math.max(most, s.receiving)), 1);
    try {
      // 3 connections x 100 streams x 60,000 bytes of a 64,000-byte message: 18 MB held if nothing bounded it (most of
      // them arrive once the ceiling is reached: each must be refused, not let by).
      const attacker = await Promise.all([0, 1, 2].map(() => connect(p, ATTACKER)));
      const held = attacker.flatMap((c) => Array.from({ length: 100 }, () => holdStream(c, frame(Buffer.alloc(64_000 - 5)).subarray(0, 60_000))));
      await eventually(() => events.filter((e) => e === 'receive_budget').length >= 300 - Math.floor((2 * BUDGET) / 60_000), 10_000, 'the attacker refused past the ceiling');
      expect(s.receiving).toBeLessThanOrEqual(2 * BUDGET);
      // A proxy's message arriving in two halves completes: another client holds the most.
      const proxy = await connect(p, PROXY);
      const req = proxy.request({ ':method': 'POST', ':path': ECHO.path, 'content-type': 'application/grpc' });
      const whole = frame(Buffer.alloc(64_000 - 5, 1));
      const back = new Promise<number>((resolve, reject) => {
        let got = 0;
        req.on('data', (b: Buffer) => (got += b.length) >= 64_000 && resolve(got));
        req.on('trailers', (h) => reject(new Error(`ended: ${decodeURIComponent(String(h['grpc-message']))}`)));
      });
      req.write(whole.subarray(0, 60_000));
      await new Promise((r) => setTimeout(r, 50));
      req.write(whole.subarray(60_000));
      expect(await back).toBe(64_000);
      expect(most).toBeLessThanOrEqual(2 * BUDGET + 64_000);
      const refused: { status?: string; message?: string }[] = [];
      for (const h of held) void h.status.then((x) => x.status && refused.push(x));
      await eventually(() => refused.length > 0, 10_000, "a refused stream's status");
      expect(refused[0]!.message).toContain(`its client (${ATTACKER}) held the most`);
      for (const c of [...attacker, proxy]) c.destroy();
    } finally {
      clearInterval(watch);
      await s.close(100);
    }
  });
});

describe('maximum connection age', () => {
  it('GOAWAY at the age, then the calls still open end with UNAVAILABLE; the client reconnects and is served', async () => {
    const aged: number[] = [];
    const s = new GrpcServer({ ...OPTIONS, maxConnectionAgeMs: 400, maxConnectionAgeGraceMs: 300 }, { aged: () => aged.push(Date.now()) });
    const ended: string[] = [];
    s.handle(ECHO.path, (call: ServerCall) => {
      call.on('data', (b: Buffer) => call.write(b));
      call.on('cancelled', () => ended.push('cancelled'));
    });
    const p = await s.listen('127.0.0.1', 0);
    try {
      const session = http2.connect(`http://127.0.0.1:${p}`);
      const order: string[] = [];
      const goaway = new Promise<number>((r) =>
        session.once('goaway', () => {
          order.push('goaway');
          r(Date.now());
        }),
      );
      const started = Date.now();
      const stream = session.request({ ':method': 'POST', ':path': ECHO.path, 'content-type': 'application/grpc', te: 'trailers' });
      const trailers = new Promise<http2.IncomingHttpHeaders>((r) =>
        stream.once('trailers', (t) => {
          order.push('status');
          r(t);
        }),
      );
      stream.on('data', () => {});
      stream.on('error', () => {});
      // A long-lived call, as an ADS stream is: open, one message, never ended by the client.
      stream.write(Buffer.from([0, 0, 0, 0, 2, 104, 105]));
      // Not before the age (400 ms, less 10% jitter); when, after it, is a matter of the machine's load, not asserted.
      expect((await goaway) - started).toBeGreaterThanOrEqual(350);
      const t = await trailers;
      // GOAWAY at the age, the call's status only after the grace: GOAWAY first.
      expect(order).toEqual(['goaway', 'status']);
      expect(t['grpc-status']).toBe(String(Code.UNAVAILABLE));
      expect(decodeURIComponent(String(t['grpc-message']))).toMatch(/maximum age \(--max-connection-age\): reconnect/);
      expect(ended).toEqual(['cancelled']);
      expect(aged.length).toBe(1);
      session.destroy();
      // A new connection is served as usual.
      const again = await new Promise<Buffer>((resolve, reject) => {
        const c = new Client(`127.0.0.1:${p}`, grpc.credentials.createInsecure()) as any;
        const call = c.Chat();
        call.on('data', (b: Buffer) => {
          resolve(b);
          call.cancel();
        });
        call.on('error', (e: Error) => (e.message.includes('Cancelled') ? undefined : reject(e)));
        call.write(Buffer.from('again'));
      });
      expect(again.toString()).toBe('again');
    } finally {
      await s.close(500);
    }
  });
});
