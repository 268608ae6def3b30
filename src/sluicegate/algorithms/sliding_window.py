"""Sliding window counter: the two-counter approximation of a sliding window.

The estimate at time ``now`` is ``previous * (1 - elapsed / period) + current``: the previous
window's count weighted by how much of it the trailing period still overlaps. A request fits
when ``estimate + cost <= limit``.

Error bound: never more than ``limit`` units in one aligned window, and never more than
``2 * limit`` in any trailing period (reached only if the previous window's traffic all came at
its very end); with traffic spread evenly the estimate is exact.

State: ``(window, current, previous)``, one small value per key.
"""

from __future__ import annotations

import math

from .._policy import Policy
from ._outcome import TIME_TOLERANCE_US, Outcome

__all__ = ["SlidingWindowState", "decide"]

SlidingWindowState = tuple[int, int, int]


def decide(state: SlidingWindowState | None, now: int, policy: Policy, cost: int) -> Outcome[SlidingWindowState]:
    limit, period = policy.limit, policy.period_ms * 1000
    window, current, previous = now // period, 0, 0
    if state is not None:
        window = max(window, state[0])  # a clock behind the stored window still counts in it
        if state[0] == window:
            current, previous = state[1], state[2]
        elif state[0] == window - 1:
            previous = state[1]
    start = window * period
    elapsed = max(now - start, 0)
    weight = (period - elapsed) / period
    # The estimate falls by previous / period units per µs: this slack is TIME_TOLERANCE_US.
    # The counts are combined first, exactly (they are integers), so that the previous
    # window's fading weight is not lost in the rounding of a large sum.
    slack = previous * TIME_TOLERANCE_US / period
    allowed = previous * weight <= limit - current - cost + slack
    retry = 0
    if allowed:
        current = current + cost
    else:
        room = limit - current - cost
        if room >= 0:  # the previous window's weight alone is in the way: wait for it to fade
            wait = period - float(room) * period / previous - (now - start)
        else:  # wait for the next window, where this window's count becomes the previous one
            wait = (start + period - now) + max(period - float(limit - cost) * period / current, 0.0)
        retry = math.ceil(wait - TIME_TOLERANCE_US)
    remaining = max(math.floor(limit - current - previous * weight + slack), 0)
    if current > 0:
        reset = start + 2 * period - now
    elif previous > 0:
        reset = start + period - now
    else:
        reset = 0
    return Outcome(allowed, remaining, reset, retry, (window, current, previous) if allowed else None, reset)
