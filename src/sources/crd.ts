/**
 * The Retry CRD's own openAPIV3Schema (deploy/crds/), compiled with ajv: the folder source checks Retry
 * objects against exactly what the API server would, before the semantic checks.
 */
import { readFileSync } from 'node:fs';
import { Ajv, type ErrorObject } from 'ajv';
import { parse } from 'yaml';
import { packagePath } from '../paths.js';

const RETRY_CRD = 'retries.policy.flomesh.io.yaml';

export interface SchemaProblem {
  readonly field: string;
  readonly message: string;
}

export type RetrySchemaCheck = (object: unknown) => SchemaProblem[];


function fieldOf(e: ErrorObject): string {
  const base = e.instancePath.replace(/^\//, '').replace(/\/(\d+)(?=\/|$)/g, '[$1]').replace(/\//g, '.');
  const missing = String((e.params as { missingProperty?: unknown }).missingProperty);
  if (e.keyword === 'required') return base ? `${base}.${missing}` : missing;
  return base || '(root)';
}

/** Loads the Retry CRD schema (for the served version) and returns a checker. */
export function loadRetrySchema(file = packagePath('deploy/crds', RETRY_CRD)): RetrySchemaCheck {
  const crd = parse(readFileSync(file, 'utf8')) as { spec: { versions: { name: string; schema: { openAPIV3Schema: object } }[] } };
  const version = crd.spec.versions.find((v) => v.name === 'v1alpha1');
  if (!version) throw new Error(`${file}: no version v1alpha1`);
  const ajv = new Ajv({ strict: false, allErrors: true, validateFormats: false });
  const validate = ajv.compile(version.schema.openAPIV3Schema);
  return (object) => {
    if (validate(object)) return [];
    return (validate.errors ?? []).map((e) => ({
      field: fieldOf(e),
      message: e.keyword === 'enum' ? `must be one of ${(e.params as { allowedValues: unknown[] }).allowedValues.join(', ')}` : e.keyword === 'required' ? 'is required' : (e.message ?? 'is invalid'),
    }));
  };
}
