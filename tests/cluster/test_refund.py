"""``refund.lua`` takes back exactly one committed call, whatever another call wrote since.

The scripts run on a standalone Redis with the caller's clock, so every interleaving is exact:
a call commits, another call may write, then the first one is refunded; the state must be what
it would be had the first call never run (GCRA: never less than that, see below).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis

import sluicegate
from sluicegate._keys import state_keys
from sluicegate._lua import DECIDE_SCRIPT, REFUND_SCRIPT
from sluicegate.stores import Item
from sluicegate.stores.redis import item_args, marks, script_args, verdicts

pytestmark = pytest.mark.redis

S = 1_000_000  # µs
T = 100_000 * 10 * S  # the start of a 10 s window


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    with redis.Redis.from_url(redis_url, decode_responses=True) as client:
        yield client


def _item(policy: sluicegate.Policy, cost: int) -> Item:
    return Item(state_keys("r", policy, "user"), policy, cost)


def _decide(client: redis.Redis, policy: sluicegate.Policy, cost: int, now: int) -> list[int]:
    reply: list[int] = client.eval(DECIDE_SCRIPT, *script_args([_item(policy, cost)], now, commit=True))
    assert reply[0] == 1, "these steps are all allowed"
    return reply


def _refund(client: redis.Redis, policy: sluicegate.Policy, cost: int, committed: list[int], now: int) -> list[int]:
    item = _item(policy, cost)
    args: list[Any] = [len(item.keys), *item.keys, now, *item_args(item), *marks(committed)]
    reply: list[int] = client.eval(REFUND_SCRIPT, *args)
    # The reply is decide.lua's for a denied call, each item reporting its state as it stands.
    look: list[int] = client.eval(DECIDE_SCRIPT, *script_args([_item(policy, 0)], now, commit=False))
    assert reply[0] == 0
    assert verdicts(reply) == [verdicts(look)[0]._replace(retry_after_us=0)]
    return reply


def _state(client: redis.Redis, policy: sluicegate.Policy) -> list[Any]:
    result: list[Any] = []
    for key in state_keys("r", policy, "user"):
        kind = client.type(key)
        if kind == "zset":
            result.append(client.zrange(key, 0, -1, withscores=True))
        elif kind == "hash":
            result.append(client.hget(key, "used"))
        else:
            result.append(client.get(key))
    return result


GCRA = sluicegate.Policy(10, 10.0)  # 1 unit per second drains
FIXED = sluicegate.Policy(10, 10.0, algorithm="fixed-window")
SLIDING = sluicegate.Policy(10, 10.0, algorithm="sliding-window")
LOG = sluicegate.Policy(10, 10.0, algorithm="sliding-log")
W = T // (10 * S)  # the window index at T


@pytest.mark.parametrize("policy", [GCRA, FIXED, SLIDING, LOG], ids=lambda p: p.algorithm)
def test_a_refund_with_nothing_in_between_leaves_no_trace(client: redis.Redis, policy: sluicegate.Policy) -> None:
    committed = _decide(client, policy, 3, T)
    _refund(client, policy, 3, committed, T + 5)
    assert _state(client, policy) == [None] * len(state_keys("r", policy, "user"))


def test_gcra_refund_keeps_earlier_usage(client: redis.Redis) -> None:
    _decide(client, GCRA, 4, T)
    committed = _decide(client, GCRA, 3, T + S)  # 4 drained by 1, plus 3: 6
    _refund(client, GCRA, 3, committed, T + S)
    assert _state(client, GCRA) == [f"{T + S} 3"]  # the earlier 4, drained by 1


def test_gcra_refund_after_another_write_never_gives_back_more_than_it_holds(client: redis.Redis) -> None:
    _decide(client, GCRA, 4, T)
    committed = _decide(client, GCRA, 3, T + S)  # used 6
    _decide(client, GCRA, 2, T + 2 * S)  # another call: 6 drained by 1, plus 2: 7
    _refund(client, GCRA, 3, committed, T + 2 * S)
    # Without the refunded call: 4 at T, drained to 2 at T + 2 s, plus 2: 4. The refund cannot
    # tell how much of the call's 3 units had drained before the other write, so it gives back
    # 3 less what could have drained in that second (1): 5. Never below 4, never over-admitting.
    assert _state(client, GCRA) == [f"{T + 2 * S} 5"]


def test_fixed_window_refund_in_the_same_window(client: redis.Redis) -> None:
    committed = _decide(client, FIXED, 3, T)
    _decide(client, FIXED, 2, T + S)
    _refund(client, FIXED, 3, committed, T + S)
    assert _state(client, FIXED) == [f"{W} 2"]


def test_fixed_window_refund_after_the_window_moved_on(client: redis.Redis) -> None:
    committed = _decide(client, FIXED, 3, T)
    _decide(client, FIXED, 2, T + 10 * S)  # the next window: the call's 3 no longer count
    _refund(client, FIXED, 3, committed, T + 10 * S)
    assert _state(client, FIXED) == [f"{W + 1} 2"]


def test_sliding_window_refund_in_the_same_window(client: redis.Redis) -> None:
    committed = _decide(client, SLIDING, 3, T)
    _decide(client, SLIDING, 2, T + S)
    _refund(client, SLIDING, 3, committed, T + S)
    assert _state(client, SLIDING) == [f"{W} 2 0"]


def test_sliding_window_refund_after_the_next_window_began(client: redis.Redis) -> None:
    committed = _decide(client, SLIDING, 3, T)
    _decide(client, SLIDING, 1, T + 10 * S)  # the call's 3 are now the previous window's count
    _refund(client, SLIDING, 3, committed, T + 10 * S)
    assert _state(client, SLIDING) == [f"{W + 1} 1 0"]


def test_sliding_window_refund_two_windows_later_changes_nothing(client: redis.Redis) -> None:
    committed = _decide(client, SLIDING, 3, T)
    _decide(client, SLIDING, 1, T + 20 * S)
    _refund(client, SLIDING, 3, committed, T + 20 * S)
    assert _state(client, SLIDING) == [f"{W + 2} 1 0"]


def test_sliding_log_refund_removes_only_its_own_entry(client: redis.Redis) -> None:
    _decide(client, LOG, 3, T)  # an earlier entry with the same cost
    committed = _decide(client, LOG, 3, T + S)
    _decide(client, LOG, 2, T + 2 * S)
    _refund(client, LOG, 3, committed, T + 2 * S)
    assert _state(client, LOG) == [[("1:3", float(T)), ("3:2", float(T + 2 * S))], "5"]
