/** ClusterLoadAssignments for EDS clusters. */
import type { PortIR } from '../compile/ir.js';
import type { ClusterLoadAssignment } from './types.js';

export function clusterLoadAssignment(port: PortIR): ClusterLoadAssignment {
  return {
    cluster_name: port.cluster,
    endpoints: port.endpoints.length
      ? [
          {
            // gRPC clients drop localities without a weight, and NACK endpoints without a locality.
            locality: {},
            load_balancing_weight: { value: 1 },
            lb_endpoints: port.endpoints.map((e) => ({
              endpoint: { address: { socket_address: { address: e.ip, port_value: e.port } } },
              health_status: 'HEALTHY',
            })),
          },
        ]
      : [],
  };
}
