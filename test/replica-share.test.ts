/**
 * The replicas' shares of the live part of Retry statuses (src/outputs/replica-share.ts): the leader sums every
 * replica's numbers and Programmed tallies. Pure sums; then two replicas over real gRPC with mTLS on loopback (each an
 * ADS server with the metrics service and the share door, the same mesh CA), found through the EndpointSlices of
 * the control plane's Service (test/helpers/fake-kube.ts), sidecars' reports split over them; the door's hostile cases.
 */
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { MeshIR } from '../src/compile/ir.js';
import { ObservedRetries } from '../src/observed/retries.js';
import { addTallies, programmedState, type ProgrammedTally } from '../src/outputs/programmed.js';
import { ControlPlaneClientCert, controlPlaneOnly, localShare, parseShare, REPLICA_SHARE_PATH, replicaShareHandler, ReplicaShares, sumShares } from '../src/outputs/replica-share.js';
import { createCa, issue, writeCaDir, type KeyPair } from '../src/security/ca.js';
import { tlsFromCa, type PeerCheck, type TlsServing } from '../src/security/tls.js';
import { SnapshotCache } from '../src/xds/resources/cache.js';
import { loadEnvoyProtos } from '../src/xds/resources/protos.js';
import { AdsServer } from '../src/xds/protocol/server.js';
import { ProxyRegistry } from '../src/xds/protocol/status.js';
import type { Handler } from '../src/xds/transport/grpc.js';
import { FakeKube } from './helpers/fake-kube.js';
import { tempDir } from './helpers/tmp.js';

const log = pino({ level: process.env.LOG_LEVEL ?? 'silent' });
const CLUSTER = 'httpbin/httpbin|14001';
const trustDomain = 'cluster.local';
const CONTROL_PLANE = 'spiffe://cluster.local/ns/mesh-xds/sa/mesh-xds';
const SLICES = '/apis/discovery.k8s.io/v1/namespaces/mesh-xds/endpointslices';

/** A mesh of curl calling httpbin under the guide's Retry (as test/observed.test.ts). */
function mesh(): MeshIR {
  return {
    meshName: 'm',
    enableRetryPolicy: true,
    retryBudget: null,
    services: [{ namespace: 'httpbin', name: 'httpbin', host: 'httpbin.httpbin.svc.cluster.local', headless: false, ports: [{ port: 14001, dialPort: 14001, targetPort: 14001, protocol: 'http', http2: false, cluster: CLUSTER, endpoints: [] }] }],
    identities: ['curl/curl'],
    retries: { 'curl/curl': { 'httpbin/httpbin': { policy: 'curl/retry', spec: { source: { namespace: 'curl', name: 'curl' }, destinations: [], skipped: [], retryOn: ['5xx'], retriableStatusCodes: [], numRetries: 5 } } } },
    backing: {},
    policies: [{ namespace: 'curl', name: 'retry', state: 'Accepted', reason: '', messages: [], problems: [], declared: { destinations: [] }, source: 'curl/curl', appliesTo: ['httpbin/httpbin'] }],
    diagnostics: [],
  } as unknown as MeshIR;
}
const ir = mesh();

/** The guide's 503 (one request, five retries, out of retries), `n` times. */
const guide = (n: number): [string, string, number][] => [
  [CLUSTER, 'upstream_rq_total', 6 * n],
  [CLUSTER, 'upstream_rq_retry', 5 * n],
  [CLUSTER, 'upstream_rq_retry_limit_exceeded', n],
  [CLUSTER, 'upstream_rq_5xx', 6 * n],
];
/** A request that succeeded on its second try. */
const saved: [string, string, number][] = [
  [CLUSTER, 'upstream_rq_total', 2],
  [CLUSTER, 'upstream_rq_retry', 1],
  [CLUSTER, 'upstream_rq_retry_success', 1],
  [CLUSTER, 'upstream_rq_5xx', 1],
];
const tally = (o: Partial<ProgrammedTally>): ProgrammedTally => ({ source: 'curl/curl', ok: 0, settling: 0, lacking: 0, named: [], ...o });

describe('sums of shares', () => {
  it("the leader's view with a peer's share added is the view of one store that had every report", () => {
    let t = Date.parse('2026-12-07T12:00:00Z');
    const clock = () => t;
    const store = () => new ObservedRetries(() => ir, clock, undefined, () => 60_000);
    const [a, b, whole] = [store(), store(), store()];
    const report = (store: ObservedRetries, stream: object, nodeId: string, counters: [string, string, number][]) => store.report(stream, { identity: 'curl/curl', nodeId }, counters);
    const [s1, s2, s3] = [{}, {}, {}];
    report(a, s1, 'curl-1', guide(1));
    report(whole, s1, 'curl-1', guide(1));
    t += 45_000;
    report(b, s2, 'curl-2', saved);
    report(whole, s2, 'curl-2', saved);
    report(b, s3, 'curl-3', guide(2));
    report(whole, s3, 'curl-3', guide(2));
    t += 1_000;
    const summed = sumShares(a.view(), undefined, [parseShare(Buffer.from(JSON.stringify(localShare('b', 'id-b', b.view(), undefined))))], ' to 2 of 2 replicas');
    const expected = whole.view().policies[0]!;
    expect(summed.observed!.get('curl/retry')).toEqual(expected);
    expect(expected).toMatchObject({ proxiesReporting: 3, since: '2026-12-07T12:00:00.000Z' });
    expect(expected.windows['5m']).toMatchObject({ requests: 4, retries: 16, retriesSucceeded: 1, retriesExhausted: 3, retryRate: 4 });
    // Alone (no peer answered), the leader's own view unchanged.
    expect(sumShares(a.view(), undefined, [], ' to 1 of 2 replicas').observed!.get('curl/retry')).toEqual(a.view().policies[0]);
  });

  it("Programmed adds the replicas' proxies: one lacking anywhere is False, NACKs named first, the replicas said", () => {
    const a = tally({ ok: 2, settling: 1 });
    const b = tally({ ok: 1, lacking: 2, named: [{ name: 'curl-b', why: 'not ACKed', nacked: false }, { name: 'curl-c', why: 'NACKed: bad route', nacked: true }] });
    expect(programmedState(addTallies(a, b), ' to 2 of 2 replicas')).toEqual({
      status: 'False',
      reason: 'Rejected',
      message: '2 of 5 proxies of curl/curl connected to 2 of 2 replicas do not have this policy: curl-c (NACKed: bad route), curl-b (not ACKed); 1 more just sent it',
      proxies: 5,
      lacking: 2,
    });
    expect(programmedState(addTallies(a, tally({ ok: 3 })), ' to 2 of 2 replicas')).toMatchObject({ status: 'True', message: '5 of 5 proxies of curl/curl connected to 2 of 2 replicas have ACKed a configuration holding this policy; 1 more just sent it' });
    // No proxy on the leader, some on the peer: the peer's count.
    expect(programmedState(addTallies(tally({}), tally({ ok: 1 })), ' to 2 of 2 replicas')).toMatchObject({ status: 'True', proxies: 1 });
    // Names stay bounded however many replicas name proxies.
    const many = (p: string) => tally({ lacking: 5, named: [1, 2, 3, 4, 5].map((i) => ({ name: `${p}-${i}`, why: 'not ACKed', nacked: false })) });
    expect(addTallies(many('a'), many('b')).named.map((n) => n.name)).toEqual(['a-1', 'a-2', 'a-3', 'a-4', 'a-5']);
    expect(programmedState(addTallies(many('a'), many('b')), '')!.message).toMatch(/and 5 more$/);
  });

  it('a share that is not one is refused saying what is wrong', () => {
    const good = localShare('b', 'id-b', new ObservedRetries(() => ir).view(), new Map([['curl/retry', tally({ ok: 1 })]]));
    expect(parseShare(Buffer.from(JSON.stringify(good)))).toEqual(good);
    const bad = (f: (s: any) => void): Buffer => {
      const s = JSON.parse(JSON.stringify(good));
      f(s);
      return Buffer.from(JSON.stringify(s));
    };
    expect(() => parseShare(Buffer.from('{"v":1'))).toThrow(/not JSON/);
    expect(() => parseShare(bad((s) => (s.policies[0].windows['5m'][2] = -5)))).toThrow(/policies\[0\]\.windows\.5m\[2\] is not a count/);
    expect(() => parseShare(bad((s) => (s.policies[0].windows.total = [1])))).toThrow(/windows\.total is not 10 counts/);
    expect(() => parseShare(bad((s) => (s.policies[0].programmed.named = Array(6).fill(['x', 'y', false]))))).toThrow(/programmed is not a tally/);
    expect(() => parseShare(bad((s) => (s.policies[0].policy = 'x'.repeat(1000))))).toThrow(/policy is not a string/);
  });
});

describe('two replicas over mTLS on loopback', () => {
  const tmp = tempDir('mesh-xds-shares-');
  let ca: KeyPair;
  let kube: FakeKube;
  const servers: AdsServer[] = [];
  const tlses: TlsServing[] = [];
  const clients: grpc.Client[] = [];
  const leaders: ReplicaShares[] = [];
  const t = Date.parse('2026-12-07T12:00:00Z');
  const clock = () => t;
  const stores = [new ObservedRetries(() => ir, clock), new ObservedRetries(() => ir, clock)];
  let ports: number[] = [];
  let shareCalls = 0;

  /** A replica: an ADS server whose only extra method is the share door (or `handlers`). */
  async function replica(handlers: (tls: TlsServing | undefined, ads: () => AdsServer) => Record<string, Handler>, secure = true): Promise<number> {
    const tls = secure ? await tlsFromCa(path.join(tmp, 'ca'), { trustDomain, namespace: 'mesh-xds', serviceAccount: 'mesh-xds', dnsNames: ['localhost'], ipAddresses: ['127.0.0.1'] }, log) : undefined;
    if (tls) tlses.push(tls);
    const ads: AdsServer = new AdsServer({ cache: new SnapshotCache(), registry: new ProxyRegistry(), log, tls, handlers: handlers(tls, () => ads) });
    servers.push(ads);
    return ads.listen('127.0.0.1:0');
  }
  const door = (store: ObservedRetries, name: string, bounds = {}) => (tls: TlsServing | undefined, ads: () => AdsServer) =>
    replicaShareHandler({
      share: () => (shareCalls++, localShare(name, `id-${name}`, store.view(), new Map([['curl/retry', tally(name === 'a' ? { ok: 1 } : { ok: 1, lacking: 1, named: [{ name: 'curl-2', why: 'not ACKed', nacked: false }] })]]))),
      authorize: tls && controlPlaneOnly((call): PeerCheck => ads().peerCheck!(call), CONTROL_PLANE),
      log,
      bounds,
    });
  const slice = (name: string, port: number, address = '127.0.0.1') => ({
    metadata: { name, namespace: 'mesh-xds', labels: { 'kubernetes.io/service-name': 'mesh-xds' } },
    addressType: 'IPv4',
    ports: [{ name: 'grpc-ads', port, protocol: 'TCP' }, { name: 'http-debug', port: 9091, protocol: 'TCP' }],
    endpoints: [{ addresses: [address], conditions: { ready: true } }],
  });
  function leader(port: number, o: { bounds?: object; plaintext?: boolean } = {}): ReplicaShares {
    const s = new ReplicaShares({ kc: kube.kubeConfig(), namespace: 'mesh-xds', spiffe: CONTROL_PLANE, log, bounds: { discoverMs: 0, ...o.bounds } });
    s.replica = 'a';
    const cert = new ControlPlaneClientCert(ca, { trustDomain, namespace: 'mesh-xds' });
    s.serving({ port, tls: o.plaintext ? undefined : () => cert.get() });
    leaders.push(s);
    return s;
  }
  /** Calls the door at `port` with these credentials: the status code and the answer. */
  function call(port: number, creds: grpc.ChannelCredentials, request = Buffer.from('{}')): Promise<{ code: number; details: string; bytes?: Buffer }> {
    const c = new grpc.Client(`127.0.0.1:${port}`, creds, { 'grpc.ssl_target_name_override': 'localhost', 'grpc.max_receive_message_length': 64 * 1024 * 1024 });
    clients.push(c);
    return new Promise((resolve) =>
      c.makeUnaryRequest(REPLICA_SHARE_PATH, (b: Buffer) => b, (b: Buffer) => b, request, { deadline: Date.now() + 5_000 }, (err, res) => resolve(err ? { code: err.code, details: err.details } : { code: 0, details: '', bytes: res })),
    );
  }
  const ssl = async (namespace: string, sa: string) => {
    const pair = await issue(ca, { trustDomain, namespace, serviceAccount: sa });
    return grpc.credentials.createSsl(Buffer.from(ca.cert), Buffer.from(pair.key), Buffer.from(pair.cert));
  };

  beforeAll(async () => {
    loadEnvoyProtos();
    ca = await createCa(trustDomain);
    writeCaDir(path.join(tmp, 'ca'), ca);
    kube = new FakeKube();
    await kube.start();
    ports = [await replica(door(stores[0]!, 'a')), await replica(door(stores[1]!, 'b'))];
    // Sidecars of curl: one reports to replica a, two to replica b.
    stores[0]!.report({}, { identity: 'curl/curl', nodeId: 'curl-1' }, guide(1));
    stores[1]!.report({}, { identity: 'curl/curl', nodeId: 'curl-2' }, saved);
    stores[1]!.report({}, { identity: 'curl/curl', nodeId: 'curl-3' }, guide(2));
    kube.apply(SLICES, slice('mesh-xds-a', ports[0]!));
    kube.apply(SLICES, slice('mesh-xds-b', ports[1]!));
    // Another Service's slice in the namespace is not a replica.
    kube.apply(SLICES, { ...slice('other', 1), metadata: { name: 'other', namespace: 'mesh-xds', labels: { 'kubernetes.io/service-name': 'other' } } });
  }, 30_000);

  afterAll(async () => {
    for (const c of clients) c.close();
    for (const l of leaders) l.close();
    for (const tls of tlses) tls.close();
    await Promise.all(servers.map((s) => s.close(0)));
    await kube?.close();
  });

  it("the leader (replica a) finds replica b in its Service's EndpointSlices, asks it once, and writes the sum", async () => {
    const l = leader(ports[0]!);
    const view = stores[0]!.view();
    const summed = await l.sum(view, new Map([['curl/retry', tally({ ok: 1 })]]));
    expect(summed.replicas).toBe('2/2');
    expect(l.asked).toBe(1);
    const p = summed.observed!.get('curl/retry')!;
    expect(p).toMatchObject({ proxiesReporting: 3, since: '2026-12-07T12:00:00.000Z', predictedAttemptsPerRequest: 6 });
    expect(p.windows['5m']).toMatchObject({ requests: 4, attempts: 20, retries: 16, retriesSucceeded: 1, retriesExhausted: 3, retriesRefused: 0, retryRate: 4 });
    // Without the peer's share, the leader alone has 1 request and 5 retries.
    expect(view.policies[0]!.windows['5m']).toMatchObject({ requests: 1, retries: 5 });
    expect(summed.programmed!.get('curl/retry')).toEqual({
      status: 'False',
      reason: 'Pending',
      message: '1 of 3 proxies of curl/curl connected to 2 of 2 replicas do not have this policy: curl-2 (not ACKed)',
      proxies: 3,
      lacking: 1,
    });
  });

  it('only the control plane may read a share: another identity, no certificate and a plaintext port are refused', async () => {
    const curl = await call(ports[1]!, await ssl('curl', 'curl'));
    expect(curl).toMatchObject({ code: grpc.status.PERMISSION_DENIED, details: expect.stringMatching(/spiffe:\/\/cluster\.local\/ns\/curl\/sa\/curl may not read a replica's share/) });
    // Another service account in the control plane's namespace is not the control plane either.
    expect((await call(ports[1]!, await ssl('mesh-xds', 'admin'))).code).toBe(grpc.status.PERMISSION_DENIED);
    expect((await call(ports[1]!, grpc.credentials.createSsl(Buffer.from(ca.cert)))).code).toBe(grpc.status.UNAUTHENTICATED);
    const ok = await call(ports[1]!, await ssl('mesh-xds', 'mesh-xds'));
    expect(ok.code).toBe(0);
    expect(parseShare(ok.bytes!).replica).toBe('b');
    const plain = await replica((tls, ads) => replicaShareHandler({ share: () => localShare('p', 'id-p', stores[1]!.view(), undefined), authorize: tls && controlPlaneOnly((c): PeerCheck => ads().peerCheck!(c), CONTROL_PLANE), log }), false);
    expect(await call(plain, grpc.credentials.createInsecure())).toMatchObject({ code: grpc.status.PERMISSION_DENIED, details: expect.stringMatching(/over mTLS only/) });
  });

  it('a request is bounded, and the share is computed at most once a second however many ask', async () => {
    const creds = await ssl('mesh-xds', 'mesh-xds');
    expect(await call(ports[1]!, creds, Buffer.alloc(2048, 0x20))).toMatchObject({ code: grpc.status.INVALID_ARGUMENT, details: expect.stringMatching(/at most 1024/) });
    await new Promise((r) => setTimeout(r, 1_100));
    const before = shareCalls;
    const answers = await Promise.all(Array.from({ length: 20 }, () => call(ports[1]!, creds)));
    expect(answers.every((a) => a.code === 0)).toBe(true);
    expect(shareCalls - before).toBe(1);
  });

  it('a share over its bound is not sent, and the leader says one replica of two answered', async () => {
    const small = await replica(door(stores[1]!, 'c', { responseBytes: 200 }));
    expect(await call(small, await ssl('mesh-xds', 'mesh-xds'))).toMatchObject({ code: grpc.status.RESOURCE_EXHAUSTED, details: expect.stringMatching(/at most 200 are sent/) });
    kube.apply(SLICES, slice('mesh-xds-b', small));
    try {
      const summed = await leader(ports[0]!).sum(stores[0]!.view(), undefined);
      expect(summed.replicas).toBe('1/2');
      expect(summed.observed!.get('curl/retry')!.windows['5m']).toMatchObject({ requests: 1, retries: 5 });
    } finally {
      kube.apply(SLICES, slice('mesh-xds-b', ports[1]!));
    }
  });

  it("the leader accepts at most its bound of a peer's answer, and leaves out a peer that does not answer or is plaintext", async () => {
    // Replica b's share is ~400 bytes: over a leader's bound of 100, left out.
    expect((await leader(ports[0]!, { bounds: { responseBytes: 100 } }).sum(stores[0]!.view(), undefined)).replicas).toBe('1/2');
    // A replica that is gone (nothing listens at its address): left out within the deadline.
    kube.apply(SLICES, slice('mesh-xds-c', 1));
    try {
      expect((await leader(ports[0]!, { bounds: { deadlineMs: 500 } }).sum(stores[0]!.view(), undefined)).replicas).toBe('2/3');
    } finally {
      kube.remove(SLICES, 'mesh-xds', 'mesh-xds-c');
    }
    // Plaintext: no peer asked, the status says whose numbers it holds.
    const plain = leader(ports[0]!, { plaintext: true });
    expect((await plain.sum(stores[0]!.view(), undefined)).replicas).toBe('1/2');
    expect(plain.asked).toBe(0);
  });

  it("a replica that answers with this one's own id (itself at another address) is not summed twice", async () => {
    const l = leader(ports[0]!);
    const mirror = await replica((tls, ads) => replicaShareHandler({ share: () => localShare('a', l.instance, stores[0]!.view(), undefined), authorize: tls && controlPlaneOnly((c): PeerCheck => ads().peerCheck!(c), CONTROL_PLANE), log }));
    kube.apply(SLICES, slice('mesh-xds-a2', mirror));
    try {
      const summed = await l.sum(stores[0]!.view(), undefined);
      expect(l.asked).toBe(2);
      expect(summed.replicas).toBe('2/2');
      expect(summed.observed!.get('curl/retry')!.windows['5m']).toMatchObject({ requests: 4, retries: 16 });
    } finally {
      kube.remove(SLICES, 'mesh-xds', 'mesh-xds-a2');
    }
  });
});
