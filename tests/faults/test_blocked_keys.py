"""The blocked-key cache: after the store denies a key (cost 1), further cost-1 hits on it are
answered without a round trip until its ``retry_after``, with exactly the store's answer.

The limiters here use a fake clock (``clock=`` a callable, so the limiter passes its time to the
script): the store's own answer at the same moment is then known exactly. It comes from a bare
``RedisStore`` (no cache) asked to peek at the same microsecond. Round trips are counted with
``INFO commandstats`` on the test's own server.
"""

from __future__ import annotations

import random
import time

import pytest

import sluicegate
from sluicegate._keys import state_keys
from sluicegate.algorithms import Verdict
from sluicegate.stores import Item, RedisStore
from tests.conftest import FakeClock
from tests.faults._faults import raw_client
from tests.faults._support import LOCAL, freeze, report
from tests.redis_server import RedisServer

pytestmark = [pytest.mark.faults, pytest.mark.redis]

ALGORITHMS = ("gcra", "sliding-window", "fixed-window", "sliding-log")
PREFIX = "sluicegate"


def _policy(algorithm: str, limit: int = 3, period: str = "10s") -> sluicegate.Policy:
    return sluicegate.Policy.parse(f"{limit}/{period} algorithm {algorithm}")


class Oracle:
    """The store's answer for a cost-1 hit at the fake clock's now, without committing anything."""

    def __init__(self, url: str, clock: FakeClock) -> None:
        self.store = RedisStore(url, timeout=2.0)
        self.clock = clock
        self.calls = 0

    def look(self, key: str, policy: sluicegate.Policy) -> Verdict:
        self.calls += 1
        item = Item(state_keys(PREFIX, policy, key), policy, 1)
        return self.store.decide([item], round(self.clock() * 1_000_000), commit=False)[0]

    def close(self) -> None:
        self.store.close()


def _as_verdict(decision: sluicegate.Decision) -> Verdict:
    return Verdict(
        decision.allowed,
        decision.remaining,
        round(decision.reset_after * 1_000_000),
        round(decision.retry_after * 1_000_000),
    )


def _evalsha_calls(server: RedisServer) -> int:
    with raw_client(server) as control:
        entry = control.info("commandstats").get("cmdstat_evalsha")
    return 0 if entry is None else int(entry["calls"])


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_a_denied_key_is_answered_locally_with_the_stores_answer(own_redis: RedisServer, clock: FakeClock, algorithm):
    policy = _policy(algorithm)
    oracle = Oracle(own_redis.url, clock)
    try:
        with sluicegate.Limiter(own_redis.url, clock=clock, registry=None) as limiter:
            assert [limiter.hit("k", policy).allowed for _ in range(3)] == [True] * 3
            first = limiter.hit("k", policy)  # the store's denial
            assert not first.allowed
            assert _as_verdict(first) == oracle.look("k", policy)

            before = _evalsha_calls(own_redis)
            repeats = [limiter.hit("k", policy) for _ in range(50)]
            assert _evalsha_calls(own_redis) == before  # no round trip
            assert {_as_verdict(d) for d in repeats} == {_as_verdict(first)}
            assert not any(d.degraded for d in repeats)

            # Later, still before retry_after: the cached answer moves with the clock, like the store's.
            clock.advance(first.retry_after / 3)
            before = _evalsha_calls(own_redis)
            later = limiter.hit("k", policy)
            assert _evalsha_calls(own_redis) == before
            assert _as_verdict(later) == oracle.look("k", policy)
            assert later.retry_after < first.retry_after

            # At retry_after the store is asked again, and admits.
            clock.advance(later.retry_after)
            expected = oracle.look("k", policy)
            before = _evalsha_calls(own_redis)
            after = limiter.hit("k", policy)
            assert _evalsha_calls(own_redis) == before + 1
            assert after.allowed
            assert expected.allowed
            assert _as_verdict(after) == expected
    finally:
        oracle.close()


#: Clock steps of the random walk (µs), mostly short so that keys spend time denied.
STEPS_US = (1, 10, 1_000, 20_000, 50_000, 100_000, 400_000, 2_000_000)
STEP_WEIGHTS = (3, 3, 3, 3, 3, 2, 1, 0.5)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_the_cache_never_differs_from_the_store(own_redis: RedisServer, clock: FakeClock, algorithm):
    """A random walk of the clock (steps from 1 µs to a whole period) over 600 hits on two keys:
    at every step the limiter's decision equals the store's own answer at that moment (so the
    cache never allows what the store would deny, nor denies longer), and many of them were
    answered without a round trip."""
    policy = _policy(algorithm, limit=5, period="2s")
    steps = 600
    rng = random.Random(f"blocked-{algorithm}")
    oracle = Oracle(own_redis.url, clock)
    mismatches: list[str] = []
    denied = 0
    try:
        with sluicegate.Limiter(own_redis.url, clock=clock, registry=None) as limiter:
            before = _evalsha_calls(own_redis)
            for step in range(steps):
                clock.advance(rng.choices(STEPS_US, STEP_WEIGHTS)[0] / 1_000_000)
                key = rng.choice(("a", "b"))
                expected = oracle.look(key, policy)
                decision = limiter.hit(key, policy)
                denied += not decision.allowed
                if _as_verdict(decision) != expected or decision.degraded:
                    mismatches.append(f"step {step} key {key}: limiter {_as_verdict(decision)} store {expected}")
            round_trips = _evalsha_calls(own_redis) - before - oracle.calls
    finally:
        oracle.close()
    report(
        f"blocked keys, {algorithm}", hits=steps, denied=denied, round_trips=round_trips, from_cache=steps - round_trips
    )
    assert mismatches == []
    assert denied > 100
    assert steps - round_trips > 50  # the cache answered many


def test_reset_clears_the_cache(own_redis: RedisServer, clock: FakeClock):
    policy = _policy("gcra")
    with sluicegate.Limiter(own_redis.url, clock=clock, registry=None) as limiter:
        for _ in range(4):
            limiter.hit("k", policy)
        assert not limiter.hit("k", policy).allowed  # cached now
        limiter.reset("k", policy)
        before = _evalsha_calls(own_redis)
        decision = limiter.hit("k", policy)
        assert _evalsha_calls(own_redis) == before + 1
        assert decision.allowed
        assert decision.remaining == 2


def test_only_single_cost_one_requests_use_the_cache(own_redis: RedisServer, clock: FakeClock):
    policy = _policy("gcra")
    with sluicegate.Limiter(own_redis.url, clock=clock, registry=None) as limiter:
        for _ in range(4):
            limiter.hit("k", policy)
        before = _evalsha_calls(own_redis)
        assert not limiter.hit("k", policy, cost=2).allowed
        assert not limiter.hit_all([("k", policy), ("other", policy)]).allowed
        assert _evalsha_calls(own_redis) == before + 2
        assert not limiter.peek("k", policy).allowed  # cost 1: from the cache
        assert _evalsha_calls(own_redis) == before + 2


def test_a_blocked_key_is_answered_while_redis_is_stopped(own_redis: RedisServer, clock: FakeClock):
    """The cache needs no store: while Redis is frozen, a blocked key is denied at once (the
    store's own answer, so not degraded) and other keys fall back after the timeout."""
    policy = _policy("gcra")
    with sluicegate.Limiter(own_redis.url, clock=clock, registry=None) as limiter:
        for _ in range(4):
            limiter.hit("blocked", policy)
        freeze(own_redis)
        try:
            start = time.perf_counter()
            blocked = limiter.hit("blocked", policy)
            took = time.perf_counter() - start
            other = limiter.hit("other", policy)
        finally:
            own_redis.cont()
    assert not blocked.allowed
    assert not blocked.degraded
    assert took < LOCAL
    assert other.degraded
