"""The circuit breaker under a steady load while Redis is frozen (SIGSTOP) for several seconds.

For ``Limiter`` and ``AsyncLimiter``, one loop of decisions on 64 keys (nothing is throttled):

1. healthy: decisions go to Redis, none degraded;
2. ``stop()``: no decision takes longer than ``timeout`` + 10 ms; the breaker opens within
   250 ms (the first degraded decision that did not wait for the store, and the gauge
   ``sluicegate_fallback_active`` reads 1); from then on decisions are local, p99 < 1 ms;
3. ``cont()``: non-degraded decisions resume within 5 s (the background probe closes the
   breaker), with one ``open`` and one ``closed`` transition in all.

The figures are printed (``pytest -s`` shows them). The measured loops run with the cyclic
garbage collector off, so a collection in the test process is not mistaken for the limiter.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass
from types import FrameType
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

import sluicegate
from tests.faults._support import (
    LOCAL,
    TIMEOUT,
    LoadThread,
    Sample,
    ScriptedStore,
    adecide_until,
    decide_until,
    freeze,
    latency_figures,
    ms,
    no_gc,
    over_bound,
    percentile,
    report,
    value,
)
from tests.redis_server import RedisServer
from tests.waiting import wait_until

pytestmark = pytest.mark.faults

STOPPED_S = 3.0
OPENS_WITHIN_S = 0.250
P99_OPEN_S = 0.001
RECOVERS_WITHIN_S = 5.0
HEALTHY_DECISIONS = 300
AFTER_RECOVERY = 300
PAID_TIMEOUT = 0.8 * TIMEOUT
THREADS = 4


@dataclass
class Outage:
    """What one SIGSTOP outage looked like from the decision loop."""

    samples: list[Sample]
    stopped_at: float
    continued_at: float
    gauge_when_open: float

    def first_local(self) -> Sample:
        """The first degraded decision after the stop that did not wait for the store."""
        return next(s for s in self.samples if s.start >= self.stopped_at and s.degraded and s.latency < LOCAL)

    def while_open(self) -> list[Sample]:
        opened = self.first_local()
        return [s for s in self.samples if opened.start <= s.start and s.end <= self.continued_at]

    def first_healthy_after(self) -> Sample:
        return next(s for s in self.samples if s.start >= self.continued_at and not s.degraded)

    def check(self, title: str, registry: CollectorRegistry) -> None:
        samples = self.samples
        healthy = samples[:HEALTHY_DECISIONS]
        assert not any(s.degraded for s in healthy), "degraded decisions before the fault"

        during = [s for s in samples if self.stopped_at <= s.start < self.continued_at]
        opened_after = self.first_local().end - self.stopped_at
        open_latencies = [s.latency for s in self.while_open()]
        p99_open = percentile(open_latencies, 0.99)
        # Decisions that paid (most of) the store's timeout, and local ones that took more than
        # 5 ms anyway: the test process preempted (the machine is shared), not waiting for Redis.
        waited = [s for s in during if s.own_latency >= PAID_TIMEOUT]
        preempted = [s for s in self.while_open() if s.latency >= LOCAL]
        recovery = self.first_healthy_after().end - self.continued_at
        report(
            title,
            decisions=len(samples),
            during_stop=len(during),
            **latency_figures(samples),
            breaker_open_after=ms(opened_after),
            paid_the_timeout=len(waited),
            local_over_5ms=len(preempted),
            p50_open=ms(percentile(open_latencies, 0.50)),
            p99_open=ms(p99_open),
            max_open=ms(max(open_latencies)),
            recovery=f"{recovery:.3f} s",
            healthy_p99=ms(percentile([s.latency for s in healthy], 0.99)),
        )

        assert over_bound(samples) == []
        assert all(s.allowed for s in samples)
        assert opened_after <= OPENS_WITHIN_S
        assert self.gauge_when_open == 1
        assert p99_open < P99_OPEN_S
        assert recovery <= RECOVERS_WITHIN_S
        # Only the decisions made before the breaker opened paid the timeout: 3 in a row.
        assert len(waited) == 3, [ms(s.latency) for s in waited]
        assert not any(s.degraded for s in samples[-AFTER_RECOVERY:])
        assert value(registry, "sluicegate_breaker_transitions_total", state="open") == 1
        assert value(registry, "sluicegate_breaker_transitions_total", state="closed") == 1
        assert value(registry, "sluicegate_fallback_active", store="redis") == 0
        assert value(registry, "sluicegate_store_errors_total", store="redis", error="timeout") >= 3


@pytest.mark.redis
def test_sigstop_under_load_sync(own_redis: RedisServer):
    registry = CollectorRegistry()
    samples: list[Sample] = []
    with sluicegate.Limiter(own_redis.url, timeout=TIMEOUT, registry=registry) as limiter, no_gc():
        decide_until(limiter, samples, lambda: len(samples) >= HEALTHY_DECISIONS, limit_s=10)
        stopped_at = freeze(own_redis)
        try:
            decide_until(limiter, samples, lambda: samples[-1].degraded and samples[-1].latency < LOCAL, limit_s=2)
            gauge = value(registry, "sluicegate_fallback_active", store="redis")
            decide_until(limiter, samples, lambda: time.perf_counter() - stopped_at >= STOPPED_S, limit_s=10)
        finally:
            continued_at = time.perf_counter()
            own_redis.cont()
        decide_until(limiter, samples, lambda: not samples[-1].degraded, limit_s=RECOVERS_WITHIN_S + 1)
        target = len(samples) + AFTER_RECOVERY
        decide_until(limiter, samples, lambda: len(samples) >= target, limit_s=10)
    Outage(samples, stopped_at, continued_at, gauge).check("SIGSTOP, Limiter, one loop", registry)


@pytest.mark.redis
async def test_sigstop_under_load_async(own_redis: RedisServer):
    registry = CollectorRegistry()
    samples: list[Sample] = []
    async with sluicegate.AsyncLimiter(own_redis.url, timeout=TIMEOUT, registry=registry) as limiter:
        with no_gc():
            await adecide_until(limiter, samples, lambda: len(samples) >= HEALTHY_DECISIONS, limit_s=10)
            stopped_at = freeze(own_redis)
            try:
                await adecide_until(
                    limiter, samples, lambda: samples[-1].degraded and samples[-1].latency < LOCAL, limit_s=2
                )
                gauge = value(registry, "sluicegate_fallback_active", store="redis")
                await adecide_until(limiter, samples, lambda: time.perf_counter() - stopped_at >= STOPPED_S, limit_s=10)
            finally:
                continued_at = time.perf_counter()
                own_redis.cont()
            await adecide_until(limiter, samples, lambda: not samples[-1].degraded, limit_s=RECOVERS_WITHIN_S + 1)
            target = len(samples) + AFTER_RECOVERY
            await adecide_until(limiter, samples, lambda: len(samples) >= target, limit_s=10)
    Outage(samples, stopped_at, continued_at, gauge).check("SIGSTOP, AsyncLimiter, one task", registry)


@pytest.mark.redis
def test_sigstop_under_load_from_threads(own_redis: RedisServer):
    """Four threads, each making 1,000 decisions a second: every decision within the bound,
    the breaker opens once (within 250 ms) and closes once (within 5 s of SIGCONT)."""
    registry = CollectorRegistry()
    with sluicegate.Limiter(own_redis.url, timeout=TIMEOUT, registry=registry) as limiter, no_gc():
        limiter.hit("warm-up", "10/second")  # the script cached before the threads start
        threads = [LoadThread(limiter, keys=16, period=0.001) for _ in range(THREADS)]
        for thread in threads:
            thread.start()
        try:
            wait_until(lambda: all(t.count() >= 100 for t in threads), timeout=10, what="healthy decisions")
            stopped_at = freeze(own_redis)
            try:
                wait_until(
                    lambda: value(registry, "sluicegate_fallback_active", store="redis") == 1,
                    timeout=2,
                    what="the breaker to open",
                    poll=0.002,
                )
                opened_after = time.perf_counter() - stopped_at
                wait_until(
                    lambda: time.perf_counter() - stopped_at >= 2.0, timeout=3, what="the outage to last", poll=0.01
                )
            finally:
                continued_at = time.perf_counter()
                own_redis.cont()
            wait_until(
                lambda: value(registry, "sluicegate_fallback_active", store="redis") == 0,
                timeout=RECOVERS_WITHIN_S,
                what="the breaker to close",
                poll=0.002,
            )
            closed_after = time.perf_counter() - continued_at
            counts = [t.count() for t in threads]
            wait_until(
                lambda: all(t.count() >= c + 100 for t, c in zip(threads, counts, strict=True)),
                timeout=10,
                what="decisions after recovery",
            )
        finally:
            for thread in threads:
                thread.stop()
    samples = sorted((s for t in threads for s in t.samples), key=lambda s: s.start)
    open_latencies = [s.latency for s in samples if stopped_at + opened_after <= s.start and s.end <= continued_at]
    report(
        f"SIGSTOP, Limiter, {THREADS} threads x 1000/s",
        decisions=len(samples),
        **latency_figures(samples),
        breaker_open_after=ms(opened_after),
        p99_open=ms(percentile(open_latencies, 0.99)),
        recovery=f"{closed_after:.3f} s",
    )
    assert [e for t in threads for e in t.errors] == []
    assert over_bound(samples) == []
    assert opened_after <= OPENS_WITHIN_S
    assert value(registry, "sluicegate_breaker_transitions_total", state="open") == 1
    assert value(registry, "sluicegate_breaker_transitions_total", state="closed") == 1
    assert not any(s.degraded for t in threads for s in t.samples[-50:])


# --- one stall: every decision in flight fails at once -------------------------------------------

STALL_TIMEOUT = 0.2  # wide margins: the stall outlasts it by half, and nothing else is asked meanwhile


@pytest.mark.redis
async def test_one_stall_that_fails_a_whole_batch_does_not_open_the_breaker(own_redis: RedisServer):
    """32 concurrent decisions go out in batches and all time out together when Redis stalls
    once for 1.5 timeouts: one failure, not 32 in a row, so the breaker stays closed and the
    next decisions go to Redis again."""
    registry = CollectorRegistry()
    async with sluicegate.AsyncLimiter(own_redis.url, timeout=STALL_TIMEOUT, registry=registry) as limiter:
        await limiter.hit("warm-up", "10/second")
        own_redis.stop()
        try:
            stalled = asyncio.gather(*(limiter.hit(f"k{i}", "1000/second") for i in range(32)))
            await asyncio.sleep(1.5 * STALL_TIMEOUT)
        finally:
            own_redis.cont()
        assert all(d.degraded for d in await stalled)  # they did fail (and the fallback answered)
        after = await asyncio.gather(*(limiter.hit(f"k{i}", "1000/second") for i in range(32)))
    assert not any(d.degraded for d in after)
    assert value(registry, "sluicegate_store_errors_total", store="redis", error="timeout") == 32
    assert value(registry, "sluicegate_breaker_transitions_total", state="open") == 0


@pytest.mark.redis
def test_one_stall_that_fails_every_thread_at_once_does_not_open_the_breaker(own_redis: RedisServer):
    registry = CollectorRegistry()
    with sluicegate.Limiter(own_redis.url, timeout=STALL_TIMEOUT, registry=registry) as limiter:
        limiter.hit("warm-up", "10/second")
        barrier = threading.Barrier(THREADS + 1)
        decisions: list[sluicegate.Decision] = []

        def decide(i: int) -> None:
            barrier.wait()
            decisions.append(limiter.hit(f"k{i}", "1000/second"))

        threads = [threading.Thread(target=decide, args=(i,)) for i in range(THREADS)]
        for thread in threads:
            thread.start()
        own_redis.stop()
        try:
            barrier.wait()
            time.sleep(1.5 * STALL_TIMEOUT)
        finally:
            own_redis.cont()
        for thread in threads:
            thread.join()
        assert len(decisions) == THREADS
        assert all(d.degraded for d in decisions)
        assert not limiter.hit("k0", "1000/second").degraded
    assert value(registry, "sluicegate_breaker_transitions_total", state="open") == 0


# --- the sync probe thread: reopened while it exits -------------------------------------------


def test_a_breaker_reopened_while_the_probe_thread_exits_still_recovers():
    """The window is made wide with a trace hook that holds the probe thread at the return of
    ``_probe`` (after it closed the breaker and left its loop) until a decision has reopened the
    breaker; then the store answers again and the breaker must close within a probe interval."""
    exiting, reopened = threading.Event(), threading.Event()

    def hold_the_return(frame: FrameType, event: str, arg: Any) -> Any:
        if event == "return":
            exiting.set()
            reopened.wait(timeout=5)
        return hold_the_return

    def tracer(frame: FrameType, event: str, arg: Any) -> Any:
        return hold_the_return if event == "call" and frame.f_code.co_name == "_probe" else None

    registry = CollectorRegistry()
    store = ScriptedStore(fail_kind="refused")
    with sluicegate.Limiter(store, registry=registry) as limiter:
        threading.settrace(tracer)  # for the probe thread the next decision starts
        try:
            limiter.hit("k", "10/minute")  # opens the breaker; the probe thread starts
        finally:
            threading.settrace(None)
        store.fail_kind = None
        if not exiting.wait(timeout=3):
            pytest.fail("the probe thread did not succeed and return")
        store.fail_kind = "refused"
        limiter.hit("k", "10/minute")  # reopens the breaker while that thread is still alive
        reopened.set()
        if value(registry, "sluicegate_breaker_transitions_total", state="open") != 2:
            pytest.fail("the breaker did not reopen; the scenario did not happen")
        store.fail_kind = None
        calls = store.calls
        try:
            wait_until(
                lambda: value(registry, "sluicegate_fallback_active", store="custom") == 0,
                timeout=2.0,  # a probe comes at most 1.2 s after the breaker opened
                what="a probe to close the breaker again",
            )
        finally:
            report("probe thread race", probes_after_reopening=store.calls - calls)
