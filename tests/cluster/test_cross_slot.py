"""``hit_all`` over keys in different slots stays all-or-nothing.

Each slot commits on its own; a denial in one slot makes every slot that committed run
``refund.lua``. The tests check the result on the raw nodes: the committed slots' state means
exactly what it meant before the call. For the windows that is the same bytes; a sliding log
keeps its entries and ``used`` (only the ``seq`` counter, which keeps members unique, moves on);
GCRA keeps the same usage, stored at the later time the commit wrote (so ``t0`` moves and
``used`` is the earlier usage drained to it).
"""

from __future__ import annotations

from typing import Any

import pytest

import sluicegate
from sluicegate import StoreError
from sluicegate._lua import DECIDE_SHA
from sluicegate.stores.cluster import ClusterStore
from tests.cluster._support import command_calls, keys_on_masters, raw_state, ttls_ms
from tests.redis_cluster import Cluster
from tests.redis_server import RedisServer

pytestmark = [pytest.mark.redis, pytest.mark.redis_cluster]

ALGORITHMS = ["gcra", "sliding-log", "sliding-window", "fixed-window"]


@pytest.fixture
def cluster(redis_cluster: Cluster) -> Cluster:
    redis_cluster.flush()
    return redis_cluster


def _policy(algorithm: str) -> sluicegate.Policy:
    # Long enough that neither a window edge nor GCRA's drain moves anything during the test.
    return sluicegate.Policy(3, 86_400.0, algorithm=algorithm)


def _meaning(state: list[tuple[str, Any]], policy: sluicegate.Policy, at_us: int | None = None) -> Any:
    """What the raw state means for the next decision (see the module docstring)."""
    if {kind for kind, _ in state} == {"none"}:
        return "never written"
    if policy.algorithm == "gcra":
        ((_, text),) = state
        t0, used = text.split()
        drained = max(float(used) - ((at_us or int(t0)) - int(t0)) * policy.limit / (policy.period_ms * 1000), 0)
        return round(drained, 9)
    if policy.algorithm == "sliding-log":
        (_, log), (_, counters) = state
        return log, counters["used"]
    return state


def _check_unchanged(
    placed: list[tuple[str, RedisServer]], policy: sluicegate.Policy, before: list[list[tuple[str, Any]]]
) -> None:
    for (key, master), earlier in zip(placed, before, strict=True):
        now = raw_state(master, key, policy)
        at = int(now[0][1].split()[0]) if policy.algorithm == "gcra" and now[0][1] else None
        assert _meaning(now, policy) == _meaning(earlier, policy, at), f"{key} on {master.port} changed"
        assert -1 not in ttls_ms(master, key, policy), "every key left keeps its TTL"


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_a_denial_in_one_slot_leaves_every_other_slot_as_it_was(cluster: Cluster, algorithm: str) -> None:
    policy = _policy(algorithm)
    (a, master_a), (b, master_b), (full, _) = keys_on_masters(cluster, policy, "slot")
    with sluicegate.Limiter(cluster.url, timeout=2.0, fallback="raise", registry=None) as limiter:
        assert limiter.hit(a, policy).allowed
        assert limiter.hit(b, policy, cost=2).allowed
        assert limiter.hit(full, policy, cost=3).allowed
        before = [raw_state(master, key, policy) for key, master in [(a, master_a), (b, master_b)]]
        calls_before = command_calls(master_a, "evalsha") + command_calls(master_a, "eval")

        decision = limiter.hit_all([(a, policy), (b, policy), (full, policy)])

        assert not decision.allowed
        assert decision.key == full
        # The slots that had room report their state as it stands: nothing was consumed.
        expected = [(a, True, 2), (b, True, 1), (full, False, 0)]
        assert [(d.key, d.allowed, d.remaining) for d in decision.results] == expected
        # a's slot committed and was refunded: two script calls on its master, state as it was.
        assert command_calls(master_a, "evalsha") + command_calls(master_a, "eval") >= calls_before + 2
        _check_unchanged([(a, master_a), (b, master_b)], policy, before)
        assert [limiter.peek(key, policy).remaining for key in (a, b)] == [1, 0]
        assert [limiter.hit(key, policy).allowed for key in (a, b, full)] == [True, True, False]


@pytest.mark.parametrize("algorithm", ALGORITHMS)
async def test_a_denial_in_one_slot_leaves_every_other_slot_as_it_was_async(cluster: Cluster, algorithm: str) -> None:
    policy = _policy(algorithm)
    placed = keys_on_masters(cluster, policy, "aslot")
    async with sluicegate.AsyncLimiter(cluster.url, timeout=2.0, fallback="raise", registry=None) as limiter:
        assert (await limiter.hit(placed[2][0], policy, cost=3)).allowed
        before = [raw_state(master, key, policy) for key, master in placed[:2]]
        assert not (await limiter.hit_all([(key, policy) for key, _ in placed])).allowed
        # State the refund empties is deleted: the keys are gone again, not merely zero.
        _check_unchanged(placed[:2], policy, before)
        assert {kind for key, master in placed[:2] for kind, _ in raw_state(master, key, policy)} == {"none"}
        assert (await limiter.hit_all([(key, policy, 3) for key, _ in placed[:2]])).allowed


def test_a_failed_slot_refunds_the_others_and_raises(cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """A slot whose call fails (here: a timeout the test injects) makes the others refund."""
    policy = _policy("sliding-log")
    (a, master_a), (b, _), (failing, _) = keys_on_masters(cluster, policy, "fail")
    real_try = ClusterStore._try

    def flaky_try(self: ClusterStore, script: str, sha: str, args: list[Any], deadline: float) -> Any:
        if sha == DECIDE_SHA and any(failing in str(arg) for arg in args):
            return StoreError("redis timeout error: injected", kind="timeout")
        return real_try(self, script, sha, args, deadline)

    with sluicegate.Limiter(cluster.url, timeout=2.0, fallback="raise", registry=None) as limiter:
        assert limiter.hit(a, policy).allowed
        before = [raw_state(master_a, a, policy)]
        monkeypatch.setattr(ClusterStore, "_try", flaky_try)
        with pytest.raises(StoreError, match="injected"):
            limiter.hit_all([(a, policy), (b, policy), (failing, policy)])
        monkeypatch.undo()
        _check_unchanged([(a, master_a)], policy, before)
        assert limiter.peek(b, policy, cost=3).allowed, "b's slot was refunded too"


def test_keys_in_one_slot_commit_together_with_keys_elsewhere(cluster: Cluster) -> None:
    """Two policies of one user (one slot, one call) next to a key on another master."""
    gcra, log = _policy("gcra"), _policy("sliding-log")
    (user, _), (other, _), _ = keys_on_masters(cluster, gcra, "mixed")
    with sluicegate.Limiter(cluster.url, timeout=2.0, fallback="raise", registry=None) as limiter:
        assert limiter.hit_all([(user, gcra, 2), (user, log, 2), (other, gcra, 3)]).allowed
        denied = limiter.hit_all([(user, gcra), (user, log, 2), (other, gcra)])
        assert not denied.allowed
        assert [(d.allowed, d.remaining) for d in denied.results] == [(True, 1), (False, 1), (False, 0)]
        assert limiter.hit_all([(user, gcra), (user, log)]).allowed
