"""GCRA, the generic cell rate algorithm: a token bucket kept as one value per key.

A bucket of ``capacity`` units (``burst``, default ``limit``) drains at ``limit / period``.
A request of ``cost`` fits when ``used + cost <= capacity``. Over any interval of length T at
most ``capacity + T * limit / period`` units are admitted.

State: ``(t0, used)``, the time of the last admitted request (µs) and the units in use right
after it (a float). Keeping ``used`` relative to ``t0`` instead of an absolute "theoretical
arrival time" keeps float precision at the scale of the period, not of the epoch.
"""

from __future__ import annotations

import math

from .._policy import Policy
from ._outcome import Outcome, tolerance

__all__ = ["GcraState", "decide"]

GcraState = tuple[int, float]


def decide(state: GcraState | None, now: int, policy: Policy, cost: int) -> Outcome[GcraState]:
    limit, period, capacity = policy.limit, policy.period_ms * 1000, policy.capacity
    used = 0.0
    if state is not None:
        t0, used_then = state
        now = max(now, t0)  # a clock that went back: treat it as no time passed
        used = max(used_then - float(now - t0) * limit / period, 0.0)
    allowed = used + cost <= capacity + tolerance(capacity)
    if allowed:
        used = used + cost
        retry = 0
    else:
        retry = math.ceil((used + cost - capacity) * period / limit)
    remaining = max(math.floor(capacity - used + tolerance(capacity)), 0)
    reset = math.ceil(used * period / limit)
    return Outcome(allowed, remaining, reset, retry, (now, used) if allowed else None, reset)
