"""A proxyless gRPC C-core client (Debian's python3-grpcio): calls TARGET N times over xDS, prints the codes.

Bootstrap from GRPC_XDS_BOOTSTRAP_CONFIG. Used by test/e2e-ccore.test.ts; not part of the product."""
import sys

import grpc

target, count = sys.argv[1], int(sys.argv[2])
channel = grpc.insecure_channel(target)
call = channel.unary_unary('/meshxds.test.Echo/Call', request_serializer=None, response_deserializer=None)
for _ in range(count):
    try:
        call(b'hi', timeout=10)
        print('OK', flush=True)
    except grpc.RpcError as e:
        print(e.code().name, flush=True)
channel.close()
