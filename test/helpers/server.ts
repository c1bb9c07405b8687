import pino from 'pino';
import { SnapshotCache } from '../../src/xds/resources/cache.js';
import type { Limits } from '../../src/xds/protocol/limits.js';
import { AdsServer } from '../../src/xds/protocol/server.js';
import { ProxyRegistry } from '../../src/xds/protocol/status.js';

export async function startAds(limits: Partial<Limits> = {}): Promise<{ cache: SnapshotCache; registry: ProxyRegistry; server: AdsServer; address: string }> {
  const cache = new SnapshotCache();
  const registry = new ProxyRegistry();
  const server = new AdsServer({ cache, registry, log: pino({ level: process.env.LOG_LEVEL ?? 'silent' }), limits });
  const port = await server.listen('127.0.0.1:0');
  return { cache, registry, server, address: `127.0.0.1:${port}` };
}
