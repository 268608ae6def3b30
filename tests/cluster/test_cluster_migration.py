"""A slot holding limiter state migrates to another master while decisions run: none fails.

The migration is the one ``redis-cli --cluster reshard`` performs, step by step, with decisions
running through each phase: the slot marked importing/migrating (the source still serves its
keys), the keys moved by one ``MIGRATE`` (the source answers ``ASK``, the store follows it to
the target with ``ASKING``), the slot assigned to the target (``MOVED``, redis-py's slot table
is updated). ``MOVED`` and ``ASK`` mean the script did not run, so following them costs no error and
counts nothing twice: the exact sliding log holds one entry per admitted decision at the end.
State first written while the slot migrates (here: a fourth policy) is created on the target
through ``ASK``, as Redis Cluster specifies for keys the source does not have.
"""

from __future__ import annotations

import pytest

import sluicegate
from sluicegate._keys import state_keys
from tests.cluster._support import PREFIX, Load, command_calls, slot
from tests.redis_cluster import Cluster, wait_until

pytestmark = [pytest.mark.redis, pytest.mark.redis_cluster]

LOG = sluicegate.Policy(1_000_000, 3600.0, algorithm="sliding-log")
GCRA = sluicegate.Policy(1000, 3600.0)  # one unit drains in 3.6 s: the key outlives the test
NEW = sluicegate.Policy(10, 3600.0, algorithm="sliding-window")
FIXED = sluicegate.Policy(1_000_000, 366 * 86_400.0, algorithm="fixed-window")
KEY = "migrating"
PHASE = 40  # decisions made in each phase of the migration


def test_live_slot_migration_costs_no_decision(redis_cluster: Cluster) -> None:
    redis_cluster.flush()
    moving = slot(KEY, LOG)
    source = redis_cluster.owner(moving)
    target = next(m for m in redis_cluster.masters() if m is not source)
    source_id, target_id = redis_cluster.node_id(source), redis_cluster.node_id(target)

    def decide(n: int) -> sluicegate.Decision:
        # Single items on each policy, and all three at once: one multi-key script in the slot.
        if n % 4 == 3:
            return limiter.hit_all([(KEY, LOG), (KEY, GCRA), (KEY, FIXED)])
        return limiter.hit(KEY, (LOG, GCRA, FIXED)[n % 4])

    def phase(load: Load) -> None:
        done = load.count
        wait_until(lambda: load.count >= done + PHASE, timeout=10, what=f"{PHASE} more decisions")

    with (
        sluicegate.Limiter(redis_cluster.url, timeout=2.0, fallback="raise", registry=None) as limiter,
        Load(decide, pause_s=0.001) as load,
    ):
        phase(load)  # every key of the slot exists on the source
        with target.client() as client:
            client.execute_command("CLUSTER SETSLOT", moving, "IMPORTING", source_id)
        with source.client() as client:
            client.execute_command("CLUSTER SETSLOT", moving, "MIGRATING", target_id)
        phase(load)  # still served by the source: it has every key
        assert limiter.hit(KEY, NEW).allowed  # a key the source lacks: created on the target (ASK)
        with source.client() as client:
            keys = client.execute_command("CLUSTER GETKEYSINSLOT", moving, 100)
            assert len(keys) == 4, "the log's two keys, gcra's and the fixed window's"
            client.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys)
        phase(load)  # the source answers ASK; the target serves the keys
        for server in [target, source, *(m for m in redis_cluster.masters() if m not in (source, target))]:
            with server.client() as client:
                client.execute_command("CLUSTER SETSLOT", moving, "NODE", target_id)
        phase(load)  # the source answers MOVED, then the client goes to the target directly
        load.stop()

    assert load.errors() == [], "redirections cost no error"
    decisions = [d for _, _, d in load.decisions()]
    assert all(d.allowed and not d.degraded for d in decisions)
    assert redis_cluster.owner(moving) is target
    assert command_calls(target, "asking") > 0, "the ASK phase was exercised"
    admitted_log = sum(1 for n in range(len(decisions)) if n % 4 in (0, 3))
    admitted_fixed = sum(1 for n in range(len(decisions)) if n % 4 in (2, 3))
    log_key, _ = state_keys(PREFIX, LOG, KEY)
    with target.client() as client:
        assert client.get(state_keys(PREFIX, NEW, KEY)[0]) is not None
        assert client.zcard(log_key) == admitted_log, "each admitted decision counted exactly once"
        _, count = client.get(state_keys(PREFIX, FIXED, KEY)[0]).split()
        assert int(count) == admitted_fixed
    with source.client() as client:
        assert client.execute_command("CLUSTER COUNTKEYSINSLOT", moving) == 0
    asking = command_calls(target, "asking")
    print(f"\nlive slot migration: {len(decisions)} decisions, 0 failed, ASKING sent {asking} times")
