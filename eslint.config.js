import js from '@eslint/js';
import tseslint from 'typescript-eslint';

// Pure layers (translation, policy, model, envoy builders) must not do I/O or logging.
const pureLayers = ['src/compile/**', 'src/envoy/**', 'src/policy/**', 'src/model/**', 'src/pipeline/build.ts'];
const forbiddenInPure = [
  { name: '@grpc/grpc-js', message: 'pure layers must not use gRPC' },
  { name: '@kubernetes/client-node', message: 'pure layers must not use the Kubernetes client' },
  { name: 'pino', message: 'pure layers return diagnostics; log only at the edges' },
  { name: 'node:fs', message: 'pure layers must not do I/O' },
  { name: 'fs', message: 'pure layers must not do I/O' },
  { name: 'node:fs/promises', message: 'pure layers must not do I/O' },
  { name: 'node:net', message: 'pure layers must not do I/O' },
  { name: 'node:http', message: 'pure layers must not do I/O' },
];

export default tseslint.config(
  { ignores: ['dist/**', 'dist-dev/**', 'node_modules/**', 'bin/**', '.cache/**'] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    rules: {
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }],
      '@typescript-eslint/no-explicit-any': 'error',
    },
  },
  {
    // The product has no `any` (untrusted data is `unknown`, narrowed: src/model/plain.ts); tests, benchmarks and the
    // sandbox read JSON answers and config dumps with it.
    files: ['test/**', 'bench/**', 'sandbox/**'],
    rules: { '@typescript-eslint/no-explicit-any': 'off' },
  },
  {
    // The page (/ui): plain JavaScript run by the browser, Cytoscape.js loaded before it.
    files: ['ui/**/*.js'],
    languageOptions: {
      sourceType: 'script',
      globals: { window: 'readonly', document: 'readonly', fetch: 'readonly', EventSource: 'readonly', Node: 'readonly', performance: 'readonly', setTimeout: 'readonly', clearTimeout: 'readonly', requestAnimationFrame: 'readonly', cytoscape: 'readonly' },
    },
  },
  {
    // Plain JavaScript run by node directly (test apps in the sandbox's pods).
    files: ['**/*.mjs'],
    languageOptions: { globals: { process: 'readonly', console: 'readonly', Buffer: 'readonly' } },
  },
  {
    files: pureLayers,
    rules: { 'no-restricted-imports': ['error', { paths: forbiddenInPure }] },
  },
  {
    // Inputs apart from outputs: a source reads the world into the model; what is written back lives in outputs/.
    files: ['src/sources/**'],
    rules: {
      'no-restricted-imports': [
        'error',
        { patterns: [{ group: ['**/compile/*', '**/outputs/*', '**/pipeline/*', '**/xds/**'], message: 'a source reads inputs into the model only: it never sees the IR, the pipeline or what is written back' }] },
      ],
    },
  },
);
