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
from ._outcome import TIME_TOLERANCE_US, Outcome

__all__ = ["GcraState", "decide"]

GcraState = tuple[int, float]


def decide(state: GcraState | None, now: int, policy: Policy, cost: int) -> Outcome[GcraState]:
    limit, period, capacity = policy.limit, policy.period_ms * 1000, policy.capacity
    used, behind = 0.0, 0
    if state is not None:
        t0, used_then = state
        # A caller whose clock is behind the last writer's: no time has passed since t0, and
        # every wait below is longer by how far behind it is.
        behind = max(t0 - now, 0)
        now = now + behind
        used = max(used_then - float(now - t0) * limit / period, 0.0)
    wait = (used + cost - capacity) * period / limit
    allowed = wait <= TIME_TOLERANCE_US
    retry = 0
    if allowed:
        used = used + cost
    else:
        retry = math.ceil(wait - TIME_TOLERANCE_US) + behind
    remaining = max(math.floor(capacity - used + TIME_TOLERANCE_US * limit / period), 0)
    drain = used * period / limit
    reset = math.ceil(drain - TIME_TOLERANCE_US) + behind if used > 0 else 0
    # The TTL errs long (by 1 µs) so that once it has passed, the state is exactly empty.
    ttl = math.ceil(drain) + 1 + behind
    return Outcome(allowed, remaining, reset, retry, (now, used) if allowed else None, ttl)
