"""Tables of steps for the pure ``decide`` functions, in the style of redis-cell's tests.

A step is one request: when (µs after ``T0``), its cost, and the outcome expected. ``run``
threads the state the way a store does: an allowed step's state replaces the old one, a denied
step keeps it. Besides the expected values, every step is checked against the rules all four
algorithms share (``sluicegate/algorithms/_outcome.py``).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from sluicegate import Policy
from sluicegate.algorithms import Outcome

__all__ = ["T0", "Step", "admitted", "run", "schedule"]

#: Time zero of every table, in µs: 19_676 whole days after the epoch, so every window of the
#: tables' policies (250 ms, 1 s, 1 min, 1 day) starts at a round offset from it.
T0 = 1_700_006_400_000_000

Decide = Callable[[Any, int, Policy, int], Outcome[Any]]


class Step(NamedTuple):
    at: int  # µs after T0
    cost: int
    allowed: bool
    remaining: int
    reset_after: int  # µs
    retry_after: int  # µs


def _step(at: int, cost: int, outcome: Outcome[Any]) -> Step:
    return Step(at, cost, outcome.allowed, outcome.remaining, outcome.reset_after_us, outcome.retry_after_us)


def run(decide: Decide, policy: Policy, steps: Sequence[Step]) -> None:
    """Decide ``steps`` in order from no state; each must give exactly the expected outcome."""
    state = None
    for number, expected in enumerate(steps, 1):
        now = T0 + expected.at
        outcome = decide(state, now, policy, expected.cost)
        where = f"step {number} ({expected.at} µs, cost {expected.cost})"
        actual = _step(expected.at, expected.cost, outcome)
        assert actual == expected, f"{where}: expected {expected}, got {actual}"
        if outcome.allowed:
            assert outcome.state is not None
            state = outcome.state
            # After ttl_us the state no longer matters: the key answers as if it had none.
            later = now + outcome.ttl_us
            assert _step(0, 0, decide(state, later, policy, 0)) == _step(0, 0, decide(None, later, policy, 0)), (
                f"{where}: state still matters after its ttl of {outcome.ttl_us} µs"
            )
        else:
            assert outcome.state is None, f"{where}: a denial must write nothing"
            # Waiting exactly retry_after admits the same cost; 1 µs less does not.
            retry = outcome.retry_after_us
            assert decide(state, now + retry, policy, expected.cost).allowed, f"{where}: denied {retry} µs later"
            assert not decide(state, now + retry - 1, policy, expected.cost).allowed, (
                f"{where}: allowed {retry - 1} µs later, before its retry_after of {retry} µs"
            )


def schedule(seed: int, policy: Policy, steps: int = 400) -> list[tuple[int, int]]:
    """Random ``(µs after T0, cost)`` requests, fast enough that many are denied.

    Gaps are 0 to 2 "emission intervals" (period / limit), costs 1 to capacity (at most 5).
    """
    rng = random.Random(seed)
    period = policy.period_ms * 1000
    at, requests = 0, []
    for _ in range(steps):
        at += rng.randrange(0, 2 * period // policy.limit + 1)
        requests.append((at, rng.randint(1, min(policy.capacity, 5))))
    return requests


def admitted(decide: Decide, policy: Policy, requests: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """The ``(time, cost)`` of every request in ``requests`` that ``decide`` admits."""
    state, result = None, []
    for at, cost in requests:
        outcome = decide(state, T0 + at, policy, cost)
        if outcome.allowed:
            state = outcome.state
            result.append((at, cost))
    return result
