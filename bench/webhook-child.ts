/**
 * The injection webhook alone in a process (bench/doors.ts attacks it): a serving certificate from a fresh mesh CA,
 * namespace `curl` enrolled, the log to stdout. Sends {port, ca} to its parent once listening.
 */
import pino from 'pino';
import { InjectionWebhook } from '../src/inject/webhook.js';
import { createCa, issue } from '../src/security/ca.js';
import { CredentialsHolder } from '../src/security/tls.js';

const mesh = await createCa('cluster.local');
const serving = await issue(mesh, { trustDomain: 'cluster.local', namespace: 'mesh-xds', serviceAccount: 'mesh-xds', server: { dnsNames: ['mesh-xds.mesh-xds.svc'] } });
const credentials = new CredentialsHolder();
credentials.set({ cert: Buffer.from(serving.cert), key: Buffer.from(serving.key), ca: Buffer.from(mesh.cert) });
const enrolled = { name: 'curl', labels: { 'flomesh.io/monitored-by': 'mesh-xds' }, annotations: { 'flomesh.io/sidecar-injection': 'enabled' } };
const webhook = new InjectionWebhook({
  meshName: 'mesh-xds',
  controlPlaneNamespace: 'mesh-xds',
  trustDomain: 'cluster.local',
  mtls: true,
  version: 'bench',
  credentials,
  namespace: async (n) => (n === 'curl' ? enrolled : undefined),
  log: pino({ level: 'info' }),
});
const port = await webhook.listen('127.0.0.1:0');
process.send!({ port, ca: mesh.cert });
process.on('message', (m: { cmd: string }) => m.cmd === 'held' && process.send!({ held: webhook.held }));
