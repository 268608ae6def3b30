"""Keys the store has denied until a known time, answered locally until then.

Only cost-1 requests are cached and answered: for them a denied key stays at ``remaining == 0``
until ``retry_after`` under every algorithm, so the local answer is exactly the store's. Nothing
here can allow anything: the cache only repeats a denial while it provably still holds.
A ``reset`` on this limiter forgets the key; a reset made through another process is not seen,
so that process's keys may stay denied here until their ``retry_after``.
"""

from __future__ import annotations

from collections import OrderedDict

from .algorithms import Verdict

__all__ = ["BlockedKeys"]


class BlockedKeys:
    __slots__ = ("_entries", "_max_keys")

    def __init__(self, *, max_keys: int = 100_000) -> None:
        self._max_keys = max_keys
        # state keys -> (retry at µs, reset at µs, remaining), least recently denied first
        self._entries: OrderedDict[tuple[str, ...], tuple[int, int, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"<BlockedKeys {len(self._entries)}/{self._max_keys}>"

    def verdict(self, keys: tuple[str, ...], now: int) -> Verdict | None:
        """The store's verdict for a cost-1 request at ``now`` if it is still known, else None."""
        entry = self._entries.get(keys)
        if entry is None:
            return None
        retry_at, reset_at, remaining = entry
        if now >= retry_at:
            # pop, not del: another thread may have dropped it since the get (no lock on this path)
            self._entries.pop(keys, None)
            return None
        return Verdict(False, remaining, reset_at - now, retry_at - now)

    def remember(self, keys: tuple[str, ...], verdict: Verdict, now: int) -> None:
        """Record the store's denial of a cost-1 request made at ``now``."""
        # Remove, then insert: a fresh insert goes to the end, and no other thread's delete can
        # fall between the two steps as it could between an insert and move_to_end.
        self._entries.pop(keys, None)
        self._entries[keys] = (now + verdict.retry_after_us, now + verdict.reset_after_us, verdict.remaining)
        while len(self._entries) > self._max_keys:
            try:
                self._entries.popitem(last=False)
            except KeyError:  # emptied by another thread meanwhile
                break

    def forget(self, keys: tuple[str, ...]) -> None:
        self._entries.pop(keys, None)
