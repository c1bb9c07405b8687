/**
 * `mesh-xds inject -f FILE`: the file's workloads (Pods, and the pod templates of Deployments, StatefulSets,
 * DaemonSets, ReplicaSets, Jobs) with the sidecar, exactly as the webhook injects them; for clusters where the
 * webhook cannot run. Everything else in the file is printed as it is.
 */
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { parseAllDocuments, stringify } from 'yaml';
import { ConfigError } from '../config.js';
import { applyPatch, decide } from '../inject/inject.js';
import { SIDECAR_INJECTION_ANNOTATION } from '../inject/template.js';
import { MONITORED_BY_LABEL } from '../model/mesh.js';
import { asMap, type Fields } from '../model/plain.js';
import { packagePath } from '../paths.js';
import { DEFAULT_TRUST_DOMAIN } from '../security/spiffe.js';

const TEMPLATED = new Set(['Deployment', 'StatefulSet', 'DaemonSet', 'ReplicaSet', 'Job']);

export function injectCommand(args: string[]): number {
  let values;
  try {
    ({ values } = parseArgs({
      args,
      strict: true,
      options: {
        file: { type: 'string', short: 'f' },
        namespace: { type: 'string', short: 'n', default: 'default' },
        'control-plane-namespace': { type: 'string', default: 'mesh-xds' },
        plaintext: { type: 'boolean', default: false },
      },
    }));
  } catch (e) {
    throw new ConfigError((e as Error).message);
  }
  if (!values.file) throw new ConfigError('usage: mesh-xds inject -f FILE [-n NAMESPACE] [--control-plane-namespace NS] [--plaintext]');
  const version = (JSON.parse(readFileSync(packagePath('package.json'), 'utf8')) as { version: string }).version;
  const opts = { meshName: 'mesh-xds', controlPlaneNamespace: values['control-plane-namespace']!, trustDomain: DEFAULT_TRUST_DOMAIN, mtls: !values.plaintext, version };
  const docs = parseAllDocuments(readFileSync(values.file, 'utf8')).map((d) => d.toJS() as Fields | null).filter((d): d is Fields => Boolean(d));
  const out = docs.map((doc) => {
    const kind = doc.kind as string;
    const ns = (asMap(doc.metadata).namespace as string | undefined) ?? values.namespace!;
    const facts = { name: ns, labels: { [MONITORED_BY_LABEL]: opts.meshName }, annotations: { [SIDECAR_INJECTION_ANNOTATION]: 'enabled' } };
    if (kind === 'Pod') {
      const d = decide(doc, facts, opts);
      if (!d.inject && 'denied' in d) throw new ConfigError(d.denied);
      return d.inject ? applyPatch(doc, d.patch) : doc;
    }
    if (!TEMPLATED.has(kind)) return doc;
    const template = asMap(asMap(doc.spec).template);
    const d = decide({ metadata: { name: asMap(doc.metadata).name, ...asMap(template.metadata) }, spec: template.spec }, facts, opts);
    if (!d.inject && 'denied' in d) throw new ConfigError(`${kind} ${String(asMap(doc.metadata).name)}: ${d.denied}`);
    if (!d.inject) return doc;
    const pod = applyPatch({ metadata: { ...asMap(template.metadata) }, spec: template.spec }, d.patch);
    return { ...doc, spec: { ...asMap(doc.spec), template: pod } };
  });
  process.stdout.write(out.map((d) => stringify(d, { lineWidth: 0 })).join('---\n'));
  return 0;
}
