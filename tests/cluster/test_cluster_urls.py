"""``redis+cluster://`` URLs, the cross-slot plan without I/O, and a cluster that is not there."""

from __future__ import annotations

from typing import Any

import pytest
from redis.crc import key_slot

import sluicegate
from sluicegate import ConfigError, StoreError
from sluicegate._keys import state_keys
from sluicegate.stores import AsyncClusterStore, ClusterStore, Item, open_async_store, open_store, store_kind
from sluicegate.stores.cluster import _Plan, _TLSConnection, slot_groups
from tests.redis_server import free_port

P = sluicegate.Policy(3, 60.0)


def _item(key: str, policy: sluicegate.Policy = P, cost: int = 1) -> Item:
    return Item(state_keys("t", policy, key), policy, cost)


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("redis+cluster://a:1,b:2", "cluster"),
        ("rediss+cluster://a:1", "cluster"),
        ("redis+sentinel://a:1/m", "sentinel"),
        ("REDISS+SENTINEL://a:1/m", "sentinel"),
        ("redis://a", "redis"),
        ("memory://", "memory"),
    ],
)
def test_store_kind(url: str, kind: str) -> None:
    assert store_kind(url) == kind


def test_cluster_urls_open_cluster_stores_without_connecting() -> None:
    # Nothing listens on these ports: the stores connect on first use, not here.
    url = f"redis+cluster://127.0.0.1:{free_port()},[::1]:{free_port()},localhost"
    store = open_store(url, timeout=0.1)
    assert isinstance(store, ClusterStore)
    assert "[::1]:" in repr(store)
    assert repr(store).endswith(",localhost:6379>")
    assert isinstance(open_async_store(url, timeout=0.1), AsyncClusterStore)


def test_tls_and_credentials_reach_the_node_options() -> None:
    store = ClusterStore("rediss+cluster://us%40r:p%3Ass@h1:7000,h2?ssl_ca_certs=/ca.pem&ssl_cert_reqs=none", timeout=1)
    options: dict[str, Any] = store._options
    assert options["connection_class"] is _TLSConnection
    assert (options["username"], options["password"]) == ("us@r", "p:ss")
    assert (options["ssl_ca_certs"], options["ssl_cert_reqs"]) == ("/ca.pem", "none")
    assert options["socket_timeout"] == 1
    assert "ssl" not in options


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis+cluster://a:1,b:notaport", "bad host 'b:notaport'"),
        ("redis+cluster://a:1,,b:2", "bad host ''"),
        ("redis+cluster://a:1?socket_timeout=5", "unknown option 'socket_timeout'"),
        ("redis+cluster://a:1/2", "only database 0"),
        ("redis+cluster://a:1?ssl_ca_certs=/ca.pem", "ssl_ca_certs needs TLS"),
        ("rediss+cluster://a:1?ssl_check_hostname=maybe", "invalid value for ssl_check_hostname"),
        ("redis+cluster://:s3cret@a:1,b:x", ":***@"),
    ],
)
@pytest.mark.parametrize("limiter_class", [sluicegate.Limiter, sluicegate.AsyncLimiter])
def test_bad_cluster_urls_are_refused(limiter_class: type, url: str, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        limiter_class(url)
    assert message in str(raised.value)
    assert "s3cret" not in str(raised.value)


def test_slot_groups_keep_one_users_policies_together() -> None:
    items = [_item("a"), _item("b"), _item("a", sluicegate.Policy(5, 1.0, algorithm="sliding-log")), _item("c")]
    groups = slot_groups(items)
    assert sorted(i for group in groups for i in group) == [0, 1, 2, 3]
    assert [0, 2] in groups  # both policies of user "a" share its hash tag, hence its slot
    for group in groups:
        assert len({key_slot(k.encode()) for i in group for k in items[i].keys}) == 1


def _reply(allowed: bool, marks: list[int]) -> list[int]:
    reply = [1 if allowed else 0]
    for mark in marks:
        reply += [1 if allowed else 0, 0, 0, 0, mark]
    return reply


def _distinct_slots(count: int) -> list[Item]:
    items: list[Item] = []
    for n in range(100):
        item = _item(f"user{n}")
        if all(slot_groups([item, other]) != [[0, 1]] for other in items):
            items.append(item)
        if len(items) == count:
            return items
    raise AssertionError("not enough distinct slots")


def test_the_plan_refunds_committed_slots_when_another_slot_denies() -> None:
    items = _distinct_slots(3)
    plan = _Plan(items, 123, commit=True)
    assert len(plan.decide_calls()) == 3
    replies = [_reply(True, [41]), _reply(False, [0]), _reply(True, [42])]
    calls = plan.refund_calls(replies)
    assert sorted(calls) == [0, 2]  # the denied slot wrote nothing: no refund
    numkeys, key, now, *argv = calls[0]
    assert (numkeys, key, now) == (1, items[plan.groups[0][0]].keys[0], 123)
    assert argv == ["g", 3, 60_000_000, 3, 1, 41]
    refunded = [0, 1, 7, 9, 0, 0]  # refund.lua's reply: the state as it stands after the refund
    verdicts = plan.answer(replies, {0: refunded, 2: refunded})
    assert [v.allowed for v in verdicts] == [True, False, True]
    assert verdicts[plan.groups[0][0]].remaining == 7


def test_the_plan_refunds_and_raises_when_a_slot_fails() -> None:
    items = _distinct_slots(2)
    plan = _Plan(items, None, commit=True)
    failure = StoreError("redis timeout error", kind="timeout")
    replies: list[Any] = [_reply(True, [5]), failure]
    assert list(plan.refund_calls(replies)) == [0]
    with pytest.raises(StoreError) as raised:
        plan.answer(replies, {0: _reply(False, [0])})
    assert raised.value is failure


def test_the_plan_refunds_nothing_when_all_allow_or_nothing_commits() -> None:
    items = _distinct_slots(2)
    assert _Plan(items, None, commit=True).refund_calls([_reply(True, [1]), _reply(True, [2])]) == {}
    assert _Plan(items, None, commit=False).refund_calls([_reply(True, [0]), _reply(False, [0])]) == {}


@pytest.mark.parametrize("fallback", ["raise", "local"])
def test_an_unreachable_cluster_is_a_connection_error(fallback: Any) -> None:
    url = f"redis+cluster://127.0.0.1:{free_port()}"
    with sluicegate.Limiter(url, timeout=0.5, fallback=fallback, registry=None) as limiter:
        if fallback == "raise":
            with pytest.raises(StoreError) as raised:
                limiter.hit("k", P)
            assert raised.value.kind == "connection"
        else:
            assert limiter.hit("k", P).degraded


async def test_an_unreachable_cluster_is_a_connection_error_async() -> None:
    url = f"redis+cluster://127.0.0.1:{free_port()}"
    async with sluicegate.AsyncLimiter(url, timeout=0.5, fallback="raise", registry=None) as limiter:
        with pytest.raises(StoreError) as raised:
            await limiter.hit("k", P)
        assert raised.value.kind == "connection"
