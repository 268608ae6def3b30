"""Fixed window: at most ``limit`` units per window; windows are aligned to multiples of
``period`` in the store's clock (so every node sharing the store agrees on them).

It admits up to ``2 * limit`` in a span of one period that straddles a window edge.

State: ``(window, count)``, the window index (``now // period``) and the units it admitted.
"""

from __future__ import annotations

from .._policy import Policy
from ._outcome import Outcome

__all__ = ["FixedWindowState", "decide"]

FixedWindowState = tuple[int, int]


def decide(state: FixedWindowState | None, now: int, policy: Policy, cost: int) -> Outcome[FixedWindowState]:
    limit, period = policy.limit, policy.period_ms * 1000
    window, count = now // period, 0
    if state is not None:
        window = max(window, state[0])  # a clock behind the stored window still counts in it
        if state[0] == window:
            count = state[1]
    until_end = (window + 1) * period - now
    allowed = count + cost <= limit
    if allowed:
        count = count + cost
    retry = 0 if allowed else until_end
    reset = until_end if count > 0 else 0
    return Outcome(allowed, limit - count, reset, retry, (window, count) if allowed else None, until_end)
