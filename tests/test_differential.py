"""The Lua path on a real Redis and the pure-Python path in memory give the same decisions.

Random traces of (time step, operation, key, policy, cost) run against both with the same
caller-supplied clock. Redis expires keys in real time while the memory store expires them at
the fake time, so the fake clock is real time plus an offset that only grows, by each step plus
a margin: whenever Redis has expired a key, the fake time is past its TTL too, and state past
its TTL must behave exactly like no state (which this test therefore also checks).
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sluicegate
from sluicegate.stores import MemoryStore

pytestmark = pytest.mark.redis

POLICIES = [
    sluicegate.Policy(3, 1.0),
    sluicegate.Policy(2, 0.5, burst=4),
    sluicegate.Policy(5, 2.0, burst=2, name="tight"),
    sluicegate.Policy(4, 1.0, algorithm="sliding-log"),
    sluicegate.Policy(3, 0.3, algorithm="sliding-log"),
    sluicegate.Policy(4, 1.0, algorithm="sliding-window"),
    sluicegate.Policy(6, 0.25, algorithm="sliding-window"),
    sluicegate.Policy(3, 0.5, algorithm="fixed-window"),
    sluicegate.Policy(5, 1.5, algorithm="fixed-window"),
]
KEYS = ["a", "b:{x}"]
# Redis's reply can come later than the clock was read; the margin absorbs that latency.
MARGIN_S = 0.005
_prefixes = itertools.count()


@dataclass
class Clock:
    offset: float = 0.0
    now: float = 0.0

    def __call__(self) -> float:
        return self.now

    def step(self, seconds: float) -> None:
        self.offset += seconds + MARGIN_S
        self.now = time.time() + self.offset


policy_indexes = st.integers(0, len(POLICIES) - 1)
steps = st.one_of(st.just(0.0), st.floats(0, 0.05), st.floats(0, 1.0), st.floats(1.0, 3.0))


@st.composite
def items(draw: st.DrawFn) -> tuple[str, sluicegate.Policy, int]:
    policy = POLICIES[draw(policy_indexes)]
    return draw(st.sampled_from(KEYS)), policy, draw(st.integers(1, policy.capacity))


operations = st.one_of(
    st.tuples(st.just("hit"), items()),
    st.tuples(st.just("peek"), items()),
    st.tuples(st.just("reset"), items()),
    st.tuples(st.just("hit_all"), st.lists(items(), min_size=1, max_size=4)),
)


def _run(limiter: sluicegate.Limiter, operation: str, arguments: Any) -> object:
    try:
        if operation == "hit_all":
            return limiter.hit_all(arguments)
        key, policy, cost = arguments
        if operation == "reset":
            limiter.reset(key, policy)
            return None
        return getattr(limiter, operation)(key, policy, cost=cost)
    except sluicegate.CostError as exc:  # summed duplicate costs in hit_all may exceed a capacity
        return ("CostError", str(exc))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(trace=st.lists(st.tuples(steps, operations), min_size=3, max_size=40))
def test_redis_and_memory_decide_alike(redis_url: str, trace: list[tuple[float, tuple[str, object]]]) -> None:
    clock = Clock()
    prefix = f"diff{next(_prefixes)}"
    with (
        sluicegate.Limiter(redis_url, prefix=prefix, clock=clock, timeout=2.0, fallback="raise") as on_redis,
        sluicegate.Limiter(MemoryStore(), prefix=prefix, clock=clock) as in_memory,
    ):
        for step, (operation, arguments) in trace:
            clock.step(step)
            assert _run(on_redis, operation, arguments) == _run(in_memory, operation, arguments)
