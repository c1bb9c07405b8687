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
import { outboundVirtualHost, serviceRoute } from '../envoy/routes.js';
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
  const { candidates, service, why, fields, featuresOf } = explainPair(ir, from, to);
  const routes = (service?.ports ?? [])
    .filter((p) => p.protocol === 'http')
    .map((port) => {
      const f = featuresOf(port.port);
      return service!.headless
        ? { routeConfiguration: outboundRouteName(port.dialPort), virtualHost: outboundVirtualHost(service!, port, from.split('/')[0], f, { proxyless: false }) }
        : { routeConfiguration: serviceRoute(service!, port, f).name, virtualHost: serviceRoute(service!, port, f).virtual_hosts?.[0] ?? null };
    });
  return {
    from,
    to,
    offline: true,
    worstPath: amplification(ir).paths.find((p) => p.hops.some((h) => h.from === from && h.to === to)) ?? null,
    serviceExists: Boolean(service),
    retryBudget: ir.retryBudget,
    why,
    candidates,
    fields,
    routes: routes as ExplainJson['routes'],
  };
}
