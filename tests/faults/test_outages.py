"""No decision waits longer than ``timeout`` + 10 ms because of the store, whatever it does; and
what each kind of outage looks like under load.

- The matrix: refused connections, a stopped (SIGSTOP) server, a blackholed network, slow
  replies, READONLY, OOM, BUSY and LOADING, for ``Limiter`` and ``AsyncLimiter``, through
  ``hit``, ``peek`` and ``hit_all`` (a fresh limiter for each, so each reaches the store until its
  breaker opens). Every decision is timed; none may take longer than the bound, none may raise.
- A pool with no free connection (``max_connections=1`` while another caller holds it).
- Under load: kill -9 and an empty restart; ``SCRIPT FLUSH``; ``maxmemory`` with
  ``noeviction``; ``CLIENT KILL`` of the limiter's connections; the proxy adding latency, then
  blackholing, then passing again.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time

import pytest
import redis.asyncio
from prometheus_client import CollectorRegistry

import sluicegate
from tests.fault_proxy import FaultProxy
from tests.faults._faults import FAULTS, raw_client
from tests.faults._support import (
    LOCAL,
    ROOMY,
    TIMEOUT,
    LoadThread,
    Sample,
    adecide_until,
    atimed,
    decide_until,
    errors_by_kind,
    grown_by,
    latency_figures,
    ms,
    no_gc,
    over_bound,
    percentile,
    report,
    timed,
    value,
    worst,
)
from tests.redis_server import RedisServer
from tests.waiting import async_wait_until, wait_until

pytestmark = [pytest.mark.faults, pytest.mark.redis]

OPERATIONS = ("hit", "peek", "hit_all")
PER_OPERATION = 10
ROOMY_LOG = sluicegate.Policy.parse("1000000/hour algorithm sliding-log name roomy-log")
RECOVERS_WITHIN_S = 5.0


def _decide(limiter: sluicegate.Limiter, operation: str, i: int) -> sluicegate.Decision:
    if operation == "hit":
        return limiter.hit(f"k{i}", ROOMY)
    if operation == "peek":
        return limiter.peek(f"k{i}", ROOMY)
    return limiter.hit_all([(f"k{i}", ROOMY), (f"k{i}", ROOMY_LOG)])


async def _adecide(limiter: sluicegate.AsyncLimiter, operation: str, i: int) -> sluicegate.Decision:
    if operation == "hit":
        return await limiter.hit(f"k{i}", ROOMY)
    if operation == "peek":
        return await limiter.peek(f"k{i}", ROOMY)
    return await limiter.hit_all([(f"k{i}", ROOMY), (f"k{i}", ROOMY_LOG)])


def _check_matrix(title: str, samples: list[Sample], registry: CollectorRegistry, kinds: set[str]) -> None:
    errors = errors_by_kind(registry)
    report(
        title,
        decisions=len(samples),
        degraded=sum(s.degraded for s in samples),
        **latency_figures(samples),
        waited=sum(s.latency >= LOCAL for s in samples),
        errors=errors,
    )
    assert over_bound(samples) == []
    assert errors, "the fault produced no store error"
    assert set(errors) <= kinds
    assert any(s.degraded for s in samples)
    assert all(s.allowed for s in samples)  # fallback="local" with a roomy policy


@pytest.mark.parametrize("fault", list(FAULTS))
def test_no_decision_waits_past_the_timeout_sync(own_redis: RedisServer, fault: str):
    make, kinds = FAULTS[fault]
    registry = CollectorRegistry()
    samples: list[Sample] = []
    with make(own_redis) as url, no_gc():
        for operation in OPERATIONS:
            with sluicegate.Limiter(url, timeout=TIMEOUT, registry=registry) as limiter:
                for i in range(PER_OPERATION):
                    samples.append(timed(_decide, limiter, operation, i))
    _check_matrix(f"{fault}, Limiter", samples, registry, kinds)


@pytest.mark.parametrize("fault", list(FAULTS))
async def test_no_decision_waits_past_the_timeout_async(own_redis: RedisServer, fault: str):
    make, kinds = FAULTS[fault]
    registry = CollectorRegistry()
    samples: list[Sample] = []
    with make(own_redis) as url, no_gc():
        for operation in OPERATIONS:
            async with sluicegate.AsyncLimiter(url, timeout=TIMEOUT, registry=registry) as limiter:
                for i in range(PER_OPERATION):
                    samples.append(await atimed(_adecide, limiter, operation, i))
    _check_matrix(f"{fault}, AsyncLimiter", samples, registry, kinds)


# --- a pool with no free connection -----------------------------------------------------------


def test_pool_with_no_free_connection_sync(own_redis: RedisServer):
    """``max_connections=1``; another thread keeps the connection busy (replies 30 ms late):
    the pool has nothing to give, and the decision is answered by the fallback at once."""
    registry = CollectorRegistry()
    samples: list[Sample] = []
    with FaultProxy(own_redis.port) as proxy:
        proxy.add_latency(0.03)
        url = f"{proxy.url}?max_connections=1"
        with (
            sluicegate.Limiter(url, timeout=TIMEOUT, registry=registry) as limiter,
            no_gc(),
            LoadThread(limiter, keys=8, period=0.001) as holder,
        ):
            wait_until(lambda: proxy.forwarded > 0, timeout=5, what="the other thread's request")
            for i in range(50):
                samples.append(timed(limiter.hit, f"main:{i}", ROOMY))
    _check_pool("pool exhausted, Limiter", samples, holder.samples, registry)
    assert holder.errors == []


async def test_pool_with_no_free_connection_async(own_redis: RedisServer):
    registry = CollectorRegistry()
    samples: list[Sample] = []
    holder_samples: list[Sample] = []
    done = False
    with FaultProxy(own_redis.port) as proxy:
        proxy.add_latency(0.03)
        url = f"{proxy.url}?max_connections=1"
        async with sluicegate.AsyncLimiter(url, timeout=TIMEOUT, registry=registry) as limiter:
            holder = asyncio.create_task(adecide_until(limiter, holder_samples, lambda: done, limit_s=30, keys=8))
            with no_gc():
                await async_wait_until(lambda: proxy.forwarded > 0, timeout=5, what="the other task's request")
                for i in range(50):
                    samples.append(await atimed(limiter.hit, f"main:{i}", ROOMY))
                    await asyncio.sleep(0)
            done = True
            await holder
    _check_pool("pool exhausted, AsyncLimiter", samples, holder_samples, registry)


def _check_pool(title: str, samples: list[Sample], holder: list[Sample], registry: CollectorRegistry) -> None:
    errors = errors_by_kind(registry)
    report(
        title,
        decisions=len(samples),
        degraded=sum(s.degraded for s in samples),
        **latency_figures(samples),
        holder_worst=ms(worst(holder).latency),
        errors=errors,
        breaker_opened=int(value(registry, "sluicegate_breaker_transitions_total", state="open")),
    )
    assert over_bound(samples) == []
    assert over_bound(holder) == []
    assert errors.get("pool", 0) >= 1  # MaxConnectionsError: this process's pool, not Redis
    assert "connection" not in errors
    assert value(registry, "sluicegate_breaker_transitions_total", state="open") == 0
    assert any(s.degraded for s in samples)


async def test_a_burst_beyond_the_pool_does_not_open_the_breaker(own_redis: RedisServer):
    registry = CollectorRegistry()
    async with sluicegate.AsyncLimiter(own_redis.url, timeout=TIMEOUT, registry=registry) as limiter:
        await limiter.hit("warm-up", ROOMY)
        decisions = await asyncio.gather(*(limiter.hit(f"burst:{i}", ROOMY) for i in range(150)))
    report(
        "150 concurrent AsyncLimiter decisions, healthy Redis, default pool",
        degraded=sum(d.degraded for d in decisions),
        errors=errors_by_kind(registry),
        breaker_opened=int(value(registry, "sluicegate_breaker_transitions_total", state="open")),
    )
    assert value(registry, "sluicegate_breaker_transitions_total", state="open") == 0
    assert set(errors_by_kind(registry)) <= {"pool"}, "a burst beyond the pool is no fault of Redis"


# --- kill -9 and an empty restart -------------------------------------------------------------


def test_kill_and_empty_restart_under_load(own_redis: RedisServer):
    registry = CollectorRegistry()
    with sluicegate.Limiter(own_redis.url, timeout=TIMEOUT, registry=registry) as limiter, no_gc():
        assert limiter.hit("counted", "10/hour").remaining == 9
        assert limiter.hit("counted", "10/hour").remaining == 8
        with LoadThread(limiter) as load:
            wait_until(lambda: load.count() >= 200, timeout=10, what="healthy decisions")
            killed_at = time.perf_counter()
            own_redis.kill()
            wait_until(
                lambda: value(registry, "sluicegate_fallback_active", store="redis") == 1,
                timeout=1,
                what="the breaker to open",
            )
            opened_after = time.perf_counter() - killed_at
            down = load.count()
            wait_until(lambda: load.count() >= down + 300, timeout=10, what="decisions while Redis is down")
            own_redis.start()  # empty, on the same port
            started_at = time.perf_counter()
            wait_until(
                lambda: value(registry, "sluicegate_fallback_active", store="redis") == 0,
                timeout=RECOVERS_WITHIN_S,
                what="the breaker to close",
            )
            recovery = time.perf_counter() - started_at
            back = load.count()
            wait_until(lambda: load.count() >= back + 200, timeout=10, what="decisions after the restart")
        # the counter restarted from zero: Redis kept nothing (documented)
        assert limiter.hit("counted", "10/hour").remaining == 9
    samples = load.samples
    while_down = [s for s in samples if killed_at + opened_after <= s.start and s.end <= started_at]
    with raw_client(own_redis) as control:
        stats = control.info("commandstats")
    report(
        "kill -9 + empty restart, Limiter",
        decisions=len(samples),
        degraded=sum(s.degraded for s in samples),
        **latency_figures(samples),
        breaker_open_after=ms(opened_after),
        worst_while_down=ms(worst(while_down).latency),
        p99_while_down=ms(percentile([s.latency for s in while_down], 0.99)),
        recovery_after_start=f"{recovery:.3f} s",
        errors=errors_by_kind(registry),
        eval_on_new_server=stats.get("cmdstat_eval", {}).get("calls", 0),
    )
    assert load.errors == []
    assert over_bound(samples) == []
    assert all(s.degraded for s in while_down)
    assert not any(s.degraded for s in samples[-100:])
    assert set(errors_by_kind(registry)) == {"connection"}
    assert value(registry, "sluicegate_breaker_transitions_total", state="open") == 1
    assert value(registry, "sluicegate_breaker_transitions_total", state="closed") == 1
    assert stats["cmdstat_eval"]["calls"] >= 1  # the script came back with one EVAL (per connection)


# --- SCRIPT FLUSH -----------------------------------------------------------------------------


def test_script_flush_costs_one_eval_and_no_error(own_redis: RedisServer):
    """50 rounds of (3 decisions of each kind, SCRIPT FLUSH): each flush costs exactly one
    NOSCRIPT ``EVALSHA`` and one ``EVAL``; no decision fails or degrades."""
    registry = CollectorRegistry()
    rounds = 50
    decisions: list[sluicegate.Decision] = []
    with sluicegate.Limiter(own_redis.url, timeout=TIMEOUT, registry=registry) as limiter:
        limiter.hit("warm-up", ROOMY)
        with raw_client(own_redis) as control:
            control.config_resetstat()
            for r in range(rounds):
                control.script_flush()
                decisions += [_decide(limiter, operation, r) for operation in OPERATIONS for _ in range(3)]
            stats = control.info("commandstats")
    report(
        "SCRIPT FLUSH x50, Limiter",
        decisions=len(decisions),
        evalsha_calls=stats["cmdstat_evalsha"]["calls"],
        evalsha_failed=stats["cmdstat_evalsha"]["failed_calls"],
        eval_calls=stats["cmdstat_eval"]["calls"],
    )
    assert not any(d.degraded for d in decisions)
    assert errors_by_kind(registry) == {}
    assert stats["cmdstat_eval"]["calls"] == rounds
    assert stats["cmdstat_eval"]["failed_calls"] == 0
    assert stats["cmdstat_evalsha"]["failed_calls"] == rounds
    assert stats["cmdstat_evalsha"]["calls"] == rounds * 3 * len(OPERATIONS)


async def test_script_flush_costs_one_eval_and_no_error_async(own_redis: RedisServer):
    registry = CollectorRegistry()
    rounds = 30
    decisions: list[sluicegate.Decision] = []
    async with sluicegate.AsyncLimiter(own_redis.url, timeout=TIMEOUT, registry=registry) as limiter:
        await limiter.hit("warm-up", ROOMY)
        with raw_client(own_redis) as control:
            control.config_resetstat()
            for r in range(rounds):
                control.script_flush()
                decisions += [await _adecide(limiter, operation, r) for operation in OPERATIONS for _ in range(3)]
            stats = control.info("commandstats")
    assert not any(d.degraded for d in decisions)
    assert errors_by_kind(registry) == {}
    assert stats["cmdstat_eval"]["calls"] == rounds
    assert stats["cmdstat_evalsha"]["failed_calls"] == rounds


def test_script_flush_during_load(own_redis: RedisServer):
    """Flushes from another client while a thread decides: never a failed or degraded decision;
    at most one ``EVAL`` per flush."""
    registry = CollectorRegistry()
    flushes = 20
    with sluicegate.Limiter(own_redis.url, timeout=TIMEOUT, registry=registry) as limiter, no_gc():
        limiter.hit("warm-up", ROOMY)
        with raw_client(own_redis) as control, LoadThread(limiter, period=0.0005) as load:
            control.config_resetstat()
            for _ in range(flushes):
                wait_until(grown_by(load.count, 25), timeout=10, what="decisions between flushes")
                control.script_flush()
            wait_until(grown_by(load.count, 25), timeout=10, what="decisions after the last flush")
        stats = control.info("commandstats")
    samples = load.samples
    report(
        "SCRIPT FLUSH x20 under load, Limiter",
        decisions=len(samples),
        degraded=sum(s.degraded for s in samples),
        **latency_figures(samples),
        eval_calls=stats["cmdstat_eval"]["calls"],
        evalsha_failed=stats["cmdstat_evalsha"]["failed_calls"],
    )
    assert load.errors == []
    assert not any(s.degraded for s in samples)
    assert errors_by_kind(registry) == {}
    assert over_bound(samples) == []
    assert 1 <= stats["cmdstat_eval"]["calls"] <= flushes
    assert stats["cmdstat_evalsha"]["failed_calls"] == stats["cmdstat_eval"]["calls"]


# --- maxmemory with noeviction ----------------------------------------------------------------


def test_maxmemory_noeviction(own_redis: RedisServer):
    """``maxmemory`` just above ``used_memory``: new keys soon get OOM, which degrades the
    decision (never an exception, never a denial); lifting the limit brings Redis back."""
    registry = CollectorRegistry()
    samples: list[Sample] = []
    with sluicegate.Limiter(own_redis.url, timeout=TIMEOUT, registry=registry) as limiter, no_gc():
        limiter.hit("warm-up", ROOMY)
        with raw_client(own_redis) as control:
            used = int(control.info("memory")["used_memory"])
            control.config_set("maxmemory-policy", "noeviction")
            control.config_set("maxmemory", used + 64 * 1024)
            try:
                decide_until(
                    limiter,
                    samples,
                    lambda: value(registry, "sluicegate_fallback_active", store="redis") == 1,
                    limit_s=20,
                    keys=1_000_000,  # every decision a new key
                )
                admitted_before_oom = next(i for i, s in enumerate(samples) if s.degraded)
                decide_until(limiter, samples, lambda: len(samples) >= admitted_before_oom + 200, limit_s=10)
            finally:
                control.config_set("maxmemory", 0)
            lifted_at = time.perf_counter()
            decide_until(limiter, samples, lambda: not samples[-1].degraded, limit_s=RECOVERS_WITHIN_S, keys=1_000_000)
            recovery = time.perf_counter() - lifted_at
    errors = errors_by_kind(registry)
    report(
        "maxmemory noeviction, Limiter",
        keys_written_before_oom=admitted_before_oom,
        decisions=len(samples),
        degraded=sum(s.degraded for s in samples),
        **latency_figures(samples),
        errors=errors,
        recovery=f"{recovery:.3f} s",
    )
    assert over_bound(samples) == []
    assert set(errors) == {"oom"}
    assert errors["oom"] >= 3
    assert all(s.allowed for s in samples)  # degraded by the local fallback, not denied
    assert recovery <= RECOVERS_WITHIN_S


# --- CLIENT KILL ------------------------------------------------------------------------------


def test_client_kill_between_decisions_is_invisible(own_redis: RedisServer):
    """Connections killed while idle: the pool notices before sending, reconnects, and the
    decision is made by Redis as usual (no error, not degraded)."""
    registry = CollectorRegistry()
    with sluicegate.Limiter(own_redis.url, timeout=TIMEOUT, registry=registry) as limiter:
        limiter.hit("warm-up", ROOMY)
        with raw_client(own_redis) as control:
            for i in range(10):
                assert control.client_kill_filter(_type="normal", skipme=True) >= 1
                decision = limiter.hit(f"after-kill:{i}", ROOMY)
                assert not decision.degraded
    assert errors_by_kind(registry) == {}


async def test_client_kill_between_decisions_is_invisible_async(own_redis: RedisServer):
    """The same for ``AsyncLimiter``. The kill is sent from an asyncio client, so the event loop
    runs while it waits for the reply and sees the limiter's connections close (a blocking
    client would keep the loop from noticing before the next decision is sent)."""
    registry = CollectorRegistry()
    async with sluicegate.AsyncLimiter(own_redis.url, timeout=TIMEOUT, registry=registry) as limiter:
        await limiter.hit("warm-up", ROOMY)
        async with redis.asyncio.Redis(port=own_redis.port) as control:
            for i in range(10):
                assert await control.client_kill_filter(_type="normal", skipme=True) >= 1
                decision = await limiter.hit(f"after-kill:{i}", ROOMY)
                assert not decision.degraded
    assert errors_by_kind(registry) == {}


def test_client_kill_under_load(own_redis: RedisServer):
    """``CLIENT KILL TYPE normal SKIPME yes`` ten times while a thread decides: no exception,
    every decision within the bound. A kill that lands while a request is in flight fails that
    request ("Connection closed by server"): one degraded decision, one failure of the three
    that open the breaker, so the breaker never opens and the next decision reconnects."""
    registry = CollectorRegistry()
    with (
        sluicegate.Limiter(own_redis.url, timeout=TIMEOUT, registry=registry) as limiter,
        no_gc(),
        raw_client(own_redis) as control,
        LoadThread(limiter, period=0.0005) as load,
    ):
        wait_until(lambda: load.count() >= 100, timeout=10, what="healthy decisions")
        for _ in range(10):
            wait_until(grown_by(load.count, 100), timeout=10, what="decisions between kills")
            control.client_kill_filter(_type="normal", skipme=True)
        last_kill = time.perf_counter()
        wait_until(
            lambda: load.samples[-1].start > last_kill and not load.samples[-1].degraded,
            timeout=RECOVERS_WITHIN_S,
            what="a decision by Redis after the last kill",
        )
        wait_until(grown_by(load.count, 100), timeout=10, what="decisions after the last kill")
    _check_kills("CLIENT KILL x10 under load, Limiter", load.samples, last_kill, registry)
    assert load.errors == []


async def test_client_kill_under_load_async(own_redis: RedisServer):
    registry = CollectorRegistry()
    samples: list[Sample] = []
    done = False
    async with sluicegate.AsyncLimiter(own_redis.url, timeout=TIMEOUT, registry=registry) as limiter:
        load = asyncio.create_task(adecide_until(limiter, samples, lambda: done, limit_s=30))
        try:
            async with redis.asyncio.Redis(port=own_redis.port) as control:
                await async_wait_until(lambda: len(samples) >= 100, timeout=10, what="healthy decisions")
                for _ in range(10):
                    await async_wait_until(grown_by(lambda: len(samples), 100), timeout=10, what="decisions")
                    await control.client_kill_filter(_type="normal", skipme=True)
                last_kill = time.perf_counter()
                await async_wait_until(
                    lambda: samples[-1].start > last_kill and not samples[-1].degraded,
                    timeout=RECOVERS_WITHIN_S,
                    what="a decision by Redis after the last kill",
                )
                await async_wait_until(grown_by(lambda: len(samples), 100), timeout=10, what="decisions after")
        finally:
            done = True
            await load
    _check_kills("CLIENT KILL x10 under load, AsyncLimiter", samples, last_kill, registry)


def _check_kills(title: str, samples: list[Sample], last_kill: float, registry: CollectorRegistry) -> None:
    recovered = next(s for s in samples if s.start > last_kill and not s.degraded)
    report(
        title,
        decisions=len(samples),
        degraded=sum(s.degraded for s in samples),
        **latency_figures(samples),
        errors=errors_by_kind(registry),
        breaker_opened=int(value(registry, "sluicegate_breaker_transitions_total", state="open")),
        recovery=f"{recovered.end - last_kill:.3f} s",
    )
    assert over_bound(samples) == []
    assert set(errors_by_kind(registry)) <= {"connection"}
    assert sum(s.degraded for s in samples) <= 10  # at most the call in flight at each kill
    assert value(registry, "sluicegate_breaker_transitions_total", state="open") == 0
    assert not any(s.degraded for s in samples[-100:])


# --- one connection dropped mid-request -------------------------------------------------------


def test_a_connection_dropped_mid_request_costs_that_call_only(own_redis: RedisServer):
    """The proxy resets the limiter's connection while its request is in flight (the reply is
    held back 30 ms): that call fails fast (degraded), and the next one reconnects: a dropped
    connection is not a refused one, so it does not open the breaker by itself."""
    registry = CollectorRegistry()
    in_flight: list[sluicegate.Decision] = []
    with (
        FaultProxy(own_redis.port) as proxy,
        sluicegate.Limiter(proxy.url, timeout=TIMEOUT, registry=registry) as limiter,
    ):
        limiter.hit("warm-up", ROOMY)  # connected, script cached
        proxy.add_latency(0.03)
        sent = proxy.forwarded
        caller = threading.Thread(target=lambda: in_flight.append(limiter.hit("in-flight", ROOMY)))
        caller.start()
        wait_until(lambda: proxy.forwarded > sent, timeout=5, what="the request to reach Redis")
        proxy.reset_connections()
        caller.join(timeout=5)
        proxy.pass_through()
        start = time.perf_counter()
        after = limiter.hit("next", ROOMY)
        took = time.perf_counter() - start
    _check_dropped("connection reset mid-request, Limiter", in_flight, after, took, registry)


async def test_a_connection_dropped_mid_request_costs_that_call_only_async(own_redis: RedisServer):
    registry = CollectorRegistry()
    with FaultProxy(own_redis.port) as proxy:
        async with sluicegate.AsyncLimiter(proxy.url, timeout=TIMEOUT, registry=registry) as limiter:
            await limiter.hit("warm-up", ROOMY)
            proxy.add_latency(0.03)
            sent = proxy.forwarded
            caller = asyncio.create_task(limiter.hit("in-flight", ROOMY))
            await async_wait_until(lambda: proxy.forwarded > sent, timeout=5, what="the request to reach Redis")
            proxy.reset_connections()
            in_flight = [await caller]
            proxy.pass_through()
            start = time.perf_counter()
            after = await limiter.hit("next", ROOMY)
            took = time.perf_counter() - start
    _check_dropped("connection reset mid-request, AsyncLimiter", in_flight, after, took, registry)


def _check_dropped(
    title: str,
    in_flight: list[sluicegate.Decision],
    after: sluicegate.Decision,
    took: float,
    registry: CollectorRegistry,
) -> None:
    report(
        title,
        in_flight_degraded=[d.degraded for d in in_flight],
        next_degraded=after.degraded,
        next_took=ms(took),
        errors=errors_by_kind(registry),
        breaker_opened=int(value(registry, "sluicegate_breaker_transitions_total", state="open")),
    )
    assert len(in_flight) == 1
    assert in_flight[0].degraded, "the reset did not fail the request in flight"
    assert errors_by_kind(registry) == {"connection": 1}
    assert not after.degraded, "the decision after the dropped connection was not made by Redis"
    assert value(registry, "sluicegate_breaker_transitions_total", state="open") == 0


# --- the proxy: latency, then a blackhole, then passing again ---------------------------------

LATENCY_S = 0.03
BLACKHOLE_S = 2.0


def _check_proxy_story(
    title: str, samples: list[Sample], marks: dict[str, float], accepted: dict[str, int], registry: CollectorRegistry
) -> None:
    """``marks``: when each phase began; ``accepted``: the proxy's connection count then."""
    slow = [s for s in samples if marks["latency"] <= s.start and s.end <= marks["blackhole"]]
    opened = next(s for s in samples if s.start >= marks["blackhole"] and s.degraded and s.latency < LOCAL)
    opened_after = opened.end - marks["blackhole"]
    open_latencies = [s.latency for s in samples if opened.start <= s.start and s.end <= marks["pass"]]
    recovered = next(s for s in samples if s.start >= marks["pass"] and not s.degraded)
    recovery = recovered.end - marks["pass"]
    report(
        title,
        decisions=len(samples),
        slow_phase=f"{len(slow)} decisions, min {ms(min(s.latency for s in slow))}, max {ms(worst(slow).latency)}",
        **latency_figures(samples),
        breaker_open_after=ms(opened_after),
        p99_open=ms(percentile(open_latencies, 0.99)),
        recovery=f"{recovery:.3f} s",
        connections_during_blackhole=accepted["pass"] - accepted["blackhole"],
        errors=errors_by_kind(registry),
    )
    assert over_bound(samples) == []
    # No connection attempts on the decision path while open: the loop's own reconnects after
    # its first two timeouts, then one probe per 0.8-1.2 s.
    assert accepted["pass"] - accepted["blackhole"] <= 2 + math.ceil(BLACKHOLE_S / 0.8)
    assert not any(s.degraded for s in slow)
    assert all(s.latency >= LATENCY_S for s in slow)
    assert opened_after <= 0.250
    assert percentile(open_latencies, 0.99) < 0.001
    assert recovery <= RECOVERS_WITHIN_S
    assert not any(s.degraded for s in samples[-50:])
    assert set(errors_by_kind(registry)) == {"timeout"}
    assert value(registry, "sluicegate_breaker_transitions_total", state="open") == 1
    assert value(registry, "sluicegate_breaker_transitions_total", state="closed") == 1


def test_proxy_latency_then_blackhole_then_pass(own_redis: RedisServer):
    registry = CollectorRegistry()
    samples: list[Sample] = []
    marks: dict[str, float] = {}
    accepted: dict[str, int] = {}
    with (
        FaultProxy(own_redis.port) as proxy,
        sluicegate.Limiter(proxy.url, timeout=TIMEOUT, registry=registry) as limiter,
        no_gc(),
    ):
        decide_until(limiter, samples, lambda: len(samples) >= 200, limit_s=10)
        marks["latency"] = time.perf_counter()
        proxy.add_latency(LATENCY_S)
        decide_until(limiter, samples, lambda: len(samples) >= 220, limit_s=10)
        accepted["blackhole"] = proxy.accepted
        marks["blackhole"] = time.perf_counter()
        proxy.blackhole()
        decide_until(limiter, samples, lambda: time.perf_counter() - marks["blackhole"] >= BLACKHOLE_S, limit_s=10)
        accepted["pass"] = proxy.accepted
        marks["pass"] = time.perf_counter()
        proxy.pass_through()
        decide_until(limiter, samples, lambda: not samples[-1].degraded, limit_s=RECOVERS_WITHIN_S + 1)
        target = len(samples) + 200
        decide_until(limiter, samples, lambda: len(samples) >= target, limit_s=10)
    _check_proxy_story("proxy latency 30 ms -> blackhole 2 s -> pass, Limiter", samples, marks, accepted, registry)


async def test_proxy_latency_then_blackhole_then_pass_async(own_redis: RedisServer):
    registry = CollectorRegistry()
    samples: list[Sample] = []
    marks: dict[str, float] = {}
    accepted: dict[str, int] = {}
    with FaultProxy(own_redis.port) as proxy:
        async with sluicegate.AsyncLimiter(proxy.url, timeout=TIMEOUT, registry=registry) as limiter:
            with no_gc():
                await adecide_until(limiter, samples, lambda: len(samples) >= 200, limit_s=10)
                marks["latency"] = time.perf_counter()
                proxy.add_latency(LATENCY_S)
                await adecide_until(limiter, samples, lambda: len(samples) >= 220, limit_s=10)
                accepted["blackhole"] = proxy.accepted
                marks["blackhole"] = time.perf_counter()
                proxy.blackhole()
                await adecide_until(
                    limiter, samples, lambda: time.perf_counter() - marks["blackhole"] >= BLACKHOLE_S, limit_s=10
                )
                accepted["pass"] = proxy.accepted
                marks["pass"] = time.perf_counter()
                proxy.pass_through()
                await adecide_until(limiter, samples, lambda: not samples[-1].degraded, limit_s=RECOVERS_WITHIN_S + 1)
                target = len(samples) + 200
                await adecide_until(limiter, samples, lambda: len(samples) >= target, limit_s=10)
    _check_proxy_story("proxy latency 30 ms -> blackhole 2 s -> pass, AsyncLimiter", samples, marks, accepted, registry)
