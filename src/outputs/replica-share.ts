/**
 * The replicas' shares of the live part of Retry statuses. A sidecar's ADS and metrics streams go to one replica of
 * the control plane, so each replica sees only the sidecars connected to it; the leader (the Lease holder, which
 * writes the statuses: retry-status.ts) asks every other replica for its share and writes the sum.
 *
 * The door: a unary method on the ADS port, `/mesh_xds.v1.ReplicaShare/Observed` (REPLICA_SHARE_PATH), served by the
 * existing transport. Its answer is this replica's share (JSON): per Retry policy with something to say, the raw
 * counts of each window of the sidecars' numbers (ObservedNumbers without the rates: counts add, rates do not), the
 * proxies reporting, since when, and Programmed's tally (programmed.ts: proxies that have the policy, that do not,
 * that were just sent it, and the first few of those lacking it, by name). Bounds (docs/security.md, "Doors and their
 * bounds"): only the control plane's own identity may call it (mTLS: the client certificate's SPIFFE id must be
 * `spiffe://<trust domain>/ns/<control plane namespace>/sa/mesh-xds`; a plaintext server refuses every call, and its
 * leader writes its own share only); a request of at most `requestBytes`; the answer computed at most once per
 * `answerMs` whoever asks (the same bytes meanwhile), and refused (RESOURCE_EXHAUSTED) rather than sent past
 * `responseBytes`.
 *
 * The caller (ReplicaShares, the leader): finds its peers in the EndpointSlices of its own Service (`mesh-xds` in the
 * control plane namespace, the ADS port by name), listed at most once per `discoverMs`; asks at most `peers` of them,
 * each at most once per status pass (the writer passes every 5 s), with a deadline of `deadlineMs`, presenting a client
 * certificate of the control plane's identity and accepting only a server certificate of it; an answer larger than
 * `responseBytes` or not a share is left out. Sums: counts add, proxies reporting add, since is the earliest,
 * Programmed's tallies add. `status.observed.replicas` says how many replicas' numbers the sum holds, of how many
 * serve ("2/2"; "1/2" when a replica did not answer or the port is plaintext), and Programmed's message says so too.
 */
import os from 'node:os';
import { randomUUID, X509Certificate } from 'node:crypto';
import * as grpc from '@grpc/grpc-js';
import * as k8s from '@kubernetes/client-node';
import type { Logger } from 'pino';
import type { ObservedNumbers, ObservedPolicy, ObservedView, WindowName } from '../observed/retries.js';
import { issue, type KeyPair } from '../security/ca.js';
import type { CredentialsHolder, PeerCheck } from '../security/tls.js';
import { Code, unary, type Handler, type ServerCall } from '../xds/transport/grpc.js';
import { asMap, type Fields } from '../model/plain.js';
import { addTallies, programmedState, PROGRAMMED_BOUNDS, type ProgrammedState, type ProgrammedTally } from './programmed.js';

export const REPLICA_SHARE_PATH = '/mesh_xds.v1.ReplicaShare/Observed';

export const REPLICA_SHARE_BOUNDS = {
  /** A request is empty (`{}`): at most this many bytes. */
  requestBytes: 1024,
  /** An answer, sent or accepted: at most this many bytes (about 8,000 policies with numbers and named proxies). */
  responseBytes: 4 * 1024 * 1024,
  /** A share is computed at most once per this long, however many ask. */
  answerMs: 1_000,
  /** A peer's answer is waited for this long. */
  deadlineMs: 2_000,
  /** The peers (the Service's EndpointSlices) are listed at most once per this long. */
  discoverMs: 30_000,
  /** At most this many peers are asked per pass. */
  peers: 16,
};
export type ReplicaShareBounds = typeof REPLICA_SHARE_BOUNDS;

/** The counts of a window, in this order on the wire. */
const FIELDS = ['requests', 'attempts', 'retries', 'retriesSucceeded', 'retriesExhausted', 'retriesRefused', 'responses5xx', 'timeouts', 'perTryTimeouts', 'connectFailures'] as const;
const WINDOW_NAMES: readonly WindowName[] = ['1m', '5m', 'total'];

/** One policy's part of a share. */
export interface SharePolicy {
  /** `ns/name` */
  readonly policy: string;
  /** Epoch ms of the earliest number, or null. */
  readonly since: number | null;
  readonly proxiesReporting: number;
  /** Per window, the counts in FIELDS' order. */
  readonly windows: Readonly<Record<WindowName, readonly number[]>>;
  readonly programmed?: { readonly ok: number; readonly settling: number; readonly lacking: number; readonly named: readonly (readonly [string, string, boolean])[] };
}

/** What one replica answers. */
export interface Share {
  readonly v: 1;
  /** The replica's name (its Lease identity), and an id of this process (a replica never sums itself twice). */
  readonly replica: string;
  readonly instance: string;
  readonly policies: readonly SharePolicy[];
}

const round = (x: number): number => Math.round(x * 1000) / 1000;

/** ObservedNumbers of counts in FIELDS' order (the rates as ObservedRetries computes them). */
export function numbersOf(c: readonly number[]): ObservedNumbers {
  const [requests, attempts, retries, retriesSucceeded, retriesExhausted, retriesRefused, responses5xx, timeouts, perTryTimeouts, connectFailures] = FIELDS.map((_, i) => c[i] ?? 0) as number[];
  return {
    requests: requests!,
    attempts: attempts!,
    retries: retries!,
    retriesSucceeded: retriesSucceeded!,
    retriesExhausted: retriesExhausted!,
    retriesRefused: retriesRefused!,
    responses5xx: responses5xx!,
    timeouts: timeouts!,
    perTryTimeouts: perTryTimeouts!,
    connectFailures: connectFailures!,
    retryRate: requests ? round(retries! / requests) : null,
    retrySuccessRate: retries ? round(retriesSucceeded! / retries) : null,
    attemptsPerRequest: requests ? round(attempts! / requests) : null,
  };
}

const countsOf = (n: ObservedNumbers): number[] => FIELDS.map((f) => n[f]);

/** This replica's share: the policies it has something to say about (numbers, reporters, proxies). */
export function localShare(replica: string, instance: string, view: ObservedView | undefined, tallies: ReadonlyMap<string, ProgrammedTally> | undefined): Share {
  const byPolicy = new Map<string, SharePolicy>();
  for (const p of view?.policies ?? []) {
    const windows = { '1m': countsOf(p.windows['1m']), '5m': countsOf(p.windows['5m']), total: countsOf(p.windows.total) };
    if (!p.since && !p.proxiesReporting && !windows.total.some((x) => x > 0)) continue;
    byPolicy.set(p.policy, { policy: p.policy, since: p.since ? Date.parse(p.since) : null, proxiesReporting: p.proxiesReporting, windows });
  }
  for (const [policy, t] of tallies ?? []) {
    if (!t.ok && !t.settling && !t.lacking) continue;
    const programmed = { ok: t.ok, settling: t.settling, lacking: t.lacking, named: t.named.map((n) => [n.name, n.why, n.nacked] as const) };
    const zero = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    byPolicy.set(policy, { ...(byPolicy.get(policy) ?? { policy, since: null, proxiesReporting: 0, windows: { '1m': zero, '5m': zero, total: zero } }), programmed });
  }
  return { v: 1, replica, instance, policies: [...byPolicy.values()].sort((a, b) => (a.policy < b.policy ? -1 : a.policy > b.policy ? 1 : 0)) };
}

/** A share as a peer sent it, checked field by field; throws saying what is wrong. */
export function parseShare(bytes: Buffer): Share {
  let parsed: unknown;
  try {
    parsed = JSON.parse(bytes.toString('utf8'));
  } catch (e) {
    throw new Error(`not JSON: ${(e as Error).message.slice(0, 120)}`, { cause: e });
  }
  const isMap = (x: unknown): x is Fields => x !== null && typeof x === 'object' && !Array.isArray(x);
  const v = asMap(parsed);
  const count = (x: unknown, where: string): number => {
    if (typeof x !== 'number' || !Number.isFinite(x) || x < 0) throw new Error(`${where} is not a count`);
    return x;
  };
  const text = (x: unknown, where: string, max: number): string => {
    if (typeof x !== 'string' || x.length > max) throw new Error(`${where} is not a string of at most ${max} characters`);
    return x;
  };
  if (v.v !== 1) throw new Error('not a share (v: 1)');
  if (!Array.isArray(v.policies)) throw new Error('policies is not a list');
  const policies = v.policies.map((p: unknown, i: number): SharePolicy => {
    const at = `policies[${i}]`;
    if (!isMap(p) || !isMap(p.windows)) throw new Error(`${at} is not a policy's share`);
    const ws = p.windows;
    const windows = Object.fromEntries(
      WINDOW_NAMES.map((w) => {
        const c = ws[w];
        if (!Array.isArray(c) || c.length !== FIELDS.length) throw new Error(`${at}.windows.${w} is not ${FIELDS.length} counts`);
        return [w, c.map((x: unknown, j: number) => count(x, `${at}.windows.${w}[${j}]`))];
      }),
    ) as Record<WindowName, number[]>;
    const g = p.programmed;
    if (g !== undefined && (!isMap(g) || !Array.isArray(g.named) || g.named.length > PROGRAMMED_BOUNDS.namedProxies)) throw new Error(`${at}.programmed is not a tally`);
    return {
      policy: text(p.policy, `${at}.policy`, 320),
      since: p.since === null ? null : count(p.since, `${at}.since`),
      proxiesReporting: count(p.proxiesReporting, `${at}.proxiesReporting`),
      windows,
      ...(isMap(g) && Array.isArray(g.named)
        ? {
            programmed: {
              ok: count(g.ok, `${at}.programmed.ok`),
              settling: count(g.settling, `${at}.programmed.settling`),
              lacking: count(g.lacking, `${at}.programmed.lacking`),
              named: g.named.map((n: unknown, j: number) => {
                if (!Array.isArray(n) || n.length !== 3 || typeof n[2] !== 'boolean') throw new Error(`${at}.programmed.named[${j}] is not [name, why, nacked]`);
                return [text(n[0], `${at}.programmed.named[${j}][0]`, PROGRAMMED_BOUNDS.nameChars), text(n[1], `${at}.programmed.named[${j}][1]`, PROGRAMMED_BOUNDS.errorChars + 16), n[2]] as const;
              }),
            },
          }
        : {}),
    };
  });
  return { v: 1, replica: text(v.replica, 'replica', 256), instance: text(v.instance, 'instance', 64), policies };
}

/** What the leader writes from: the policies' numbers and Programmed summed over the replicas that answered. */
export interface Summed {
  readonly observed?: Map<string, ObservedPolicy>;
  readonly programmed?: Map<string, ProgrammedState>;
  /** "answered/serving" */
  readonly replicas: string;
}

/**
 * The leader's own view and tallies with the peers' shares added: only the policies the leader knows (its mesh);
 * `to` says in Programmed's messages whose proxies are counted.
 */
export function sumShares(view: ObservedView | undefined, tallies: ReadonlyMap<string, ProgrammedTally> | undefined, peers: readonly Share[], to: string): Omit<Summed, 'replicas'> {
  const theirs = new Map<string, SharePolicy[]>();
  for (const s of peers) for (const p of s.policies) theirs.set(p.policy, [...(theirs.get(p.policy) ?? []), p]);
  const observed = view && new Map<string, ObservedPolicy>();
  for (const p of view?.policies ?? []) {
    const more = theirs.get(p.policy) ?? [];
    const windows = {} as Record<WindowName, ObservedNumbers>;
    for (const w of WINDOW_NAMES) {
      const sum = countsOf(p.windows[w]);
      for (const q of more) for (let i = 0; i < sum.length; i++) sum[i]! += q.windows[w][i]!;
      windows[w] = numbersOf(sum);
    }
    const sinces = [p.since ? Date.parse(p.since) : null, ...more.map((q) => q.since)].filter((x): x is number => x !== null);
    observed!.set(p.policy, {
      ...p,
      proxiesReporting: more.reduce((n, q) => n + q.proxiesReporting, p.proxiesReporting),
      since: sinces.length ? new Date(Math.min(...sinces)).toISOString() : null,
      windows,
    });
  }
  const programmed = tallies && new Map<string, ProgrammedState>();
  for (const [policy, mine] of tallies ?? []) {
    let t = mine;
    for (const q of theirs.get(policy) ?? []) {
      if (q.programmed) t = addTallies(t, { source: t.source, ok: q.programmed.ok, settling: q.programmed.settling, lacking: q.programmed.lacking, named: q.programmed.named.map(([name, why, nacked]) => ({ name, why, nacked })) });
    }
    const state = programmedState(t, to);
    if (state) programmed!.set(policy, state);
  }
  return { ...(observed ? { observed } : {}), ...(programmed ? { programmed } : {}) };
}

/** Who may ask for a share: a refusal, or undefined. */
export type ShareAuthorizer = (call: Pick<ServerCall, 'getPeer' | 'tls'>) => { code: Code; details: string; reason: string } | undefined;

/** mTLS: only a client certificate of the control plane's own SPIFFE id. */
export function controlPlaneOnly(check: (call: Pick<ServerCall, 'getPeer' | 'tls'>) => PeerCheck, spiffe: string): ShareAuthorizer {
  return (call) => {
    const peer = check(call);
    if (!peer.ok) return { code: Code.UNAUTHENTICATED, details: peer.message, reason: peer.reason };
    if (peer.spiffe !== spiffe) return { code: Code.PERMISSION_DENIED, details: `${peer.spiffe} may not read a replica's share: only the control plane (${spiffe}) may`, reason: 'replica_share_not_allowed' };
    return undefined;
  };
}

/**
 * The door: this replica's share, to the control plane's own identity only (`authorize`; none: a plaintext server,
 * which refuses every call).
 */
export function replicaShareHandler(o: {
  share: () => Share;
  authorize?: ShareAuthorizer;
  log: Logger;
  onRefused?: (reason: string) => void;
  bounds?: Partial<ReplicaShareBounds>;
  now?: () => number;
}): Record<string, Handler> {
  const bounds = { ...REPLICA_SHARE_BOUNDS, ...o.bounds };
  const now = o.now ?? Date.now;
  let cached: { at: number; answer: Buffer | { code: Code; details: string } } | undefined;
  const refuse = (call: ServerCall, code: Code, details: string, reason: string): void => {
    o.onRefused?.(reason);
    o.log.warn({ code: Code[code], details, reason, peer: call.getPeer() }, 'replica share request refused');
    call.end({ code, details });
  };
  const answer = unary((request) => {
    if (request.length > bounds.requestBytes) return { code: Code.INVALID_ARGUMENT, details: `a request of ${request.length} bytes; at most ${bounds.requestBytes}` };
    const t = now();
    if (!cached || t - cached.at >= bounds.answerMs) {
      const bytes = Buffer.from(JSON.stringify(o.share()));
      cached = {
        at: t,
        answer: bytes.length <= bounds.responseBytes ? bytes : { code: Code.RESOURCE_EXHAUSTED, details: `this replica's share is ${bytes.length} bytes; at most ${bounds.responseBytes} are sent` },
      };
      if (!Buffer.isBuffer(cached.answer)) o.log.warn({ bytes: bytes.length, bound: bounds.responseBytes }, 'replica share over its bound: not sent (the leader leaves this replica out)');
    }
    return cached.answer;
  });
  return {
    [REPLICA_SHARE_PATH]: (call) => {
      if (!o.authorize) return refuse(call, Code.PERMISSION_DENIED, 'replica shares are served over mTLS only (--ca-dir or --tls-dir): on a plaintext port anyone could read them', 'replica_share_plaintext');
      const r = o.authorize(call);
      if (r) return refuse(call, r.code, r.details, r.reason);
      answer(call);
    },
  };
}

/** A client certificate and key, and the CA a server's certificate must chain to (PEM). */
export interface ClientTls {
  readonly cert: string;
  readonly key: string;
  readonly ca: string;
}

/**
 * The control plane's client certificate, issued from the mesh CA (the serving certificate is for serverAuth only):
 * again when two thirds of its life have passed or the CA changed.
 */
export class ControlPlaneClientCert {
  private current?: { tls: ClientTls; renewAt: number; ca: string };
  private issuing?: Promise<ClientTls>;
  constructor(
    private ca: KeyPair,
    private readonly o: { trustDomain: string; namespace: string; ttlMs?: number; now?: () => number },
  ) {}

  setCa(ca: KeyPair): void {
    this.ca = ca;
  }

  async get(): Promise<ClientTls> {
    const now = (this.o.now ?? Date.now)();
    const c = this.current;
    if (c && c.ca === this.ca.cert && now < c.renewAt) return c.tls;
    this.issuing ??= (async () => {
      try {
        const ca = this.ca;
        const ttlMs = this.o.ttlMs ?? 24 * 3_600_000;
        const pair = await issue(ca, { trustDomain: this.o.trustDomain, namespace: this.o.namespace, serviceAccount: 'mesh-xds', ttlMs });
        const tls = { cert: pair.cert, key: pair.key, ca: ca.cert };
        this.current = { tls, renewAt: now + (ttlMs * 2) / 3, ca: ca.cert };
        return tls;
      } finally {
        this.issuing = undefined;
      }
    })();
    return this.issuing;
  }
}

/** The serving certificate as the client's (--tls-dir: no CA key to issue from; it serves if it allows clientAuth). */
export function servingAsClient(holder: CredentialsHolder): () => Promise<ClientTls | undefined> {
  let current: ClientTls | undefined;
  holder.watch((c) => (current = { cert: c.cert.toString(), key: c.key.toString(), ca: c.ca.toString() }));
  return async () => current;
}

export interface ReplicaSharesOptions {
  kc: k8s.KubeConfig;
  /** The control plane's namespace, and its Service there (default `mesh-xds`), whose port `portName` is ADS. */
  namespace: string;
  service?: string;
  portName?: string;
  /** The control plane's SPIFFE id: a peer's server certificate must have it. */
  spiffe: string;
  log: Logger;
  bounds?: Partial<ReplicaShareBounds>;
  now?: () => number;
}

interface Peer {
  readonly target: string;
}

/** The leader's side: its peers, asked for their shares, summed with its own. */
export class ReplicaShares {
  /** This process (a share answered by it is not a peer's). */
  readonly instance = randomUUID();
  /** This replica's name (its Lease identity: KubernetesWriters sets it), in its share and in Programmed's message alone. */
  replica = os.hostname();
  private readonly bounds: ReplicaShareBounds;
  private readonly now: () => number;
  private port?: number;
  private tls?: () => Promise<ClientTls | undefined>;
  private peers: Peer[] = [];
  private listedAt?: number;
  private listing?: Promise<void>;
  private readonly clients = new Map<string, { client: grpc.Client; key: string }>();
  private readonly said = new Map<string, string>();
  /** Shares asked for, answered, and left out (by why: unanswered, refused, too large, not a share). */
  asked = 0;
  answered = 0;

  constructor(private readonly o: ReplicaSharesOptions) {
    this.bounds = { ...REPLICA_SHARE_BOUNDS, ...o.bounds };
    this.now = o.now ?? Date.now;
  }

  /** This replica serves ADS on `port`; `tls` gives the client certificate (none: plaintext, no peer is asked). */
  serving(o: { port: number; tls?: () => Promise<ClientTls | undefined> }): void {
    this.port = o.port;
    this.tls = o.tls;
  }

  /** Logs a line once per distinct thing said about `what`. */
  private say(what: string, level: 'info' | 'warn', fields: object, msg: string): void {
    const key = `${msg}|${JSON.stringify(fields)}`;
    if (this.said.get(what) === key) return;
    this.said.set(what, key);
    this.o.log[level](fields, msg);
  }

  private async discover(): Promise<void> {
    const t = this.now();
    if (this.listedAt !== undefined && t - this.listedAt < this.bounds.discoverMs) return;
    this.listing ??= (async () => {
      const service = this.o.service ?? 'mesh-xds';
      const portName = this.o.portName ?? 'grpc-ads';
      try {
        const api = this.o.kc.makeApiClient(k8s.DiscoveryV1Api);
        let timer: NodeJS.Timeout | undefined;
        const list = await Promise.race([
          api.listNamespacedEndpointSlice({ namespace: this.o.namespace, labelSelector: `kubernetes.io/service-name=${service}` }),
          new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error('no answer in 10 s')), 10_000).unref())),
        ]).finally(() => clearTimeout(timer));
        const local = new Set(Object.values(os.networkInterfaces()).flatMap((l) => (l ?? []).map((a) => a.address)));
        const targets = new Set<string>();
        for (const slice of list.items) {
          if (slice.metadata?.labels?.['kubernetes.io/service-name'] !== service) continue;
          const port = slice.ports?.find((p) => p.name === portName)?.port;
          if (!port) continue;
          for (const e of slice.endpoints ?? []) {
            if (e.conditions?.ready === false) continue;
            const address = e.addresses?.[0];
            if (!address) continue;
            if (port === this.port && local.has(address)) continue;
            targets.add(address.includes(':') ? `[${address}]:${port}` : `${address}:${port}`);
          }
        }
        this.peers = [...targets].sort().map((target) => ({ target }));
        this.listedAt = this.now();
        this.say('discover', 'info', { service: `${this.o.namespace}/${service}`, peers: this.peers.map((p) => p.target) }, 'control plane replicas found');
      } catch (err) {
        // Keep the peers known; ask the API again at the next pass.
        this.say('discover', 'warn', { service: `${this.o.namespace}/${service}`, err: (err as Error).message }, 'cannot list the control plane replicas (EndpointSlices): summing the ones known');
      } finally {
        this.listing = undefined;
      }
    })();
    await this.listing;
  }

  private client(target: string, tls: ClientTls): grpc.Client {
    const key = `${tls.cert}|${tls.ca}`;
    const had = this.clients.get(target);
    if (had?.key === key) return had.client;
    had?.client.close();
    const spiffe = this.o.spiffe;
    const creds = grpc.credentials.createSsl(Buffer.from(tls.ca), Buffer.from(tls.key), Buffer.from(tls.cert), {
      // Addressed by pod IP: the server is checked by the identity its certificate proves, not by a name.
      checkServerIdentity: (_host, cert) => {
        const uris = new X509Certificate(cert.raw).subjectAltName?.split(', ').filter((n) => n.startsWith('URI:')) ?? [];
        return uris.includes(`URI:${spiffe}`) ? undefined : new Error(`the replica's certificate is not the control plane's (${spiffe}): ${uris.join(', ') || 'no URI'}`);
      },
    });
    const client = new grpc.Client(target, creds, {
      'grpc.max_receive_message_length': this.bounds.responseBytes,
      'grpc.max_send_message_length': this.bounds.requestBytes,
      // A name to send in the TLS handshake (an IP may not be one); the certificate is checked as above.
      'grpc.ssl_target_name_override': `${this.o.service ?? 'mesh-xds'}.${this.o.namespace}.svc`,
    });
    this.clients.set(target, { client, key });
    return client;
  }

  private ask(peer: Peer, tls: ClientTls): Promise<Share | undefined> {
    const client = this.client(peer.target, tls);
    this.asked++;
    return new Promise((resolve) => {
      client.makeUnaryRequest(REPLICA_SHARE_PATH, (b: Buffer) => b, (b: Buffer) => b, Buffer.from('{}'), { deadline: Date.now() + this.bounds.deadlineMs }, (err, res) => {
        if (err || !res) {
          this.say(peer.target, 'warn', { peer: peer.target, code: err ? Code[err.code] : undefined, err: err?.details }, 'a replica did not give its share: the status leaves it out');
          return resolve(undefined);
        }
        try {
          const share = parseShare(res);
          this.say(peer.target, 'info', { peer: peer.target, replica: share.replica }, 'a replica gives its share');
          resolve(share);
        } catch (e) {
          this.say(peer.target, 'warn', { peer: peer.target, err: (e as Error).message }, 'a replica answered something other than a share: the status leaves it out');
          resolve(undefined);
        }
      });
    });
  }

  /** The peers' shares (each asked once), and how many replicas answered of how many serve (this one included). */
  async gather(): Promise<{ shares: Share[]; answered: number; of: number }> {
    await this.discover();
    let of = 1 + this.peers.length;
    const tls = await this.tls?.().catch((err) => void this.say('tls', 'warn', { err: (err as Error).message }, 'no client certificate to ask the other replicas with'));
    if (!tls) {
      if (this.peers.length) this.say('tls', 'info', { peers: this.peers.length }, 'the ADS port is plaintext: the replicas do not share their numbers, the status holds this replica\'s only');
      return { shares: [], answered: 1, of };
    }
    const live = new Set(this.peers.map((p) => p.target));
    for (const [target, c] of this.clients) {
      if (live.has(target)) continue;
      c.client.close();
      this.clients.delete(target);
    }
    const answers = await Promise.all(this.peers.slice(0, this.bounds.peers).map((p) => this.ask(p, tls)));
    const seen = new Set<string>([this.instance]);
    const shares: Share[] = [];
    for (const s of answers) {
      if (!s) continue;
      if (s.instance === this.instance) of--; // itself, by another address
      if (seen.has(s.instance)) continue;
      seen.add(s.instance);
      shares.push(s);
    }
    this.answered += shares.length;
    return { shares, answered: 1 + shares.length, of };
  }

  /** The leader's view and tallies with every peer's share added. */
  async sum(view: ObservedView | undefined, tallies: ReadonlyMap<string, ProgrammedTally> | undefined): Promise<Summed> {
    const { shares, answered, of } = await this.gather();
    const to = of > 1 ? ` to ${answered} of ${of} replicas` : ` to replica ${this.replica}`;
    return { ...sumShares(view, tallies, shares, to), replicas: `${answered}/${of}` };
  }

  close(): void {
    for (const c of this.clients.values()) c.client.close();
    this.clients.clear();
  }
}
