/** `mesh-xds ca init | issue`: the mesh CA and the certificates it issues (files in a TLS Secret's layout). */
import { existsSync } from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { ConfigError } from '../config.js';
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
  if ('error' in d) throw new ConfigError(`--ttl ${s}: ${d.error}`);
  const ms = Number(d.nanos / 1_000_000n);
  if (ms < 60_000) throw new ConfigError(`--ttl ${s}: at least 1m`);
  return ms;
}

export async function caCommand(args: string[]): Promise<number> {
  const [sub, ...rest] = args;
  if (sub !== 'init' && sub !== 'issue') {
    process.stdout.write(CA_HELP);
    return sub === undefined || sub === '--help' || sub === '-h' ? (sub === undefined ? 2 : 0) : 2;
  }
  let values;
  try {
    ({ values } = parseArgs({
      args: rest,
      strict: true,
      options: {
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
    }));
  } catch (e) {
    throw new ConfigError((e as Error).message);
  }
  const trustDomain = values['trust-domain']!;
  if (!isTrustDomain(trustDomain)) throw new ConfigError(`--trust-domain ${trustDomain}: lowercase letters, digits, dots, dashes and underscores`);

  if (sub === 'init') {
    if (!values.dir === !values.kubernetes) throw new ConfigError('ca init: choose one of --dir DIR or --kubernetes');
    if (values.dir && existsSync(path.join(values.dir, 'ca.key')) && !values.force) {
      throw new ConfigError(`ca init: ${values.dir}/ca.key exists; a new CA would make every issued certificate untrusted (--force to replace it)`);
    }
    const ca = await createCa(trustDomain);
    if (values.dir) {
      writeCaDir(values.dir, ca);
      process.stdout.write(`mesh CA for ${trustDomain} written to ${values.dir}/ca.crt and ${values.dir}/ca.key (valid until ${notAfter(ca.cert).toISOString()})\n`);
      return 0;
    }
    const namespace = values.namespace ?? 'mesh-xds';
    const { createCaSecret } = await import('./portforward.js');
    const created = await createCaSecret(namespace, CA_SECRET, ca, values.force!);
    process.stdout.write(created ? `mesh CA for ${trustDomain} stored in Secret ${namespace}/${CA_SECRET}\n` : `Secret ${namespace}/${CA_SECRET} exists; kept (--force to replace it)\n`);
    return 0;
  }

  const need = (flag: string, v: string | undefined): string => {
    if (!v) throw new ConfigError(`ca issue: --${flag} is required`);
    return v;
  };
  const namespace = need('namespace', values.namespace);
  const serviceAccount = need('service-account', values['service-account']);
  if (!isDnsLabel(namespace)) throw new ConfigError(`--namespace ${namespace}: not a Kubernetes namespace name`);
  if (!isObjectName(serviceAccount)) throw new ConfigError(`--service-account ${serviceAccount}: not a Kubernetes name`);
  if (values.kubernetes) {
    const { readCaSecret, writeTlsSecret } = await import('./portforward.js');
    const ca = await readCaSecret(values['ca-namespace']!, CA_SECRET);
    const bundle = await issue(ca, { trustDomain, namespace, serviceAccount, ttlMs: ttlOf(values.ttl!), server: values.server ? { dnsNames: values.dns! } : undefined });
    // With the SDS files through which an injected sidecar reads it (src/inject/template.ts).
    await writeTlsSecret(namespace, identitySecret(serviceAccount), bundle, identitySdsFiles({ controlPlaneNamespace: values['ca-namespace']!, trustDomain }));
    process.stdout.write(`${spiffeId(trustDomain, namespace, serviceAccount)}: Secret ${namespace}/${identitySecret(serviceAccount)} (valid until ${notAfter(bundle.cert).toISOString()})\n`);
    return 0;
  }
  const ca = readCaDir(need('ca-dir', values['ca-dir']));
  const out = need('out', values.out);
  const bundle = await issue(ca, { trustDomain, namespace, serviceAccount, ttlMs: ttlOf(values.ttl!), server: values.server ? { dnsNames: values.dns! } : undefined });
  writeTlsDir(out, bundle);
  process.stdout.write(`${spiffeId(trustDomain, namespace, serviceAccount)}: ${out}/tls.crt, tls.key, ca.crt (valid until ${notAfter(bundle.cert).toISOString()})\n`);
  return 0;
}
