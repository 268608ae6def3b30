"""What every algorithm returns, and the rules all four follow."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["Outcome", "tolerance"]

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


def tolerance(capacity: int) -> float:
    """Slack for float rounding in comparisons against ``capacity``.

    Waiting exactly ``retry_after`` must admit: the drained amount is computed in floats and can
    fall a few ulps short of the exact value. 1e-12 of the capacity is far above those ulps and
    far below one unit, so no request is ever admitted that exact arithmetic would deny by one.
    """
    return capacity * 1e-12
