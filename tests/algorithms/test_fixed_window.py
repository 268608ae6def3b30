"""Fixed window: at most ``limit`` units in each window ``[k * period, (k + 1) * period)``.

Windows are aligned to multiples of the period in the store's clock. ``reset_after`` and
``retry_after`` are the time to the end of the window (``reset_after`` is 0 when nothing counts).
"""

from __future__ import annotations

import random
from collections import Counter

import pytest

from sluicegate import Policy
from sluicegate.algorithms.fixed_window import decide
from tests.algorithms._steps import T0, Step, admitted, run, schedule

# T0 is a whole day, so the windows of 1 s start at 0, 1_000_000, 2_000_000, ... µs after it.
# fmt: off
TABLE = [
    pytest.param(
        Policy(3, 1, algorithm="fixed-window"),
        [
            #    at µs      cost allowed remaining reset_after  retry_after
            Step(600_000,      1, True,   2,         400_000,        0),  # the window ends at 1 s, not 1 s after this
            Step(650_000,      3, False,  2,         350_000,  350_000),
            Step(700_000,      2, True,   0,         300_000,        0),  # the denial consumed nothing
            Step(700_000,      0, True,   0,         300_000,        0),  # a look
            Step(999_999,      1, False,  0,               1,        1),
            Step(1_000_000,    3, True,   0,       1_000_000,        0),  # exactly at the edge: 6 units in 0.4 s
            Step(1_500_000,    1, False,  0,         500_000,  500_000),
            Step(2_000_000,    2, True,   1,       1_000_000,        0),
            Step(2_000_000,    1, True,   0,       1_000_000,        0),
            Step(5_250_000,    0, True,   3,               0,        0),  # windows later: nothing counts
            Step(5_250_000,    3, True,   0,         750_000,        0),
        ],
        id="aligned windows",
    ),
    pytest.param(
        Policy(3, 1, algorithm="fixed-window"),
        # A request from behind the stored window counts in it; times count from the caller's clock.
        [
            #    at µs      cost allowed remaining reset_after  retry_after
            Step(1_000_000,    2, True,   1,       1_000_000,        0),
            Step(999_999,      1, True,   0,       1_000_001,        0),  # 1 µs back: still the window ending at 2 s
            Step(900_000,      1, False,  0,       1_100_000, 1_100_000),
            Step(2_000_000,    3, True,   0,       1_000_000,        0),
            Step(1_500_000,    0, True,   0,       1_500_000,        0),
        ],
        id="clock goes back",
    ),
]
# fmt: on

POLICIES = [
    Policy(3, 1, algorithm="fixed-window"),
    Policy(5, 7, algorithm="fixed-window"),
    Policy(10, 0.25, algorithm="fixed-window"),
    Policy(100, 86_400, algorithm="fixed-window"),
]


@pytest.mark.parametrize(("policy", "steps"), TABLE)
def test_table(policy: Policy, steps: list[Step]) -> None:
    run(decide, policy, steps)


@pytest.mark.parametrize(("policy", "steps"), TABLE)
def test_looks_change_nothing(policy: Policy, steps: list[Step]) -> None:
    """Without its looks (cost 0), a table gives the same answers to every other step."""
    run(decide, policy, [step for step in steps if step.cost > 0])


@pytest.mark.parametrize("policy", POLICIES, ids=str)
@pytest.mark.parametrize("seed", range(5))
def test_windows_are_aligned_to_multiples_of_the_period(policy: Policy, seed: int) -> None:
    """Whenever a window fills, it frees at the next multiple of the period, not a period later."""
    period = policy.period_ms * 1000
    rng = random.Random(seed)
    for _ in range(100):
        now = T0 + rng.randrange(10 * period)
        edge = now - now % period + period
        full = decide(None, now, policy, policy.limit)
        assert (full.allowed, full.remaining, full.reset_after_us, full.ttl_us) == (True, 0, edge - now, edge - now)
        early = decide(full.state, edge - 1, policy, 1)
        assert (early.allowed, early.retry_after_us) == (False, 1)
        assert decide(full.state, edge, policy, policy.limit).allowed


@pytest.mark.parametrize("policy", POLICIES, ids=str)
@pytest.mark.parametrize("seed", range(5))
def test_never_more_than_limit_per_window(policy: Policy, seed: int) -> None:
    period = policy.period_ms * 1000
    per_window: Counter[int] = Counter()
    for at, cost in admitted(decide, policy, schedule(seed, policy)):
        per_window[(T0 + at) // period] += cost
    assert max(per_window.values()) == policy.limit
