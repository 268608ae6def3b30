"""``hit_all`` on Redis is all-or-nothing: a denied call changes no item's state, an allowed
call consumes on every item. Checked on the raw Redis values, not through the limiter."""

from __future__ import annotations

import time
from typing import Any

import pytest
import redis

import sluicegate
from sluicegate._keys import state_keys
from tests.redis._support import all_keys, raw_value

pytestmark = pytest.mark.redis

CAPACITY = 5
POLICIES = {
    "gcra": f"{CAPACITY}/day",
    "sliding-log": f"{CAPACITY}/day algorithm sliding-log",
    "sliding-window": f"{CAPACITY}/day algorithm sliding-window",
    "fixed-window": f"{CAPACITY}/day algorithm fixed-window",
}
PREFIX = "sluicegate"


def _state_keys(key: str, policy: str) -> tuple[str, ...]:
    return state_keys(PREFIX, sluicegate.Policy.parse(policy), key)


def _snapshot(client: redis.Redis, items: list[tuple[Any, ...]]) -> dict[str, Any]:
    """Type, content and PTTL of every state key of ``items``, and the whole key space."""
    state: dict[str, Any] = {}
    for key, policy, *_ in items:
        for state_key in _state_keys(key, policy):
            state[state_key] = (raw_value(client, state_key), client.pttl(state_key))
    return {"state": state, "keyspace": all_keys(client)}


def _assert_unchanged(before: dict[str, Any], after: dict[str, Any], elapsed_ms: float) -> None:
    assert after["keyspace"] == before["keyspace"]
    for state_key, (value, pttl) in before["state"].items():
        value_after, pttl_after = after["state"][state_key]
        assert value_after == value, f"{state_key} changed"
        if pttl == -2:  # absent before: still absent
            assert pttl_after == -2, f"{state_key} was created"
        else:  # only the time that passed: no rewrite refreshed the expiry
            assert pttl > 0, f"{state_key} has no expiry"
            assert 0 <= pttl - pttl_after <= elapsed_ms + 1, f"{state_key}: PTTL {pttl} -> {pttl_after}"


def _limiter(url: str, clock: Any) -> sluicegate.Limiter:
    return sluicegate.Limiter(url, timeout=2.0, **({} if clock is None else {"clock": clock}))


def _used_items() -> list[tuple[str, str, int]]:
    """One key per algorithm with some usage (2 of 5), one without any state yet."""
    items: list[tuple[str, str, int]] = []
    for algorithm, policy in POLICIES.items():
        items += [(f"used:{algorithm}", policy, 1), (f"fresh:{algorithm}", policy, 2)]
    return items


@pytest.mark.parametrize("position", ["first", "last"])
@pytest.mark.parametrize(
    ("denier", "clock_kind"),
    [(a, "fake") for a in POLICIES] + [("gcra", "server")],
)
def test_a_denied_hit_all_changes_no_state(redis_url, clock, denier, clock_kind, position):
    with (
        _limiter(redis_url, clock if clock_kind == "fake" else None) as limiter,
        redis.Redis.from_url(redis_url) as client,
    ):
        items = _used_items()
        for key, policy, _ in items:
            if key.startswith("used:"):
                limiter.hit(key, policy, cost=2)
        full = (f"full:{denier}", POLICIES[denier], 1)
        assert limiter.hit(full[0], full[1], cost=CAPACITY).allowed
        assert not limiter.peek(full[0], full[1]).allowed
        items = [full, *items] if position == "first" else [*items, full]
        clock.advance(10)  # a rewrite would now store a different time

        started = time.monotonic()  # PTTLs may drop by the time both snapshots take, no more
        before = _snapshot(client, items)
        decision = limiter.hit_all(items)
        after, elapsed_ms = _snapshot(client, items), (time.monotonic() - started) * 1000

    assert not decision.allowed
    assert not decision.degraded
    assert decision.key == full[0]
    assert decision.retry_after > 0
    assert [d.allowed for d in decision.results] == [d.key != full[0] for d in decision.results]
    _assert_unchanged(before, after, elapsed_ms)


def test_a_denied_hit_all_with_a_repeated_item_changes_no_state(redis_url, clock):
    # The two "used:gcra" items merge into one of cost 4, more than the 3 left: denied.
    with _limiter(redis_url, clock) as limiter, redis.Redis.from_url(redis_url) as client:
        items = _used_items()
        for key, policy, _ in items:
            if key.startswith("used:"):
                limiter.hit(key, policy, cost=2)
        items += [("used:gcra", POLICIES["gcra"], 2), ("used:gcra", POLICIES["gcra"], 2)]
        started = time.monotonic()  # PTTLs may drop by the time both snapshots take, no more
        before = _snapshot(client, items)
        decision = limiter.hit_all(items)
        after, elapsed_ms = _snapshot(client, items), (time.monotonic() - started) * 1000

    assert not decision.allowed
    assert not decision.degraded
    assert decision.key == "used:gcra"
    _assert_unchanged(before, after, elapsed_ms)


@pytest.mark.parametrize("clock_kind", ["fake", "server"])
def test_an_allowed_hit_all_consumes_on_every_item(redis_url, clock, clock_kind):
    with (
        _limiter(redis_url, clock if clock_kind == "fake" else None) as limiter,
        redis.Redis.from_url(redis_url) as client,
    ):
        items = _used_items()
        for key, policy, _ in items:
            if key.startswith("used:"):
                limiter.hit(key, policy, cost=2)
        clock.advance(10)
        # What each hit alone would leave (gcra leaks 5 units a day: 0.00006 units in a second
        # of server time, far below a whole unit, so these stay exact on the server clock too).
        expected = [limiter.peek(key, policy, cost=cost).remaining for key, policy, cost in items]
        before = _snapshot(client, items)

        decision = limiter.hit_all(items)

        after = _snapshot(client, items)
        remaining_now = [limiter.peek(key, policy, cost=1).remaining for key, policy, _ in items]

    assert decision.allowed
    assert not decision.degraded
    assert [d.key for d in decision.results] == [key for key, _, _ in items]
    assert [d.allowed for d in decision.results] == [True] * len(items)
    assert [d.remaining for d in decision.results] == expected
    # Consumed: a further hit of 1 leaves one less than the hit_all did.
    assert remaining_now == [r - 1 for r in expected]
    assert after["keyspace"] == sorted({*before["keyspace"], *(k.encode() for k in after["state"])})
    for state_key, (value, _) in before["state"].items():
        value_after, pttl_after = after["state"][state_key]
        assert value_after != value, f"{state_key} was not written"
        assert pttl_after > 0
