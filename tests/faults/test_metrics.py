"""The Prometheus metrics count what actually happened, exactly, and stay bounded; the
``on_throttle`` hook sees every throttled decision and can never break one.

Each test has a fresh ``CollectorRegistry`` (``registry=``). Degraded decisions come from a
dead store (a refused port, ``fallback="local"``); store errors of chosen kinds from a scripted
store (``store`` label ``custom``).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import Counter

import pytest
from prometheus_client import CollectorRegistry

import sluicegate
from tests.faults._support import AsyncScriptedStore, ScriptedStore, dead_url, report, series_count, value
from tests.waiting import async_wait_until, wait_until

pytestmark = pytest.mark.faults

FIVE = sluicegate.Policy.parse("5/minute name five")
THREE = sluicegate.Policy.parse("3/minute algorithm sliding-log name three")
TEN = sluicegate.Policy.parse("10/minute name ten")
DECISIONS = "sluicegate_decisions_total"


def _decision_samples(registry: CollectorRegistry) -> dict[tuple[str, str, str], int]:
    """{(policy, outcome, degraded): count} for every non-zero ``sluicegate_decisions_total`` series."""
    found: dict[tuple[str, str, str], int] = {}
    for metric in registry.collect():
        for sample in metric.samples:
            if sample.name == DECISIONS and sample.value:
                labels = sample.labels
                found[(labels["policy"], labels["outcome"], labels["degraded"])] = int(sample.value)
    return found


def _near_limit(registry: CollectorRegistry, policy: str) -> int:
    return int(value(registry, "sluicegate_near_limit_total", policy=policy))


def _histogram_count(registry: CollectorRegistry, store: str) -> int:
    return int(value(registry, "sluicegate_decision_duration_seconds_count", store=store))


# --- decisions_total --------------------------------------------------------------------------


def test_hit_all_counting_rule():
    """Allowed: once per item, as allowed. Denied: once per denying item, as throttled; items
    that had room count nothing (nothing was consumed)."""
    registry = CollectorRegistry()
    with sluicegate.Limiter("memory://", registry=registry) as limiter:
        allowed = limiter.hit_all([("a", FIVE), ("a", THREE)])
        assert allowed.allowed
        assert _decision_samples(registry) == {("five", "allowed", "false"): 1, ("three", "allowed", "false"): 1}

        limiter.hit("a", THREE, cost=2)  # three is now full, five has room
        one_denies = limiter.hit_all([("a", FIVE), ("a", THREE)])
        assert not one_denies.allowed
        assert _decision_samples(registry) == {
            ("five", "allowed", "false"): 1,
            ("three", "allowed", "false"): 2,
            ("three", "throttled", "false"): 1,
        }

        limiter.hit("a", FIVE, cost=4)  # five full too
        both_deny = limiter.hit_all([("a", FIVE), ("a", THREE)])
        assert not both_deny.allowed
        assert _decision_samples(registry) == {
            ("five", "allowed", "false"): 2,
            ("five", "throttled", "false"): 1,
            ("three", "allowed", "false"): 2,
            ("three", "throttled", "false"): 2,
        }
    assert _histogram_count(registry, "memory") == 5


def test_degraded_decisions_are_labelled_degraded():
    registry = CollectorRegistry()
    with sluicegate.Limiter(dead_url(), fallback="local", fallback_share=0.5, registry=registry) as limiter:
        decisions = [limiter.hit("k", TEN) for _ in range(8)]
        together = limiter.hit_all([("x", FIVE), ("x", THREE)])
    assert all(d.degraded for d in [*decisions, together])
    assert _decision_samples(registry) == {
        ("ten", "allowed", "true"): 5,
        ("ten", "throttled", "true"): 3,
        ("five", "allowed", "true"): 1,
        ("three", "allowed", "true"): 1,
    }
    assert _histogram_count(registry, "redis") == 9


def _expected(decisions: list[sluicegate.Decision]) -> tuple[Counter[tuple[str, str, str]], Counter[str]]:
    """The documented rule, applied to the decisions as returned."""
    counts: Counter[tuple[str, str, str]] = Counter()
    near: Counter[str] = Counter()
    for decision in decisions:
        degraded = "true" if decision.degraded else "false"
        for item in decision.results or (decision,):
            if decision.allowed or not item.allowed:
                name = item.policy.name or str(item.policy)
                counts[(name, "allowed" if item.allowed else "throttled", degraded)] += 1
                if item.allowed and item.remaining <= item.limit * 0.2:
                    near[name] += 1
    return counts, near


def test_counters_match_a_random_workload_exactly():
    """2,000 random hits and hit_alls through a healthy limiter and a degraded one sharing a
    registry: every counter equals what the returned decisions say, per policy, outcome and
    degraded; the histogram counts every decision of each store."""
    registry = CollectorRegistry()
    rng = random.Random("metrics")
    made: dict[str, list[sluicegate.Decision]] = {"memory": [], "redis": []}
    with (
        sluicegate.Limiter("memory://", registry=registry) as healthy,
        sluicegate.Limiter(dead_url(), fallback="local", fallback_share=0.5, registry=registry) as degraded,
    ):
        for _ in range(2_000):
            store, limiter = rng.choice((("memory", healthy), ("redis", degraded)))
            key = f"k{rng.randrange(60)}"
            if rng.random() < 0.7:
                decision = limiter.hit(key, rng.choice((FIVE, THREE, TEN)), cost=rng.choice((1, 1, 1, 2)))
            else:
                items = [(f"k{rng.randrange(60)}", rng.choice((FIVE, THREE, TEN))) for _ in range(rng.randint(1, 3))]
                decision = limiter.hit_all(items)
            made[store].append(decision)
    counts, near = _expected(made["memory"] + made["redis"])
    report(
        "metrics, random workload",
        decisions={store: len(ds) for store, ds in made.items()},
        series=dict(sorted(counts.items())),
    )
    assert _decision_samples(registry) == dict(counts)
    for policy in ("five", "three", "ten"):
        assert _near_limit(registry, policy) == near[policy]
    assert _histogram_count(registry, "memory") == len(made["memory"])
    assert _histogram_count(registry, "redis") == len(made["redis"])
    assert {c[1] for c in counts} == {"allowed", "throttled"}
    assert {c[2] for c in counts} == {"true", "false"}


def test_near_limit_counts_allowed_decisions_with_a_fifth_or_less_left():
    registry = CollectorRegistry()
    with sluicegate.Limiter("memory://", registry=registry) as limiter:
        assert [limiter.hit("k", TEN).remaining for _ in range(12)] == [9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 0, 0]
    assert _near_limit(registry, "ten") == 3  # remaining 2, 1, 0 of 10
    registry = CollectorRegistry()
    with sluicegate.Limiter(dead_url(), fallback_share=0.5, registry=registry) as limiter:
        assert [limiter.hit("k", TEN).remaining for _ in range(6)] == [4, 3, 2, 1, 0, 0]
    assert _near_limit(registry, "ten") == 2  # remaining 1, 0 of the local 5


def test_a_raised_store_error_is_not_a_decision():
    registry = CollectorRegistry()
    with sluicegate.Limiter(dead_url(), fallback="raise", registry=registry) as limiter:
        for _ in range(3):
            with pytest.raises(sluicegate.StoreError):
                limiter.hit("k", TEN)
    assert _decision_samples(registry) == {}
    assert _histogram_count(registry, "redis") == 0
    assert value(registry, "sluicegate_store_errors_total", store="redis", error="connection") == 1


# --- store errors, the breaker and the gauge --------------------------------------------------


def test_store_errors_by_kind_breaker_transitions_and_gauge():
    registry = CollectorRegistry()
    store = ScriptedStore()
    with sluicegate.Limiter(store, registry=registry) as limiter:
        assert registry.get_sample_value("sluicegate_fallback_active", {"store": "custom"}) == 0
        for kind in ("timeout", "timeout"):
            store.fail_kind = kind
            assert limiter.hit("k", TEN).degraded
        store.fail_kind = None
        assert not limiter.hit("k", TEN).degraded  # a success: the failures in a row start again
        for kind in ("oom", "readonly"):
            store.fail_kind = kind
            assert limiter.hit("k", TEN).degraded
        assert value(registry, "sluicegate_breaker_transitions_total", state="open") == 0
        store.fail_kind = "busy"
        assert limiter.hit("k", TEN).degraded  # the third in a row: open
        assert value(registry, "sluicegate_breaker_transitions_total", state="open") == 1
        assert value(registry, "sluicegate_fallback_active", store="custom") == 1
        calls = store.calls
        for _ in range(100):
            assert limiter.hit("k", TEN).degraded
        assert store.calls == calls  # while open, decisions never call the store
        store.fail_kind = None  # the next probe succeeds
        wait_until(
            lambda: value(registry, "sluicegate_fallback_active", store="custom") == 0,
            timeout=3,
            what="the probe to close the breaker",
        )
        assert value(registry, "sluicegate_breaker_transitions_total", state="closed") == 1

        store.fail_kind = "refused"  # a refused connect opens it at once
        assert limiter.hit("k", TEN).degraded
        assert value(registry, "sluicegate_breaker_transitions_total", state="open") == 2
        assert value(registry, "sluicegate_fallback_active", store="custom") == 1
        store.fail_kind = None
        wait_until(
            lambda: value(registry, "sluicegate_fallback_active", store="custom") == 0,
            timeout=3,
            what="the probe to close the breaker",
        )
    errors = {
        kind: value(registry, "sluicegate_store_errors_total", store="custom", error=kind)
        for kind in sluicegate.StoreError.KINDS
    }
    assert errors == {
        "timeout": 2,
        "connection": 1,
        "readonly": 1,
        "oom": 1,
        "busy": 1,
        "noscript": 0,
        "cluster": 0,
        "pool": 0,
        "other": 0,
    }
    assert value(registry, "sluicegate_breaker_transitions_total", state="closed") == 2


async def test_store_errors_breaker_and_gauge_async():
    registry = CollectorRegistry()
    store = AsyncScriptedStore(fail_kind="timeout")
    async with sluicegate.AsyncLimiter(store, registry=registry) as limiter:
        for _ in range(3):
            assert (await limiter.hit("k", TEN)).degraded
        assert value(registry, "sluicegate_fallback_active", store="custom") == 1
        probe_errors = value(registry, "sluicegate_store_errors_total", store="custom", error="timeout")
        await async_wait_until(
            lambda: value(registry, "sluicegate_store_errors_total", store="custom", error="timeout") > probe_errors,
            timeout=3,
            what="a failed probe to be counted",
        )
        store.fail_kind = None
        await async_wait_until(
            lambda: value(registry, "sluicegate_fallback_active", store="custom") == 0,
            timeout=3,
            what="the probe to close the breaker",
        )
        assert not (await limiter.hit("k", TEN)).degraded
    assert value(registry, "sluicegate_breaker_transitions_total", state="open") == 1
    assert value(registry, "sluicegate_breaker_transitions_total", state="closed") == 1


# --- cardinality ------------------------------------------------------------------------------


def test_series_count_stays_flat_after_100_000_new_keys():
    registry = CollectorRegistry()
    one = sluicegate.Policy.parse("1/minute name one")
    with (
        sluicegate.Limiter("memory://", registry=registry) as healthy,
        sluicegate.Limiter(dead_url(), registry=registry) as degraded,
    ):
        for limiter in (healthy, degraded):  # every series the workload can touch, once
            limiter.hit("warm-up", one)
            limiter.hit("warm-up", one)
        before = series_count(registry)
        for i in range(100_000):
            healthy.hit(f"user:{i}", one)
        for i in range(20_000):
            degraded.hit(f"user:{i}", one)
        after = series_count(registry)
    report("metrics cardinality", series_before=before, series_after=after, new_keys="100,000 + 20,000 degraded")
    assert after == before
    assert _histogram_count(registry, "memory") == 100_002
    assert _histogram_count(registry, "redis") == 20_002


# --- on_throttle ------------------------------------------------------------------------------


def test_on_throttle_receives_each_throttled_decision():
    seen: list[sluicegate.Decision] = []
    with sluicegate.Limiter("memory://", registry=None, on_throttle=seen.append) as limiter:
        made = [limiter.hit("k", FIVE) for _ in range(8)]
        made.append(limiter.hit_all([("k", FIVE), ("j", THREE)]))
        made.append(limiter.hit("j", THREE, cost=3))
        made.append(limiter.hit("j", THREE))
    throttled = [d for d in made if not d.allowed]
    assert len(throttled) == 5
    assert seen == throttled
    assert all(a is b for a, b in zip(seen, throttled, strict=True))


def test_on_throttle_receives_degraded_denials():
    seen: list[sluicegate.Decision] = []
    with sluicegate.Limiter(dead_url(), fallback="deny", registry=None, on_throttle=seen.append) as limiter:
        made = [limiter.hit("k", FIVE) for _ in range(3)]
    assert seen == made
    assert all(d.degraded and not d.allowed for d in seen)


def test_a_raising_hook_is_logged_and_never_raised(caplog):
    def hook(decision: sluicegate.Decision) -> None:
        raise RuntimeError(f"hook failed for {decision.key}")

    registry = CollectorRegistry()
    with (
        caplog.at_level(logging.ERROR, logger="sluicegate"),
        sluicegate.Limiter("memory://", registry=registry, on_throttle=hook) as limiter,
    ):
        made = [limiter.hit("k", FIVE) for _ in range(7)]
    assert [d.allowed for d in made] == [True] * 5 + [False] * 2
    failures = [r for r in caplog.records if "on_throttle" in r.getMessage()]
    assert len(failures) == 2
    assert all(r.exc_info is not None and isinstance(r.exc_info[1], RuntimeError) for r in failures)
    assert _decision_samples(registry) == {("five", "allowed", "false"): 5, ("five", "throttled", "false"): 2}


async def test_an_async_hook_is_awaited():
    seen: list[sluicegate.Decision] = []

    async def hook(decision: sluicegate.Decision) -> None:
        await asyncio.sleep(0)
        seen.append(decision)

    async with sluicegate.AsyncLimiter("memory://", registry=None, on_throttle=hook) as limiter:
        made = []
        for _ in range(7):
            made.append(await limiter.hit("k", FIVE))
            assert len(seen) == sum(not d.allowed for d in made)  # done before hit() returned
    assert seen == [d for d in made if not d.allowed]
    assert len(seen) == 2


async def test_a_raising_async_hook_is_logged_and_never_raised(caplog):
    async def hook(decision: sluicegate.Decision) -> None:
        await asyncio.sleep(0)
        raise RuntimeError("async hook failed")

    with caplog.at_level(logging.ERROR, logger="sluicegate"):
        async with sluicegate.AsyncLimiter("memory://", registry=None, on_throttle=hook) as limiter:
            made = [await limiter.hit("k", FIVE) for _ in range(7)]
    assert [d.allowed for d in made] == [True] * 5 + [False] * 2
    assert len([r for r in caplog.records if "on_throttle" in r.getMessage()]) == 2


async def test_a_sync_hook_works_with_the_async_limiter():
    seen: list[sluicegate.Decision] = []
    async with sluicegate.AsyncLimiter("memory://", registry=None, on_throttle=seen.append) as limiter:
        made = [await limiter.hit("k", FIVE) for _ in range(7)]
    assert seen == [d for d in made if not d.allowed]
