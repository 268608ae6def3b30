"""The in-process store: the pure algorithms over a bounded dict, for one process.

Thread-safe (one lock around each decision) and asyncio-safe (a decision never awaits).
Memory is bounded: state past its TTL is dropped, and beyond ``max_keys`` live keys the least
recently used is evicted. Evicting a key forgets its usage, so ``max_keys`` should exceed the
number of keys active within one period.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

from .._errors import ConfigError, describe
from ..algorithms import Verdict, decide_all
from ._base import Item

__all__ = ["AsyncMemoryStore", "MemoryStore"]

DEFAULT_MAX_KEYS = 1_000_000


def _wall_clock_us() -> int:
    return time.time_ns() // 1000


class MemoryStore:
    """State in a dict, decided by ``sluicegate.algorithms`` (the same math as the Lua scripts)."""

    __slots__ = ("_clock", "_lock", "_max_keys", "_states")

    def __init__(self, *, max_keys: int = DEFAULT_MAX_KEYS, clock: Callable[[], int] = _wall_clock_us) -> None:
        if isinstance(max_keys, bool) or not isinstance(max_keys, int) or max_keys < 1:
            raise ConfigError(f"max_keys must be a positive int; got {describe(max_keys)}")
        self._max_keys = max_keys
        self._clock = clock
        self._lock = threading.Lock()
        # state key -> (state, expires at µs); ordered from least to most recently used
        self._states: OrderedDict[str, tuple[Any, int]] = OrderedDict()

    def __repr__(self) -> str:
        return f"<MemoryStore keys={len(self._states)} max_keys={self._max_keys}>"

    def __len__(self) -> int:
        return len(self._states)

    def decide(self, items: Sequence[Item], now: int | None, *, commit: bool) -> list[Verdict]:
        with self._lock:
            if now is None:
                now = self._clock()
            states = [self._get(item.keys[0], now) for item in items]
            verdicts, writes = decide_all(states, now, [(item.policy, item.cost) for item in items], commit=commit)
            for write in writes:
                self._put(items[write.item].keys[0], write.state, now, write.ttl_us)
            return verdicts

    def reset(self, keys: Sequence[str]) -> None:
        with self._lock:
            for key in keys:
                self._states.pop(key, None)

    def close(self) -> None:
        with self._lock:
            self._states.clear()

    def _get(self, key: str, now: int) -> Any:
        entry = self._states.get(key)
        if entry is None:
            return None
        if entry[1] <= now:
            del self._states[key]
            return None
        self._states.move_to_end(key)
        return entry[0]

    def _put(self, key: str, state: Any, now: int, ttl_us: int) -> None:
        self._states[key] = (state, now + ttl_us)
        self._states.move_to_end(key)
        # The least recently used entries are the likeliest to have expired: drop a couple on
        # each write, so expired state does not wait for the cap to be reached.
        for _ in range(2):
            oldest_key, (_, expires_at) = next(iter(self._states.items()))
            if expires_at > now:
                break
            del self._states[oldest_key]
        while len(self._states) > self._max_keys:
            self._states.popitem(last=False)


class AsyncMemoryStore:
    """``MemoryStore`` for ``AsyncLimiter``: its decisions never block, so they run inline."""

    __slots__ = ("memory",)

    def __init__(self, memory: MemoryStore) -> None:
        self.memory = memory

    def __repr__(self) -> str:
        return f"<AsyncMemoryStore {self.memory!r}>"

    async def decide(self, items: Sequence[Item], now: int | None, *, commit: bool) -> list[Verdict]:
        return self.memory.decide(items, now, commit=commit)

    async def reset(self, keys: Sequence[str]) -> None:
        self.memory.reset(keys)

    async def aclose(self) -> None:
        self.memory.close()
