/**
 * `mesh-xds policy explain --from NS/SA --to NS/SVC -f FILE_OR_DIR...`: the answer of the server's /debug/explain,
 * offline, from manifests read as `policy amplification -f` reads them: the same compile, the same worst path,
 * and the route each HTTP port of the Service gets in the caller's sidecar (built by the same functions the
 * server's translation uses, without encoding it: no protobuf is loaded).
 */
import { amplification } from '../compile/amplification.js';
import { compile } from '../compile/compile.js';
import { explainPair } from '../compile/explain.js';
import { outboundRouteName } from '../envoy/common.js';
import { envoyRetryPolicy, outboundVirtualHost, serviceRoute } from '../envoy/routes.js';
import { convertObjects, meshStateOf, parseManifestText, type Located } from '../sources/manifests.js';
import { readInputs } from './inputs.js';
import type { ExplainJson } from './ops.js';

export async function explainFiles(command: string, names: string[], from: string, to: string): Promise<ExplainJson & { readonly from: string; readonly to: string; readonly offline: true }> {
  const located: Located[] = [];
  for (const input of await readInputs(command, names)) {
    if (input.text === undefined) {
      process.stderr.write(`mesh-xds: ${input.file}: ${input.error}\n`);
      continue;
    }
    const parsed = parseManifestText(input.text, input.file);
    for (const e of parsed.errors) process.stderr.write(`mesh-xds: ${e.file}${e.line ? `:${e.line}` : ''}: ${e.message}\n`);
    located.push(...parsed.objects);
  }
  const ir = compile(meshStateOf(convertObjects(located).objects, 'mesh-xds'));
  const { applied, candidates, service, why } = explainPair(ir, from, to);
  const retry = applied ? envoyRetryPolicy(applied.spec, { proxyless: false }) : undefined;
  const routes = (service?.ports ?? [])
    .filter((p) => p.protocol === 'http')
    .map((port) =>
      service!.headless
        ? { routeConfiguration: outboundRouteName(port.dialPort), virtualHost: outboundVirtualHost(service!, port, from.split('/')[0], retry) }
        : { routeConfiguration: serviceRoute(service!, port, retry).name, virtualHost: serviceRoute(service!, port, retry).virtual_hosts?.[0] ?? null },
    );
  return {
    from,
    to,
    offline: true,
    worstPath: amplification(ir).paths.find((p) => p.hops.some((h) => h.from === from && h.to === to)) ?? null,
    serviceExists: Boolean(service),
    retryBudget: ir.retryBudget,
    why,
    candidates,
    routes: routes as ExplainJson['routes'],
  };
}
