/**
 * Real proxyless gRPC over xDS: `@grpc/grpc-js-xds` clients against our ADS server, and a gRPC test backend
 * that counts attempts and answers with a chosen status.
 */
import * as grpc from '@grpc/grpc-js';
import * as grpcXds from '@grpc/grpc-js-xds';

grpcXds.register();

const id = (b: Buffer): Buffer => b;
const METHOD: grpc.MethodDefinition<Buffer, Buffer> = {
  path: '/meshxds.test.Echo/Call',
  requestStream: false,
  responseStream: false,
  requestSerialize: id,
  requestDeserialize: id,
  responseSerialize: id,
  responseDeserialize: id,
};
const SERVICE: grpc.ServiceDefinition = { Call: METHOD };
const Client = grpc.makeGenericClientConstructor(SERVICE, 'Echo');

export interface Backend {
  port: number;
  attempts: number;
  code: grpc.status;
  close(): Promise<void>;
}

/** A backend whose every call fails with `code` (or succeeds with OK), counting attempts. */
export async function startBackend(code: grpc.status = grpc.status.UNAVAILABLE, host = '127.0.0.1'): Promise<Backend> {
  const server = new grpc.Server();
  const backend: Backend = {
    port: 0,
    attempts: 0,
    code,
    close: () => new Promise((resolve) => server.tryShutdown(() => resolve())),
  };
  server.addService(SERVICE, {
    Call: (_call: grpc.ServerUnaryCall<Buffer, Buffer>, cb: grpc.sendUnaryData<Buffer>) => {
      backend.attempts++;
      if (backend.code === grpc.status.OK) cb(null, Buffer.from('ok'));
      else cb({ code: backend.code, details: 'test backend says no' });
    },
  });
  backend.port = await new Promise<number>((resolve, reject) =>
    server.bindAsync(`${host}:0`, grpc.ServerCredentials.createInsecure(), (err, port) => (err ? reject(err) : resolve(port))),
  );
  return backend;
}

export interface XdsIdentity {
  nodeId: string;
  namespace: string;
  serviceAccount: string;
}

export function bootstrap(adsAddress: string, who: XdsIdentity): object {
  return {
    xds_servers: [{ server_uri: adsAddress, channel_creds: [{ type: 'insecure' }], server_features: ['xds_v3'] }],
    node: {
      id: who.nodeId,
      locality: {},
      metadata: { namespace: who.namespace, serviceAccount: who.serviceAccount, podName: `${who.nodeId}-pod` },
    },
  };
}

export class XdsTestClient {
  private readonly client: grpc.Client & Record<string, any>;
  constructor(target: string, adsAddress: string, who: XdsIdentity) {
    this.client = new Client(target, grpc.credentials.createInsecure(), {
      // A per-channel bootstrap so one test process can hold several identities.
      'grpc.TEST_ONLY_DO_NOT_USE_IN_PROD.xds_bootstrap_config': JSON.stringify(bootstrap(adsAddress, who)),
    }) as any;
  }

  /** One call; resolves with the final status code. */
  call(deadlineMs = 10_000): Promise<grpc.status> {
    return new Promise((resolve) => {
      this.client.Call(Buffer.from('hi'), { deadline: Date.now() + deadlineMs }, (err: grpc.ServiceError | null) =>
        resolve(err ? err.code : grpc.status.OK),
      );
    });
  }

  close(): void {
    this.client.close();
  }
}

/** Polls `check` until it returns true or `ms` passes. */
export async function eventually(check: () => boolean | Promise<boolean>, ms = 10_000, what = 'condition'): Promise<void> {
  const until = Date.now() + ms;
  while (Date.now() < until) {
    if (await check()) return;
    await new Promise((r) => setTimeout(r, 25));
  }
  throw new Error(`timed out waiting for ${what}`);
}
