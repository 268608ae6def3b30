"""Helpers for the fault-injection suite: timed decision loops, waiting on conditions, metrics.

Latency is measured with ``time.perf_counter`` around each call. Two things that are the test
machine's doing, not the store's, are kept out of it:

- the cyclic garbage collector is off in the measured loops (``no_gc``): a collection pass in
  the middle of a decision is the test process's pause;
- the machine is shared (2 cores, other suites running): a thread whose socket timeout fired
  may then wait for a CPU. Linux counts that time (``/proc/thread-self/schedstat``, the time
  spent runnable but not running), and each ``Sample`` carries as ``cpu_wait`` the part of it
  that must have fallen inside the call. The bound is checked on ``latency - cpu_wait``; the raw
  latency is reported beside it (``raw_over_bound`` counts the decisions over it raw). Waiting
  for the GIL is a sleep, not a run-queue wait, so it is *not* subtracted.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import math
import os
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry

import sluicegate
from sluicegate.stores import Item, MemoryStore
from tests.redis_server import RedisServer, free_port

#: Every limiter in this suite uses the library's default store timeout.
TIMEOUT = 0.05
#: No decision may take longer than this, whatever the store does (the issue's requirement).
BOUND = TIMEOUT + 0.010
#: A decision that took less than this did not wait for the store.
LOCAL = 0.005
#: Plenty for any key in a load loop: nothing is throttled, so nothing is in the blocked-key cache.
ROOMY = sluicegate.Policy.parse("1000000/minute name roomy")


def dead_url() -> str:
    """A Redis URL on a loopback port nobody listens on: every connect is refused."""
    return f"redis://127.0.0.1:{free_port()}/0"


def grown_by(count: Callable[[], int], n: int) -> Callable[[], bool]:
    """A condition for ``wait_until``: ``count()`` has grown by ``n`` since this call."""
    target = count() + n
    return lambda: count() >= target


@contextlib.contextmanager
def no_gc() -> Iterator[None]:
    """The cyclic garbage collector off for a measured stretch (reference counting still frees)."""
    enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def freeze(server: RedisServer) -> float:
    """SIGSTOP ``server`` (``stop`` returns once the kernel has stopped it); returns the
    ``perf_counter`` time of the signal. The caller must ``cont()`` it in a ``finally`` (this
    does, if it fails)."""
    at = time.perf_counter()
    try:
        server.stop()
    except BaseException:
        server.cont()
        raise
    return at


# --- timed decisions --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sample:
    """One timed decision (``perf_counter`` seconds)."""

    start: float
    end: float
    degraded: bool
    allowed: bool
    #: seconds the deciding thread spent runnable, waiting for a CPU, during the call
    cpu_wait: float = 0.0

    @property
    def latency(self) -> float:
        return self.end - self.start

    @property
    def own_latency(self) -> float:
        """The latency without the time the machine kept the thread off the CPU."""
        return self.latency - self.cpu_wait


def runqueue_seconds() -> float:
    """Seconds this thread has spent runnable but waiting for a CPU (schedstat's 2nd field)."""
    with open("/proc/thread-self/schedstat", "rb") as stat:
        return int(stat.read().split()[1]) / 1e9


def _cpu_wait_inside(before: float, start: float, end: float, after: float, queued: float) -> float:
    """The run-queue wait ``queued`` was measured over [before, after]; only what cannot have
    happened outside [start, end] (the two reads of the counter) is counted against the call."""
    return max(queued - (start - before) - (after - end), 0.0)


def timed(call: Callable[..., sluicegate.Decision], *args: Any) -> Sample:
    """``call(*args)``, timed."""
    before = time.perf_counter()
    queued = runqueue_seconds()
    start = time.perf_counter()
    decision = call(*args)
    end = time.perf_counter()
    queued = runqueue_seconds() - queued
    cpu_wait = _cpu_wait_inside(before, start, end, time.perf_counter(), queued)
    return Sample(start, end, decision.degraded, decision.allowed, cpu_wait)


async def atimed(call: Callable[..., Awaitable[sluicegate.Decision]], *args: Any) -> Sample:
    """``await call(*args)``, timed."""
    before = time.perf_counter()
    queued = runqueue_seconds()
    start = time.perf_counter()
    decision = await call(*args)
    end = time.perf_counter()
    queued = runqueue_seconds() - queued
    cpu_wait = _cpu_wait_inside(before, start, end, time.perf_counter(), queued)
    return Sample(start, end, decision.degraded, decision.allowed, cpu_wait)


def percentile(values: Sequence[float], share: float) -> float:
    """The nearest-rank percentile (``share`` in (0, 1]) of ``values``."""
    ordered = sorted(values)
    return ordered[max(math.ceil(share * len(ordered)) - 1, 0)]


def worst(samples: Sequence[Sample]) -> Sample:
    return max(samples, key=lambda s: s.latency)


def over_bound(samples: Sequence[Sample], bound: float = BOUND) -> list[str]:
    """Descriptions of the decisions that took longer than ``bound``, not counting the time the
    machine kept the thread off the CPU (empty when none did)."""
    t0 = samples[0].start if samples else 0.0
    return [
        f"#{i} at +{(s.start - t0) * 1000:.1f} ms took {s.latency * 1000:.2f} ms, of which "
        f"{s.cpu_wait * 1000:.2f} ms waiting for a CPU (degraded={s.degraded})"
        for i, s in enumerate(samples)
        if s.own_latency > bound
    ]


def latency_figures(samples: Sequence[Sample]) -> dict[str, object]:
    """The worst latency, raw and without CPU waits, and the decisions over the bound raw."""
    raw = worst(samples)
    return {
        "worst": ms(raw.latency),
        "worst_without_cpu_wait": ms(max(s.own_latency for s in samples)),
        "max_cpu_wait": ms(max(s.cpu_wait for s in samples)),
        "raw_over_bound": sum(s.latency > BOUND for s in samples),
    }


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def report(title: str, **figures: object) -> None:
    """One line of measured figures, shown by ``pytest -s`` (and in the captured output otherwise)."""
    print(f"\n[faults] {title}: " + ", ".join(f"{name}={value}" for name, value in figures.items()))


def decide_until(
    limiter: sluicegate.Limiter,
    samples: list[Sample],
    done: Callable[[], bool],
    *,
    limit_s: float,
    policy: sluicegate.Policy = ROOMY,
    keys: int = 64,
) -> None:
    """Hit ``keys`` keys in turn, timing each decision, until ``done()``; fails after ``limit_s``."""
    deadline = time.perf_counter() + limit_s
    index = len(samples)
    while not done():
        if time.perf_counter() > deadline:
            raise AssertionError(f"the condition did not hold within {limit_s} s of decisions")
        key = f"user:{index % keys}"
        index += 1
        samples.append(timed(limiter.hit, key, policy))


async def adecide_until(
    limiter: sluicegate.AsyncLimiter,
    samples: list[Sample],
    done: Callable[[], bool],
    *,
    limit_s: float,
    policy: sluicegate.Policy = ROOMY,
    keys: int = 64,
) -> None:
    """``decide_until`` for ``AsyncLimiter``. Between decisions the loop yields once, as a server
    awaiting its next request does: a decision answered by the fallback never awaits anything,
    so a loop of them alone would never let the breaker's probe task run."""
    deadline = time.perf_counter() + limit_s
    index = len(samples)
    while not done():
        if time.perf_counter() > deadline:
            raise AssertionError(f"the condition did not hold within {limit_s} s of decisions")
        key = f"user:{index % keys}"
        index += 1
        samples.append(await atimed(limiter.hit, key, policy))
        await asyncio.sleep(0)


class LoadThread(threading.Thread):
    """Decisions in a loop on a thread of their own until ``stop()``; every one timed, and any
    exception kept (the decision path must never raise).

    The load is paced: one decision every ``period`` seconds (the arrival rate of a steady load;
    a decision that runs late is not made up for). Unpaced, several threads spinning on decisions
    answered locally keep the GIL busy, and a thread coming back from a blocking socket call
    waits up to the switch interval (5 ms) to run again, once per system call: measured here,
    timed-out decisions then took up to 78 ms with 4 spinning threads, which is the test
    process's own convoy, not the store's doing. ``period=None`` spins anyway.
    """

    def __init__(
        self,
        limiter: sluicegate.Limiter,
        *,
        policy: sluicegate.Policy = ROOMY,
        keys: int = 64,
        period: float | None = 0.001,
    ) -> None:
        super().__init__(name="fault-load", daemon=True)
        self.limiter = limiter
        self.policy = policy
        self.keys = keys
        self.period = period
        self.samples: list[Sample] = []
        self.errors: list[BaseException] = []
        self._stop_event = threading.Event()

    def run(self) -> None:
        index = 0
        next_at = time.perf_counter()
        while not self._stop_event.is_set():
            key = f"user:{index % self.keys}"
            index += 1
            try:
                sample = timed(self.limiter.hit, key, self.policy)
            except BaseException as exc:
                self.errors.append(exc)
                return
            self.samples.append(sample)
            if self.period is not None:
                next_at = max(next_at + self.period, sample.end)
                self._stop_event.wait(next_at - sample.end)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=10)
        assert not self.is_alive(), "the load thread did not stop"

    def count(self) -> int:
        return len(self.samples)

    def __enter__(self) -> LoadThread:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


# --- metrics ----------------------------------------------------------------------------------


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    """A sample's value, 0 when the series does not exist (yet)."""
    found = registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


def series_count(registry: CollectorRegistry) -> int:
    """Every sample the registry exposes (what a scrape would return, line for line)."""
    return sum(len(metric.samples) for metric in registry.collect())


def errors_by_kind(registry: CollectorRegistry, store: str = "redis") -> dict[str, int]:
    return {
        kind: int(count)
        for kind in sluicegate.StoreError.KINDS
        if (count := value(registry, "sluicegate_store_errors_total", store=store, error=kind))
    }


# --- a store the test scripts -----------------------------------------------------------------


def scripted_error(fail_kind: str) -> sluicegate.StoreError:
    """The ``StoreError`` a scripted store raises: ``fail_kind`` is a ``StoreError`` kind, or
    "refused" for a connection that could not be made at all (kind "connection", refused)."""
    if fail_kind == "refused":
        return sluicegate.StoreError("scripted refused connection", kind="connection", refused=True)
    return sluicegate.StoreError(f"scripted {fail_kind} failure", kind=fail_kind)


@dataclass
class ScriptedStore:
    """A synchronous store that fails with ``scripted_error(fail_kind)`` while ``fail_kind`` is
    set, else decides in memory. ``calls`` counts every ``decide`` (the limiter's and its probe's)."""

    fail_kind: str | None = None
    calls: int = 0
    memory: MemoryStore = field(default_factory=MemoryStore)

    def decide(self, items: Sequence[Item], now: int | None, *, commit: bool) -> list[Any]:
        self.calls += 1
        if self.fail_kind is not None:
            raise scripted_error(self.fail_kind)
        return self.memory.decide(items, now, commit=commit)

    def reset(self, keys: Sequence[str]) -> None:
        self.memory.reset(keys)

    def close(self) -> None:
        pass


@dataclass
class AsyncScriptedStore:
    """``ScriptedStore`` for ``AsyncLimiter``."""

    fail_kind: str | None = None
    calls: int = 0
    memory: MemoryStore = field(default_factory=MemoryStore)

    async def decide(self, items: Sequence[Item], now: int | None, *, commit: bool) -> list[Any]:
        self.calls += 1
        if self.fail_kind is not None:
            raise scripted_error(self.fail_kind)
        return self.memory.decide(items, now, commit=commit)

    async def reset(self, keys: Sequence[str]) -> None:
        self.memory.reset(keys)

    async def aclose(self) -> None:
        pass


# --- a worker process for the local-fallback fleet test ---------------------------------------


def admitted_locally(url: str, policies: Sequence[str], share: float, hits: int, barrier: Any, results: Any) -> None:
    """A fleet member, in a process of its own: ``hits`` hits on one key per policy against
    ``url`` with ``fallback="local"`` at ``fallback_share=share``, started together with the
    others at ``barrier``. Puts (pid, {policy: (admitted, degraded)}) on ``results``."""
    logging.getLogger("sluicegate").setLevel(logging.ERROR)  # the breaker's warning, once per process
    counts: dict[str, tuple[int, int]] = {}
    try:
        with sluicegate.Limiter(url, fallback="local", fallback_share=share, registry=None) as limiter:
            barrier.wait(timeout=60)
            for policy in policies:
                decisions = [limiter.hit("fleet-key", policy) for _ in range(hits)]
                counts[policy] = (sum(d.allowed for d in decisions), sum(d.degraded for d in decisions))
    except BaseException as exc:  # reported by the test rather than lost in the child
        barrier.abort()
        results.put((os.getpid(), f"{type(exc).__name__}: {exc}"))
        return
    results.put((os.getpid(), counts))
