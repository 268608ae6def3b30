"""AsyncRedisStore coalesces concurrent decisions into few script calls and changes none of them.

- 64 concurrent decisions cost a handful of ``EVALSHA`` calls, not 64, and a hot key admits
  exactly its limit (zero over- and under-admission), for every algorithm;
- a lone decision goes out at once, in the single-call wire format, waiting on no timer;
- queued decisions go out ``EARLY_BATCH`` at a time as they queue, the rest at the end of the
  loop iteration, with at most ``MAX_IN_FLIGHT`` calls out;
- a failed batched call fails each decision in it, each within its own deadline;
- cancelling queued decisions leaves the rest of their batch, and later decisions, exact.

That batching changes no decision, over random interleavings, is ``tests/test_differential_batch.py``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

import sluicegate
from sluicegate._keys import state_keys
from sluicegate.stores import Item
from sluicegate.stores.redis import EARLY_BATCH, MAX_IN_FLIGHT, AsyncRedisStore
from tests.redis._support import awaiting, command_stat, sockets_with_unread_input
from tests.waiting import async_wait_until

pytestmark = pytest.mark.redis

TASKS = 64
#: Script calls for TASKS concurrent decisions: the first alone, the rest EARLY_BATCH at a time.
ROUND_TRIPS = 1 + -(-(TASKS - 1) // EARLY_BATCH)
ALGORITHMS = ["gcra", "sliding-log", "sliding-window", "fixed-window"]


def _item(key: str, policy: str, cost: int = 1) -> Item:
    parsed = sluicegate.Policy.parse(policy)
    return Item(state_keys("batching", parsed, key), parsed, cost)


class Spy:
    """Wraps a store's redis-py call: records each script call's (EVALSHA or EVAL) mode and group count."""

    def __init__(self, store: AsyncRedisStore) -> None:
        self.calls: list[tuple[str, int]] = []  # ("single", 1) or ("batch", groups)
        self._execute = store._execute
        store._execute = self

    async def __call__(self, command: str, sha: str, numkeys: int, *rest: Any) -> Any:
        argv = rest[numkeys:]
        self.calls.append(("batch", int(argv[0])) if argv[1] == "b" else ("single", 1))
        return await self._execute(command, sha, numkeys, *rest)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
async def test_concurrent_hits_on_a_hot_key_cost_few_round_trips_and_admit_exactly_the_limit(own_redis, algorithm):
    async with sluicegate.AsyncLimiter(own_redis.url, timeout=2.0, fallback="raise") as limiter:
        with own_redis.client() as raw:
            await limiter.hit("warm-up", "10/hour")  # connected and the script cached
            raw.config_resetstat()
            decisions = await asyncio.gather(
                *(limiter.hit("hot", f"10/hour algorithm {algorithm}") for _ in range(TASKS))
            )
            stats = raw.info("commandstats")
    round_trips = command_stat(stats, "evalsha")
    print(f"\n{TASKS} concurrent hits ({algorithm}): {round_trips} EVALSHA")
    assert not any(d.degraded for d in decisions)
    assert sum(d.allowed for d in decisions) == 10
    # Some serial order (calls in flight together run in either order): each admitted decision
    # saw the one before it.
    assert sorted(d.remaining for d in decisions if d.allowed) == list(range(10))
    assert round_trips == ROUND_TRIPS
    assert command_stat(stats, "eval") == 0


async def test_concurrent_decisions_on_distinct_keys_and_mixed_operations(own_redis):
    async with sluicegate.AsyncLimiter(own_redis.url, timeout=2.0, fallback="raise") as limiter:
        with own_redis.client() as raw:
            await limiter.hit("warm-up", "10/hour")
            raw.config_resetstat()
            calls = []
            for i in range(TASKS):
                if i % 3 == 0:
                    calls.append(limiter.hit(f"k{i}", "5/hour"))
                elif i % 3 == 1:
                    calls.append(limiter.peek(f"k{i}", "5/hour", cost=2))
                else:
                    calls.append(limiter.hit_all([(f"k{i}", "5/hour"), (f"k{i}", "7/minute algorithm sliding-log")]))
            decisions = await asyncio.gather(*calls)
            round_trips = command_stat(raw.info("commandstats"), "evalsha")
            peeks = await asyncio.gather(*(limiter.peek(f"k{i}", "5/hour") for i in range(TASKS)))
    print(f"\n{TASKS} concurrent mixed decisions: {round_trips} EVALSHA")
    assert round_trips == ROUND_TRIPS
    for i, (decision, peek) in enumerate(zip(decisions, peeks, strict=True)):
        assert decision.allowed
        assert not decision.degraded
        # hit_all answers with its least remaining: 4 of 5 (6 of 7 for the sliding log)
        assert decision.remaining == (4 if i % 3 == 0 else 3 if i % 3 == 1 else 4)
        assert peek.remaining == (4 if i % 3 == 1 else 3)  # peeks consumed nothing


async def test_a_lone_decision_goes_out_at_once_unbatched(own_redis):
    store = AsyncRedisStore(own_redis.url, timeout=2.0)
    spy = Spy(store)
    await store.decide([_item("warm-up", "10/hour")], None, commit=True)
    spy.calls.clear()
    loop = asyncio.get_running_loop()
    timers: list[float] = []
    call_at = loop.call_at

    def spying_call_at(when: float, *args: Any, **kwargs: Any) -> Any:
        timers.append(when - loop.time())
        return call_at(when, *args, **kwargs)

    try:
        own_redis.stop()
        loop.call_at = spying_call_at  # type: ignore[method-assign,assignment]
        task = asyncio.create_task(store.decide([_item("lone", "10/hour")], None, commit=True))
        # Sent within a few zero-delay loop steps: no timer had to fire for it to go out.
        for _ in range(20):
            await asyncio.sleep(0)
            if "read_response" in awaiting(task):
                break
        assert "read_response" in awaiting(task), awaiting(task)
        loop.call_at = call_at  # type: ignore[method-assign]
        await async_wait_until(
            lambda: sockets_with_unread_input(own_redis.port) == 1, timeout=1.0, what="the request on the wire"
        )
    finally:
        loop.call_at = call_at  # type: ignore[method-assign]
        own_redis.cont()
    [verdict] = await task
    await store.aclose()
    assert verdict.allowed
    assert verdict.remaining == 9
    assert spy.calls == [("single", 1)]
    # The only timer is the call's own deadline (asyncio.timeout), not a batching delay.
    assert all(delay > 1.9 for delay in timers), timers


async def test_a_failed_batch_fails_each_decision_within_its_own_deadline(own_redis):
    timeout = 0.2
    store = AsyncRedisStore(own_redis.url, timeout=timeout)
    await store.decide([_item("warm-up", "10/hour")], None, commit=True)
    outcomes: list[tuple[float, BaseException | object]] = []

    async def decide(key: str) -> None:
        started = time.monotonic()
        try:
            outcome: object = await store.decide([_item(key, "10/hour")], None, commit=True)
        except sluicegate.StoreError as exc:
            outcome = exc
        outcomes.append((time.monotonic() - started, outcome))

    own_redis.stop()
    try:
        first = [asyncio.create_task(decide(f"a{i}")) for i in range(TASKS)]  # 1 sent, 63 queued
        await asyncio.sleep(timeout / 2)
        later = [asyncio.create_task(decide(f"b{i}")) for i in range(8)]  # queued behind the first
        await asyncio.gather(*first, *later)
    finally:
        own_redis.cont()
    waits = [wait for wait, _ in outcomes]
    print(f"\nfrozen server, timeout {timeout} s: longest wait {max(waits):.4f} s")
    assert all(isinstance(o, sluicegate.StoreError) and o.kind == "timeout" for _, o in outcomes)
    assert max(waits) <= timeout + 0.03
    # The store still works, and no late reply reaches a later decision.
    verdicts = await asyncio.gather(*(store.decide([_item(f"c{i}", "10/hour")], None, commit=True) for i in range(8)))
    assert [v[0].remaining for v in verdicts] == [9] * 8
    own_redis.kill()
    errors = await asyncio.gather(
        *(store.decide([_item(f"d{i}", "10/hour")], None, commit=True) for i in range(8)), return_exceptions=True
    )
    assert all(isinstance(e, sluicegate.StoreError) and e.kind == "connection" for e in errors), errors
    assert len({id(e) for e in errors}) == len(errors)  # each waiter its own exception object
    await store.aclose()


async def test_the_limiter_falls_back_per_decision_when_a_batch_fails(own_redis):
    async with sluicegate.AsyncLimiter(own_redis.url, timeout=0.2, registry=None) as limiter:
        await limiter.hit("warm-up", "10/hour")
        own_redis.kill()
        decisions = await asyncio.gather(*(limiter.hit("hot", "10/hour") for _ in range(TASKS)))
    assert all(d.degraded for d in decisions)
    assert sum(d.allowed for d in decisions) == 10  # the local fallback, exact too


async def test_a_lost_script_cache_costs_one_eval_for_a_batch(own_redis):
    store = AsyncRedisStore(own_redis.url, timeout=2.0)
    spy = Spy(store)
    await store.decide([_item("warm-up", "10/hour")], None, commit=True)
    spy.calls.clear()
    with own_redis.client() as raw:
        raw.script_flush()
        raw.config_resetstat()
        results = await asyncio.gather(
            *(store.decide([_item("hot", "10/hour")], None, commit=True) for _ in range(TASKS))
        )
        stats = raw.info("commandstats")
    await store.aclose()
    assert sum(r[0].allowed for r in results) == 10
    # Every call that met NOSCRIPT (it did not run) is sent whole once: those in flight when the
    # cache was lost, at most MAX_IN_FLIGHT; a call sent after an EVAL returned finds the script.
    evals = command_stat(stats, "eval")
    assert 1 <= evals <= MAX_IN_FLIGHT
    assert len(spy.calls) == ROUND_TRIPS + evals


async def test_cancelled_queued_decisions_leave_their_batch_intact(own_redis):
    store = AsyncRedisStore(own_redis.url, timeout=2.0)
    spy = Spy(store)
    await store.decide([_item("warm-up", "10/hour")], None, commit=True)
    spy.calls.clear()
    keys = [f"q{i}" for i in range(EARLY_BATCH - 6)]  # too few to go out before the iteration ends
    own_redis.stop()
    try:
        lone = asyncio.create_task(store.decide([_item("lone", "10/hour")], None, commit=True))
        await async_wait_until(lambda: "read_response" in awaiting(lone), timeout=1.0, what="the lone call sent")
        queued = [asyncio.create_task(store.decide([_item(k, "10/hour")], None, commit=True)) for k in keys]
        await asyncio.sleep(0)
        for task in queued[::2]:
            task.cancel()
        await asyncio.sleep(0)
    finally:
        own_redis.cont()
    outcomes = await asyncio.gather(*queued, return_exceptions=True)
    assert (await lone)[0].remaining == 9
    assert spy.calls == [("single", 1), ("batch", len(keys) // 2)]  # the cancelled ones were never sent
    peeks = await asyncio.gather(*(store.decide([_item(k, "10/hour")], None, commit=False) for k in keys))
    for i, (outcome, peek) in enumerate(zip(outcomes, peeks, strict=True)):
        if i % 2 == 0:
            assert isinstance(outcome, asyncio.CancelledError)
            assert peek[0].remaining == 9  # never ran
        else:
            assert not isinstance(outcome, BaseException)
            assert outcome[0].remaining == 9
            assert peek[0].remaining == 8
    await store.aclose()


async def test_batch_size_bounds_each_call(own_redis):
    store = AsyncRedisStore(own_redis.url, timeout=2.0, batch_size=8)
    spy = Spy(store)
    results = await asyncio.gather(*(store.decide([_item("hot", "30/hour")], None, commit=True) for _ in range(40)))
    await store.aclose()
    assert sum(r[0].allowed for r in results) == 30
    assert all(groups <= 8 for _, groups in spy.calls)
    assert len(spy.calls) < 40


def test_batch_size_must_be_positive():
    with pytest.raises(sluicegate.ConfigError):
        AsyncRedisStore("redis://127.0.0.1:1/0", timeout=1.0, batch_size=0)


async def test_no_batching_while_waiting_could_cost_a_decision_its_deadline(own_redis):
    """Queued, a decision waits up to one round trip for the call in flight, then takes its own:
    while twice a recent round trip exceeds the timeout, each decision goes out alone."""
    store = AsyncRedisStore(own_redis.url, timeout=2.0)
    spy = Spy(store)
    await store.decide([_item("warm-up", "10/hour")], None, commit=True)
    spy.calls.clear()
    store._round_trip = 1.5  # as if the link were that slow
    await asyncio.gather(*(store.decide([_item(f"slow{i}", "10/hour")], None, commit=True) for i in range(8)))
    assert spy.calls == [("single", 1)] * 8
    spy.calls.clear()  # those fast replies bring the estimate back down (a fifth per call: slowly)
    while store._round_trip > 1.0:
        await store.decide([_item("decay", "1000/hour")], None, commit=True)
    spy.calls.clear()
    await asyncio.gather(*(store.decide([_item(f"fast{i}", "10/hour")], None, commit=True) for i in range(8)))
    assert spy.calls == [("single", 1), ("batch", 7)]
    await store.aclose()


async def test_queued_decisions_go_out_early_batches_at_a_time_up_to_the_cap_of_calls_in_flight(own_redis):
    """While calls are in flight, every EARLY_BATCH queued decisions go out at once and the rest
    at the end of the loop iteration, until MAX_IN_FLIGHT calls are out: then what is asked for
    waits in the queue until one of them returns, and goes as one batch."""
    store = AsyncRedisStore(own_redis.url, timeout=2.0)
    spy = Spy(store)
    await store.decide([_item("warm-up", "10/hour")], None, commit=True)
    spy.calls.clear()
    own_redis.stop()
    try:
        lone = asyncio.create_task(store.decide([_item("lone", "10/hour")], None, commit=True))
        await async_wait_until(lambda: "read_response" in awaiting(lone), timeout=1.0, what="the lone call sent")
        # 1 call in flight: two early batches, then the last 3 at the end of the iteration.
        first = [
            asyncio.create_task(store.decide([_item(f"a{i}", "10/hour")], None, commit=True))
            for i in range(2 * EARLY_BATCH + 3)
        ]
        await async_wait_until(
            lambda: sockets_with_unread_input(own_redis.port) == 4, timeout=1.0, what="four calls sent"
        )
        assert spy.calls == [("single", 1), ("batch", EARLY_BATCH), ("batch", EARLY_BATCH), ("batch", 3)]
        assert MAX_IN_FLIGHT == 4
        later = [asyncio.create_task(store.decide([_item(f"b{i}", "10/hour")], None, commit=True)) for i in range(5)]
        for _ in range(20):  # many loop iterations: the queue stays put while the cap is reached
            await asyncio.sleep(0)
        assert len(spy.calls) == 4
        assert sockets_with_unread_input(own_redis.port) == MAX_IN_FLIGHT
    finally:
        own_redis.cont()
    results = await asyncio.gather(lone, *first, *later)
    await store.aclose()
    assert spy.calls[4:] == [("batch", 5)]
    assert [r[0].remaining for r in results] == [9] * len(results)
