"""Sliding log: every admitted request is logged; an entry at ``t`` counts while ``now < t + period``.

A request fits when the logged costs plus its own are at most ``limit``. ``retry_after`` is the
time until the oldest entries have freed enough, ``reset_after`` the time until the newest
entry expires.
"""

from __future__ import annotations

import pytest

from sluicegate import Policy
from sluicegate.algorithms.sliding_log import decide
from tests.algorithms._steps import Step, admitted, run, schedule

# fmt: off
TABLE = [
    pytest.param(
        Policy(3, 1, algorithm="sliding-log"),
        [
            #    at µs      cost allowed remaining reset_after  retry_after
            Step(0,            1, True,   2,       1_000_000,        0),  # from empty
            Step(100_000,      2, True,   0,       1_000_000,        0),  # log: 1 at 0 s, 2 at 0.1 s
            Step(200_000,      1, False,  0,         900_000,  800_000),  # the unit logged at 0 s expires at 1 s
            Step(999_999,      1, False,  0,         100_001,        1),
            Step(1_000_000,    1, True,   0,       1_000_000,        0),  # exactly when the first entry expires
            Step(1_000_000,    0, True,   0,       1_000_000,        0),  # a look
            Step(1_050_000,    2, False,  0,         950_000,   50_000),  # needs the 2 logged at 0.1 s to expire
            Step(1_100_000,    2, True,   0,       1_000_000,        0),  # the denial consumed nothing
            Step(1_100_000,    2, False,  0,       1_000_000, 1_000_000),  # needs both entries: 1 at 1 s, 2 at 1.1 s
            Step(2_000_000,    1, True,   0,       1_000_000,        0),  # log: 2 at 1.1 s, 1 at 2 s
            Step(2_000_000,    2, False,  0,       1_000_000,  100_000),
            Step(2_999_999,    0, True,   2,               1,        0),  # only the unit logged at 2 s counts
            Step(3_000_000,    0, True,   3,               0,        0),
            Step(3_000_000,    3, True,   0,       1_000_000,        0),  # the whole limit at once
        ],
        id="trailing period",
    ),
    pytest.param(
        Policy(3, 1, algorithm="sliding-log"),
        # An entry is logged at the time the caller gives, in order, and expires a period after it.
        [
            #    at µs      cost allowed remaining reset_after  retry_after
            Step(1_000_000,    1, True,   2,       1_000_000,        0),
            Step(900_000,      1, True,   1,       1_100_000,        0),  # the newest entry, at 1 s, expires at 2 s
            Step(800_000,      1, True,   0,       1_200_000,        0),
            Step(700_000,      1, False,  0,       1_300_000, 1_100_000),  # the oldest entry expires at 1.8 s
            Step(1_800_000,    1, True,   0,       1_000_000,        0),  # log: 0.9 s, 1 s, 1.8 s
            Step(1_850_000,    2, False,  0,         950_000,  150_000),  # the entries at 0.9 s and 1 s, by 2 s
            Step(1_000_000,    0, True,   0,       1_800_000,        0),
            Step(2_000_000,    2, True,   0,       1_000_000,        0),
        ],
        id="clock goes back",
    ),
]
# fmt: on


@pytest.mark.parametrize(("policy", "steps"), TABLE)
def test_table(policy: Policy, steps: list[Step]) -> None:
    run(decide, policy, steps)


@pytest.mark.parametrize(("policy", "steps"), TABLE)
def test_looks_change_nothing(policy: Policy, steps: list[Step]) -> None:
    """Without its looks (cost 0), a table gives the same answers to every other step."""
    run(decide, policy, [step for step in steps if step.cost > 0])


@pytest.mark.parametrize(
    "policy",
    [
        Policy(3, 1, algorithm="sliding-log"),
        Policy(10, 0.25, algorithm="sliding-log"),
        Policy(50, 60, algorithm="sliding-log"),
    ],
    ids=str,
)
@pytest.mark.parametrize("seed", range(5))
def test_never_more_than_limit_in_any_trailing_period(policy: Policy, seed: int) -> None:
    period = policy.period_ms * 1000
    times = admitted(decide, policy, schedule(seed, policy))
    busiest = 0
    for last, (end, _) in enumerate(times):
        # the trailing period ending at ``end`` holds the entries with end - period < t <= end
        busiest = max(busiest, sum(cost for at, cost in times[: last + 1] if at > end - period))
    assert busiest == policy.limit
