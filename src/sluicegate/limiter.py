"""``Limiter`` and ``AsyncLimiter``: resolve keys, policies and costs, ask the store, answer.

Everything that does no I/O lives in ``_LimiterCore``; the two limiters only add the calls
into their store (the shape of httpx's ``BaseClient`` / ``Client`` / ``AsyncClient``).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Sequence
from types import TracebackType
from typing import Literal, Self, TypeVar

from ._decision import Decision
from ._errors import ConfigError, CostError, InputError, PolicyError, describe
from ._keys import check_prefix, state_keys
from ._policy import Policy
from .algorithms import Verdict
from .stores import AsyncStore, Item, Store, open_async_store, open_store

__all__ = ["AsyncLimiter", "Clock", "Limiter", "PolicyLike"]

PolicyLike = Policy | str
#: "server": the store's clock (Redis TIME; the process clock for memory://).
#: "client": this process's wall clock. A callable: seconds since the epoch (tests, simulations).
Clock = Literal["server", "client"] | Callable[[], float]
ItemLike = tuple[str, PolicyLike] | tuple[str, PolicyLike, int]
_S = TypeVar("_S", Store, AsyncStore)


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


def _as_store(store: _S) -> _S:
    if not all(callable(getattr(store, method, None)) for method in ("decide", "reset")):
        raise ConfigError(f"url must be a store URL (str) or a store; got {describe(store)}")
    return store


class _LimiterCore:
    """Validation and decision building shared by ``Limiter`` and ``AsyncLimiter`` (no I/O)."""

    __slots__ = ("_clock", "prefix", "timeout")

    def __init__(self, *, prefix: str, clock: Clock, timeout: float) -> None:
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

    def _now(self) -> int | None:
        """The caller's time in µs, or None to let the store read its own clock."""
        return None if self._clock is None else round(self._clock() * 1_000_000)

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

    @staticmethod
    def _decision(key: str, policy: Policy, verdict: Verdict) -> Decision:
        return Decision(
            allowed=verdict.allowed,
            key=key,
            policy=policy,
            limit=policy.capacity,
            remaining=verdict.remaining,
            reset_after=verdict.reset_after_us / 1_000_000,
            retry_after=verdict.retry_after_us / 1_000_000,
        )

    def _combined(
        self, merged: Sequence[Item], given: Sequence[tuple[str, int]], verdicts: Sequence[Verdict]
    ) -> Decision:
        """The ``hit_all`` answer: the denying item's decision (the longest wait when several
        deny), else the one with the least remaining; every item's decision in ``results``."""
        results = tuple(self._decision(key, merged[index].policy, verdicts[index]) for key, index in given)
        denied = [d for d in results if not d.allowed]
        chosen = max(denied, key=lambda d: d.retry_after) if denied else min(results, key=lambda d: d.remaining)
        return dataclasses.replace(chosen, results=results)


class Limiter(_LimiterCore):
    """Rate-limit decisions, synchronous. Thread-safe; one per process is plenty.

    ``url`` is a store URL (``memory://``, ``redis://…``; see ``sluicegate.stores``) or a store.
    Every key written starts with ``prefix``. ``timeout`` bounds each store call in seconds.
    """

    __slots__ = ("_store",)

    def __init__(
        self,
        url: str | Store = "memory://",
        *,
        prefix: str = "sluicegate",
        clock: Clock = "server",
        timeout: float = 0.05,
    ) -> None:
        super().__init__(prefix=prefix, clock=clock, timeout=timeout)
        self._store: Store = open_store(url, timeout=self.timeout) if isinstance(url, str) else _as_store(url)

    def __repr__(self) -> str:
        return f"<Limiter store={self._store!r} prefix={self.prefix!r}>"

    def hit(self, key: str, policy: PolicyLike, *, cost: int = 1) -> Decision:
        """Consume ``cost`` units of ``policy`` for ``key`` if they fit; a denial consumes nothing."""
        item = self._item(key, policy, cost)
        [verdict] = self._store.decide([item], self._now(), commit=True)
        return self._decision(key, item.policy, verdict)

    def peek(self, key: str, policy: PolicyLike, *, cost: int = 1) -> Decision:
        """The decision ``hit`` would return now, without consuming anything."""
        item = self._item(key, policy, cost)
        [verdict] = self._store.decide([item], self._now(), commit=False)
        return self._decision(key, item.policy, verdict)

    def hit_all(self, items: Iterable[ItemLike], *, cost: int = 1) -> Decision:
        """Hit every ``(key, policy[, cost])`` item, all-or-nothing: if any item denies, nothing
        is consumed anywhere. On one Redis server this is one atomic script call."""
        merged, given = self._batch(items, cost)
        verdicts = self._store.decide(merged, self._now(), commit=True)
        return self._combined(merged, given, verdicts)

    def reset(self, key: str, policy: PolicyLike) -> None:
        """Forget ``key``'s usage under ``policy``."""
        self._store.reset(state_keys(self.prefix, _policy(policy), key))

    def close(self) -> None:
        self._store.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class AsyncLimiter(_LimiterCore):
    """The asyncio twin of ``Limiter``: the same methods, awaited; ``aclose`` to close."""

    __slots__ = ("_store",)

    def __init__(
        self,
        url: str | AsyncStore = "memory://",
        *,
        prefix: str = "sluicegate",
        clock: Clock = "server",
        timeout: float = 0.05,
    ) -> None:
        super().__init__(prefix=prefix, clock=clock, timeout=timeout)
        self._store: AsyncStore = (
            open_async_store(url, timeout=self.timeout) if isinstance(url, str) else _as_store(url)
        )

    def __repr__(self) -> str:
        return f"<AsyncLimiter store={self._store!r} prefix={self.prefix!r}>"

    async def hit(self, key: str, policy: PolicyLike, *, cost: int = 1) -> Decision:
        """Consume ``cost`` units of ``policy`` for ``key`` if they fit; a denial consumes nothing."""
        item = self._item(key, policy, cost)
        [verdict] = await self._store.decide([item], self._now(), commit=True)
        return self._decision(key, item.policy, verdict)

    async def peek(self, key: str, policy: PolicyLike, *, cost: int = 1) -> Decision:
        """The decision ``hit`` would return now, without consuming anything."""
        item = self._item(key, policy, cost)
        [verdict] = await self._store.decide([item], self._now(), commit=False)
        return self._decision(key, item.policy, verdict)

    async def hit_all(self, items: Iterable[ItemLike], *, cost: int = 1) -> Decision:
        """Hit every ``(key, policy[, cost])`` item, all-or-nothing (see ``Limiter.hit_all``)."""
        merged, given = self._batch(items, cost)
        verdicts = await self._store.decide(merged, self._now(), commit=True)
        return self._combined(merged, given, verdicts)

    async def reset(self, key: str, policy: PolicyLike) -> None:
        """Forget ``key``'s usage under ``policy``."""
        await self._store.reset(state_keys(self.prefix, _policy(policy), key))

    async def aclose(self) -> None:
        await self._store.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
