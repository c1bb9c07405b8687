/** What every source of the mesh is to the rest of the control plane. */
import type { MeshState } from '../model/mesh.js';

export interface MeshSource {
  /** Lists once (synced) and returns the first mesh; then calls its onChange with every new one. */
  start(): Promise<MeshState> | MeshState;
  stop(): void | Promise<void>;
  /** What it holds and how it fares, for /debug/mesh. */
  info?(): Record<string, unknown>;
}
