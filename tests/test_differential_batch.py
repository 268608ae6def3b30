"""Batching changes no decision: concurrent decisions through the batched Redis store are
exactly the decisions of making them one by one, in some serial order, in memory.

Each round of a random trace launches its operations (hit, peek, hit_all) as concurrent tasks
on one ``AsyncRedisStore``, all at the same caller-supplied time; the first goes out alone and
the rest are coalesced into batched script calls (``batch_size`` small, so a round also spans
several batches, several of them in flight at once). The store records which decisions went
out together in each batched call, in queue order. That is the serial order batching promises
within a call; calls in flight together may run in either order, each atomically. The
reference therefore looks for an order of the round's calls in which replaying every decision
through ``MemoryStore``, one at a time, gives exactly the batched answers, and fails if there is
none. Clock as in ``tests/test_differential.py``: real time plus an offset that only grows, so
Redis's real-time expiry never runs ahead of the fake time.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sluicegate._keys import state_keys
from sluicegate.algorithms import Verdict
from sluicegate.stores import Item, MemoryStore
from sluicegate.stores.redis import AsyncRedisStore
from tests.test_differential import KEYS, POLICIES, Clock, steps

pytestmark = pytest.mark.redis

_prefixes = itertools.count()


class RecordingStore(AsyncRedisStore):
    """Records which operations went out together in each batched call, in queue order, and
    how many groups each script call carried."""

    def __init__(self, url: str, *, batch_size: int) -> None:
        super().__init__(url, timeout=5.0, batch_size=batch_size)
        self.operations: dict[int, int] = {}  # id(items) -> operation
        self.batches: list[list[int]] = []
        self.groups: list[int] = []
        execute = self._execute

        async def counting(command: str, sha: str, numkeys: int, *rest: Any) -> Any:
            argv = rest[numkeys:]
            self.groups.append(int(argv[0]) if argv[1] == "b" else 1)
            return await execute(command, sha, numkeys, *rest)

        self._execute = counting

    async def decide_as(self, operation: int, items: Sequence[Item], now: int | None, *, commit: bool) -> list[Verdict]:
        self.operations[id(items)] = operation
        return await self.decide(items, now, commit=commit)

    async def _send(self, batch: Any) -> None:
        self.batches.append([self.operations[id(request.items)] for request in batch])
        await super()._send(batch)


def serial_order_exists(calls: list[list[int]], matches: Callable[[int], bool], memory: MemoryStore) -> bool:
    """Whether some order of ``calls`` (each a list of operations, in their order within the
    call) replays in ``memory`` to the observed answers; ``matches(operation)`` decides one
    operation in ``memory`` and says whether it gave the observed answer."""
    if not calls:
        return True
    for index, call in enumerate(calls):
        saved = OrderedDict(memory._states)
        rest = calls[:index] + calls[index + 1 :]
        if all(matches(operation) for operation in call) and serial_order_exists(rest, matches, memory):
            return True
        memory._states = saved  # roll back what this order wrote
    return False


def _matches(
    memory: MemoryStore,
    prefix: str,
    operations: list[Operation],
    times: list[int],
    observed: list[list[Verdict]],
    operation: int,
) -> bool:
    commit, spec = operations[operation]
    return memory.decide(_items(prefix, spec), times[operation], commit=commit) == observed[operation]


Operation = tuple[bool, list[tuple[str, int, int]]]


@st.composite
def operation(draw: st.DrawFn) -> Operation:
    """(commit, [(key, policy index, cost)…]): a hit or peek of one item, or a hit_all of up to 3
    distinct (key, policy) items."""
    kind = draw(st.sampled_from(["hit", "peek", "hit_all"]))
    size = draw(st.integers(2, 3)) if kind == "hit_all" else 1
    pairs = draw(
        st.lists(
            st.tuples(st.sampled_from(KEYS), st.integers(0, len(POLICIES) - 1)),
            min_size=size,
            max_size=size,
            unique=True,
        )
    )
    return kind != "peek", [(key, p, draw(st.integers(1, POLICIES[p].capacity))) for key, p in pairs]


rounds = st.lists(st.tuples(steps, st.lists(operation(), min_size=1, max_size=12)), min_size=1, max_size=8)


def _items(prefix: str, spec: list[tuple[str, int, int]]) -> list[Item]:
    return [Item(state_keys(prefix, POLICIES[p], key), POLICIES[p], cost) for key, p, cost in spec]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(trace=rounds, batch_size=st.sampled_from([2, 4, 64]), spread_us=st.sampled_from([0, 100]))
def test_batched_decisions_equal_serial_decisions(
    redis_url: str, trace: list[tuple[float, list[Operation]]], batch_size: int, spread_us: int
) -> None:
    """``spread_us``: each operation of a round reads the clock that much after the one before
    it (the groups of one batch then carry different times; at most 1.2 ms, within the margin)."""
    clock = Clock()
    prefix = f"batch{next(_prefixes)}"
    memory = MemoryStore()

    async def run() -> list[int]:
        store = RecordingStore(redis_url, batch_size=batch_size)
        try:
            for step, operations in trace:
                clock.step(step)
                base = int(clock() * 1_000_000)
                store.batches.clear()
                batched = await asyncio.gather(
                    *(
                        store.decide_as(i, _items(prefix, spec), base + i * spread_us, commit=commit)
                        for i, (commit, spec) in enumerate(operations)
                    )
                )
                together = {i for batch in store.batches for i in batch}
                calls = store.batches + [[i] for i in range(len(operations)) if i not in together]
                times = [base + i * spread_us for i in range(len(operations))]
                matches = functools.partial(_matches, memory, prefix, operations, times, batched)
                assert serial_order_exists(calls, matches, memory), (calls, operations, batched)
            return store.groups
        finally:
            await store.aclose()

    groups = asyncio.run(run())
    assert max(groups) <= batch_size
    if any(len(operations) > 2 for _, operations in trace):
        assert max(groups) > 1  # something was batched


def test_batches_are_exercised(redis_url: str) -> None:
    """A sanity check on the property above: 12 concurrent decisions are batched."""
    store_groups: list[int] = []

    async def run() -> None:
        store = RecordingStore(redis_url, batch_size=64)
        items = _items("sanity", [("a", 0, 1)])
        await asyncio.gather(*(store.decide_as(i, items, None, commit=True) for i in range(12)))
        store_groups.extend(store.groups)
        await store.aclose()

    asyncio.run(run())
    assert store_groups == [1, 11]
