import { describe, expect, it } from 'vitest';
import pino from 'pino';
import { ConfigError, parseServeArgs } from '../src/config.js';
import { StartError, serve } from '../src/main.js';
import { DEMO } from './helpers/demo.js';
import { cpSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { tempDir } from './helpers/tmp.js';

describe('serve flags', () => {
  it('defaults to the documented addresses and mesh name', () => {
    // Plaintext: loopback only (see test/mtls.test.ts for mTLS, where all addresses are the default).
    expect(parseServeArgs(['--manifests', 'deploy/demo'], {})).toMatchObject({
      adsAddress: '127.0.0.1:15128',
      debugAddress: '127.0.0.1:9091',
      meshName: 'mesh-xds',
      overrides: {},
    });
  });

  it('takes --set like the guide\'s install --set', () => {
    expect(parseServeArgs(['--manifests', 'd', '--set', 'featureFlags.enableRetryPolicy=true'], {}).overrides).toEqual({ enableRetryPolicy: true });
    expect(() => parseServeArgs(['--manifests', 'd', '--set', 'featureFlags.nope=true'], {})).toThrow(ConfigError);
  });

  it('refuses what it cannot do, saying why', () => {
    expect(() => parseServeArgs([], {})).toThrow(/choose one source: --manifests DIR or --kubernetes/);
    expect(() => parseServeArgs(['--manifests', 'd', '--set', 'traffic.enablePermissiveTrafficPolicyMode=false'], {})).toThrow(/not supported: mesh-xds has no access-control/);
    expect(() => parseServeArgs(['--manifests', 'd', '--ads-address', 'nowhere'], {})).toThrow(/expected HOST:PORT/);
  });

  it('refuses to start on a mesh config that turns permissive mode off', async () => {
    const dir = tempDir('mesh-xds-cfg-');
    cpSync(DEMO, dir, { recursive: true });
    const mesh = path.join(dir, 'mesh.yaml');
    writeFileSync(mesh, readFileSync(mesh, 'utf8').replace('enablePermissiveTrafficPolicyMode: true', 'enablePermissiveTrafficPolicyMode: false'));
    const cfg = { ...parseServeArgs(['--manifests', dir, '--ads-address', '127.0.0.1:0', '--debug-address', '127.0.0.1:0'], {}), logLevel: 'silent' };
    await expect(serve(cfg, pino({ level: 'silent' }))).rejects.toThrow(StartError);
  });
});
