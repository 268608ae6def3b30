"""A timed-out script call is never sent again: it may have run (here it does, late).

The master is frozen for a moment (far shorter than the cluster's node timeout, so no failover
starts): the call times out, the limiter raises ``StoreError`` ``timeout``, and once the master
resumes it runs the request waiting in its socket, exactly once. A client that retried on
timeout would have queued a second copy, which would count the request twice.
"""

from __future__ import annotations

import time

import pytest

import sluicegate
from sluicegate import StoreError
from tests.cluster._support import command_calls, frozen, keys_on_masters
from tests.redis_cluster import Cluster

pytestmark = [pytest.mark.redis, pytest.mark.redis_cluster]

POLICY = sluicegate.Policy(100, 3600.0, algorithm="sliding-log")
TIMEOUT_S = 0.2
MARGIN_S = 0.25


def _reset_stats(cluster: Cluster) -> None:
    for server in cluster.live():
        with server.client() as client:
            client.config_resetstat()


def test_a_timeout_is_not_retried(redis_cluster: Cluster) -> None:
    redis_cluster.flush()
    (key, master), *_ = keys_on_masters(redis_cluster, POLICY, "timeout")
    with sluicegate.Limiter(redis_cluster.url, timeout=TIMEOUT_S, fallback="raise", registry=None) as limiter:
        assert not limiter.hit(key, POLICY).degraded  # the node has the script cached now
        _reset_stats(redis_cluster)
        with frozen(master):
            started = time.monotonic()
            with pytest.raises(StoreError) as raised:
                limiter.hit(key, POLICY)
            elapsed = time.monotonic() - started
        assert raised.value.kind == "timeout"
        assert elapsed <= TIMEOUT_S + MARGIN_S
        assert limiter.hit(key, POLICY).allowed  # served after the late one: the node runs in order
        assert command_calls(master, "evalsha") == 2, "the timed-out call ran once, late; nothing re-sent it"
        assert limiter.peek(key, POLICY).remaining == 100 - 4  # warm-up, the late one, one more, this look


async def test_a_timeout_is_not_retried_async(redis_cluster: Cluster) -> None:
    redis_cluster.flush()
    (key, master), *_ = keys_on_masters(redis_cluster, POLICY, "atimeout")
    async with sluicegate.AsyncLimiter(
        redis_cluster.url, timeout=TIMEOUT_S, fallback="raise", registry=None
    ) as limiter:
        assert not (await limiter.hit(key, POLICY)).degraded
        _reset_stats(redis_cluster)
        with frozen(master):
            started = time.monotonic()
            with pytest.raises(StoreError) as raised:
                await limiter.hit_all([(key, POLICY, 2)])
            elapsed = time.monotonic() - started
        assert raised.value.kind == "timeout"
        assert elapsed <= TIMEOUT_S + MARGIN_S
        assert (await limiter.hit(key, POLICY)).allowed
        assert command_calls(master, "evalsha") == 2, "the timed-out call ran once, late; nothing re-sent it"
        assert (await limiter.peek(key, POLICY)).remaining == 100 - 5
