"""One round trip per decision, checked against the server's own statistics.

``INFO``'s ``total_commands_processed`` and ``commandstats`` also count the commands a script
runs inside Redis (the ``TIME``, ``GET``, ``SET``… of ``decide.lua``), so "3N ``EVALSHA`` and
nothing else" cannot be read off them directly. The tests therefore compare two runs of the
same decisions on fresh keys, each after ``CONFIG RESETSTAT`` from a separate raw client:

1. through a warmed-up limiter (its connection open and the script cached);
2. as 3N bare ``EVALSHA`` calls the raw client sends itself, with the same arguments.

Both runs must leave identical statistics: the same calls per command (so the same ``EVALSHA``
count, 3N, and the same script-internal commands), the same ``total_commands_processed``, no
new connection and no error reply. Anything the limiter sent besides one ``EVALSHA`` per
decision (a ``PING``, a ``SCRIPT LOAD``, an ``EVAL``, a reconnect's handshake, a stray ``GET``)
would show up as a difference. The raw client's own commands (``CONFIG RESETSTAT``, then the
``INFO`` that reads the counters, which counts itself only afterwards) are the same in both runs.

A limiter's first decision also opens its connection: that must not cost a round trip either
(no ``HELLO``, ``CLIENT SETINFO``, ``SELECT`` or ``PING`` before the ``EVALSHA``).
"""

from __future__ import annotations

from typing import Any

import pytest

import sluicegate
from sluicegate._keys import state_keys
from sluicegate._lua import DECIDE_SCRIPT, DECIDE_SHA
from sluicegate.stores import Item
from sluicegate.stores.redis import script_args
from tests.redis._support import command_calls

pytestmark = pytest.mark.redis

N = 50
GCRA, FIXED, LOG = "1000/hour", "1000/hour algorithm fixed-window", "1000/hour algorithm sliding-log"
Workload = list[tuple[str, list[tuple[str, str, int]]]]


def _workload() -> Workload:
    """N hits, N peeks and N hit_alls of 3 items (three algorithms, a sliding log among them)."""
    return (
        [("hit", [(f"hit-{i}", GCRA, 1)]) for i in range(N)]
        + [("peek", [(f"peek-{i}", GCRA, 1)]) for i in range(N)]
        + [("hit_all", [(f"all-{i}", GCRA, 1), (f"all-{i}", FIXED, 2), (f"all-{i}", LOG, 3)]) for i in range(N)]
    )


def _statistics(raw: Any) -> dict[str, Any]:
    info = raw.info("all")
    return {
        "commands": command_calls({k: v for k, v in info.items() if k.startswith("cmdstat_")}),
        "failed": {
            k: (v["failed_calls"], v["rejected_calls"])
            for k, v in info.items()
            if k.startswith("cmdstat_") and (v["failed_calls"] or v["rejected_calls"])
        },
        "total_commands_processed": info["total_commands_processed"],
        "total_connections_received": info["total_connections_received"],
        "total_error_replies": info["total_error_replies"],
        "connected_clients": info["connected_clients"],
    }


def _bare_evalsha_run(raw: Any, workload: Workload) -> dict[str, Any]:
    """The reference: the same decisions as bare EVALSHA calls from the raw client."""
    raw.config_resetstat()
    for operation, items in workload:
        resolved = []
        for key, text, cost in items:
            policy = sluicegate.Policy.parse(text)
            resolved.append(Item(state_keys("reference", policy, key), policy, cost))
        raw.execute_command("EVALSHA", DECIDE_SHA, *script_args(resolved, None, commit=operation != "peek"))
    return _statistics(raw)


def _run(limiter: sluicegate.Limiter, workload: Workload) -> None:
    for operation, items in workload:
        if operation == "hit_all":
            decision = limiter.hit_all(items)
        else:
            [(key, policy, cost)] = items
            decision = getattr(limiter, operation)(key, policy, cost=cost)
        assert decision.allowed
        assert not decision.degraded


async def _arun(limiter: sluicegate.AsyncLimiter, workload: Workload) -> None:
    for operation, items in workload:
        if operation == "hit_all":
            decision = await limiter.hit_all(items)
        else:
            [(key, policy, cost)] = items
            decision = await getattr(limiter, operation)(key, policy, cost=cost)
        assert decision.allowed
        assert not decision.degraded


def _check(through_limiter: dict[str, Any], reference: dict[str, Any], *, decisions: int, connections: int) -> None:
    print(f"\nthrough the limiter: {through_limiter}\nbare EVALSHA:        {reference}")
    assert through_limiter["commands"]["evalsha"] == decisions
    assert "eval" not in through_limiter["commands"]
    assert through_limiter["failed"] == {}
    assert through_limiter["total_error_replies"] == 0
    assert through_limiter["total_connections_received"] == connections
    # Every processed command is in commandstats: 1 CONFIG RESETSTAT from the raw client, the
    # limiter's EVALSHA calls, and what the scripts ran inside Redis.
    assert through_limiter["total_commands_processed"] == sum(through_limiter["commands"].values())
    assert through_limiter["connected_clients"] == 2  # the raw client and the limiter's one connection
    # The same as bare EVALSHA calls, but for the limiter's own connection, if it made one.
    assert {**through_limiter, "connected_clients": None} == {
        **reference,
        "total_connections_received": reference["total_connections_received"] + connections,
        "connected_clients": None,
    }


def test_one_evalsha_per_decision(own_redis):
    with sluicegate.Limiter(own_redis.url, timeout=2.0) as limiter, own_redis.client() as raw:
        limiter.hit("warm-up", GCRA)  # connects and caches the script
        raw.config_resetstat()
        _run(limiter, _workload())
        through_limiter = _statistics(raw)
        reference = _bare_evalsha_run(raw, _workload())
    _check(through_limiter, reference, decisions=3 * N, connections=0)


async def test_one_evalsha_per_decision_async(own_redis):
    async with sluicegate.AsyncLimiter(own_redis.url, timeout=2.0) as limiter:
        with own_redis.client() as raw:
            await limiter.hit("warm-up", GCRA)
            raw.config_resetstat()
            await _arun(limiter, _workload())
            through_limiter = _statistics(raw)
            reference = _bare_evalsha_run(raw, _workload())
    _check(through_limiter, reference, decisions=3 * N, connections=0)


FIRST = [("hit", [("first", GCRA, 1)])]


def test_a_new_connection_costs_no_extra_round_trip(own_redis):
    with own_redis.client() as raw:
        raw.script_load(DECIDE_SCRIPT)  # cached: the first decision needs no EVAL
        raw.config_resetstat()
        with sluicegate.Limiter(own_redis.url, timeout=2.0) as limiter:
            _run(limiter, FIRST)
            through_limiter = _statistics(raw)
        reference = _bare_evalsha_run(raw, FIRST)
    _check(through_limiter, reference, decisions=1, connections=1)


async def test_a_new_connection_costs_no_extra_round_trip_async(own_redis):
    with own_redis.client() as raw:
        raw.script_load(DECIDE_SCRIPT)
        raw.config_resetstat()
        async with sluicegate.AsyncLimiter(own_redis.url, timeout=2.0) as limiter:
            await _arun(limiter, FIRST)
            through_limiter = _statistics(raw)
        reference = _bare_evalsha_run(raw, FIRST)
    _check(through_limiter, reference, decisions=1, connections=1)
