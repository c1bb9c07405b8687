/**
 * Hostile clients of the ADS port (issue 21), all at once for a while, with no certificate and no valid request:
 * - a writer that keeps sending on a call the server has answered (an unknown method), 1 MiB at a time, and
 *   opens another whenever one is reset;
 * - streams that each send the prefix of a 4 MiB message and all of it but 64 bytes, then nothing (reopened
 *   when refused);
 * - gzip bombs: 4 kB messages that inflate to 4 MiB;
 * - streams each holding 65,000 B of a 70,000-byte message, under the stream window the receive budget lets
 *   complete (REFERENCE §16: 30 connections x 1,000 of them added 1.1-1.85 GB);
 * - idle streams opened by one client, as many as it can (30,000 of them locked every other proxy out);
 * - with TLS, handshakes begun and dropped, and connections that finish the handshake without a certificate and
 *   stay idle (56 KB each for as long as the client liked);
 * and beside them a well-behaved client that opens an ADS stream every half second and must get its listeners.
 * Used by `npm run fuzz:inputs` (against `mesh-xds serve`) and `npm run bench:ads` (ADS_HOSTILE=SECONDS).
 */
import http2 from 'node:http2';
import net from 'node:net';
import tls from 'node:tls';
import zlib from 'node:zlib';
import * as grpc from '@grpc/grpc-js';
import { envoyRoot } from '../src/xds/resources/protos.js';
import { ADS_PATHS, ADS_SERVICE } from '../src/xds/protocol/server.js';
import { LISTENER } from '../src/xds/resources/types.js';

export interface HostileOptions {
  seconds: number;
  /** Streams holding an incomplete 4 MiB message, over `connections` connections. */
  partialStreams: number;
  connections: number;
  /** gzip bombs sent per second. */
  bombsPerSecond: number;
  /** The well-behaved client's node (its identity must be in the mesh). */
  node: { id: string; namespace: string; serviceAccount: string };
  /** The port is TLS: also begin handshakes and drop them; the well-behaved client is then not run here. */
  tls?: boolean;
  /** Streams each holding 65,000 B of a 70,000-byte message (1,000 per connection). */
  windowStreams?: number;
  /** Streams opened and left idle (1,000 per connection). */
  idleStreams?: number;
  /** With TLS: connections that finish the handshake without a certificate, kept open (reopened when closed). */
  anonymousConnections?: number;
  /** Run the well-behaved client here (default, without TLS); false: another process runs it. */
  wellBehaved?: boolean;
  /** The attackers' source address (default: the system's choice, 127.0.0.1 on loopback). */
  from?: string;
}

export interface HostileReport {
  writtenMb: number;
  writerResets: number;
  partialsSent: number;
  partialsRefused: Record<string, number>;
  bombsSent: number;
  bombsRefused: number;
  handshakesDropped: number;
  /** Window-sized holds and idle streams: how many were opened, and how each that ended, ended. */
  windowStreams: { opened: number; ended: Record<string, number> };
  idleStreams: { opened: number; ended: Record<string, number> };
  /** Anonymous TLS connections opened, and the most open at once. */
  anonymous: { opened: number; mostOpen: number };
  wellBehaved: { ok: number; failed: string[] };
}

const MESSAGE = 4 * 1024 * 1024;

const prefix = (length: number, compressed = false): Buffer => {
  const p = Buffer.alloc(5);
  p[0] = compressed ? 1 : 0;
  p.writeUInt32BE(length, 1);
  return p;
};

export async function hostileClients(address: string, o: HostileOptions): Promise<HostileReport> {
  const report: HostileReport = {
    writtenMb: 0,
    writerResets: 0,
    partialsSent: 0,
    partialsRefused: {},
    bombsSent: 0,
    bombsRefused: 0,
    handshakesDropped: 0,
    windowStreams: { opened: 0, ended: {} },
    idleStreams: { opened: 0, ended: {} },
    anonymous: { opened: 0, mostOpen: 0 },
    wellBehaved: { ok: 0, failed: [] },
  };
  const until = performance.now() + o.seconds * 1000;
  const running = (): boolean => performance.now() < until;
  const url = `${o.tls ? 'https' : 'http'}://${address}`;
  const sessions: http2.ClientHttp2Session[] = [];
  const connect = (): http2.ClientHttp2Session => {
    const [host, port] = [address.slice(0, address.lastIndexOf(':')), Number(address.slice(address.lastIndexOf(':') + 1))];
    const s = http2.connect(url, {
      rejectUnauthorized: false,
      maxSessionMemory: 1024,
      ...(o.from ? { createConnection: () => (o.tls ? tls.connect({ host, port, localAddress: o.from, rejectUnauthorized: false, ALPNProtocols: ['h2'] } as tls.ConnectionOptions) : net.connect({ host, port, localAddress: o.from })) } : {}),
    });
    s.on('error', () => {});
    sessions.push(s);
    return s;
  };
  const request = (s: http2.ClientHttp2Session, path: string, headers: http2.OutgoingHttpHeaders = {}): http2.ClientHttp2Stream | undefined => {
    if (s.destroyed || s.closed) return undefined;
    try {
      const r = s.request({ ':method': 'POST', ':path': path, 'content-type': 'application/grpc', ...headers });
      r.on('error', () => {});
      r.on('data', () => {});
      return r;
    } catch {
      return undefined;
    }
  };
  /** The grpc-status a stream ended with (from its headers or trailers), or 'reset'/'closed'. */
  const ended = (r: http2.ClientHttp2Stream): Promise<string> =>
    new Promise((resolve) => {
      let status: string | undefined;
      const take = (h: http2.IncomingHttpHeaders): void => {
        if (h['grpc-status'] !== undefined) status ??= String(h['grpc-status']);
      };
      r.on('response', take);
      r.on('trailers', take);
      r.on('close', () => resolve(status ?? (r.rstCode ? `reset ${r.rstCode}` : 'closed')));
    });

  // 1. Writing on after the answer.
  const writer = async (): Promise<void> => {
    const chunk = Buffer.alloc(1024 * 1024, 7);
    let s = connect();
    while (running()) {
      if (s.destroyed || s.closed) s = connect();
      const r = request(s, '/no.Such/Method');
      if (!r) continue;
      r.write(prefix(10));
      while (!r.destroyed && running()) {
        const more = r.write(chunk);
        report.writtenMb++;
        const stalled = await new Promise<boolean>((resolve) => {
          if (more || r.destroyed) return void setImmediate(() => resolve(false));
          const go = (stall: boolean): void => {
            clearTimeout(timer);
            r.off('drain', drained);
            r.off('close', drained);
            resolve(stall);
          };
          const drained = (): void => go(false);
          // The server stops granting flow-control window to a writer it has reset: start over on a new connection.
          const timer = setTimeout(() => go(true), 1000);
          r.on('drain', drained);
          r.on('close', drained);
        });
        if (stalled) {
          s.destroy();
          break;
        }
      }
      if (r.destroyed) report.writerResets++;
      r.close();
    }
  };

  // 2. Incomplete messages held.
  const partials = async (): Promise<void> => {
    const conns = Array.from({ length: o.connections }, connect);
    const body = Buffer.alloc(MESSAGE - 64, 3);
    const one = async (i: number): Promise<void> => {
      while (running()) {
        const r = request(conns[i % conns.length]!, ADS_PATHS.sotw);
        if (!r) return;
        r.write(prefix(MESSAGE));
        r.write(body);
        report.partialsSent++;
        const status = await Promise.race([ended(r), new Promise<string>((resolve) => setTimeout(() => resolve('held'), Math.max(0, until - performance.now())))]);
        if (status !== 'held') report.partialsRefused[status] = (report.partialsRefused[status] ?? 0) + 1;
        r.close();
      }
    };
    await Promise.all(Array.from({ length: o.partialStreams }, (_, i) => one(i)));
  };

  // 3. gzip bombs.
  const bombs = async (): Promise<void> => {
    const bomb = Buffer.concat([prefix(0, true), zlib.gzipSync(Buffer.alloc(2 * MESSAGE), { level: 9 })]);
    bomb.writeUInt32BE(bomb.length - 5, 1);
    const s = connect();
    const sent: Promise<void>[] = [];
    while (running()) {
      for (let k = 0; k < o.bombsPerSecond / 10; k++) {
        const r = request(s.destroyed ? connect() : s, ADS_PATHS.sotw, { 'grpc-encoding': 'gzip' });
        if (!r) continue;
        r.end(bomb);
        report.bombsSent++;
        sent.push(ended(r).then((st) => void (st === String(grpc.status.RESOURCE_EXHAUSTED) && report.bombsRefused++)));
      }
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    await Promise.race([Promise.all(sent), new Promise((r) => setTimeout(r, 2000))]);
  };

  // 4. TLS handshakes begun and dropped (a ClientHello cut short).
  const handshakes = async (): Promise<void> => {
    const [host, port] = [address.slice(0, address.lastIndexOf(':')), Number(address.slice(address.lastIndexOf(':') + 1))];
    while (running()) {
      await Promise.all(
        Array.from({ length: 20 }, () =>
          new Promise<void>((resolve) => {
            const sock = net.connect(port, host, () => sock.end(Buffer.from([0x16, 0x03, 0x01, 0x00, 0x40, 0x01, 0x00])));
            sock.on('error', () => {});
            sock.on('close', () => {
              report.handshakesDropped++;
              resolve();
            });
          }),
        ),
      );
      await new Promise((r) => setTimeout(r, 50));
    }
  };

  // 5 and 6. Streams that each hold a window-sized piece of a message, or nothing, opened up to their number
  // (1,000 per connection, the server's bound per connection) and reopened when ended.
  const holders = async (n: number, data: Buffer | undefined, tally: { opened: number; ended: Record<string, number> }): Promise<void> => {
    const conns = Array.from({ length: Math.ceil(n / 1000) }, connect);
    const one = async (i: number): Promise<void> => {
      while (running()) {
        let c = conns[i % conns.length]!;
        if (c.destroyed || c.closed) c = conns[i % conns.length] = connect();
        const r = request(c, ADS_PATHS.sotw);
        if (!r) {
          await new Promise((resolve) => setTimeout(resolve, 100));
          continue;
        }
        if (data) r.write(data);
        tally.opened++;
        const status = await Promise.race([ended(r), new Promise<string>((resolve) => setTimeout(() => resolve('held'), Math.max(0, until - performance.now())))]);
        if (status !== 'held') tally.ended[status] = (tally.ended[status] ?? 0) + 1;
        r.close();
      }
    };
    await Promise.all(Array.from({ length: n }, (_, i) => one(i)));
  };
  const windowHold = Buffer.concat([prefix(70_000), Buffer.alloc(65_000 - 5, 9)]);

  // 7. TLS connections without a certificate, idle.
  const anonymous = async (n: number): Promise<void> => {
    const [host, port] = [address.slice(0, address.lastIndexOf(':')), Number(address.slice(address.lastIndexOf(':') + 1))];
    let open = 0;
    const one = async (): Promise<void> => {
      while (running()) {
        await new Promise<void>((resolve) => {
          const sock = tls.connect({ port, host, rejectUnauthorized: false, ALPNProtocols: ['h2'] });
          sock.on('error', () => {});
          sock.resume();
          sock.on('secureConnect', () => {
            report.anonymous.opened++;
            report.anonymous.mostOpen = Math.max(report.anonymous.mostOpen, ++open);
            sock.once('close', () => open--);
          });
          sock.on('close', () => resolve());
          setTimeout(() => sock.destroy(), Math.max(0, until - performance.now())).unref();
        });
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
    };
    await Promise.all(Array.from({ length: n }, one));
  };

  // The well-behaved client: a new ADS stream every half second gets its listeners within 5 s.
  const wellBehaved = async (): Promise<void> => {
    const Ads = grpc.makeGenericClientConstructor(ADS_SERVICE, 'ADS');
    const Req = envoyRoot().lookupType('envoy.service.discovery.v3.DiscoveryRequest');
    const node = { id: o.node.id, user_agent_name: 'envoy', metadata: { fields: { namespace: { stringValue: o.node.namespace }, serviceAccount: { stringValue: o.node.serviceAccount } } } };
    const request = Buffer.from(Req.encode(Req.fromObject({ node, type_url: LISTENER })).finish());
    const tries: Promise<void>[] = [];
    while (running()) {
      tries.push(
        new Promise<void>((resolve) => {
          const client = new Ads(address, grpc.credentials.createInsecure(), { 'grpc.use_local_subchannel_pool': 1 }) as any;
          const call = client.StreamAggregatedResources({ deadline: Date.now() + 5000 });
          const done = (failure?: string): void => {
            if (failure) report.wellBehaved.failed.push(failure);
            else report.wellBehaved.ok++;
            call.cancel();
            client.close();
            resolve();
          };
          call.on('data', () => done());
          call.on('error', (e: grpc.ServiceError) => e.code !== grpc.status.CANCELLED && done(`${grpc.status[e.code]}: ${e.details}`));
          call.write(request);
        }),
      );
      await new Promise((r) => setTimeout(r, 500));
    }
    await Promise.all(tries);
  };

  await Promise.all([
    writer(),
    partials(),
    bombs(),
    holders(o.windowStreams ?? 0, windowHold, report.windowStreams),
    holders(o.idleStreams ?? 0, undefined, report.idleStreams),
    ...(o.tls ? [handshakes(), anonymous(o.anonymousConnections ?? 0)] : o.wellBehaved === false ? [] : [wellBehaved()]),
  ]);
  for (const s of sessions) s.destroy();
  return report;
}
