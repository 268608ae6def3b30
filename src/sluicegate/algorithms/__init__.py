"""The rate-limit math, as pure functions ``decide(state, now_us, policy, cost) -> Outcome``.

This is the only place the math is written in Python; ``sluicegate/lua/`` holds the Lua twin
of each function (and of ``decide_all``), and a differential test keeps them equal. A step with
``cost=0`` is a pure look at the current state (always allowed, consumes nothing). A cost above
the policy's capacity is the caller's to refuse (``Limiter`` raises ``CostError``).

How to choose:

- ``gcra`` (default): smooth rate with a burst allowance; one value per key. Best general choice.
- ``sliding-log``: exact "never more than limit in any trailing period"; memory grows with limit.
- ``sliding-window``: near-exact and one value per key; error bound in its module docstring.
- ``fixed-window``: simplest, aligned windows; allows up to 2x limit across a window edge.
"""

from __future__ import annotations

from ._batch import DECIDE, Verdict, Write, decide_all
from ._outcome import Outcome

__all__ = ["DECIDE", "Outcome", "Verdict", "Write", "decide_all"]
