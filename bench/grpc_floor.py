"""The gRPC floor: an empty ``grpc.aio`` RateLimitService that answers OK to every call without
looking at it, on the event loop ``sluicegate serve`` uses. What grpc.aio itself costs per call
on this machine, measured with the same load as the service.

    python -m bench.grpc_floor PORT
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from grpc import aio

from sluicegate.service.proto.envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc


class EmptyServicer(rls_pb2_grpc.RateLimitServiceServicer):
    async def ShouldRateLimit(self, request: rls_pb2.RateLimitRequest, context: Any) -> rls_pb2.RateLimitResponse:
        return rls_pb2.RateLimitResponse(overall_code=rls_pb2.RateLimitResponse.OK)


async def serve(port: int) -> None:
    server = aio.server()
    rls_pb2_grpc.add_RateLimitServiceServicer_to_server(EmptyServicer(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


def main() -> None:
    port = int(sys.argv[1])
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(port))
    else:
        uvloop.run(serve(port))


if __name__ == "__main__":
    main()
