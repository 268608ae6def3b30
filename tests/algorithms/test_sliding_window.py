"""Sliding window counter: ``estimate = previous * (period - elapsed) / period + current``.

``previous`` and ``current`` count the units admitted in the last aligned window and this one,
``elapsed`` is the time since this window started. A request fits when ``estimate + cost <=
limit``. A count weighs until the end of the window after its own, so ``reset_after`` runs to
there; ``retry_after`` is rounded up to the µs.
"""

from __future__ import annotations

import pytest

from sluicegate import Policy
from sluicegate.algorithms.sliding_window import decide
from tests.algorithms._steps import T0, Step, admitted, run, schedule

# T0 is a whole day: windows start at round offsets (0, 1_000_000, 2_000_000, ... µs for 1 s).
# fmt: off
TABLE = [
    pytest.param(
        Policy(4, 1, algorithm="sliding-window"),
        [
            #    at µs      cost allowed remaining reset_after  retry_after
            Step(0,            1, True,   3,       2_000_000,        0),  # from empty; weighs on the next window too
            Step(500_000,      3, True,   0,       1_500_000,        0),
            Step(500_000,      1, False,  0,       1_500_000,  750_000),  # at 1.25 s the 4 weigh 4 * 0.75 = 3
            Step(1_249_999,    1, False,  0,         750_001,        1),  # they weigh 3.000004
            Step(1_250_000,    1, True,   0,       1_750_000,        0),  # exactly at retry_after
            Step(1_250_000,    0, True,   0,       1_750_000,        0),  # a look
            Step(1_500_000,    2, False,  1,       1_500_000,  250_000),  # 4 * 0.5 + 1 = 3; 4 * 0.25 + 1 + 2 = 4
            Step(1_750_000,    2, True,   0,       1_250_000,        0),  # the denial consumed nothing
            Step(2_000_000,    0, True,   1,       1_000_000,        0),  # the 3 of the last window weigh 3
            Step(2_500_000,    3, False,  2,         500_000,  166_667),  # the 3 weigh 1 at 2_666_666.7
            Step(2_666_666,    3, False,  2,         333_334,        1),  # they weigh 1.000002
            Step(2_666_667,    3, True,   0,       1_333_333,        0),  # they weigh 0.999999
            Step(2_666_667,    1, False,  0,       1_333_333,  333_333),  # 3 + 1 fit only once the 3 faded, at 3 s
            Step(3_000_000,    1, True,   0,       2_000_000,        0),
            Step(4_000_000,    0, True,   3,       1_000_000,        0),  # only the previous window's 1 still weighs
            Step(4_999_999,    0, True,   3,               1,        0),
            Step(5_000_000,    0, True,   4,               0,        0),
        ],
        id="two counters",
    ),
    pytest.param(
        Policy(4, 1, algorithm="sliding-window"),
        # A request from behind the stored window counts in it as if at its start (the previous
        # window weighs fully); the times returned count from the caller's clock.
        [
            #    at µs      cost allowed remaining reset_after  retry_after
            Step(1_500_000,    3, True,   1,       1_500_000,        0),
            Step(1_200_000,    1, True,   0,       1_800_000,        0),  # back, within the same window
            Step(900_000,      1, False,  0,       2_100_000, 1_350_000),  # at 2.25 s the 4 weigh 3
            Step(2_500_000,    2, True,   0,       1_500_000,        0),  # 4 * 0.5 + 2
            Step(1_900_000,    1, False,  0,       2_100_000,  850_000),  # the 4 weigh 1 at 2.75 s
            Step(2_750_000,    1, True,   0,       1_250_000,        0),
        ],
        id="clock goes back",
    ),
    pytest.param(
        Policy(1_000_000, 86_400, algorithm="sliding-window"),
        # Windows of one day (86_400_000_000 µs): even here 1 µs before retry_after is too early.
        [
            #    at µs             cost    allowed remaining reset_after      retry_after
            Step(86_399_999_999,        1, True,  999_999,  86_400_000_001,       0),  # the first day's last µs
            Step(86_400_000_000,  999_999, True,        0, 172_800_000_000,       0),  # 1 * 1 + 999_999
            Step(172_799_950_000,       1, False,       0,  86_400_050_000,  50_000),  # the 1 weighs 0.0000005787
            Step(172_799_950_000,       0, True,        0,  86_400_050_000,       0),  # not a whole unit free
            Step(172_800_000_000,       1, True,        0, 172_800_000_000,       0),  # 999_999 * 1 + 1
        ],
        id="long period",
    ),
]
# fmt: on

POLICIES = [
    Policy(4, 1, algorithm="sliding-window"),
    Policy(10, 0.25, algorithm="sliding-window"),
    Policy(7, 3, algorithm="sliding-window"),
    Policy(100, 60, algorithm="sliding-window"),
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
def test_error_bound(policy: Policy, seed: int) -> None:
    """At most ``limit`` per aligned window, at most ``2 * limit`` in any trailing period."""
    period = policy.period_ms * 1000
    times = admitted(decide, policy, schedule(seed, policy))
    per_window: dict[int, int] = {}
    busiest = 0
    for last, (end, cost) in enumerate(times):
        window = (T0 + end) // period
        per_window[window] = per_window.get(window, 0) + cost
        busiest = max(busiest, sum(cost for at, cost in times[: last + 1] if at > end - period))
    assert max(per_window.values()) <= policy.limit
    assert policy.limit < busiest <= 2 * policy.limit  # over limit: the estimate is an approximation
