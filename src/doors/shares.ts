/**
 * A door's capacity shared fairly between its clients (docs/security.md, "Doors and their bounds").
 *
 * A door (the webhook, the ADS port's connections and streams, the bytes they hold) admits items (a connection, a
 * review in flight, a stream, bytes held) for a client: an identity where the door knows one (an mTLS certificate),
 * else a source address. What all clients hold together is bounded (`total`); one client's load may be bounded too
 * (`perClient`). When the door is full, the client holding the most gives way: its largest item (the oldest of
 * equals) is evicted, if it holds at least what the newcomer would after admission (max-min fairness). So one client
 * can fill the door while nobody else needs it, but never keep another client out: whoever holds least is served,
 * and a flood from one source costs that source alone.
 *
 * Deliberately left out: weights per client, queueing (a refused item is refused now; its client retries), and
 * fairness among clients that each hold no more than the newcomer (a door full of equal clients refuses the next).
 */
export interface ShareBounds {
  /** What every client together may hold (items, or bytes where items have sizes). */
  readonly total: number;
  /** What one client may hold (default: the total). */
  readonly perClient?: number;
}

interface Held {
  readonly client: string;
  size: number;
}

interface Client {
  load: number;
  readonly items: Set<object>;
}

export class FairShare<T extends object> {
  private readonly items = new Map<T, Held>();
  private readonly clients = new Map<string, Client>();
  /** What every client holds together. */
  used = 0;
  /** Items evicted to make room for another client, since the start. */
  evictions = 0;
  /** Some item holds other than 1 (bytes): else every item is alike, and a client's first that may go is its victim. */
  private sized = false;

  /**
   * @param evict ends an item evicted to make room (it has already left the share: releasing it again does nothing).
   * @param busy an item making progress (a connection in the middle of a request): never evicted, so that a client
   * that only holds idle items cannot cut another's work short to take its place.
   */
  constructor(
    readonly bounds: ShareBounds,
    private readonly evict: (victim: T, client: string) => void,
    private readonly busy?: (item: T) => boolean,
  ) {}

  /** What `client` holds. */
  load(client: string): number {
    return this.clients.get(client)?.load ?? 0;
  }

  /** Clients holding something now. */
  get clientCount(): number {
    return this.clients.size;
  }

  has(item: T): boolean {
    return this.items.has(item);
  }

  /**
   * Admits `item` for `client`, holding `size`. False when the client would pass its own bound, or the door is full
   * and no client holds more than this one would: the caller refuses the item. An item admitted may evict others.
   */
  admit(item: T, client: string, size = 1): boolean {
    if (this.items.has(item)) return this.resize(item, size);
    if (this.load(client) + size > (this.bounds.perClient ?? this.bounds.total)) return false;
    if (!this.makeRoom(size, client)) return false;
    if (size !== 1) this.sized = true;
    this.items.set(item, { client, size });
    let c = this.clients.get(client);
    if (!c) this.clients.set(client, (c = { load: 0, items: new Set() }));
    c.items.add(item);
    c.load += size;
    this.used += size;
    return true;
  }

  /**
   * Changes what an admitted item holds. Growing past the client's own bound, or past the total when no other
   * client holds more, evicts this item itself (returns false); otherwise the heaviest client gives way.
   */
  resize(item: T, size: number): boolean {
    const h = this.items.get(item);
    if (!h) return false;
    const delta = size - h.size;
    const c = this.clients.get(h.client)!;
    if (delta > 0 && (c.load + delta > (this.bounds.perClient ?? this.bounds.total) || !this.makeRoom(delta, h.client, item))) {
      this.release(item);
      this.evictions++;
      this.evict(item, h.client);
      return false;
    }
    if (size !== 1) this.sized = true;
    h.size = size;
    c.load += delta;
    this.used += delta;
    return true;
  }

  /** The item leaves the door (it ended); unknown items are ignored. */
  release(item: T): void {
    const h = this.items.get(item);
    if (!h) return;
    this.items.delete(item);
    const c = this.clients.get(h.client)!;
    c.items.delete(item);
    c.load -= h.size;
    this.used -= h.size;
    if (c.items.size === 0) this.clients.delete(h.client);
  }

  /**
   * Frees room for `size` more of `client`'s: while the door would be over its total, the heaviest other client's
   * largest item is evicted, as long as that client holds at least what `client` would after the growth.
   */
  private makeRoom(size: number, client: string, except?: T): boolean {
    while (this.used + size > this.bounds.total) {
      const after = this.load(client) + size;
      // The other clients holding at least `after`, heaviest first; the first with an item that may go gives its
      // largest such item (its oldest where all are alike). Only the clients are sorted: the items of the one that
      // gives way are looked at, not every item of the door (30,000 streams).
      const eligible = [...this.clients].filter(([name, c]) => name !== client && c.load >= after).sort((a, b) => b[1].load - a[1].load);
      let victim: T | undefined;
      let victimClient = '';
      for (const [name, c] of eligible) {
        let largest = -1;
        for (const i of c.items) {
          const s = this.items.get(i as T)!.size;
          if (s <= largest || i === except || this.busy?.(i as T)) continue;
          victim = i as T;
          largest = s;
          // Items all alike (counts), or one holding all its client holds: none can outdo it.
          if (!this.sized || s === c.load) break;
        }
        if (victim) {
          victimClient = name;
          break;
        }
      }
      if (!victim) return false;
      this.release(victim);
      this.evictions++;
      this.evict(victim, victimClient);
    }
    return true;
  }
}

/** The client a connection counts for where no identity is known: its source address (IPv4-mapped IPv6 as IPv4). */
export function sourceOf(socket: { remoteAddress?: string } | undefined): string {
  const a = socket?.remoteAddress ?? 'unknown';
  return a.startsWith('::ffff:') ? a.slice(7) : a;
}
