"""GCRA: a bucket of ``capacity`` (burst) units draining at ``limit / period``.

A request fits when ``used + cost <= capacity``; ``retry_after`` is the time for the excess to
drain and ``reset_after`` the time for all of ``used`` to drain, both rounded up to the µs.
"""

from __future__ import annotations

import pytest

from sluicegate import Policy
from sluicegate.algorithms.gcra import decide
from tests.algorithms._steps import Step, admitted, run, schedule

# 10/second drains one unit per 100_000 µs whatever the burst.
# fmt: off
TABLE = [
    pytest.param(
        Policy(10, 1, burst=20),
        [
            #    at µs      cost allowed remaining reset_after  retry_after
            Step(0,            1, True,  19,         100_000,        0),  # from empty
            Step(0,           19, True,   0,       2_000_000,        0),  # 2 * limit at once: 20 drain in 2 s
            Step(0,            1, False,  0,       2_000_000,  100_000),
            Step(99_999,       1, False,  0,       1_900_001,        1),  # 19.00001 in use
            Step(100_000,      1, True,   0,       2_000_000,        0),  # exactly at retry_after
            Step(100_000,      0, True,   0,       2_000_000,        0),  # a look
            Step(350_000,      3, False,  2,       1_750_000,   50_000),  # 17.5 in use: 2 whole units free, 3 in 50 ms
            Step(350_000,      2, True,   0,       1_950_000,        0),  # the denial consumed nothing
            Step(400_000,      1, True,   0,       2_000_000,        0),  # 19.5 - 0.5 + 1
            Step(2_399_999,    0, True,  19,               1,        0),  # 0.00001 still in use
            Step(2_400_000,    0, True,  20,               0,        0),  # 2 s after it filled, the bucket is empty
            Step(2_400_000,   20, True,   0,       2_000_000,        0),  # 44 in 2.4 s: exactly 20 + 2.4 * 10
        ],
        id="burst above limit",
    ),
    pytest.param(
        Policy(10, 1, burst=5),
        [
            #    at µs      cost allowed remaining reset_after  retry_after
            Step(0,            5, True,   0,         500_000,        0),  # only 5 at once, though 10 per second
            Step(0,            1, False,  0,         500_000,  100_000),
            Step(100_000,      2, False,  1,         400_000,  100_000),  # 4 in use: 1 unit free, 2 in 100 ms
            Step(199_999,      2, False,  1,         300_001,        1),  # 3.00001 in use
            Step(200_000,      2, True,   0,         500_000,        0),
            Step(200_000,      0, True,   0,         500_000,        0),
            Step(700_000,      5, True,   0,         500_000,        0),  # 12 in 0.7 s: exactly 5 + 0.7 * 10
            Step(800_000,      1, True,   0,         500_000,        0),  # then the full rate: 1 per 100 ms
            Step(900_000,      1, True,   0,         500_000,        0),
            Step(950_000,      1, False,  0,         450_000,   50_000),
            Step(1_400_000,    0, True,   5,               0,        0),
        ],
        id="burst below limit",
    ),
    pytest.param(
        Policy(10, 1),
        # The state keeps the latest time (no time passes for a clock that went back), and the
        # times returned count from the caller's clock, which is the one the caller waits on.
        [
            #    at µs      cost allowed remaining reset_after  retry_after
            Step(1_000_000,    6, True,   4,         600_000,        0),
            Step(900_000,      0, True,   4,         700_000,        0),  # 6 in use until 1.6 s
            Step(900_000,      4, True,   0,       1_100_000,        0),  # 10 in use until 2 s
            Step(900_000,      1, False,  0,       1_100_000,  200_000),  # one unit drains at 1.1 s
            Step(1_100_000,    1, True,   0,       1_000_000,        0),  # the earlier state was not moved back
            Step(1_050_000,    1, False,  0,       1_050_000,  150_000),
        ],
        id="clock goes back",
    ),
    pytest.param(
        Policy(10, 1),
        # The exact waits here are whole µs; rounding them up must not add one more.
        [
            #    at µs      cost allowed remaining reset_after  retry_after
            Step(0,           10, True,   0,       1_000_000,        0),
            Step(1,            1, False,  0,         999_999,   99_999),  # 9.99999 in use: 0.99999 too many
            Step(50_040,       0, True,   0,         949_960,        0),  # 9.4996 in use
            Step(99_999,       1, False,  0,         900_001,        1),
            Step(100_000,      1, True,   0,       1_000_000,        0),
            Step(1_100_000,    0, True,  10,               0,        0),
        ],
        id="waits rounded to whole microseconds",
    ),
    pytest.param(
        Policy(1, 30 * 86_400),
        # One unit per 30 days (2_592_000_000_000 µs): even here 1 µs early is too early.
        [
            #    at µs             cost allowed remaining reset_after         retry_after
            Step(0,                   1, True,  0,  2_592_000_000_000,                  0),
            Step(0,                   1, False, 0,  2_592_000_000_000,  2_592_000_000_000),
            Step(2_591_999_999_998,   1, False, 0,                  2,                  2),
            Step(2_591_999_999_999,   0, True,  0,                  1,                  0),  # not a whole unit free
            Step(2_591_999_999_999,   1, False, 0,                  1,                  1),
            Step(2_592_000_000_000,   1, True,  0,  2_592_000_000_000,                  0),
        ],
        id="long period",
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
    [Policy(10, 1, burst=20), Policy(10, 1, burst=5), Policy(10, 1), Policy(7, 3), Policy(1000, 0.25, burst=1)],
    ids=str,
)
@pytest.mark.parametrize("seed", range(5))
def test_at_most_burst_plus_rate_in_any_interval(policy: Policy, seed: int) -> None:
    """Over any interval [a, b], at most ``capacity + (b - a) * limit / period`` units are admitted."""
    period = policy.period_ms * 1000
    times = admitted(decide, policy, schedule(seed, policy))
    assert len(times) > 50  # the schedule exercises the limit, not just empty buckets
    for first, (start, _) in enumerate(times):
        units = 0
        for end, cost in times[first:]:
            units += cost
            # units <= capacity + (end - start) * limit / period, in integers
            assert units * period <= policy.capacity * period + (end - start) * policy.limit, (start, end, units)
