/**
 * The page (/ui) at scale: the real pipeline, ADS and debug servers on a generated mesh of 1,000 services (x 2 ports,
 * 1,000 identities, 500 Retries), 2,000 proxies connected over real gRPC (SotW streams asking for CDS), and Debian's
 * chromium opening /ui: the time from navigation to the graph drawn and every view's data in, three times, and
 * the time to switch to the proxies (2,000 rows). `npm run build && npm run bench:ui [PROXIES]`.
 */
import * as grpc from '@grpc/grpc-js';
import pino from 'pino';
import { Pipeline } from '../src/pipeline/pipeline.js';
import { SnapshotCache } from '../src/xds/resources/cache.js';
import { AdsServer } from '../src/xds/protocol/server.js';
import { ProxyRegistry } from '../src/xds/protocol/status.js';
import { DebugServer } from '../src/debug/http.js';
import { Metrics } from '../src/debug/metrics.js';
import { envoyRoot } from '../src/xds/resources/protos.js';
import { ADS_SERVICE } from '../src/xds/protocol/server.js';
import { CLUSTER } from '../src/xds/resources/types.js';
import { BENCH_MESH, generateMesh } from './mesh-gen.js';
import { CHROMIUM, launchBrowser } from '../sandbox/browser.js';

const PROXIES = Number(process.argv[2] ?? 2000);
const log = pino({ level: 'silent' });
const cache = new SnapshotCache();
const registry = new ProxyRegistry();
const metrics = new Metrics(registry);
const pipeline = new Pipeline(cache, log);
pipeline.update(generateMesh(BENCH_MESH));
const ads = new AdsServer({ cache, registry, log });
const adsPort = await ads.listen('127.0.0.1:0');
const debug = new DebugServer({ cache, registry, metrics, log, ir: () => pipeline.ir, preview: (k) => pipeline.preview(k), ready: () => true });
const debugPort = await debug.listen('127.0.0.1:0');

// The proxies: SotW streams asking for CDS, 100 per connection, each ACKing what it gets.
const Req = envoyRoot().lookupType('envoy.service.discovery.v3.DiscoveryRequest');
const Res = envoyRoot().lookupType('envoy.service.discovery.v3.DiscoveryResponse');
const Client = grpc.makeGenericClientConstructor(ADS_SERVICE, 'ADS');
const ids = pipeline.ir!.identities;
const clients: grpc.Client[] = [];
for (let i = 0; i < PROXIES; i++) {
  if (i % 100 === 0) clients.push(new Client(`127.0.0.1:${adsPort}`, grpc.credentials.createInsecure(), { 'grpc.use_local_subchannel_pool': 1 }));
  const [namespace, serviceAccount] = ids[i % ids.length]!.split('/');
  const call = (clients.at(-1) as any).StreamAggregatedResources() as grpc.ClientDuplexStream<Buffer, Buffer>;
  call.on('error', () => {});
  call.on('data', (buf: Buffer) => {
    const r: any = Res.decode(buf);
    call.write(Buffer.from(Req.encode(Req.fromObject({ type_url: r.type_url, version_info: r.version_info, response_nonce: r.nonce })).finish()));
  });
  const node = { id: `proxy-${i}`, user_agent_name: 'envoy', metadata: { fields: { namespace: { stringValue: namespace }, serviceAccount: { stringValue: serviceAccount } } } };
  call.write(Buffer.from(Req.encode(Req.fromObject({ node, type_url: CLUSTER })).finish()));
}
while (registry.connections.size < PROXIES) await new Promise((r) => setTimeout(r, 100));
await new Promise((r) => setTimeout(r, 2000));
console.log(`mesh of ${pipeline.ir!.services.length} services, ${ids.length} identities, ${pipeline.ir!.policies.length} Retries; ${registry.connections.size} proxies connected; browser ${CHROMIUM}`);

const browser = await launchBrowser();
for (let run = 1; run <= 5; run++) {
  const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
  const t0 = Date.now();
  await page.goto(`http://127.0.0.1:${debugPort}/ui`);
  await page.waitForFunction(() => (window as any).meshUi?.marks?.drawn !== undefined, null, { timeout: 60_000, polling: 10 });
  const drawn = Date.now() - t0;
  await page.waitForFunction(() => (window as any).meshUi.loads >= 2, null, { timeout: 60_000, polling: 10 });
  const first = Date.now() - t0;
  const inPage = await page.evaluate(() => ({
    graphMs: (window as any).meshUi.firstRenderMs,
    parts: JSON.stringify({ ...(window as any).meshUi.firstRenderParts, ...(window as any).meshUi.marks }),
    loadedAt: Math.round(performance.getEntriesByType('navigation')[0]!.duration),
    nodes: (window as any).meshUi.cy.nodes().length,
    edges: (window as any).meshUi.cy.edges().length,
    fetches: performance
      .getEntriesByType('resource')
      .map((e: any) => `${e.name.replace(/^https?:\/\/[^/]+/, '')} ${Math.round(e.responseEnd - e.startTime)} ms ${Math.round(e.transferSize / 1024)} kB`)
      .join(', '),
  }));
  console.log(`fetches: ${inPage.fetches}; graph parts ${inPage.parts}; navigation ${inPage.loadedAt} ms`);
  const t1 = Date.now();
  await page.click('#tab-proxies');
  await page.waitForFunction((n) => document.querySelectorAll('#proxies tbody tr').length >= n, PROXIES);
  const proxiesMs = Date.now() - t1;
  const inPageDrawn = await page.evaluate(() => (window as any).meshUi.marks.drawn as number);
  console.log(`run ${run}: the graph drawn ${inPageDrawn} ms after the navigation started (in the page; ${drawn} ms after the bench asked chromium to open it), every view's data in after ${first} ms (the graph: ${inPage.nodes} nodes, ${inPage.edges} edges, built and laid out in ${Math.round(inPage.graphMs)} ms); the proxies view with ${PROXIES} rows ${proxiesMs} ms`);
  await page.close();
}
await browser.close();
for (const c of clients) c.close();
await debug.close();
await ads.close(0);
process.exit(0);
