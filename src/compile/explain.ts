/**
 * Which policies shape the calls from a service account to a service, and why: the part of `policy explain` that
 * the server (/debug/explain, from what it sent) and the CLI (`policy explain -f`, offline) share. Pure, over the IR.
 */
import type { MeshIR } from './ir.js';
import { featuresFor, retryOnRoute, type RouteFeatures } from './features.js';
import { portKey } from './routes.js';

/** Per route of a port: which policy set each field (null: nobody, the default). */
export interface RouteFieldsJson {
  readonly route: string;
  readonly match: string;
  readonly setBy: { readonly route: string; readonly retry: string | null; readonly timeout: string | null };
}

export function explainPair(ir: MeshIR, from: string, to: string) {
  const applied = ir.enableRetryPolicy ? ir.retries[from]?.[to] : undefined;
  const candidates = ir.policies
    .filter((p) => p.declared.source === from && p.declared.destinations.includes(to))
    .map((p) => ({ policy: `${p.namespace}/${p.name}`, state: p.state, reason: p.reason, appliesTo: p.appliesTo, warnings: p.warnings ?? [] }));
  const service = ir.services.find((s) => `${s.namespace}/${s.name}` === to);
  const features = featuresFor(ir, from, from.split('/')[0] ?? '');
  const featuresOf = (port: number): RouteFeatures | undefined => features.get(portKey(to, port));
  const fields = (service?.ports ?? [])
    .filter((p) => p.protocol === 'http')
    .map((port) => {
      const f = featuresOf(port.port);
      const rules = f?.rules;
      const routes: RouteFieldsJson[] = rules
        ? rules.map((rule) => ({
            route: `${rule.from}${rule.ruleName ? ` rule ${rule.ruleName}` : ` rule ${rule.rule}`}`,
            match: `${rule.match.method ? `${rule.match.method} ` : ''}${rule.match.path.type} ${rule.match.path.value}${rule.match.headers.length ? ` +${rule.match.headers.length} header(s)` : ''}${rule.match.queryParams.length ? ` +${rule.match.queryParams.length} query` : ''}`,
            setBy: { route: rule.from, retry: retryOnRoute(f, rule)?.from ?? null, timeout: rule.timeout ? rule.from : null },
          }))
        : [{ route: 'default', match: 'PathPrefix /', setBy: { route: 'default', retry: f?.retry?.from ?? null, timeout: null } }];
      return { port: port.port, routes };
    });
  const routeNames = [...new Set(fields.flatMap((p) => p.routes.map((r) => r.setBy.route)).filter((r) => r !== 'default'))];
  const retryWhy = !ir.enableRetryPolicy
    ? 'retry policies are disabled (featureFlags.enableRetryPolicy=false)'
    : applied
      ? `Retry ${applied.policy} applies${candidates.length > 1 ? ' (the oldest of several; the others are Conflicted)' : ''}${routeNames.length ? ', on every route (a Retry naming the caller wins over a route\'s retry)' : ''}`
      : 'no accepted Retry has this source and destination';
  const why = routeNames.length ? `${retryWhy}; routes from ${routeNames.join(', ')}` : retryWhy;
  return { applied, candidates, service, why, fields, featuresOf };
}
