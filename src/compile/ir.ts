/** The mesh IR: validated, resolved, sorted; what the Envoy builders read. Serializable (debug endpoint). */
import type { RetrySpec, Problem } from '../policy/retry.js';
import type { RetryBudget } from '../model/mesh.js';
import type { PortRoutesIR, RouteReport } from './routes.js';

export type PortProtocol = 'http' | 'tcp';

export interface Endpoint {
  readonly ip: string;
  readonly port: number;
}

export interface PortIR {
  readonly name?: string;
  readonly port: number;
  /** The port clients connect to: the service port, or for a headless service the pod's (target) port. */
  readonly dialPort: number;
  /** Resolved numeric target port. */
  readonly targetPort: number;
  readonly protocol: PortProtocol;
  /** The upstream speaks HTTP/2 only (appProtocol grpc, http2, h2c). */
  readonly http2: boolean;
  /** `<ns>/<svc>|<targetPort>`: Envoy cluster and ClusterLoadAssignment name. */
  readonly cluster: string;
  /** Ready endpoints, sorted. */
  readonly endpoints: readonly Endpoint[];
}

export interface ServiceIR {
  readonly namespace: string;
  readonly name: string;
  /** `<name>.<namespace>.svc.cluster.local` */
  readonly host: string;
  readonly clusterIP?: string;
  readonly headless: boolean;
  readonly ports: readonly PortIR[];
}

export type PolicyState = 'Accepted' | 'Invalid' | 'Ignored' | 'Conflicted';

export interface PolicyReport {
  readonly namespace: string;
  readonly name: string;
  readonly generation?: number;
  readonly state: PolicyState;
  /** One-line reason, for the status condition and tables. */
  readonly reason: string;
  /** Every problem (Invalid), or notes (skipped destinations, lost conflicts, missing objects). */
  readonly messages: readonly string[];
  readonly problems: readonly Problem[];
  /** Source identity `ns/sa` and Service destinations `ns/name` as written (as far as they can be read). */
  readonly declared: { readonly source?: string; readonly destinations: readonly string[] };
  /** For accepted and conflicted policies: the source identity. */
  readonly source?: string;
  /** For accepted policies: the destinations it won. */
  readonly appliesTo: readonly string[];
  readonly origin?: { file?: string; doc?: number; line?: number };
  /**
   * Accepted, yet worth a look, each under the status condition that carries it: `RetryAmplification` (a call path
   * over the mesh's bound) or `Pitfall` (a setting that cannot do what it seems to).
   */
  readonly warnings?: readonly PolicyWarning[];
}

export interface PolicyWarning {
  readonly condition: 'RetryAmplification' | 'Pitfall';
  readonly message: string;
}

export interface AppliedRetry {
  /** `<ns>/<name>` of the winning Retry. */
  readonly policy: string;
  readonly spec: RetrySpec;
}

export interface Diagnostic {
  readonly object: string;
  readonly message: string;
}

/** A service port by reference: the service `ns/name` and its port number. */
export interface PortRef {
  readonly service: string;
  readonly port: number;
}

/**
 * The mesh, compiled. Plain data (no Maps, no shared references: ports are named by PortRef), so it prints as
 * JSON as it is (golden `ir.json`, /debug/mesh).
 */
export interface MeshIR {
  readonly meshName: string;
  readonly enableRetryPolicy: boolean;
  /** The retry budget of every destination cluster (null: none). */
  readonly retryBudget: RetryBudget | null;
  /** Services of mesh namespaces, sorted by namespace/name. */
  readonly services: readonly ServiceIR[];
  /** Identities (`ns/sa`) known in mesh namespaces, sorted. */
  readonly identities: readonly string[];
  /** Identity -> destination service `ns/name` -> the Retry that applies. */
  readonly retries: Readonly<Record<string, Readonly<Record<string, AppliedRetry>>>>;
  /**
   * Gateway API mesh routes by service port (`ns/name:port`): the producer routes' rules and each consumer
   * namespace's, in precedence order (compile/routes.ts). compile/features.ts decides what a caller gets.
   */
  readonly routes: Readonly<Record<string, PortRoutesIR>>;
  /** Identity -> the service ports its pods back (for the inbound listener), sorted. */
  readonly backing: Readonly<Record<string, readonly PortRef[]>>;
  readonly policies: readonly PolicyReport[];
  /** Every HTTPRoute and GRPCRoute with a Service parent: its status per parent. */
  readonly routeReports: readonly RouteReport[];
  readonly diagnostics: readonly Diagnostic[];
}
