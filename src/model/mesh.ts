/**
 * Plain data of the mesh as the sources see it: what Kubernetes (or a folder of manifests) says, reduced to
 * what translation needs. Immutable by convention: sources build a new MeshState, nothing mutates one.
 */

export interface Ref {
  readonly namespace: string;
  readonly name: string;
}

/** Where an object came from, for messages: a file and document index, or a Kubernetes object. */
export interface Origin {
  readonly file?: string;
  readonly doc?: number;
  readonly line?: number;
  /** Lines of the object's fields (`spec.retryPolicy.retryOn` -> 17), where it was read from a file. */
  readonly fieldLines?: Readonly<Record<string, number>>;
}

export interface Namespace {
  readonly name: string;
  readonly labels: Readonly<Record<string, string>>;
}

export interface ServicePort {
  readonly name?: string;
  readonly port: number;
  /** Number, or the name of a container port. */
  readonly targetPort: number | string;
  readonly protocol: string;
  readonly appProtocol?: string;
}

export interface Service extends Ref {
  /** A ClusterIP, or undefined for a headless service (`clusterIP: None`). */
  readonly clusterIP?: string;
  readonly ports: readonly ServicePort[];
  readonly selector?: Readonly<Record<string, string>>;
}

export interface EndpointAddress {
  readonly ip: string;
  readonly ready: boolean;
  /** The pod behind the address, if known. */
  readonly pod?: Ref;
}

/** One EndpointSlice (or the equivalent of an Endpoints subset). */
export interface EndpointSlice extends Ref {
  /** The Service it belongs to (`kubernetes.io/service-name`). */
  readonly service: string;
  readonly ports: readonly { readonly name?: string; readonly port: number; readonly protocol: string }[];
  readonly addresses: readonly EndpointAddress[];
}

export interface Pod extends Ref {
  readonly serviceAccount: string;
  readonly ip?: string;
  readonly labels: Readonly<Record<string, string>>;
  /** Container ports by name, to resolve named targetPorts. */
  readonly namedPorts: Readonly<Record<string, number>>;
  readonly ready: boolean;
  /**
   * A pod the injector leaves without a sidecar though its namespace is in the mesh (annotation
   * `flomesh.io/sidecar-injection: disabled`, or hostNetwork): it neither retries nor speaks mTLS.
   */
  readonly noSidecar?: true;
}

export type ServiceAccount = Ref;

export interface RetryObject extends Ref {
  readonly creationTimestamp?: string;
  readonly generation?: number;
  readonly uid?: string;
  /** The spec exactly as written: policy/retry.ts validates it. */
  readonly spec: unknown;
  readonly origin?: Origin;
}

/** The Gateway API's route kinds a mesh takes (GAMMA: parents that are Services). */
export const ROUTE_KINDS = ['HTTPRoute', 'GRPCRoute'] as const;
export type RouteKind = (typeof ROUTE_KINDS)[number];
export const GATEWAY_API_VERSION = 'gateway.networking.k8s.io/v1';

/** An HTTPRoute or GRPCRoute as written: compile/routes.ts validates it and finds its Service parents. */
export interface RouteObject extends Ref {
  readonly kind: RouteKind;
  readonly creationTimestamp?: string;
  readonly generation?: number;
  readonly uid?: string;
  /** The spec exactly as written. */
  readonly spec: unknown;
  readonly origin?: Origin;
}

export interface MeshConfig {
  readonly enableRetryPolicy: boolean;
  readonly enablePermissiveTrafficPolicyMode: boolean;
  /**
   * A Retry on a call path whose worst case is more attempts than this at one service gets a warning in its status
   * (mesh-xds's own; `serve --max-retry-amplification`).
   */
  readonly maxRetryAmplification: number;
  /**
   * The retry budget of every destination cluster (Envoy's circuit-breaker `retry_budget`), or null for none (the
   * mesh's own: `spec.traffic.retryBudget` of the MeshConfig).
   */
  readonly retryBudget: RetryBudget | null;
  /**
   * How often injected sidecars flush their counters to the control plane (Envoy's `stats_flush_interval`), in
   * seconds, 1 to 60 (mesh-xds's own: `spec.observability.statsFlushInterval`; a pod takes it when injected).
   */
  readonly statsFlushSeconds: number;
}

/** Envoy's own default flush interval, and the bounds of the MeshConfig field. */
export const STATS_FLUSH = { defaultSeconds: 5, minSeconds: 1, maxSeconds: 60 } as const;

/** Retries in flight to a cluster may be at most `budgetPercent` of its active requests, and always `minRetryConcurrency`. */
export interface RetryBudget {
  readonly budgetPercent: number;
  readonly minRetryConcurrency: number;
}

/**
 * Envoy's own defaults for a retry budget (and Linkerd's percentage): retries may add a fifth to the load, never
 * fewer than 3 at once. A storm is exactly retries outgrowing the requests; a single request's retries (one in
 * flight at a time) always fit under the floor, so the guide's numbers do not move.
 */
export const DEFAULT_RETRY_BUDGET: RetryBudget = { budgetPercent: 20, minRetryConcurrency: 3 };

/**
 * 10 attempts: one hop of up to 9 retries stays under it (the guide's 5 gives 6), while any two hops of 3 retries
 * stacked (16) or a single hop of 10 and more cross it: the stacking that turns a slow service into a retry storm.
 */
export const DEFAULT_MAX_RETRY_AMPLIFICATION = 10;

export const DEFAULT_MESH_CONFIG: MeshConfig = {
  enableRetryPolicy: false,
  enablePermissiveTrafficPolicyMode: true,
  maxRetryAmplification: DEFAULT_MAX_RETRY_AMPLIFICATION,
  retryBudget: DEFAULT_RETRY_BUDGET,
  statsFlushSeconds: STATS_FLUSH.defaultSeconds,
};

export const MONITORED_BY_LABEL = 'flomesh.io/monitored-by';

export interface MeshState {
  readonly meshName: string;
  readonly meshConfig: MeshConfig;
  readonly namespaces: readonly Namespace[];
  readonly services: readonly Service[];
  readonly endpointSlices: readonly EndpointSlice[];
  readonly pods: readonly Pod[];
  readonly serviceAccounts: readonly ServiceAccount[];
  readonly retries: readonly RetryObject[];
  /** Gateway API HTTPRoutes and GRPCRoutes. */
  readonly routes: readonly RouteObject[];
}

export function refKey(r: Ref): string {
  return `${r.namespace}/${r.name}`;
}

export function byRef<T extends Ref>(a: T, b: T): number {
  return a.namespace < b.namespace ? -1 : a.namespace > b.namespace ? 1 : a.name < b.name ? -1 : a.name > b.name ? 1 : 0;
}

/** The line of a field in its file, or of its nearest ancestor that is written there (a missing field). */
export function lineOfField(origin: Origin | undefined, field: string): number | undefined {
  const lines = origin?.fieldLines;
  if (!lines) return origin?.line;
  for (let f = field; f; f = f.replace(/(\.[^.[\]]*|\[\d+\])$/, '')) {
    if (lines[f] !== undefined) return lines[f];
    if (!/[.[]/.test(f)) break;
  }
  return origin?.line;
}
