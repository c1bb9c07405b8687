/** `mesh-xds ca init | issue`: the mesh CA and the certificates it issues (files in a TLS Secret's layout). */
import { existsSync } from 'node:fs';
import path from 'node:path';
import { parseFlags } from './args.js';
import { nearest, UnreachableError, UsageError } from './errors.js';
import { isDnsLabel, isObjectName } from '../model/names.js';
import { parseGoDuration } from '../policy/duration.js';
import { identitySdsFiles, identitySecretName } from '../inject/template.js';
import { createCa, issue, notAfter, readCaDir, writeCaDir, writeTlsDir } from '../security/ca.js';
import { DEFAULT_TRUST_DOMAIN, isTrustDomain, spiffeId } from '../security/spiffe.js';

export const CA_HELP = `Usage:
  mesh-xds ca init --dir DIR [--trust-domain DOMAIN]
  mesh-xds ca init --kubernetes [--namespace NS] [--trust-domain DOMAIN]
      make the mesh CA (ECDSA P-256): DIR/ca.crt and DIR/ca.key, or the Secret mesh-xds-ca in the control
      plane's namespace (default mesh-xds), which the Deployment mounts
  mesh-xds ca issue --ca-dir DIR --namespace NS --service-account SA --out DIR [--ttl 24h] [--server [--dns NAME]...]
      write OUT/tls.crt, OUT/tls.key and OUT/ca.crt for spiffe://DOMAIN/ns/NS/sa/SA (--server: a serving
      certificate with the DNS names given)
  mesh-xds ca issue --kubernetes --namespace NS --service-account SA [--ca-namespace mesh-xds] [--ttl 720h]
      the same, signed by the CA in the Secret mesh-xds-ca, into the Secret mesh-xds-identity-SA (type
      kubernetes.io/tls) of NS, which the samples' sidecars mount
`;

/** The Secret of a service account's identity in its namespace. */
export const identitySecret = identitySecretName;

/** The Secret that holds the mesh CA (keys ca.crt and ca.key). */
export const CA_SECRET = 'mesh-xds-ca';

function ttlOf(s: string): number {
  const d = parseGoDuration(s);
  if ('error' in d) throw new UsageError(`ca issue: --ttl ${s}: ${d.error}; a Go duration such as 24h`);
  const ms = Number(d.nanos / 1_000_000n);
  if (ms < 60_000) throw new UsageError(`ca issue: --ttl ${s}: at least 1m`);
  return ms;
}

/** The Kubernetes API could not be reached or refused: exit 3, one line. */
async function kube<T>(what: string, call: () => Promise<T>): Promise<T> {
  try {
    return await call();
  } catch (e) {
    throw new UnreachableError(`ca: ${what} through the Kubernetes API failed: ${(e as Error).message}`);
  }
}

export async function caCommand(args: string[]): Promise<number> {
  const [sub, ...rest] = args;
  if (sub === '--help' || sub === '-h') {
    process.stdout.write(CA_HELP);
    return 0;
  }
  if (sub !== 'init' && sub !== 'issue') {
    const near = sub === undefined ? undefined : nearest(sub, ['init', 'issue']);
    throw new UsageError(`ca: ${sub === undefined ? 'which one?' : `unknown subcommand "${sub}"${near ? ` (did you mean ${near}?)` : ''};`} init or issue (mesh-xds ca --help)`);
  }
  const parsed = parseFlags(
    { command: `ca ${sub}`, usage: sub === 'init' ? 'mesh-xds ca init (--dir DIR | --kubernetes) [--namespace NS] [--trust-domain DOMAIN] [--force]' : 'mesh-xds ca issue (--ca-dir DIR --out DIR | --kubernetes) --namespace NS --service-account SA [--ttl 24h] [--server [--dns NAME]...]', help: CA_HELP },
    rest,
    {
      dir: { type: 'string' },
      kubernetes: { type: 'boolean', default: false },
      namespace: { type: 'string' },
      'service-account': { type: 'string' },
      'ca-dir': { type: 'string' },
      out: { type: 'string' },
      ttl: { type: 'string', default: '24h' },
      server: { type: 'boolean', default: false },
      dns: { type: 'string', multiple: true, default: [] },
      'trust-domain': { type: 'string', default: DEFAULT_TRUST_DOMAIN },
      force: { type: 'boolean', default: false },
      'ca-namespace': { type: 'string', default: 'mesh-xds' },
    },
  );
  if (!parsed) return 0;
  const { values } = parsed;
  const trustDomain = values['trust-domain']!;
  if (!isTrustDomain(trustDomain)) throw new UsageError(`ca ${sub}: --trust-domain ${trustDomain}: lowercase letters, digits, dots, dashes and underscores`);

  if (sub === 'init') {
    if (!values.dir === !values.kubernetes) throw new UsageError(`ca init: ${values.dir ? '--dir and --kubernetes: choose one' : 'where? give --dir DIR (files) or --kubernetes (a Secret)'}`);
    if (values.dir && existsSync(path.join(values.dir, 'ca.key')) && !values.force) {
      throw new UsageError(`ca init: ${values.dir}/ca.key exists; a new CA would make every issued certificate untrusted (--force to replace it)`);
    }
    const ca = await createCa(trustDomain);
    if (values.dir) {
      writeCaDir(values.dir, ca);
      process.stdout.write(`mesh CA for ${trustDomain} written to ${values.dir}/ca.crt and ${values.dir}/ca.key (valid until ${notAfter(ca.cert).toISOString()})\n`);
      return 0;
    }
    const namespace = values.namespace ?? 'mesh-xds';
    const { createCaSecret } = await import('./portforward.js');
    const created = await kube(`storing the CA in Secret ${namespace}/${CA_SECRET}`, () => createCaSecret(namespace, CA_SECRET, ca, values.force!));
    process.stdout.write(created ? `mesh CA for ${trustDomain} stored in Secret ${namespace}/${CA_SECRET}\n` : `Secret ${namespace}/${CA_SECRET} exists; kept (--force to replace it)\n`);
    return 0;
  }

  const need = (flag: string, v: string | undefined): string => {
    if (!v) throw new UsageError(`ca issue: --${flag} is missing; usage: mesh-xds ca issue (--ca-dir DIR --out DIR | --kubernetes) --namespace NS --service-account SA`);
    return v;
  };
  const namespace = need('namespace', values.namespace);
  const serviceAccount = need('service-account', values['service-account']);
  if (!isDnsLabel(namespace)) throw new UsageError(`ca issue: --namespace ${namespace}: not a Kubernetes namespace name`);
  if (!isObjectName(serviceAccount)) throw new UsageError(`ca issue: --service-account ${serviceAccount}: not a Kubernetes name`);
  if (values.kubernetes) {
    const { readCaSecret, writeTlsSecret } = await import('./portforward.js');
    const ca = await kube(`reading the CA Secret ${values['ca-namespace']}/${CA_SECRET}`, () => readCaSecret(values['ca-namespace']!, CA_SECRET));
    const bundle = await issue(ca, { trustDomain, namespace, serviceAccount, ttlMs: ttlOf(values.ttl!), server: values.server ? { dnsNames: values.dns! } : undefined });
    // With the SDS files through which an injected sidecar reads it (src/inject/template.ts).
    await kube(`writing Secret ${namespace}/${identitySecret(serviceAccount)}`, () => writeTlsSecret(namespace, identitySecret(serviceAccount), bundle, identitySdsFiles({ controlPlaneNamespace: values['ca-namespace']!, trustDomain })));
    process.stdout.write(`${spiffeId(trustDomain, namespace, serviceAccount)}: Secret ${namespace}/${identitySecret(serviceAccount)} (valid until ${notAfter(bundle.cert).toISOString()})\n`);
    return 0;
  }
  if (values['ca-dir'] === undefined && values.out === undefined) throw new UsageError('ca issue: where from and to? give --ca-dir DIR --out DIR (files) or --kubernetes (Secrets)');
  const caDir = need('ca-dir', values['ca-dir']);
  const out = need('out', values.out);
  if (!existsSync(path.join(caDir, 'ca.key'))) throw new UsageError(`ca issue: --ca-dir ${caDir}: no ca.key there; make the CA with: mesh-xds ca init --dir ${caDir}`);
  const ca = readCaDir(caDir);
  const bundle = await issue(ca, { trustDomain, namespace, serviceAccount, ttlMs: ttlOf(values.ttl!), server: values.server ? { dnsNames: values.dns! } : undefined });
  writeTlsDir(out, bundle);
  process.stdout.write(`${spiffeId(trustDomain, namespace, serviceAccount)}: ${out}/tls.crt, tls.key, ca.crt (valid until ${notAfter(bundle.cert).toISOString()})\n`);
  return 0;
}
