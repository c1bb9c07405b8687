/**
 * `mesh-xds inject -f FILE`: the file's workloads (Pods, and the pod templates of Deployments, StatefulSets,
 * DaemonSets, ReplicaSets, Jobs) with the sidecar, exactly as the webhook injects them; for clusters where the
 * webhook cannot run. Everything else in the file is printed as it is.
 */
import { readFileSync, statSync } from 'node:fs';
import { parseAllDocuments, stringify } from 'yaml';
import { applyPatch, decide } from '../inject/inject.js';
import { SIDECAR_INJECTION_ANNOTATION } from '../inject/template.js';
import { MONITORED_BY_LABEL } from '../model/mesh.js';
import { isDnsLabel } from '../model/names.js';
import { asMap, type Fields } from '../model/plain.js';
import { packagePath } from '../paths.js';
import { DEFAULT_TRUST_DOMAIN } from '../security/spiffe.js';
import { parseFlags, type Usage } from './args.js';
import { ExitError, UsageError } from './errors.js';
import { readInput } from './inputs.js';
import { nestingProblem } from '../sources/yaml-depth.js';

const TEMPLATED = new Set(['Deployment', 'StatefulSet', 'DaemonSet', 'ReplicaSet', 'Job']);

const USAGE: Usage = {
  command: 'inject',
  usage: 'mesh-xds inject -f FILE [-n NAMESPACE] [--control-plane-namespace NS] [--plaintext]',
  positionalHint: (arg) => `the file is given with -f: mesh-xds inject -f ${arg}`,
};

export function injectCommand(args: string[]): number {
  const parsed = parseFlags(USAGE, args, {
    file: { type: 'string', short: 'f' },
    namespace: { type: 'string', short: 'n', default: 'default' },
    'control-plane-namespace': { type: 'string', default: 'mesh-xds' },
    plaintext: { type: 'boolean', default: false },
  });
  if (!parsed) return 0;
  const { values } = parsed;
  if (!values.file) throw new UsageError(`inject: which file? give -f FILE (- for stdin); usage: ${USAGE.usage}`);
  for (const flag of ['namespace', 'control-plane-namespace'] as const) {
    if (!isDnsLabel(values[flag]!)) throw new UsageError(`inject: --${flag} ${values[flag]}: not a Kubernetes namespace name (lowercase letters, digits and '-')`);
  }
  if (values.file !== '-') {
    let isDir: boolean;
    try {
      isDir = statSync(values.file).isDirectory();
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      throw new UsageError(`inject: -f ${values.file}: ${code === 'ENOENT' ? 'no such file' : (e as Error).message}`);
    }
    if (isDir) throw new UsageError(`inject: -f ${values.file}: a directory; inject takes one file (for several: for f in DIR/*.yaml; do mesh-xds inject -f "$f"; done)`);
  }
  // At most what the server reads of a manifest (standard input included: no more is held, however much comes).
  const input = readInput(values.file);
  if (input.text === undefined) throw new ExitError(`inject: -f ${values.file}: ${input.error}`, 1);
  const text = input.text;
  // Nesting the YAML parser could not survive is refused before it starts, as the server's folder source does.
  const deep = nestingProblem(text);
  if (deep) throw new ExitError(`inject: ${values.file}:${deep.line}: ${deep.message}`, 1);
  const parsedDocs = parseAllDocuments(text);
  const docsList = Array.isArray(parsedDocs) ? parsedDocs : [parsedDocs];
  for (const [i, d] of docsList.entries()) {
    if (d.errors.length) throw new ExitError(`inject: ${values.file}: document ${i + 1}: ${d.errors[0].message.split('\n')[0]}`, 1);
  }
  const version = (JSON.parse(readFileSync(packagePath('package.json'), 'utf8')) as { version: string }).version;
  const opts = { meshName: 'mesh-xds', controlPlaneNamespace: values['control-plane-namespace']!, trustDomain: DEFAULT_TRUST_DOMAIN, mtls: !values.plaintext, version };
  let docs: Fields[];
  try {
    docs = docsList.map((d) => d.toJS({ maxAliasCount: 100 }) as Fields | null).filter((d): d is Fields => Boolean(d) && typeof d === 'object');
  } catch (e) {
    throw new ExitError(`inject: ${values.file}: cannot read: ${(e as Error).message}`, 1);
  }
  const out = docs.map((doc) => {
    const kind = doc.kind as string;
    const ns = (asMap(doc.metadata).namespace as string | undefined) ?? values.namespace!;
    const facts = { name: ns, labels: { [MONITORED_BY_LABEL]: opts.meshName }, annotations: { [SIDECAR_INJECTION_ANNOTATION]: 'enabled' } };
    if (kind === 'Pod') {
      const d = decide(doc, facts, opts);
      if (!d.inject && 'denied' in d) throw new ExitError(`inject: Pod ${String(asMap(doc.metadata).name)}: ${d.denied}`, 1);
      return d.inject ? applyPatch(doc, d.patch) : doc;
    }
    if (!TEMPLATED.has(kind)) return doc;
    const template = asMap(asMap(doc.spec).template);
    const d = decide({ metadata: { name: asMap(doc.metadata).name, ...asMap(template.metadata) }, spec: template.spec }, facts, opts);
    if (!d.inject && 'denied' in d) throw new ExitError(`inject: ${kind} ${String(asMap(doc.metadata).name)}: ${d.denied}`, 1);
    if (!d.inject) return doc;
    const pod = applyPatch({ metadata: { ...asMap(template.metadata) }, spec: template.spec }, d.patch);
    return { ...doc, spec: { ...asMap(doc.spec), template: pod } };
  });
  process.stdout.write(out.map((d) => stringify(d, { lineWidth: 0 })).join('---\n'));
  return 0;
}
