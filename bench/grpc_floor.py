"""The gRPC floors: a ``grpc.aio`` RateLimitService that answers OK to every call without
looking at it, on the event loop ``sluicegate serve`` uses; with a Redis URL, each call first
awaits one ``PING`` through redis-py's asyncio client on that loop. What grpc.aio itself costs
per call on this machine, alone and with one awaited round trip, under the service's load.

    python -m bench.grpc_floor PORT [REDIS_URL]
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import redis.asyncio
from grpc import aio

from sluicegate.service.proto.envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc


class EmptyServicer(rls_pb2_grpc.RateLimitServiceServicer):
    def __init__(self, redis_url: str | None) -> None:
        self.redis = None if redis_url is None else redis.asyncio.Redis.from_url(redis_url)

    async def ShouldRateLimit(self, request: rls_pb2.RateLimitRequest, context: Any) -> rls_pb2.RateLimitResponse:
        if self.redis is not None:
            await self.redis.ping()
        return rls_pb2.RateLimitResponse(overall_code=rls_pb2.RateLimitResponse.OK)


async def serve(port: int, redis_url: str | None) -> None:
    server = aio.server()
    rls_pb2_grpc.add_RateLimitServiceServicer_to_server(EmptyServicer(redis_url), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


def main() -> None:
    port, redis_url = int(sys.argv[1]), (sys.argv[2] if len(sys.argv) > 2 else None)
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(port, redis_url))
    else:
        uvloop.run(serve(port, redis_url))


if __name__ == "__main__":
    main()
