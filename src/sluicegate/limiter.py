"""``Limiter`` and ``AsyncLimiter``: resolve keys, policies and costs, ask the store, answer.

Everything that does no I/O lives in ``_LimiterCore``: validation, ``hit_all`` merging, the
blocked-key cache, the circuit breaker's bookkeeping, the fallbacks and the metrics. The two
limiters only add the calls into their store and the background probe (a thread or a task),
the shape of httpx's ``BaseClient`` / ``Client`` / ``AsyncClient``.

When the store fails, a decision is made by the ``fallback`` and marked ``degraded``:

- ``"local"``: an in-process store, each policy's limit and burst scaled by ``fallback_share``
  (N gateway instances set 1/N, so the fleet stays near the real limit);
- ``"allow"`` (fail open), ``"deny"`` (fail closed; ``retry_after`` is the time to the next probe);
- ``"raise"``: ``StoreError`` reaches the caller.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from functools import lru_cache
from types import TracebackType
from typing import Any, Literal, Self, TypeVar, get_args

from prometheus_client import REGISTRY, CollectorRegistry

from ._blocked import BlockedKeys
from ._breaker import Breaker
from ._decision import Decision
from ._errors import ConfigError, CostError, InputError, PolicyError, StoreError, describe
from ._keys import check_prefix, state_keys
from ._policy import Policy
from .algorithms import Verdict
from .metrics import Metrics, metrics_for
from .stores import AsyncStore, Item, MemoryStore, Store, open_async_store, open_store, store_kind

__all__ = ["FALLBACKS", "AsyncLimiter", "Clock", "Fallback", "Limiter", "PolicyLike"]

log = logging.getLogger("sluicegate")

PolicyLike = Policy | str
#: "server": the store's clock (Redis TIME; the process clock for memory://).
#: "client": this process's wall clock. A callable: seconds since the epoch (tests, simulations).
Clock = Literal["server", "client"] | Callable[[], float]
Fallback = Literal["local", "allow", "deny", "raise"]
ItemLike = tuple[str, PolicyLike] | tuple[str, PolicyLike, int]
_S = TypeVar("_S", Store, AsyncStore)

#: Every fallback mode, in one place (the service's config and settings check against it too).
FALLBACKS: tuple[Fallback, ...] = get_args(Fallback)
#: The probe is a real decision (a script run that writes), so a store that answers PING but
#: cannot run scripts or write (READONLY, OOM) is not mistaken for healthy. Its key expires at once.
_PROBE_POLICY = Policy(1_000_000_000, 1.0, name="sluicegate-probe")


def _policy(policy: object) -> Policy:
    if isinstance(policy, Policy):
        return policy
    if isinstance(policy, str):
        return Policy.parse(policy)
    raise PolicyError(f"policy must be a Policy or a policy string; got {describe(policy)}")


def _check_cost(cost: object, policy: Policy) -> int:
    if isinstance(cost, bool) or not isinstance(cost, int) or cost < 1:
        raise CostError(f"cost must be a positive int; got {describe(cost)}")
    if cost > policy.capacity:
        raise CostError(
            f"cost {cost} exceeds the capacity {policy.capacity} of policy '{policy}': it could never be allowed"
        )
    return cost


@lru_cache(maxsize=1024)
def _scaled(policy: Policy, share: float) -> Policy:
    """``policy`` with its limit and burst scaled by ``share`` (at least 1), for the local fallback."""
    burst = None if policy.burst is None else max(math.floor(policy.burst * share), 1)
    return dataclasses.replace(policy, limit=max(math.floor(policy.limit * share), 1), burst=burst)


def _as_store(store: _S) -> _S:
    if not all(callable(getattr(store, method, None)) for method in ("decide", "reset")):
        raise ConfigError(f"url must be a store URL (str) or a store; got {describe(store)}")
    return store


class _LimiterCore:
    """Everything ``Limiter`` and ``AsyncLimiter`` share that does no I/O."""

    __slots__ = (
        "_blocked",
        "_breaker",
        "_clock",
        "_duration",
        "_failure_counted_at",
        "_local",
        "_metrics",
        "_on_throttle",
        "_probe_item",
        "_store_label",
        "_transition_lock",
        "fallback",
        "fallback_share",
        "prefix",
        "timeout",
    )

    def __init__(
        self,
        *,
        prefix: str,
        clock: Clock,
        timeout: float,
        fallback: Fallback,
        fallback_share: float,
        registry: CollectorRegistry | None,
        on_throttle: Callable[[Decision], Any] | None,
        store_label: str,
    ) -> None:
        self.prefix = check_prefix(prefix)
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout <= 60:
            raise ConfigError(f"timeout must be seconds in (0, 60]; got {describe(timeout)}")
        self.timeout = float(timeout)
        if clock == "server":
            self._clock: Callable[[], float] | None = None
        elif clock == "client":
            self._clock = time.time
        elif callable(clock):
            self._clock = clock
        else:
            raise ConfigError(f"clock must be 'server', 'client' or a callable; got {describe(clock)}")
        if fallback not in FALLBACKS:
            raise ConfigError(f"fallback must be one of {', '.join(FALLBACKS)}; got {describe(fallback)}")
        self.fallback = fallback
        share_ok = isinstance(fallback_share, int | float) and not isinstance(fallback_share, bool)
        if not share_ok or not 0 < fallback_share <= 1:
            raise ConfigError(f"fallback_share must be a number in (0, 1]; got {describe(fallback_share)}")
        self.fallback_share = float(fallback_share)
        if on_throttle is not None and not callable(on_throttle):
            raise ConfigError(f"on_throttle must be callable; got {describe(on_throttle)}")
        self._on_throttle = on_throttle
        self._metrics: Metrics | None = None if registry is None else metrics_for(registry)
        self._store_label = store_label
        # Its label never changes: looked up once, not on every decision.
        self._duration = None if self._metrics is None else self._metrics.duration.labels(store_label)
        self._breaker = Breaker()
        # When the breaker last counted a failure (perf_counter): decisions already in flight
        # then failed with it, not after it (see ``_failed``).
        self._failure_counted_at = -math.inf
        self._transition_lock = threading.Lock()
        self._blocked = BlockedKeys()
        self._local = MemoryStore()
        self._probe_item = Item(state_keys(self.prefix, _PROBE_POLICY, "probe"), _PROBE_POLICY, 1)
        if self._metrics is not None:
            self._metrics.fallback_active.labels(store_label).set(0)

    # --- time ---------------------------------------------------------------------------------

    def _now(self) -> int | None:
        """The caller's time in µs, or None to let the store read its own clock."""
        return None if self._clock is None else round(self._clock() * 1_000_000)

    def _local_now(self) -> int:
        """µs for what is decided here (blocked keys, the local fallback): the injected clock, else
        the wall clock (windows stay aligned with the shared store's)."""
        return time.time_ns() // 1000 if self._clock is None else round(self._clock() * 1_000_000)

    # --- requests -----------------------------------------------------------------------------

    def _item(self, key: str, policy: PolicyLike, cost: int) -> Item:
        resolved = _policy(policy)
        return Item(state_keys(self.prefix, resolved, key), resolved, _check_cost(cost, resolved))

    def _batch(self, items: Iterable[ItemLike], cost: int) -> tuple[list[Item], list[tuple[str, int]]]:
        """Resolve ``hit_all`` items. Items sharing state (same key and policy) are merged into
        one with the summed cost, which is what deciding them one after the other would do.
        Returns the merged items and, per given item, its key and merged index."""
        merged: list[Item] = []
        where: dict[tuple[str, ...], int] = {}
        given: list[tuple[str, int]] = []
        for position, entry in enumerate(items):
            if not isinstance(entry, tuple | list) or len(entry) not in (2, 3):
                raise InputError(
                    f"hit_all item {position} must be (key, policy) or (key, policy, cost); got {describe(entry)}"
                )
            item = self._item(entry[0], entry[1], entry[2] if len(entry) == 3 else cost)
            index = where.setdefault(item.keys, len(merged))
            if index == len(merged):
                merged.append(item)
            else:
                earlier = merged[index]
                merged[index] = earlier._replace(cost=_check_cost(earlier.cost + item.cost, earlier.policy))
            given.append((entry[0], index))
        if not merged:
            raise InputError("hit_all needs at least one (key, policy) item")
        return merged, given

    # --- the store and its failures -----------------------------------------------------------

    def _cached(self, items: Sequence[Item]) -> list[Verdict] | None:
        """A denial the store made that still holds, answered without a round trip."""
        if len(items) != 1 or items[0].cost != 1:
            return None
        verdict = self._blocked.verdict(items[0].keys, self._local_now())
        return None if verdict is None else [verdict]

    def _answered(self, items: Sequence[Item], verdicts: Sequence[Verdict]) -> None:
        """The store answered: close the breaker if it was open; remember a cost-1 denial."""
        if self._breaker.is_open or self._breaker.failures:
            with self._transition_lock:
                if self._breaker.succeeded():
                    log.warning("sluicegate: the store answers again; circuit breaker closed")
                    self._transition("closed")
        if len(items) == 1 and items[0].cost == 1 and not verdicts[0].allowed:
            self._blocked.remember(items[0].keys, verdicts[0], self._local_now())

    def _failed(self, exc: StoreError, started: float) -> bool:
        """The store failed for a decision asked for at ``started``: count it, feed the breaker,
        and return True if the breaker opened (the caller then starts probing, and re-raises
        for ``fallback="raise"``).

        The breaker opens after failures in a row, and a decision that was already in flight
        when the last failure was counted is part of that failure, not the next one in the row:
        one stall longer than the timeout fails every decision in flight at once (a batch of 32,
        four threads), and on its own it should not switch the node over for a second."""
        self._count_store_error(exc)
        if exc.kind == "pool":  # this process ran out of connections; the store is not to blame
            return False
        with self._transition_lock:
            if not exc.refused and started < self._failure_counted_at:
                return False
            self._failure_counted_at = time.perf_counter()
            opened = self._breaker.failed(refused=exc.refused)
        if opened:
            log.warning("sluicegate: circuit breaker open after %s; deciding with fallback=%s", exc, self.fallback)
            self._transition("open")
        return opened

    def _count_store_error(self, exc: StoreError) -> None:
        if self._metrics is not None:
            self._metrics.store_errors.labels(self._store_label, exc.kind).inc()

    def _forget(self, key: str, policy: PolicyLike) -> tuple[str, ...]:
        """Drop ``key``'s usage under ``policy`` here (blocked keys, the local fallback); returns
        the store keys for the caller to reset in the store."""
        resolved = _policy(policy)
        keys = state_keys(self.prefix, resolved, key)
        self._blocked.forget(keys)
        self._local.reset(state_keys(self.prefix, _scaled(resolved, self.fallback_share), key))
        return keys

    def _transition(self, state: str) -> None:
        if self._metrics is not None:
            self._metrics.breaker_transitions.labels(state).inc()
            self._metrics.fallback_active.labels(self._store_label).set(1 if state == "open" else 0)

    def _degraded(self, items: Sequence[Item], *, commit: bool) -> tuple[list[Verdict], list[int]]:
        """Verdicts without the shared store, and the capacity each was decided against."""
        if self.fallback == "raise":
            raise StoreError("the store is unavailable (circuit breaker open)", kind="connection")
        if self.fallback == "allow":
            return [Verdict(True, i.policy.capacity - i.cost, 0, 0) for i in items], [i.policy.capacity for i in items]
        # A probe in flight answers within the timeout: no sooner can the store be back.
        probe_us = round(max(self._breaker.seconds_to_probe(), self.timeout) * 1_000_000)
        if self.fallback == "deny":
            return [Verdict(False, 0, 0, probe_us) for _ in items], [i.policy.capacity for i in items]
        local = [i._replace(policy=_scaled(i.policy, self.fallback_share)) for i in items]
        capacities = [i.policy.capacity for i in local]
        oversized = [i.cost > i.policy.capacity for i in local]
        if not any(oversized):
            return self._local.decide(local, self._local_now(), commit=commit), capacities
        # A cost that the scaled-down capacity can never hold: denied until the store is back.
        looks = self._local.decide([i._replace(cost=0) for i in local], self._local_now(), commit=False)
        verdicts = [
            Verdict(False, look.remaining, look.reset_after_us, probe_us) if too_big else look
            for look, too_big in zip(looks, oversized, strict=True)
        ]
        return verdicts, capacities

    # --- answers ------------------------------------------------------------------------------

    @staticmethod
    def _decision(key: str, policy: Policy, verdict: Verdict, limit: int | None = None) -> Decision:
        """``limit`` is given for a degraded decision: the capacity the fallback decided against."""
        return Decision(
            allowed=verdict.allowed,
            key=key,
            policy=policy,
            limit=policy.capacity if limit is None else limit,
            remaining=verdict.remaining,
            reset_after=verdict.reset_after_us / 1_000_000,
            retry_after=verdict.retry_after_us / 1_000_000,
            degraded=limit is not None,
        )

    def _answer(
        self,
        key: str,
        merged: Sequence[Item],
        given: Sequence[tuple[str, int]] | None,
        verdicts: Sequence[Verdict],
        limits: Sequence[int] | None,
        started: float,
    ) -> Decision:
        """The Decision for ``hit``/``peek`` (``given`` None) or ``hit_all``, counted in metrics.

        ``hit_all`` answers with the denying item's decision (the longest wait when several
        deny), else the one with the least remaining; every item's decision is in ``results``.
        """
        if given is None:  # hit or peek
            decision = self._decision(key, merged[0].policy, verdicts[0], None if limits is None else limits[0])
        else:
            results = tuple(
                self._decision(key, merged[i].policy, verdicts[i], None if limits is None else limits[i])
                for key, i in given
            )
            denied = [d for d in results if not d.allowed]
            chosen = max(denied, key=lambda d: d.retry_after) if denied else min(results, key=lambda d: d.remaining)
            decision = dataclasses.replace(chosen, results=results)
        if self._metrics is not None and self._duration is not None:
            self._metrics.count(decision)
            self._duration.observe(time.perf_counter() - started)
        return decision


class Limiter(_LimiterCore):
    """Rate-limit decisions, synchronous. Thread-safe; one per process is plenty.

    ``url`` is a store URL (``memory://``, ``redis://…``; see ``sluicegate.stores``) or a store.
    Every key written starts with ``prefix``. ``timeout`` bounds each store call in seconds; when
    the store fails, ``fallback`` decides (see the module docstring). Metrics go to ``registry``
    (None: no metrics); ``on_throttle`` receives every throttled Decision.
    """

    __slots__ = ("_probe_stop", "_probe_thread", "_probing", "_store")

    def __init__(
        self,
        url: str | Store = "memory://",
        *,
        prefix: str = "sluicegate",
        clock: Clock = "server",
        timeout: float = 0.05,
        fallback: Fallback = "local",
        fallback_share: float = 1.0,
        registry: CollectorRegistry | None = REGISTRY,
        on_throttle: Callable[[Decision], Any] | None = None,
    ) -> None:
        super().__init__(
            prefix=prefix,
            clock=clock,
            timeout=timeout,
            fallback=fallback,
            fallback_share=fallback_share,
            registry=registry,
            on_throttle=on_throttle,
            store_label=store_kind(url),
        )
        self._store: Store = open_store(url, timeout=self.timeout) if isinstance(url, str) else _as_store(url)
        self._probe_thread: threading.Thread | None = None
        self._probing = False  # a probe thread is running and will check the breaker again
        self._probe_stop = threading.Event()

    def __repr__(self) -> str:
        return f"<Limiter store={self._store!r} prefix={self.prefix!r} breaker={self._breaker!r}>"

    def hit(self, key: str, policy: PolicyLike, *, cost: int = 1) -> Decision:
        """Consume ``cost`` units of ``policy`` for ``key`` if they fit; a denial consumes nothing."""
        started = time.perf_counter()
        item = self._item(key, policy, cost)
        return self._finish(key, [item], None, started, commit=True)

    def peek(self, key: str, policy: PolicyLike, *, cost: int = 1) -> Decision:
        """The decision ``hit`` would return now, without consuming anything."""
        started = time.perf_counter()
        item = self._item(key, policy, cost)
        return self._finish(key, [item], None, started, commit=False)

    def hit_all(self, items: Iterable[ItemLike], *, cost: int = 1) -> Decision:
        """Hit every ``(key, policy[, cost])`` item, all-or-nothing: if any item denies, nothing
        is consumed anywhere. On one Redis server this is one atomic script call."""
        started = time.perf_counter()
        merged, given = self._batch(items, cost)
        return self._finish("", merged, given, started, commit=True)

    def reset(self, key: str, policy: PolicyLike) -> None:
        """Forget ``key``'s usage under ``policy`` (in the store, the local fallback and the cache)."""
        self._store.reset(self._forget(key, policy))

    def close(self) -> None:
        self._probe_stop.set()
        if self._probe_thread is not None:
            self._probe_thread.join(timeout=self.timeout + 1)
        self._store.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _finish(
        self, key: str, merged: list[Item], given: list[tuple[str, int]] | None, started: float, *, commit: bool
    ) -> Decision:
        verdicts, limits = self._decide(merged, started, commit=commit)
        decision = self._answer(key, merged, given, verdicts, limits, started)
        if not decision.allowed and self._on_throttle is not None:
            try:
                self._on_throttle(decision)
            except Exception:
                log.exception("sluicegate: on_throttle hook failed")
        return decision

    def _decide(
        self, items: Sequence[Item], started: float, *, commit: bool
    ) -> tuple[Sequence[Verdict], list[int] | None]:
        cached = self._cached(items)
        if cached is not None:
            return cached, None
        if not self._breaker.is_open:
            try:
                verdicts = self._store.decide(items, self._now(), commit=commit)
            except StoreError as exc:
                if self._failed(exc, started):
                    self._start_probing()
                if self.fallback == "raise":
                    raise
            else:
                self._answered(items, verdicts)
                return verdicts, None
        return self._degraded(items, commit=commit)

    def _start_probing(self) -> None:
        # `_probing` changes only under the lock, where the probe thread also decides to exit:
        # a breaker that reopens as the last probe thread leaves still gets a new one.
        with self._transition_lock:
            if self._probing:
                return
            self._probing = True
        self._probe_thread = threading.Thread(target=self._probe, name="sluicegate-probe", daemon=True)
        self._probe_thread.start()

    def _probe(self) -> None:
        """Until the store answers (or the limiter closes): wait, then try one real decision."""
        while True:
            with self._transition_lock:
                if not self._breaker.is_open:
                    self._probing = False
                    return
            if self._probe_stop.wait(self._breaker.seconds_to_probe()):
                return
            try:
                self._store.decide([self._probe_item], None, commit=True)
            except StoreError as exc:
                self._count_store_error(exc)
                self._breaker.next_probe_delay()
            else:
                self._answered((), ())


class AsyncLimiter(_LimiterCore):
    """The asyncio twin of ``Limiter``: the same methods, awaited; ``aclose`` to close.
    ``on_throttle`` may be a coroutine function."""

    __slots__ = ("_probe_task", "_store")

    def __init__(
        self,
        url: str | AsyncStore = "memory://",
        *,
        prefix: str = "sluicegate",
        clock: Clock = "server",
        timeout: float = 0.05,
        fallback: Fallback = "local",
        fallback_share: float = 1.0,
        registry: CollectorRegistry | None = REGISTRY,
        on_throttle: Callable[[Decision], Any] | None = None,
    ) -> None:
        super().__init__(
            prefix=prefix,
            clock=clock,
            timeout=timeout,
            fallback=fallback,
            fallback_share=fallback_share,
            registry=registry,
            on_throttle=on_throttle,
            store_label=store_kind(url),
        )
        self._store: AsyncStore = (
            open_async_store(url, timeout=self.timeout) if isinstance(url, str) else _as_store(url)
        )
        self._probe_task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<AsyncLimiter store={self._store!r} prefix={self.prefix!r} breaker={self._breaker!r}>"

    async def hit(self, key: str, policy: PolicyLike, *, cost: int = 1) -> Decision:
        """Consume ``cost`` units of ``policy`` for ``key`` if they fit; a denial consumes nothing."""
        started = time.perf_counter()
        item = self._item(key, policy, cost)
        return await self._finish(key, [item], None, started, commit=True)

    async def peek(self, key: str, policy: PolicyLike, *, cost: int = 1) -> Decision:
        """The decision ``hit`` would return now, without consuming anything."""
        started = time.perf_counter()
        item = self._item(key, policy, cost)
        return await self._finish(key, [item], None, started, commit=False)

    async def hit_all(self, items: Iterable[ItemLike], *, cost: int = 1) -> Decision:
        """Hit every ``(key, policy[, cost])`` item, all-or-nothing (see ``Limiter.hit_all``)."""
        started = time.perf_counter()
        merged, given = self._batch(items, cost)
        return await self._finish("", merged, given, started, commit=True)

    async def reset(self, key: str, policy: PolicyLike) -> None:
        """Forget ``key``'s usage under ``policy`` (in the store, the local fallback and the cache)."""
        await self._store.reset(self._forget(key, policy))

    async def aclose(self) -> None:
        if self._probe_task is not None:
            self._probe_task.cancel()
        await self._store.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def _finish(
        self, key: str, merged: list[Item], given: list[tuple[str, int]] | None, started: float, *, commit: bool
    ) -> Decision:
        verdicts, limits = await self._decide(merged, started, commit=commit)
        decision = self._answer(key, merged, given, verdicts, limits, started)
        if not decision.allowed and self._on_throttle is not None:
            try:
                result = self._on_throttle(decision)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("sluicegate: on_throttle hook failed")
        return decision

    async def _decide(
        self, items: Sequence[Item], started: float, *, commit: bool
    ) -> tuple[Sequence[Verdict], list[int] | None]:
        cached = self._cached(items)
        if cached is not None:
            return cached, None
        if not self._breaker.is_open:
            try:
                verdicts = await self._store.decide(items, self._now(), commit=commit)
            except StoreError as exc:
                if self._failed(exc, started):
                    self._start_probing()
                if self.fallback == "raise":
                    raise
            else:
                self._answered(items, verdicts)
                return verdicts, None
        return self._degraded(items, commit=commit)

    def _start_probing(self) -> None:
        if self._probe_task is None or self._probe_task.done():
            self._probe_task = asyncio.get_running_loop().create_task(self._probe(), name="sluicegate-probe")

    async def _probe(self) -> None:
        """Until the store answers: wait, then try one real decision."""
        while self._breaker.is_open:
            await asyncio.sleep(self._breaker.seconds_to_probe())
            try:
                await self._store.decide([self._probe_item], None, commit=True)
            except StoreError as exc:
                self._count_store_error(exc)
                self._breaker.next_probe_delay()
            else:
                self._answered((), ())
