/** A raw ADS client over real gRPC: sends DiscoveryRequests as written, and reads responses decoded. */
import * as grpc from '@grpc/grpc-js';
import { ADS_SERVICE } from '../../src/xds/protocol/server.js';
import { envoyRoot } from '../../src/xds/resources/protos.js';
import { resourceType } from '../../src/xds/resources/types.js';
import { decodeMessage } from './xds-json.js';

const Client = grpc.makeGenericClientConstructor(ADS_SERVICE, 'AggregatedDiscoveryService');

export interface NodeOpts {
  id?: string;
  namespace?: string;
  serviceAccount?: string;
  userAgent?: string;
}

export function node(o: NodeOpts = {}): object {
  const fields: Record<string, object> = {};
  if (o.namespace !== undefined || !('namespace' in o)) fields.namespace = { stringValue: o.namespace ?? 'curl' };
  if (o.serviceAccount !== undefined || !('serviceAccount' in o)) fields.serviceAccount = { stringValue: o.serviceAccount ?? 'curl' };
  return { id: o.id ?? 'test-node', user_agent_name: o.userAgent ?? 'envoy', metadata: { fields } };
}

export interface Response {
  version_info: string;
  nonce: string;
  type_url: string;
  names: string[];
  resources: any[];
  // delta
  system_version_info?: string;
  removed?: string[];
  versions?: Record<string, string>;
}

class Stream {
  private readonly queue: (Response | Error)[] = [];
  private waiters: ((r: Response | Error) => void)[] = [];
  ended = false;
  error?: grpc.ServiceError;

  constructor(
    readonly call: grpc.ClientDuplexStream<Buffer, Buffer>,
    private readonly delta: boolean,
  ) {
    call.on('data', (buf: Buffer) => this.push(this.decode(buf)));
    call.on('error', (e: grpc.ServiceError) => {
      this.error = e;
      this.push(e);
    });
    call.on('end', () => (this.ended = true));
  }

  private decode(buf: Buffer): Response {
    const root = envoyRoot();
    if (this.delta) {
      const t = root.lookupType('envoy.service.discovery.v3.DeltaDiscoveryResponse');
      const m: any = t.decode(buf);
      const type = resourceType(m.type_url)!;
      return {
        version_info: '',
        system_version_info: m.system_version_info,
        nonce: m.nonce,
        type_url: m.type_url,
        names: m.resources.map((r: any) => r.name),
        versions: Object.fromEntries(m.resources.map((r: any) => [r.name, r.version])),
        resources: m.resources.map((r: any) => decodeMessage(type.message, r.resource.value)),
        removed: m.removed_resources,
      };
    }
    const t = root.lookupType('envoy.service.discovery.v3.DiscoveryResponse');
    const m: any = t.decode(buf);
    const type = resourceType(m.type_url)!;
    const resources = m.resources.map((a: any) => decodeMessage(type.message, a.value));
    return { version_info: m.version_info, nonce: m.nonce, type_url: m.type_url, resources, names: resources.map(type.nameOf) };
  }

  private push(r: Response | Error): void {
    const w = this.waiters.shift();
    if (w) w(r);
    else this.queue.push(r);
  }

  send(req: object): void {
    const type = envoyRoot().lookupType(
      this.delta ? 'envoy.service.discovery.v3.DeltaDiscoveryRequest' : 'envoy.service.discovery.v3.DiscoveryRequest',
    );
    const msg = type.fromObject(req);
    const errs = type.verify(msg);
    if (errs) throw new Error(errs);
    this.call.write(Buffer.from(type.encode(msg).finish()));
  }

  /** A request's bytes as given, with `extra` (encoded fields) appended: for what protobufjs would not encode. */
  sendBytes(req: object, extra: Uint8Array): void {
    const type = envoyRoot().lookupType(
      this.delta ? 'envoy.service.discovery.v3.DeltaDiscoveryRequest' : 'envoy.service.discovery.v3.DiscoveryRequest',
    );
    this.call.write(Buffer.concat([type.encode(type.fromObject(req)).finish(), extra]));
  }

  /** Next response, or throws after `ms`. */
  next(ms = 3000): Promise<Response> {
    const q = this.queue.shift();
    const p = q
      ? Promise.resolve(q)
      : new Promise<Response | Error>((resolve, reject) => {
          const timer = setTimeout(() => {
            this.waiters = this.waiters.filter((w) => w !== waiter);
            reject(new Error(`no response within ${ms} ms`));
          }, ms);
          const waiter = (r: Response | Error): void => {
            clearTimeout(timer);
            resolve(r);
          };
          this.waiters.push(waiter);
        });
    return p.then((r) => {
      if (r instanceof Error) throw r;
      return r;
    });
  }

  private sentinels = 0;

  /**
   * Proves that the server owes this stream nothing more, without waiting for silence: asks for a resource of
   * `typeUrl` that does not exist, and resolves true if the next response is the answer to exactly that (false if
   * another came first; it stays queued). The server handles a stream's requests in order and writes whatever one
   * owes before it reads the next (src/xds/protocol/stream.ts), so anything the steps before owed comes before the
   * sentinel's answer. The answer is ACKed, so that it holds nothing back after it (make-before-break).
   *
   * Take a type the stream does not otherwise take. SotW answers a missing name of a full-state type (CDS, LDS) with
   * an empty response, once per type and stream; and a CDS response has the stream's EDS sent again: with EDS, take
   * LDS. Delta answers a missing name of any type not taken as a wildcard (it is reported removed), every time.
   */
  async nothingOwed(typeUrl: string): Promise<boolean> {
    const name = `sentinel-${++this.sentinels}`;
    this.send(this.delta ? { type_url: typeUrl, resource_names_subscribe: [name] } : { type_url: typeUrl, resource_names: [name] });
    const r = await this.next();
    const answer = r.type_url === typeUrl && r.names.length === 0 && (!this.delta || (r.removed?.length === 1 && r.removed[0] === name));
    if (!answer) {
      if (process.env.DEBUG_ADS) console.log('owed', r.type_url, r.names, r.version_info, r.nonce);
      this.queue.unshift(r);
      return false;
    }
    this.send(this.delta ? { type_url: typeUrl, response_nonce: r.nonce } : { type_url: typeUrl, resource_names: [name], version_info: r.version_info, response_nonce: r.nonce });
    return true;
  }

  close(): void {
    this.call.end();
    this.call.cancel();
  }
}

export class RawAdsClient {
  private readonly client: grpc.Client & Record<string, any>;
  constructor(address: string, credentials = grpc.credentials.createInsecure(), options: grpc.ChannelOptions = {}) {
    this.client = new Client(address, credentials, options) as any;
  }
  sotw(): Stream {
    return new Stream(this.client.StreamAggregatedResources(), false);
  }
  delta(): Stream {
    return new Stream(this.client.DeltaAggregatedResources(), true);
  }
  close(): void {
    this.client.close();
  }
}

export type AdsTestStream = Stream;
