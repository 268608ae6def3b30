"""Losing the script cache is never an error: after ``SCRIPT FLUSH`` or a server restart the
next decision sends ``EVALSHA``, gets ``NOSCRIPT``, and sends one ``EVAL``: exactly one extra
round trip, after which ``EVALSHA`` works again.

How Redis 7.0 counts that in ``INFO commandstats``: the ``NOSCRIPT`` reply comes from inside
the ``EVALSHA`` command, so it is a *failed* call, not a *rejected* one: ``cmdstat_evalsha``
shows ``calls=1, failed_calls=1, rejected_calls=0`` (rejected calls, e.g. a wrong number of
arguments, would not be counted in ``calls`` at all). The tests assert exactly that.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import sluicegate
from sluicegate._lua import DECIDE_SHA
from tests.redis._support import command_stat

pytestmark = pytest.mark.redis

POLICY = "10/hour"
OPERATIONS = ["hit", "peek", "hit_all"]


def _decide(limiter: sluicegate.Limiter, operation: str, key: str) -> sluicegate.Decision:
    if operation == "hit_all":
        return limiter.hit_all([(key, POLICY), (f"{key}:other", f"{POLICY} algorithm sliding-log")])
    return getattr(limiter, operation)(key, POLICY)  # type: ignore[no-any-return]


async def _adecide(limiter: sluicegate.AsyncLimiter, operation: str, key: str) -> sluicegate.Decision:
    if operation == "hit_all":
        return await limiter.hit_all([(key, POLICY), (f"{key}:other", f"{POLICY} algorithm sliding-log")])
    return await getattr(limiter, operation)(key, POLICY)  # type: ignore[no-any-return]


def _script_calls(client: Any) -> dict[str, int]:
    stats = client.info("commandstats")
    return {
        "evalsha": command_stat(stats, "evalsha"),
        "evalsha_failed": command_stat(stats, "evalsha", "failed_calls"),
        "evalsha_rejected": command_stat(stats, "evalsha", "rejected_calls"),
        "eval": command_stat(stats, "eval"),
        "eval_failed": command_stat(stats, "eval", "failed_calls") + command_stat(stats, "eval", "rejected_calls"),
    }


ONE_MISS = {"evalsha": 1, "evalsha_failed": 1, "evalsha_rejected": 0, "eval": 1, "eval_failed": 0}
CACHED_AGAIN = {"evalsha": 2, "evalsha_failed": 1, "evalsha_rejected": 0, "eval": 1, "eval_failed": 0}


@pytest.mark.parametrize("operation", OPERATIONS)
def test_script_flush_costs_one_extra_round_trip(own_redis, operation):
    with sluicegate.Limiter(own_redis.url, timeout=2.0) as limiter, own_redis.client() as client:
        assert limiter.hit("k", POLICY).remaining == 9  # connected, script cached, 1 used
        client.config_resetstat()
        client.script_flush()
        assert client.script_exists(DECIDE_SHA) == [False]

        decision = _decide(limiter, operation, "k")
        assert decision.allowed
        assert not decision.degraded  # decided by Redis, not by the fallback
        assert decision.remaining == 8  # the state survived the flush: the second unit
        assert _script_calls(client) == ONE_MISS
        assert client.script_exists(DECIDE_SHA) == [True]

        assert _decide(limiter, operation, "k").allowed
        assert _script_calls(client) == CACHED_AGAIN


@pytest.mark.parametrize("operation", OPERATIONS)
async def test_script_flush_costs_one_extra_round_trip_async(own_redis, operation):
    async with sluicegate.AsyncLimiter(own_redis.url, timeout=2.0) as limiter:
        with own_redis.client() as client:
            assert (await limiter.hit("k", POLICY)).remaining == 9
            client.config_resetstat()
            client.script_flush()

            decision = await _adecide(limiter, operation, "k")
            assert decision.allowed
            assert not decision.degraded  # decided by Redis, not by the fallback
            assert decision.remaining == 8
            assert _script_calls(client) == ONE_MISS

            assert (await _adecide(limiter, operation, "k")).allowed
            assert _script_calls(client) == CACHED_AGAIN


@pytest.mark.parametrize("operation", OPERATIONS)
def test_decisions_succeed_after_a_restart(own_redis, operation):
    with sluicegate.Limiter(own_redis.url, timeout=2.0) as limiter:
        assert limiter.hit("k", POLICY).remaining == 9
        own_redis.restart()  # empty: no state, no scripts; the pooled connection is dead

        decision = _decide(limiter, operation, "k")
        assert decision.allowed
        assert not decision.degraded  # decided by Redis, not by the fallback
        assert decision.remaining == 9  # the state went with the server
        with own_redis.client() as client:
            assert _script_calls(client) == ONE_MISS
            assert _decide(limiter, operation, "k").allowed
            assert _script_calls(client) == CACHED_AGAIN


@pytest.mark.parametrize("operation", OPERATIONS)
async def test_decisions_succeed_after_a_restart_async(own_redis, operation):
    async with sluicegate.AsyncLimiter(own_redis.url, timeout=2.0) as limiter:
        assert (await limiter.hit("k", POLICY)).remaining == 9
        await asyncio.to_thread(own_redis.restart)  # the event loop keeps running meanwhile

        decision = await _adecide(limiter, operation, "k")
        assert decision.allowed
        assert not decision.degraded  # decided by Redis, not by the fallback
        assert decision.remaining == 9
        with own_redis.client() as client:
            assert _script_calls(client) == ONE_MISS
            assert (await _adecide(limiter, operation, "k")).allowed
            assert _script_calls(client) == CACHED_AGAIN


async def test_a_restart_that_blocked_the_event_loop_costs_one_fallback_decision(own_redis):
    """The same restart, but the event loop is blocked while it happens (a stalled or busy loop),
    so the limiter's next decision runs before the loop has read the pooled connection's EOF and
    goes out on the dead socket. Whether a script whose connection closed mid-call ran is
    unknown, so it is never re-sent: that one decision is the fallback's, honestly marked
    degraded; it is one failure, not a refusal, so the breaker stays closed and the next
    decision is the store's again."""
    async with sluicegate.AsyncLimiter(own_redis.url, timeout=2.0) as limiter:
        assert (await limiter.hit("k", POLICY)).remaining == 9
        own_redis.restart()  # blocks the loop

        first = await limiter.hit("k", POLICY)
        assert first.allowed
        assert first.degraded, "a dead pooled connection was used: the fallback decided"
        decision = await limiter.hit("k", POLICY)
        assert decision.allowed
        assert not decision.degraded, "the breaker opened on one dropped connection"
        assert decision.remaining == 9
        with own_redis.client() as client:
            assert _script_calls(client) == ONE_MISS
