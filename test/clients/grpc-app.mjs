// A gRPC app for the sandbox's pods (plain grpc-js, no xDS: the pod's sidecar is the mesh). Not part of the product.
//   node grpc-app.mjs serve PORT     serves /meshxds.test.Echo/Ok (answers OK) and .../Unavailable (answers
//                                    UNAVAILABLE); prints "listening" once bound and "attempt <method>" per call
//   node grpc-app.mjs call TARGET M  one call of method M to TARGET (dns:///host:port); prints the status name
import * as grpc from '@grpc/grpc-js';

const id = (b) => b;
const method = (name) => ({ path: `/meshxds.test.Echo/${name}`, requestStream: false, responseStream: false, requestSerialize: id, requestDeserialize: id, responseSerialize: id, responseDeserialize: id });
const SERVICE = { Ok: method('Ok'), Unavailable: method('Unavailable') };
const [mode, arg, name] = process.argv.slice(2);

if (mode === 'serve') {
  const server = new grpc.Server();
  server.addService(SERVICE, {
    Ok: (_call, cb) => {
      console.log('attempt Ok');
      cb(null, Buffer.from('ok'));
    },
    Unavailable: (_call, cb) => {
      console.log('attempt Unavailable');
      cb({ code: grpc.status.UNAVAILABLE, details: 'the test app says no' });
    },
  });
  server.bindAsync(`0.0.0.0:${arg}`, grpc.ServerCredentials.createInsecure(), (err) => {
    if (err) throw err;
    console.log('listening');
  });
  process.on('SIGTERM', () => server.forceShutdown());
} else if (mode === 'call') {
  const Client = grpc.makeGenericClientConstructor(SERVICE, 'Echo');
  const client = new Client(arg, grpc.credentials.createInsecure());
  client[name](Buffer.from('hi'), { deadline: Date.now() + 20_000 }, (err) => {
    console.log(grpc.status[err ? err.code : grpc.status.OK]);
    client.close();
  });
} else {
  console.error('usage: grpc-app.mjs serve PORT | call TARGET METHOD');
  process.exit(2);
}
