"""Each fallback does what it says, with a dead store (a refused port):

- ``"local"``: decided in process, each policy scaled by ``fallback_share``; ``degraded=True``;
  N processes at share 1/N admit at most ``limit + N`` per window between them;
- ``"allow"``: everything admitted, ``degraded=True``;
- ``"deny"``: everything denied, ``retry_after`` = the time to the next probe (≤ 1.2 s);
- ``"raise"``: ``sluicegate.StoreError`` reaches the caller.
"""

from __future__ import annotations

import asyncio
import math
import multiprocessing
import queue
import time
from collections.abc import Callable

import pytest

import sluicegate
from tests.faults._support import BOUND, TIMEOUT, admitted_locally, dead_url, report
from tests.redis_server import RedisServer
from tests.waiting import wait_until

pytestmark = pytest.mark.faults

TEN = sluicegate.Policy.parse("10/minute name ten")
PROBE_MAX_S = 1.2  # probe interval 1 s + 20 % jitter
SLACK_S = 0.05


def _timed(call: Callable[[], sluicegate.Decision]) -> tuple[sluicegate.Decision, float]:
    start = time.perf_counter()
    result = call()
    return result, time.perf_counter() - start


# --- local ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("share", "admitted"), [(1.0, 10), (0.5, 5), (0.25, 2), (0.01, 1)])
def test_local_scales_the_policy_by_the_share(share, admitted):
    with sluicegate.Limiter(dead_url(), timeout=TIMEOUT, fallback="local", fallback_share=share, registry=None) as lim:
        decisions = [lim.hit("k", TEN) for _ in range(20)]
        other_key = lim.hit("another", TEN)
    assert [d.allowed for d in decisions] == [True] * admitted + [False] * (20 - admitted)
    assert all(d.degraded for d in decisions)
    assert {d.limit for d in decisions} == {admitted}  # the capacity it was decided against
    assert [d.remaining for d in decisions[:admitted]] == list(range(admitted - 1, -1, -1))
    assert all(d.retry_after > 0 for d in decisions[admitted:])
    assert other_key.allowed  # keys are still separate
    assert other_key.degraded


async def test_local_scales_the_policy_by_the_share_async():
    url = dead_url()
    async with sluicegate.AsyncLimiter(
        url, timeout=TIMEOUT, fallback="local", fallback_share=0.5, registry=None
    ) as lim:
        decisions = [await lim.hit("k", TEN) for _ in range(20)]
    assert [d.allowed for d in decisions] == [True] * 5 + [False] * 15
    assert all(d.degraded for d in decisions)
    assert {d.limit for d in decisions} == {5}


def test_local_scales_burst_and_hit_all():
    bursty = sluicegate.Policy.parse("10/minute burst 20 name bursty")
    with sluicegate.Limiter(dead_url(), fallback="local", fallback_share=0.5, registry=None) as lim:
        burst = [lim.hit("b", bursty).allowed for _ in range(15)]
        together = [lim.hit_all([("x", TEN), ("y", bursty)]) for _ in range(7)]
    assert burst == [True] * 10 + [False] * 5  # burst 20 scaled to 10
    assert [d.allowed for d in together] == [True] * 5 + [False] * 2  # ten/minute scaled to 5 decides
    assert all(d.degraded and all(r.degraded for r in d.results) for d in together)


# --- allow, deny, raise -----------------------------------------------------------------------


def test_allow_admits_everything():
    with sluicegate.Limiter(dead_url(), timeout=TIMEOUT, fallback="allow", registry=None) as lim:
        timed = [_timed(lambda: lim.hit("k", TEN)) for _ in range(50)]
        together = lim.hit_all([("k", TEN), ("j", TEN)])
    decisions = [d for d, _ in timed]
    assert all(d.allowed and d.degraded for d in decisions)
    assert all(d.retry_after == 0 for d in decisions)
    assert max(took for _, took in timed) <= BOUND
    assert together.allowed
    assert together.degraded


async def test_allow_admits_everything_async():
    async with sluicegate.AsyncLimiter(dead_url(), timeout=TIMEOUT, fallback="allow", registry=None) as lim:
        decisions = [await lim.hit("k", TEN) for _ in range(50)]
    assert all(d.allowed and d.degraded for d in decisions)


def test_deny_denies_until_the_next_probe():
    with sluicegate.Limiter(dead_url(), timeout=TIMEOUT, fallback="deny", registry=None) as lim:
        timed = [_timed(lambda: lim.hit("k", TEN)) for _ in range(20)]
        together = lim.hit_all([("k", TEN), ("j", TEN)])
    decisions = [d for d, _ in timed]
    retries = [d.retry_after for d in decisions]
    report("fallback=deny", retry_after_first=f"{retries[0]:.3f} s", retry_after_last=f"{retries[-1]:.3f} s")
    assert not any(d.allowed for d in decisions)
    assert all(d.degraded for d in decisions)
    assert all(0 < r <= PROBE_MAX_S + SLACK_S for r in retries)
    assert retries == sorted(retries, reverse=True)  # counting down to the same probe
    assert max(took for _, took in timed) <= BOUND
    assert not together.allowed
    assert together.degraded
    assert 0 < together.retry_after <= PROBE_MAX_S + SLACK_S


async def test_deny_denies_until_the_next_probe_async():
    async with sluicegate.AsyncLimiter(dead_url(), timeout=TIMEOUT, fallback="deny", registry=None) as lim:
        decisions = [await lim.hit("k", TEN) for _ in range(20)]
    assert not any(d.allowed for d in decisions)
    assert all(d.degraded and 0 < d.retry_after <= PROBE_MAX_S + SLACK_S for d in decisions)


def test_raise_raises_store_error():
    with sluicegate.Limiter(dead_url(), timeout=TIMEOUT, fallback="raise", registry=None) as lim:
        for _ in range(5):
            start = time.perf_counter()
            with pytest.raises(sluicegate.StoreError):
                lim.hit("k", TEN)
            assert time.perf_counter() - start <= BOUND
        with pytest.raises(sluicegate.StoreError):
            lim.peek("k", TEN)
        with pytest.raises(sluicegate.StoreError):
            lim.hit_all([("k", TEN), ("j", TEN)])


async def test_raise_raises_store_error_async():
    async with sluicegate.AsyncLimiter(dead_url(), timeout=TIMEOUT, fallback="raise", registry=None) as lim:
        for _ in range(5):
            with pytest.raises(sluicegate.StoreError):
                await lim.hit("k", TEN)


#: Redis is back ~30 ms after the breaker opened; a probe comes at most 1.2 s after that.
RECOVERY_WAIT_S = 2.0


def _answers(limiter: sluicegate.Limiter) -> bool:
    try:
        return not limiter.hit("after", TEN).degraded
    except sluicegate.StoreError:
        return False


@pytest.mark.redis
def test_raise_recovers_when_redis_is_back(own_redis: RedisServer):
    with sluicegate.Limiter(own_redis.url, timeout=TIMEOUT, fallback="raise", registry=None) as lim:
        assert lim.hit("before", TEN).allowed
        own_redis.kill()
        with pytest.raises(sluicegate.StoreError):
            lim.hit("during", TEN)
        own_redis.start()
        wait_until(lambda: _answers(lim), timeout=RECOVERY_WAIT_S, what="a decision by Redis after it came back")


@pytest.mark.redis
async def test_raise_recovers_when_redis_is_back_async(own_redis: RedisServer):
    async with sluicegate.AsyncLimiter(own_redis.url, timeout=TIMEOUT, fallback="raise", registry=None) as lim:
        assert (await lim.hit("before", TEN)).allowed
        own_redis.kill()
        with pytest.raises(sluicegate.StoreError):
            await lim.hit("during", TEN)
        own_redis.start()
        deadline = time.monotonic() + RECOVERY_WAIT_S
        while not await _answers_async(lim):
            assert time.monotonic() < deadline, f"no decision by Redis within {RECOVERY_WAIT_S} s of it coming back"
            await asyncio.sleep(0.001)


async def _answers_async(limiter: sluicegate.AsyncLimiter) -> bool:
    try:
        return not (await limiter.hit("after", TEN)).degraded
    except sluicegate.StoreError:
        return False


# --- a fleet of processes on the local fallback -----------------------------------------------

FLEET = 4
FLEET_POLICIES = ("10/minute", "3/minute", "10/minute algorithm fixed-window", "7/minute algorithm sliding-log")


def test_a_fleet_on_the_local_fallback_admits_at_most_limit_plus_n():
    """N processes at ``fallback_share=1/N`` against a dead store: each admits
    ``max(floor(limit / N), 1)`` per key, so the fleet admits at most ``limit + N`` in a window."""
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(FLEET)
    results = context.Queue()
    url = dead_url()
    workers = [
        context.Process(target=admitted_locally, args=(url, FLEET_POLICIES, 1 / FLEET, 30, barrier, results))
        for _ in range(FLEET)
    ]
    for worker in workers:
        worker.start()
    try:
        outcomes = [results.get(timeout=60) for _ in workers]
    except queue.Empty:
        pytest.fail("a fleet process did not report")
    finally:
        for worker in workers:
            worker.join(timeout=10)
            if worker.is_alive():
                worker.kill()
                worker.join()
    failures = [outcome for _, outcome in outcomes if isinstance(outcome, str)]
    assert failures == []
    for policy_text in FLEET_POLICIES:
        limit = sluicegate.Policy.parse(policy_text).limit
        per_process = [counts[policy_text][0] for _, counts in outcomes]
        degraded = [counts[policy_text][1] for _, counts in outcomes]
        report(
            f"local fallback, {FLEET} processes at share 1/{FLEET}, {policy_text}",
            admitted_per_process=per_process,
            total=sum(per_process),
            bound=f"limit + N = {limit + FLEET}",
        )
        assert degraded == [30] * FLEET
        assert per_process == [max(math.floor(limit / FLEET), 1)] * FLEET
        assert sum(per_process) <= limit + FLEET
