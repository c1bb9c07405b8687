/** The doors' shared parts: a fair share of a bounded door (src/doors/shares.ts), and the webhook's namespace lookup. */
import http from 'node:http';
import net from 'node:net';
import { describe, expect, it } from 'vitest';
import { startDemo } from './helpers/demo.js';
import { FairShare } from '../src/doors/shares.js';
import { cachedLookup } from '../src/inject/namespaces.js';

describe('a fair share of a door', () => {
  const door = (total: number, perClient?: number) => {
    const evicted: string[] = [];
    const share = new FairShare<{ id: string }>({ total, perClient }, (item, client) => evicted.push(`${client}:${item.id}`));
    return { share, evicted, item: (id: string) => ({ id }) };
  };

  it('one client fills the door while nobody else needs it; a newcomer then takes the oldest item of the client holding the most', () => {
    const { share, evicted, item } = door(4);
    const greedy = [0, 1, 2, 3].map((i) => item(`g${i}`));
    for (const g of greedy) expect(share.admit(g, 'greedy')).toBe(true);
    expect(share.admit(item('g4'), 'greedy')).toBe(false);
    expect(share.admit(item('p0'), 'proxy')).toBe(true);
    expect(evicted).toEqual(['greedy:g0']);
    expect(share.has(greedy[0]!)).toBe(false);
    expect([share.used, share.load('greedy'), share.load('proxy')]).toEqual([4, 3, 1]);
    // Releasing what was evicted does nothing.
    share.release(greedy[0]!);
    expect(share.used).toBe(4);
  });

  it('a newcomer never evicts a client holding less than it would: equals are refused', () => {
    const { share, evicted, item } = door(4);
    for (const c of ['a', 'b']) for (const i of [0, 1]) share.admit(item(`${c}${i}`), c);
    expect(share.admit(item('a2'), 'a')).toBe(false);
    expect(share.admit(item('c0'), 'c')).toBe(true);
    expect(share.admit(item('c1'), 'c')).toBe(true);
    // a, b and c hold 1, 2, 1 or 2, 1, 1 (whichever held the most gave way each time): c holds no more than the others.
    expect(share.load('c')).toBe(2);
    expect(evicted.length).toBe(2);
    expect(share.admit(item('c2'), 'c')).toBe(false);
  });

  it('bounds one client on its own (perClient) whatever room is left', () => {
    const { share, item } = door(100, 2);
    expect(share.admit(item('1'), 'x')).toBe(true);
    expect(share.admit(item('2'), 'x')).toBe(true);
    expect(share.admit(item('3'), 'x')).toBe(false);
    expect(share.admit(item('4'), 'y')).toBe(true);
  });

  it('sizes: growing past the total evicts the largest item of the heaviest other client, or the grower itself', () => {
    const { share, evicted, item } = door(100);
    const big = item('big');
    const small = item('small');
    const mine = item('mine');
    share.admit(big, 'attacker', 60);
    share.admit(small, 'attacker', 10);
    share.admit(mine, 'proxy', 10);
    expect(share.resize(mine, 40)).toBe(true);
    expect(evicted).toEqual(['attacker:big']);
    expect([share.used, share.load('attacker'), share.load('proxy')]).toEqual([50, 10, 40]);
    // Growing past what any other client holds, past the total: the grower is the one that gives way.
    share.admit(item('other'), 'other', 50);
    expect(share.resize(mine, 55)).toBe(false);
    expect(evicted).toEqual(['attacker:big', 'proxy:mine']);
    expect([share.used, share.load('proxy')]).toEqual([60, 0]);
  });
});

describe("the webhook's namespace lookup", () => {
  it('answers from the cache, waits for a namespace the watch learns a moment later, once per name, and gives up after its wait', async () => {
    const cache = new Map<string, string>([['known', 'facts']]);
    let lookups = 0;
    const lookup = cachedLookup((n) => (lookups++, cache.get(n)), 300, 10);
    expect(await lookup('known')).toBe('facts');
    const late = Promise.all(Array.from({ length: 100 }, () => lookup('late')));
    setTimeout(() => cache.set('late', 'created'), 50);
    expect(new Set(await late)).toEqual(new Set(['created']));
    // A hundred reviews for the same name share one wait: a lookup each, and the wait's few polls.
    expect(lookups).toBeLessThan(1 + 100 + 30);
    expect(await lookup('never')).toBeUndefined();
  });
});

describe('the debug port under a greedy client', () => {
  it("one source's idle connections never keep the probes out: the source holding the most loses one", async () => {
    const demo = await startDemo();
    const sockets: net.Socket[] = [];
    try {
      const port = demo.running.debugPort;
      let closed = 0;
      for (let i = 0; i < 300; i++) {
        const s = net.connect({ host: '127.0.0.1', port, localAddress: '127.0.0.1' });
        s.on('error', () => {});
        s.resume();
        s.on('close', () => closed++);
        sockets.push(s);
        await new Promise((r) => s.once('connect', r));
      }
      // 256 held, the rest closed as they came.
      for (let i = 0; i < 100 && closed < 44; i++) await new Promise((r) => setTimeout(r, 20));
      expect(closed).toBe(44);
      // The kubelet, from another address, is answered: one of the greedy source's connections gives way.
      const status = await new Promise<number>((resolve, reject) =>
        http.get({ host: '127.0.0.1', port, path: '/healthz', localAddress: '127.0.0.2' }, (res) => (res.resume(), resolve(res.statusCode ?? 0))).on('error', reject),
      );
      expect(status).toBe(200);
      for (let i = 0; i < 100 && closed < 45; i++) await new Promise((r) => setTimeout(r, 20));
      expect(closed).toBe(45);
    } finally {
      for (const s of sockets) s.destroy();
      await demo.close();
    }
  });
});
