"""Decisions through Sentinel: the store finds the master the Sentinels name and decides there."""

from __future__ import annotations

import pytest

import sluicegate
from sluicegate import StoreError
from sluicegate._keys import state_keys
from tests.redis_cluster import PASSWORD, Sentinels

pytestmark = [pytest.mark.redis, pytest.mark.redis_sentinel]

ALGORITHMS = ["gcra", "sliding-log", "sliding-window", "fixed-window"]


@pytest.fixture
def sentinel(redis_sentinel: Sentinels) -> Sentinels:
    redis_sentinel.wait_ready()
    redis_sentinel.flush()
    return redis_sentinel


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_decisions_through_sentinel(sentinel: Sentinels, algorithm: str) -> None:
    policy = sluicegate.Policy(3, 3600.0, algorithm=algorithm)
    with sluicegate.Limiter(sentinel.url, timeout=2.0, fallback="raise", registry=None) as limiter:
        assert [limiter.hit("user", policy).allowed for _ in range(4)] == [True, True, True, False]
        assert limiter.hit_all([("a", policy, 2), ("b", policy, 3)]).allowed
        assert not limiter.hit_all([("a", policy, 2), ("b", policy)]).allowed
        assert limiter.peek("a", policy).remaining == 0
        limiter.reset("user", policy)
        assert limiter.peek("user", policy).remaining == 2
    with sentinel.client(sentinel.master()) as client:
        assert client.exists(*state_keys("sluicegate", policy, "a")) > 0, "the state is on the master"


async def test_decisions_through_sentinel_async(sentinel: Sentinels) -> None:
    policy = sluicegate.Policy(2, 3600.0, algorithm="sliding-log")
    async with sluicegate.AsyncLimiter(sentinel.url, timeout=2.0, fallback="raise", registry=None) as limiter:
        assert [(await limiter.hit("user", policy)).allowed for _ in range(3)] == [True, True, False]
        assert not (await limiter.hit_all([("user", policy), ("other", policy)])).allowed
        await limiter.reset("user", policy)
        assert (await limiter.hit("user", policy, cost=2)).allowed


def test_the_database_and_client_name_come_from_the_url(sentinel: Sentinels) -> None:
    policy = sluicegate.Policy(5, 60.0)
    url = f"{sentinel.url}?db=3&client_name=gateway-7"
    with sluicegate.Limiter(url, timeout=2.0, fallback="raise", registry=None) as limiter:
        assert limiter.hit("in-db-3", policy).allowed
        with sentinel.client(sentinel.master()) as client:
            names = [c["name"] for c in client.client_list()]
            assert "gateway-7" in names
            assert client.exists(*state_keys("sluicegate", policy, "in-db-3")) == 0
            client.select(3)
            assert client.exists(*state_keys("sluicegate", policy, "in-db-3")) == 1


@pytest.mark.parametrize("password", ["wrong", None])
def test_a_wrong_master_password_is_a_store_error(sentinel: Sentinels, password: str | None) -> None:
    url = sentinel.url.replace(f":{PASSWORD}@", "" if password is None else f":{password}@")
    with sluicegate.Limiter(url, timeout=2.0, fallback="raise", registry=None) as limiter:
        with pytest.raises(StoreError) as raised:
            limiter.hit("k", "1/second")
        assert raised.value.kind in ("connection", "other")
        assert PASSWORD not in str(raised.value)
