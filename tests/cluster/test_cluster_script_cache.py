"""``SCRIPT FLUSH`` on every node costs each master one ``NOSCRIPT`` and one ``EVAL``, no error.

Scripts live in each node's own cache (a promoted replica starts without them), so the store
must recover per node: the ``EVALSHA`` goes to the slot's master, the node answers ``NOSCRIPT`` (the
script did not run), and the store sends that node one ``EVAL``.
"""

from __future__ import annotations

import pytest

import sluicegate
from tests.cluster._support import command_calls, keys_on_masters
from tests.redis_cluster import Cluster
from tests.redis_server import RedisServer

pytestmark = [pytest.mark.redis, pytest.mark.redis_cluster]

POLICY = sluicegate.Policy(1000, 60.0, algorithm="sliding-log")
ROUNDS = 5


def _flush_scripts(cluster: Cluster) -> None:
    for server in cluster.live():
        with server.client() as client:
            client.script_flush()
            client.config_resetstat()


def _expect_one_reload_per_master(cluster: Cluster, placed: list[tuple[str, RedisServer]]) -> None:
    for _, master in placed:
        assert {
            "evalsha": command_calls(master, "evalsha"),
            "noscript": command_calls(master, "evalsha", "failed_calls"),
            "eval": command_calls(master, "eval"),
        } == {"evalsha": ROUNDS, "noscript": 1, "eval": 1}


def test_script_flush_on_every_node(redis_cluster: Cluster) -> None:
    redis_cluster.flush()
    placed = keys_on_masters(redis_cluster, POLICY, "flush")
    with sluicegate.Limiter(redis_cluster.url, timeout=2.0, fallback="raise", registry=None) as limiter:
        for key, _ in placed:
            assert limiter.hit(key, POLICY).allowed  # every master has the script cached now
        _flush_scripts(redis_cluster)
        for _ in range(ROUNDS):
            for key, _ in placed:
                assert limiter.hit(key, POLICY).allowed
        _expect_one_reload_per_master(redis_cluster, placed)
        assert [limiter.peek(key, POLICY).remaining for key, _ in placed] == [1000 - ROUNDS - 2] * 3


async def test_script_flush_on_every_node_async(redis_cluster: Cluster) -> None:
    redis_cluster.flush()
    placed = keys_on_masters(redis_cluster, POLICY, "aflush")
    async with sluicegate.AsyncLimiter(redis_cluster.url, timeout=2.0, fallback="raise", registry=None) as limiter:
        for key, _ in placed:
            assert (await limiter.hit(key, POLICY)).allowed
        _flush_scripts(redis_cluster)
        for _ in range(ROUNDS):
            decision = await limiter.hit_all([(key, POLICY) for key, _ in placed])  # one call per slot
            assert decision.allowed
    _expect_one_reload_per_master(redis_cluster, placed)
