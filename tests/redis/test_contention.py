"""At least 8 OS processes and 64 asyncio tasks hammering one key admit exactly what the
algorithm allows: zero over-admission (and zero under-admission) for gcra, sliding-log and
fixed-window.

Every policy here is "100 per day" (or a cost that divides into it), so the exact number of
admissions does not depend on timing:

- gcra 100/day leaks 100 units per 86,400 s; during the few seconds of a run that is far below
  one unit, so the bucket admits exactly ``100 // cost`` requests and then nothing;
- sliding-log 100/day: no entry ages out during the run, so exactly ``100 // cost``;
- fixed-window 100/day: exactly 100 per window. The run could straddle a window boundary
  (UTC midnight), so every decision is attributed to its window (see ``_window_of``) and each
  window must admit ``min(100, attempts in that window)``; with no boundary, that is 100.

The workers are 8 spawned processes that live for the whole module (starting a Python
interpreter costs more than a round of hits); each round, each one builds its own
``sluicegate.Limiter``, waits on a shared barrier with the test process, and hits the key.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import queue
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis

import sluicegate
from sluicegate._keys import state_keys
from tests.redis._support import server_time_us

pytestmark = pytest.mark.redis

PROCESSES = 8
HITS_PER_PROCESS = 40
TASKS = 64
HITS_PER_TASK = 4
ATTEMPTS = PROCESSES * HITS_PER_PROCESS + TASKS * HITS_PER_TASK  # 576
LIMIT = 100
DAY_US = 86_400 * 1_000_000
WAIT_S = 60.0  # only bounds a hang (a dead worker); a healthy round takes well under a second


@dataclass(frozen=True)
class Outcome:
    """One decision as the hammering side saw it."""

    source: str  # "process-N" or "task"
    allowed: bool
    remaining: int
    until_us: int  # reset_after when allowed, retry_after when denied (µs)
    degraded: bool  # decided without Redis (by the fallback): must never happen here


def _outcome(source: str, decision: sluicegate.Decision) -> Outcome:
    until = decision.reset_after if decision.allowed else decision.retry_after
    return Outcome(source, decision.allowed, decision.remaining, round(until * 1_000_000), decision.degraded)


def _worker(number: int, url: str, tasks: Any, results: Any, barrier: Any) -> None:
    """A hammering process: per task, its own Limiter, the barrier, then ``hits`` hits on one key."""
    while True:
        task = tasks.get()
        if task is None:
            return
        key, policy, hits, cost = task
        try:
            with sluicegate.Limiter(url, timeout=2.0) as limiter:
                limiter.peek(f"{key}:warm-up", policy)  # connected before the start, like the tasks
                barrier.wait(timeout=WAIT_S)
                outcomes = [_outcome(f"process-{number}", limiter.hit(key, policy, cost=cost)) for _ in range(hits)]
            results.put((number, outcomes))
        except BaseException as exc:  # report it: the test fails with it instead of hanging
            barrier.abort()
            results.put((number, f"{type(exc).__name__}: {exc}"))


@dataclass
class Workers:
    barrier: Any
    tasks: list[Any]
    results: Any

    def submit(self, key: str, policy: str, hits: int, cost: int) -> None:
        for task_queue in self.tasks:
            task_queue.put((key, policy, hits, cost))

    def collect(self) -> list[Outcome]:
        outcomes: list[Outcome] = []
        for _ in self.tasks:
            try:
                number, payload = self.results.get(timeout=WAIT_S)
            except queue.Empty:
                raise AssertionError("a hammering process did not report back") from None
            if isinstance(payload, str):
                raise AssertionError(f"hammering process {number} failed: {payload}")
            outcomes += payload
        return outcomes


@pytest.fixture(scope="module")
def workers(redis_server) -> Iterator[Workers]:
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(PROCESSES + 1)  # the processes and this test process (its tasks)
    results = context.Queue()
    task_queues = [context.Queue() for _ in range(PROCESSES)]
    processes = [
        context.Process(target=_worker, args=(n, redis_server.url, task_queues[n], results, barrier), daemon=True)
        for n in range(PROCESSES)
    ]
    for process in processes:
        process.start()
    yield Workers(barrier, task_queues, results)
    for task_queue in task_queues:
        task_queue.put(None)
    for process in processes:
        process.join(timeout=10)
        if process.is_alive():
            process.kill()
            process.join(timeout=10)


async def _hammer(workers: Workers, url: str, key: str, policy: str, *, cost: int) -> list[Outcome]:
    """8 processes × 40 hits and 64 tasks × 4 hits on ``key``, all released at once."""
    workers.submit(key, policy, HITS_PER_PROCESS, cost)
    async with sluicegate.AsyncLimiter(url, timeout=2.0) as limiter:
        ready, start = asyncio.Semaphore(0), asyncio.Event()

        async def task() -> list[Outcome]:
            await limiter.peek(f"{key}:warm-up", policy)  # one pooled connection per task, made now
            ready.release()
            await start.wait()
            return [_outcome("task", await limiter.hit(key, policy, cost=cost)) for _ in range(HITS_PER_TASK)]

        tasks = [asyncio.create_task(task()) for _ in range(TASKS)]
        for _ in tasks:
            await asyncio.wait_for(ready.acquire(), WAIT_S)
        await asyncio.to_thread(workers.barrier.wait, WAIT_S)
        start.set()
        per_task = await asyncio.gather(*tasks)
    outcomes = workers.collect() + [outcome for outcomes in per_task for outcome in outcomes]
    assert len(outcomes) == ATTEMPTS
    assert not any(o.degraded for o in outcomes)
    return outcomes


def _report(label: str, outcomes: list[Outcome], expected: int) -> int:
    admitted = [o for o in outcomes if o.allowed]
    by_processes = sum(o.source != "task" for o in admitted)
    print(
        f"\n{label}: admitted {len(admitted)} of {len(outcomes)} attempts, expected {expected} "
        f"({by_processes} by the {PROCESSES} processes, {len(admitted) - by_processes} by the {TASKS} tasks)"
    )
    return len(admitted)


def _window_of(start_us: int, period_us: int, until_us: int) -> int:
    """The fixed window (its end, in periods) a decision fell in. The decision ran at some server
    time t in [start, end] of the run and reported ``until`` = window end - t, so the window end
    lies in [start + until - (end - start), start + until]: exactly one multiple of the period
    fits while the run is shorter than a period. ``ceil((start + until) / period)`` finds it."""
    return -(-(start_us + until_us) // period_us)


@pytest.mark.parametrize("algorithm", ["gcra", "sliding-log"])
async def test_exactly_the_capacity_is_admitted(workers, redis_server, redis_url, algorithm):
    key, policy = f"contended:{algorithm}", f"{LIMIT}/day algorithm {algorithm}"
    outcomes = await _hammer(workers, redis_url, key, policy, cost=1)

    admitted = _report(algorithm, outcomes, LIMIT)
    assert admitted == LIMIT
    # Each admission saw the state every earlier one left: the remainders count down 99..0
    # with no value twice (two admissions deciding on the same state would repeat one).
    assert sorted(o.remaining for o in outcomes if o.allowed) == list(range(LIMIT))
    assert all(o.remaining == 0 for o in outcomes if not o.allowed)

    with redis_server.client() as client:
        [state_key, *more] = state_keys("sluicegate", sluicegate.Policy.parse(policy), key)
        if algorithm == "sliding-log":
            assert client.zcard(state_key) == LIMIT
            assert client.hget(more[0], "used") == str(LIMIT).encode()
        else:
            used = float(client.get(state_key).split()[1])
            assert LIMIT - 1 < used <= LIMIT


async def test_fixed_window_admits_the_limit_per_window(workers, redis_server, redis_url):
    key, policy = "contended:fixed-window", f"{LIMIT}/day algorithm fixed-window"
    with redis_server.client() as client:
        start_us = server_time_us(client)
    outcomes = await _hammer(workers, redis_url, key, policy, cost=1)
    with redis_server.client() as client:
        end_us = server_time_us(client)

    windows: dict[int, list[Outcome]] = {}
    for outcome in outcomes:
        windows.setdefault(_window_of(start_us, DAY_US, outcome.until_us), []).append(outcome)
    if start_us // DAY_US == end_us // DAY_US:
        # The usual case: the whole run fell in one day, one window, exactly LIMIT admitted.
        assert list(windows) == [start_us // DAY_US + 1]
        assert _report("fixed-window", outcomes, LIMIT) == LIMIT
    else:
        # The run straddled UTC midnight: two windows, each admitting min(LIMIT, its attempts).
        print(f"\nfixed-window: the run crossed a window boundary; attempts per window: {windows}")
        assert set(windows) == {start_us // DAY_US + 1, end_us // DAY_US + 1}
    for window, in_window in windows.items():
        expected = min(LIMIT, len(in_window))
        admitted = sorted(o.remaining for o in in_window if o.allowed)
        assert len(admitted) == expected, f"window {window}: {len(admitted)} admitted, expected {expected}"
        assert admitted == list(range(LIMIT - expected, LIMIT))


async def test_a_cost_above_one_admits_whole_requests_only(workers, redis_server, redis_url):
    # gcra 100/day, every request costs 7: 14 requests (98 units) fit, the 15th would need 105.
    cost, key, policy = 7, "contended:gcra:cost", f"{LIMIT}/day"
    outcomes = await _hammer(workers, redis_url, key, policy, cost=cost)

    expected = LIMIT // cost
    assert _report(f"gcra cost {cost}", outcomes, expected) == expected
    assert sorted(o.remaining for o in outcomes if o.allowed) == [LIMIT - cost * n for n in range(expected, 0, -1)]
    assert all(o.remaining == LIMIT - cost * expected for o in outcomes if not o.allowed)
    with redis.Redis.from_url(redis_url) as client:
        [state_key] = state_keys("sluicegate", sluicegate.Policy.parse(policy), key)
        used = float(client.get(state_key).split()[1])
        assert cost * expected - 1 < used <= cost * expected
