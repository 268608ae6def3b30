"""What the limiter asks of a store: decide items all-or-nothing, reset keys, close."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Protocol

from .._policy import Policy
from ..algorithms import Verdict

__all__ = ["AsyncStore", "Item", "Store"]


class Item(NamedTuple):
    """One resolved request: the store keys of its state, the policy and the cost."""

    keys: tuple[str, ...]
    policy: Policy
    cost: int


class Store(Protocol):
    """A synchronous store. ``now`` is µs from the caller's clock, or None for the store's own."""

    def decide(self, items: Sequence[Item], now: int | None, *, commit: bool) -> list[Verdict]: ...

    def reset(self, keys: Sequence[str]) -> None: ...

    def close(self) -> None: ...


class AsyncStore(Protocol):
    """The asyncio twin of ``Store``."""

    async def decide(self, items: Sequence[Item], now: int | None, *, commit: bool) -> list[Verdict]: ...

    async def reset(self, keys: Sequence[str]) -> None: ...

    async def aclose(self) -> None: ...
