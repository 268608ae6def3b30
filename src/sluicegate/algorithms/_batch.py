"""All-or-nothing decisions over several items, the twin of ``lua/decide.lua``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from .._policy import Policy
from . import fixed_window, gcra, sliding_log, sliding_window
from ._outcome import Outcome

__all__ = ["DECIDE", "Verdict", "Write", "decide_all"]

#: Algorithm name -> its pure ``decide`` function.
DECIDE: dict[str, Callable[[Any, int, Policy, int], Outcome[Any]]] = {
    "gcra": gcra.decide,
    "sliding-log": sliding_log.decide,
    "sliding-window": sliding_window.decide,
    "fixed-window": fixed_window.decide,
}


class Verdict(NamedTuple):
    """One item's answer, as both stores return it (times in integer µs)."""

    allowed: bool
    remaining: int
    reset_after_us: int
    retry_after_us: int


class Write(NamedTuple):
    """State a store must keep for ``ttl_us`` (then drop) after an allowed hit."""

    item: int
    state: Any
    ttl_us: int


def decide_all(
    states: Sequence[Any], now: int, items: Sequence[tuple[Policy, int]], *, commit: bool
) -> tuple[list[Verdict], list[Write]]:
    """Decide ``items`` (policy, cost) against their current ``states`` at time ``now``.

    Every item is allowed, or nothing is written. When something is denied, each item that
    had room reports its state as it stands (a cost-0 look), since nothing was consumed.
    """
    outcomes: list[Outcome[Any]] = [
        DECIDE[policy.algorithm](state, now, policy, cost) for state, (policy, cost) in zip(states, items, strict=True)
    ]
    if all(outcome.allowed for outcome in outcomes):
        writes = [Write(i, o.state, o.ttl_us) for i, o in enumerate(outcomes)] if commit else []
        return [_verdict(o) for o in outcomes], writes
    verdicts = []
    for state, (policy, _), outcome in zip(states, items, outcomes, strict=True):
        if outcome.allowed:
            look = DECIDE[policy.algorithm](state, now, policy, 0)
            outcome = Outcome(True, look.remaining, look.reset_after_us, 0, None, 0)
        verdicts.append(_verdict(outcome))
    return verdicts, []


def _verdict(outcome: Outcome[Any]) -> Verdict:
    return Verdict(outcome.allowed, outcome.remaining, outcome.reset_after_us, outcome.retry_after_us)
