"""``decide_all``: every item is allowed and written, or nothing is written.

One item per algorithm, each with some state already, decided 250_000 µs after ``T0``:

- gcra 10/second: 6 units in use at T0, so 3.5 now;
- fixed-window 3/second: 1 unit in the window that started at T0;
- sliding-log 3/second: 1 unit logged at T0;
- sliding-window 4/second: 1 unit in the window that started at T0, none in the one before.
"""

from __future__ import annotations

from typing import Any

import pytest

from sluicegate import Policy
from sluicegate.algorithms import Verdict, Write, decide_all
from tests.algorithms._steps import T0

NOW = T0 + 250_000
WINDOW = T0 // 1_000_000
POLICIES = [
    Policy(10, 1),
    Policy(3, 1, algorithm="fixed-window"),
    Policy(3, 1, algorithm="sliding-log"),
    Policy(4, 1, algorithm="sliding-window"),
]
STATES: list[Any] = [(T0, 6.0), (WINDOW, 1), (((T0, 1),), 1), (WINDOW, 1, 0)]

# Each allowed item when nothing is consumed (a cost-0 look): retry 0, the state as it stands.
LOOKS = [
    Verdict(True, 6, 350_000, 0),  # 3.5 in use
    Verdict(True, 2, 750_000, 0),  # the window ends at T0 + 1 s
    Verdict(True, 2, 750_000, 0),  # the entry at T0 expires at T0 + 1 s
    Verdict(True, 3, 1_750_000, 0),  # the unit weighs until the end of the next window
]
ALLOWED = [
    Verdict(True, 2, 750_000, 0),  # 7.5 in use
    Verdict(True, 0, 750_000, 0),
    Verdict(True, 0, 1_000_000, 0),  # the newest entry, logged now
    Verdict(True, 0, 1_750_000, 0),
]
WRITES = [
    Write(0, (NOW, 7.5), 750_001),  # gcra's TTL errs 1 µs long, so the state is surely empty after it
    Write(1, (WINDOW, 3), 750_000),
    Write(2, (((T0, 1), (NOW, 2)), 3), 1_000_000),
    Write(3, (WINDOW, 4, 0), 1_750_000),
]
FIXED_WINDOW_DENIED = Verdict(False, 2, 750_000, 750_000)  # 1 + 3 > 3 until the window ends

CASES = [
    pytest.param([4, 2, 2, 3], True, ALLOWED, WRITES, id="all allowed: one write per item"),
    pytest.param([4, 2, 2, 3], False, ALLOWED, [], id="commit=False writes nothing"),
    pytest.param(
        [4, 3, 2, 3],
        True,
        [LOOKS[0], FIXED_WINDOW_DENIED, LOOKS[2], LOOKS[3]],
        [],
        id="one denied: nothing written, the others look",
    ),
    pytest.param(
        [8, 3, 2, 3],
        True,
        [Verdict(False, 6, 350_000, 150_000), FIXED_WINDOW_DENIED, LOOKS[2], LOOKS[3]],  # 3.5 + 8 = 11.5
        [],
        id="two denied: each its own retry",
    ),
    pytest.param(
        [0, 0, 0, 0],
        True,
        LOOKS,
        # the same states (gcra's moved to now: 3.5 in use now is 6 in use at T0)
        [
            Write(0, (NOW, 3.5), 350_001),
            Write(1, (WINDOW, 1), 750_000),
            Write(2, (((T0, 1),), 1), 750_000),
            Write(3, (WINDOW, 1, 0), 1_750_000),
        ],
        id="all looks: the states written back as they were",
    ),
]


@pytest.mark.parametrize(("costs", "commit", "verdicts", "writes"), CASES)
def test_decide_all(costs: list[int], commit: bool, verdicts: list[Verdict], writes: list[Write]) -> None:
    items = list(zip(POLICIES, costs, strict=True))
    assert decide_all(STATES, NOW, items, commit=commit) == (verdicts, writes)
