"""A master killed under load: every decision still returns, and distributed ones resume.

With ``fallback="local"`` the limiter never raises: while the dead master's slots refuse (and,
once the cluster marks it failed, the whole cluster answers ``CLUSTERDOWN``), decisions come
from the local fallback, marked ``degraded``. Once its replica is promoted and the cluster is
``ok`` again, the breaker's probe succeeds, redis-py's slot table has been refreshed (the sync
store asks for that in the background after each failure), and decisions on the dead master's
keys are made by the cluster again, within ``RESUME_BOUND_S`` (R9: resume at most 5 s after
``cluster_state:ok``).
"""

from __future__ import annotations

import time

import pytest

import sluicegate
from tests.cluster._support import Load, keys_on_masters, slot
from tests.redis_cluster import NODE_TIMEOUT_MS, Cluster, wait_until

pytestmark = [pytest.mark.redis, pytest.mark.redis_cluster]

POLICY = sluicegate.Policy(1_000_000, 60.0)  # never denies: every decision's source is what counts
RESUME_BOUND_S = 5.0


def test_a_master_killed_under_load(redis_cluster: Cluster) -> None:
    redis_cluster.flush()
    placed = keys_on_masters(redis_cluster, POLICY, "load")
    (victim_key, victim), *_ = placed
    limiter = sluicegate.Limiter(redis_cluster.url, timeout=0.25, fallback="local", registry=None)
    try:
        with Load(lambda n: limiter.hit(placed[n % len(placed)][0], POLICY)) as load:
            wait_until(lambda: load.count >= 60, timeout=10, what="decisions before the fault")
            assert not any(d.degraded for _, _, d in load.decisions()), "healthy cluster: no degraded decision"
            killed_at = time.monotonic()
            victim.kill()
            # The replica takes over: the cluster is ok again with another node serving the slot.
            wait_until(
                lambda: redis_cluster.is_ready() and redis_cluster.owner(slot(victim_key, POLICY)) is not victim,
                timeout=30,
                what="the replica's promotion",
            )
            promoted_at = time.monotonic()
            wait_until(
                lambda: any(t > promoted_at and n % 3 == 0 and not d.degraded for t, n, d in load.decisions()),
                timeout=RESUME_BOUND_S + 5,
                what="a distributed decision on the dead master's key",
            )
            resumed_count = load.count
            wait_until(lambda: load.count >= resumed_count + 300, timeout=10, what="decisions after the recovery")
        assert load.errors() == [], "with fallback='local' every decision returns"
        after_kill = [(t, n, d) for t, n, d in load.decisions() if t > killed_at]
        degraded = [t for t, _, d in after_kill if d.degraded]
        resumed_at = min(t for t, n, d in after_kill if t > promoted_at and n % 3 == 0 and not d.degraded)
        print(
            f"\ncluster master kill (node timeout {NODE_TIMEOUT_MS} ms): replica promoted and cluster ok "
            f"{promoted_at - killed_at:.2f} s after the kill; distributed decisions on its keys resumed "
            f"{resumed_at - promoted_at:.2f} s after that; {len(degraded)} of {len(after_kill)} decisions "
            f"since the kill were degraded, the last {max(degraded, default=killed_at) - killed_at:.2f} s after it"
        )
        assert degraded, "the dead master was noticed"
        assert resumed_at - promoted_at <= RESUME_BOUND_S
        assert all(not d.degraded for t, _, d in after_kill if t > resumed_at), "no relapse once resumed"
    finally:
        limiter.close()
        redis_cluster.restore()  # the old master rejoins as the new master's replica
