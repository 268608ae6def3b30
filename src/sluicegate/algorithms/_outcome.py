"""What every algorithm returns, and the rules all four follow."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["TIME_TOLERANCE_US", "Outcome"]

S = TypeVar("S")


@dataclass(frozen=True, slots=True)
class Outcome(Generic[S]):
    """One algorithm step. All times are integer microseconds, as the Lua twins return them.

    ``state`` is the state to store if the step is applied (``None`` when denied: a denied
    request changes nothing), and ``ttl_us`` how long that state matters; after it, the key
    behaves exactly as if it had no state, so the store may drop it.
    """

    allowed: bool
    remaining: int
    reset_after_us: int
    retry_after_us: int
    state: S | None
    ttl_us: int


#: Float slack in time comparisons, in µs. Drained amounts are computed in floats and can land
#: a hair off the exact value, so a request exactly at ``retry_after`` could be denied, or a wait
#: rounded up by a whole µs. One nanosecond is far above that noise for any policy whose bucket
#: drains within 366 days, and far below the 1 µs resolution of every time sluicegate reports.
TIME_TOLERANCE_US = 1e-3
