"""The sync store's free list of connections (``HeldConnections``) behaves as redis-py's pool:

- threads share connections, one per thread deciding at the same time, never more;
- a connection its server closed while it sat idle is reconnected before use, not failed;
- a forked child opens its own connection instead of reusing its parent's socket.
"""

from __future__ import annotations

import os
import threading

import pytest

import sluicegate

pytestmark = pytest.mark.redis

THREADS = 8
HITS = 100


def _connections_received(raw) -> int:
    return int(raw.info("stats")["total_connections_received"])


def test_threads_share_at_most_one_connection_each(own_redis):
    with own_redis.client() as raw, sluicegate.Limiter(own_redis.url, timeout=2.0, fallback="raise") as limiter:
        before = _connections_received(raw)
        barrier = threading.Barrier(THREADS)
        results: list[sluicegate.Decision] = []

        def work() -> None:
            barrier.wait()
            results.extend(limiter.hit("shared", f"{THREADS * HITS // 2}/day") for _ in range(HITS))

        threads = [threading.Thread(target=work) for _ in range(THREADS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        opened = _connections_received(raw) - before
    assert 1 <= opened <= THREADS
    assert sum(d.allowed for d in results) == THREADS * HITS // 2
    assert sorted(d.remaining for d in results if d.allowed) == list(range(THREADS * HITS // 2))


def test_a_connection_closed_while_idle_is_reconnected_not_failed(own_redis):
    with own_redis.client() as raw, sluicegate.Limiter(own_redis.url, timeout=2.0, fallback="raise") as limiter:
        assert limiter.hit("k", "10/hour").remaining == 9
        killed = raw.client_kill_filter(_type="normal", skipme=True)
        assert killed == 1  # the limiter's idle connection
        before = _connections_received(raw)
        decision = limiter.hit("k", "10/hour")  # fallback="raise": an error would raise
        assert _connections_received(raw) - before == 1
    assert decision.remaining == 8
    assert not decision.degraded


def test_a_forked_child_opens_its_own_connection(own_redis):
    with own_redis.client() as raw, sluicegate.Limiter(own_redis.url, timeout=2.0, fallback="raise") as limiter:
        assert limiter.hit("k", "10/hour").remaining == 9
        before = _connections_received(raw)
        pid = os.fork()
        if pid == 0:  # the child: exit status 0 only for the right answer
            ok = False
            try:
                ok = limiter.hit("k", "10/hour").remaining == 8
            finally:
                os._exit(0 if ok else 1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert _connections_received(raw) - before == 1  # the child's own
        assert limiter.hit("k", "10/hour").remaining == 7  # the parent's socket is intact
