"""One adapter per contender: ``sync(limit, period)`` and ``async_(limit, period)`` build a
decision function ``key -> allowed`` on the given Redis URL, with ``limit`` per ``period`` seconds
(burst = limit where the algorithm has one). Every adapter uses its library's recommended Redis
backend, with redis-py and hiredis underneath where the library allows a choice.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import redis
import redis.asyncio

import sluicegate

SyncHit = Callable[[str], bool]
AsyncHit = Callable[[str], Awaitable[bool]]
Closer = Callable[[], Any]

#: The raw floor: the least a Redis-backed decision can cost, one EVALSHA of a trivial script.
FLOOR_SCRIPT = "local n = redis.call('INCR', KEYS[1])\nreturn n"


@dataclass(frozen=True)
class Peer:
    name: str
    algorithm: str
    sync: Callable[[str, int, float], tuple[SyncHit, Closer]]
    async_: Callable[[str, int, float], Awaitable[tuple[AsyncHit, Closer]]]
    exact: bool = True  # admits exactly `limit` in one period under contention


# --- raw floor ----------------------------------------------------------------------------------


def _raw_sync(url: str, limit: int, period: float) -> tuple[SyncHit, Closer]:
    client = redis.Redis.from_url(url)
    sha = client.script_load(FLOOR_SCRIPT)

    def hit(key: str) -> bool:
        return int(client.evalsha(sha, 1, "raw:" + key)) <= limit

    return hit, client.close


async def _raw_async(url: str, limit: int, period: float) -> tuple[AsyncHit, Closer]:
    client = redis.asyncio.Redis.from_url(url, max_connections=64)
    sha = await client.script_load(FLOOR_SCRIPT)

    async def hit(key: str) -> bool:
        return int(await client.evalsha(sha, 1, "raw:" + key)) <= limit

    return hit, client.aclose


# --- sluicegate -----------------------------------------------------------------------------------


def _sg_sync(url: str, limit: int, period: float) -> tuple[SyncHit, Closer]:
    limiter = sluicegate.Limiter(url, timeout=2.0, registry=None)
    policy = sluicegate.Policy(limit, period)

    def hit(key: str) -> bool:
        return limiter.hit(key, policy).allowed

    return hit, limiter.close


async def _sg_async(url: str, limit: int, period: float) -> tuple[AsyncHit, Closer]:
    limiter = sluicegate.AsyncLimiter(url, timeout=2.0, registry=None)
    policy = sluicegate.Policy(limit, period)

    async def hit(key: str) -> bool:
        return (await limiter.hit(key, policy)).allowed

    return hit, limiter.aclose


# --- limits -------------------------------------------------------------------------------------


def _limits_item(limit: int, period: float) -> Any:
    import limits

    return limits.RateLimitItemPerSecond(limit, round(period))


def _limits_sync(strategy: str) -> Callable[[str, int, float], tuple[SyncHit, Closer]]:
    def build(url: str, limit: int, period: float) -> tuple[SyncHit, Closer]:
        import limits.storage
        import limits.strategies

        storage = limits.storage.RedisStorage(url)
        cls = {
            "moving-window": limits.strategies.MovingWindowRateLimiter,
            "sliding-window-counter": limits.strategies.SlidingWindowCounterRateLimiter,
        }[strategy]
        limiter = cls(storage)
        item = _limits_item(limit, period)

        def hit(key: str) -> bool:
            return limiter.hit(item, strategy, key)

        return hit, lambda: None

    return build


def _limits_async(strategy: str) -> Callable[[str, int, float], Awaitable[tuple[AsyncHit, Closer]]]:
    async def build(url: str, limit: int, period: float) -> tuple[AsyncHit, Closer]:
        import limits.aio.storage
        import limits.aio.strategies

        storage = limits.aio.storage.RedisStorage("async+" + url, implementation="redispy", max_connections=64)
        cls = {
            "moving-window": limits.aio.strategies.MovingWindowRateLimiter,
            "sliding-window-counter": limits.aio.strategies.SlidingWindowCounterRateLimiter,
        }[strategy]
        limiter = cls(storage)
        item = _limits_item(limit, period)

        async def hit(key: str) -> bool:
            return await limiter.hit(item, strategy, key)

        return hit, lambda: None

    return build


# --- pyrate-limiter -----------------------------------------------------------------------------


def _pyrate_factory(client: Any, sha: str, limit: int, period: float) -> Any:
    """A Limiter with one RedisBucket (one ZSET) per key, as the README's multi-key recipe does;
    buckets share the loaded script. Leaking is left to Redis (the benchmark flushes between runs)."""
    from pyrate_limiter import BucketFactory, Duration, Limiter, Rate, RateItem
    from pyrate_limiter.buckets.redis_bucket import RedisBucket

    rates = [Rate(limit, Duration.SECOND * round(period))]
    buckets: dict[str, RedisBucket] = {}

    class PerKey(BucketFactory):
        def wrap_item(self, name: str, weight: int = 1) -> RateItem:
            return RateItem(name, time.time_ns() // 1_000_000, weight=weight)  # RedisBucket.now

        def get(self, item: RateItem) -> RedisBucket:
            bucket = buckets.get(item.name)
            if bucket is None:
                bucket = buckets[item.name] = RedisBucket(rates, client, "pyrate:" + item.name, sha)
            return bucket

    return Limiter(PerKey())


def _pyrate_sync(url: str, limit: int, period: float) -> tuple[SyncHit, Closer]:
    from pyrate_limiter.buckets.redis_bucket import LuaScript

    client = redis.Redis.from_url(url)
    limiter = _pyrate_factory(client, client.script_load(LuaScript.PUT_ITEM), limit, period)

    def hit(key: str) -> bool:
        return bool(limiter.try_acquire(key, blocking=False))

    return hit, client.close


async def _pyrate_async(url: str, limit: int, period: float) -> tuple[AsyncHit, Closer]:
    from pyrate_limiter.buckets.redis_bucket import LuaScript

    client = redis.asyncio.Redis.from_url(url, max_connections=64)
    limiter = _pyrate_factory(client, await client.script_load(LuaScript.PUT_ITEM), limit, period)

    async def hit(key: str) -> bool:
        return bool(await limiter.try_acquire_async(key, blocking=False))

    return hit, client.aclose


# --- throttled-py -------------------------------------------------------------------------------


def _throttled_sync(url: str, limit: int, period: float) -> tuple[SyncHit, Closer]:
    import throttled

    store = throttled.RedisStore(server=url)
    quota = throttled.per_duration(timedelta(seconds=period), limit, limit)
    limiter = throttled.Throttled(using=throttled.RateLimiterType.GCRA.value, quota=quota, store=store)

    def hit(key: str) -> bool:
        return not limiter.limit(key).limited

    return hit, lambda: None


async def _throttled_async(url: str, limit: int, period: float) -> tuple[AsyncHit, Closer]:
    import throttled
    import throttled.asyncio

    store = throttled.asyncio.RedisStore(server=url, options={"MAX_CONNECTIONS": 64})
    quota = throttled.per_duration(timedelta(seconds=period), limit, limit)
    limiter = throttled.asyncio.Throttled(using=throttled.RateLimiterType.GCRA.value, quota=quota, store=store)

    async def hit(key: str) -> bool:
        return not (await limiter.limit(key)).limited

    return hit, lambda: None


PEERS = [
    Peer("raw floor", "EVALSHA INCR", _raw_sync, _raw_async),
    Peer("sluicegate", "gcra", _sg_sync, _sg_async),
    Peer("limits", "moving-window", _limits_sync("moving-window"), _limits_async("moving-window")),
    Peer(
        "limits",
        "sliding-window-counter",
        _limits_sync("sliding-window-counter"),
        _limits_async("sliding-window-counter"),
    ),
    Peer("pyrate-limiter", "redis zset log", _pyrate_sync, _pyrate_async),
    Peer("throttled-py", "gcra", _throttled_sync, _throttled_async),
]


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for dist in ("sluicegate", "limits", "pyrate-limiter", "throttled-py", "redis", "hiredis", "matplotlib"):
        with contextlib.suppress(PackageNotFoundError):
            out[dist] = version(dist)
    return out
