"""Sliding log: an exact sliding window. Every admitted request is logged with its time and
cost; a request fits when the costs logged in the trailing ``period`` plus its own are at most
``limit``. Never more than ``limit`` units in any trailing period.

Memory is bounded by ``limit`` entries per key (each entry holds at least one unit).

State: ``(entries, used)``: ``(time µs, cost)`` pairs sorted by time, and the sum of their costs.
An entry at time ``t`` counts while ``now < t + period``.
"""

from __future__ import annotations

import bisect

from .._policy import Policy
from ._outcome import Outcome

__all__ = ["SlidingLogState", "decide"]

SlidingLogState = tuple[tuple[tuple[int, int], ...], int]


def _time(entry: tuple[int, int]) -> int:
    return entry[0]


def decide(state: SlidingLogState | None, now: int, policy: Policy, cost: int) -> Outcome[SlidingLogState]:
    limit, period = policy.limit, policy.period_ms * 1000
    entries: tuple[tuple[int, int], ...] = ()
    used = 0
    if state is not None:
        entries, used = state
        expired = bisect.bisect_right(entries, now - period, key=_time)
        used -= sum(entry_cost for _, entry_cost in entries[:expired])
        entries = entries[expired:]
    allowed = used + cost <= limit
    retry = 0
    if allowed and cost > 0:  # a look (cost 0) logs nothing
        position = bisect.bisect_right(entries, now, key=_time)
        entries = (*entries[:position], (now, cost), *entries[position:])
    if allowed:
        used = used + cost
    else:  # wait until the oldest entries have freed enough
        freed, needed = 0, used + cost - limit
        for logged_at, entry_cost in entries:
            freed += entry_cost
            if freed >= needed:
                retry = logged_at + period - now
                break
    reset = entries[-1][0] + period - now if entries else 0
    return Outcome(allowed, limit - used, reset, retry, (entries, used) if allowed else None, reset)
