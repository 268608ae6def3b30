"""Every algorithm on the 3-master cluster: hit, peek, reset and hit_all, sync and asyncio.

The limiter runs with ``fallback="raise"``, so any CROSSSLOT, MOVED or other cluster error would
fail the test rather than be hidden by a fallback; the state is then checked on the raw nodes.
"""

from __future__ import annotations

import pytest

import sluicegate
from tests.cluster._support import command_calls, keys_on_masters, raw_state, ttls_ms
from tests.redis_cluster import Cluster

pytestmark = [pytest.mark.redis, pytest.mark.redis_cluster]

ALGORITHMS = ["gcra", "sliding-log", "sliding-window", "fixed-window"]


@pytest.fixture
def cluster(redis_cluster: Cluster) -> Cluster:
    redis_cluster.flush()
    return redis_cluster


def _policy(algorithm: str) -> sluicegate.Policy:
    return sluicegate.Policy(3, 3600.0, algorithm=algorithm)  # nothing drains during the test


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_every_algorithm_on_the_cluster(cluster: Cluster, algorithm: str) -> None:
    policy = _policy(algorithm)
    placed = keys_on_masters(cluster, policy, "user")
    with sluicegate.Limiter(cluster.url, timeout=2.0, fallback="raise", registry=None) as limiter:
        for key, master in placed:
            assert [limiter.hit(key, policy).allowed for _ in range(4)] == [True, True, True, False]
            assert not limiter.peek(key, policy).allowed
            kinds = [kind for kind, _ in raw_state(master, key, policy)]
            assert "none" not in kinds, "the state lives on the slot's master"
            assert all(ttl > 0 for ttl in ttls_ms(master, key, policy))
            limiter.reset(key, policy)
            assert {kind for kind, _ in raw_state(master, key, policy)} == {"none"}
            assert limiter.peek(key, policy).remaining == 2  # as if hit: 3 - 1
        # One hit_all over a key on each master: allowed everywhere, consumed everywhere.
        decision = limiter.hit_all([(key, policy, 2) for key, _ in placed])
        assert decision.allowed
        assert [d.remaining for d in decision.results] == [1, 1, 1]
        assert [limiter.peek(key, policy).remaining for key, _ in placed] == [0, 0, 0]


@pytest.mark.parametrize("algorithm", ALGORITHMS)
async def test_every_algorithm_on_the_cluster_async(cluster: Cluster, algorithm: str) -> None:
    policy = _policy(algorithm)
    placed = keys_on_masters(cluster, policy, "async")
    async with sluicegate.AsyncLimiter(cluster.url, timeout=2.0, fallback="raise", registry=None) as limiter:
        for key, _ in placed:
            assert [(await limiter.hit(key, policy)).allowed for _ in range(4)] == [True, True, True, False]
            await limiter.reset(key, policy)
            assert (await limiter.peek(key, policy, cost=3)).allowed
        decision = await limiter.hit_all([(key, policy, 3) for key, _ in placed])
        assert decision.allowed
        assert not (await limiter.hit_all([(key, policy) for key, _ in placed])).allowed


def test_one_users_policies_are_one_atomic_call(cluster: Cluster) -> None:
    """Several policies of one user key share its hash tag: one script call on one node."""
    policies = [_policy(algorithm) for algorithm in ALGORITHMS]
    (key, master), *_ = keys_on_masters(cluster, policies[0], "one")
    with sluicegate.Limiter(cluster.url, timeout=2.0, fallback="raise", registry=None) as limiter:
        assert limiter.hit_all([(key, policy) for policy in policies]).allowed
    for policy in policies:
        assert "none" not in {kind for kind, _ in raw_state(master, key, policy)}
    # One EVALSHA, plus one EVAL only if this node had not cached the script yet.
    assert command_calls(master, "evalsha") == 1
    assert command_calls(master, "eval") <= 1
