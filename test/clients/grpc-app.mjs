// Apps for the sandbox's pods (plain grpc-js and ws, no xDS: the pod's sidecar is the mesh). Not part of the product.
//   node grpc-app.mjs serve PORT[,PORT...] [WS_PORT]
//        serves /meshxds.test.Echo/Ok (answers OK) and .../Unavailable (answers UNAVAILABLE) on each PORT, and
//        a WebSocket echo on WS_PORT; prints "listening" once bound, "attempt <method>" per call
//   node grpc-app.mjs call TARGET METHOD   one call of METHOD to TARGET (dns:///host:port); prints the status name
//   node grpc-app.mjs ws URL               sends "ping" over a WebSocket; prints what comes back
import * as grpc from '@grpc/grpc-js';
import { WebSocket, WebSocketServer } from 'ws';

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
  const binds = arg.split(',').map((port) => new Promise((resolve, reject) => server.bindAsync(`0.0.0.0:${port}`, grpc.ServerCredentials.createInsecure(), (err) => (err ? reject(err) : resolve()))));
  if (name) {
    const wss = new WebSocketServer({ port: Number(name) });
    wss.on('connection', (ws) => ws.on('message', (m) => ws.send(m.toString())));
    binds.push(new Promise((resolve) => wss.on('listening', resolve)));
  }
  await Promise.all(binds);
  console.log('listening');
  process.on('SIGTERM', () => process.exit(0));
} else if (mode === 'call') {
  const Client = grpc.makeGenericClientConstructor(SERVICE, 'Echo');
  const client = new Client(arg, grpc.credentials.createInsecure());
  client[name](Buffer.from('hi'), { deadline: Date.now() + 20_000 }, (err) => {
    console.log(grpc.status[err ? err.code : grpc.status.OK]);
    client.close();
  });
} else if (mode === 'ws') {
  const ws = new WebSocket(arg);
  ws.on('open', () => ws.send('ping'));
  ws.on('message', (m) => {
    console.log(m.toString());
    ws.close();
  });
  ws.on('error', (e) => {
    console.log(`error: ${e.message}`);
    process.exit(1);
  });
} else {
  console.error('usage: grpc-app.mjs serve PORT[,PORT...] [WS_PORT] | call TARGET METHOD | ws URL');
  process.exit(2);
}
