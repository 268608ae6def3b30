"""The stores' free lists of connections (``HeldConnections``, ``AsyncHeldConnections``)
behave as redis-py's pools:

- threads share connections, one per thread deciding at the same time, never more; tasks, one
  per call in flight, never more;
- a connection its server closed while it sat idle is reconnected before use, not failed;
- a connection whose call timed out is not read again: the next call gets its own reply;
- a forked child opens its own connection instead of reusing its parent's socket.
"""

from __future__ import annotations

import asyncio
import os
import threading

import pytest

import sluicegate
from sluicegate.stores.redis import MAX_IN_FLIGHT, AsyncRedisStore
from tests.waiting import async_wait_until

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


async def test_tasks_share_at_most_one_connection_per_call_in_flight(own_redis):
    async with sluicegate.AsyncLimiter(own_redis.url, timeout=2.0, fallback="raise") as limiter:
        with own_redis.client() as raw:
            before = _connections_received(raw)
            for _ in range(5):
                decisions = await asyncio.gather(*(limiter.hit(f"k{i}", "10/hour") for i in range(64)))
                assert not any(d.degraded for d in decisions)
            opened = _connections_received(raw) - before
    assert 1 <= opened <= MAX_IN_FLIGHT


async def test_an_async_connection_closed_while_idle_is_reconnected_not_failed(own_redis):
    async with sluicegate.AsyncLimiter(own_redis.url, timeout=2.0, fallback="raise") as limiter:
        with own_redis.client() as raw:
            assert (await limiter.hit("k", "10/hour")).remaining == 9
            assert raw.client_kill_filter(_type="normal", skipme=True) == 1  # the limiter's idle one
            await asyncio.sleep(0.05)  # the loop sees the close, as it would between calls
            before = _connections_received(raw)
            decision = await limiter.hit("k", "10/hour")  # fallback="raise": an error would raise
            assert _connections_received(raw) - before == 1
    assert decision.remaining == 8
    assert not decision.degraded


async def test_a_call_that_timed_out_leaves_no_reply_for_the_next(own_redis):
    store = AsyncRedisStore(own_redis.url, timeout=0.2, batch_size=1)
    async with sluicegate.AsyncLimiter(store, timeout=0.2, fallback="raise") as limiter:
        assert (await limiter.hit("a", "10/hour")).remaining == 9
        own_redis.stop()  # SIGSTOP: the next call is sent and its reply comes late
        try:
            with pytest.raises(sluicegate.StoreError, match="timeout"):
                await limiter.hit("b", "10/hour")
            # Dropped at once, before any late reply could arrive, not only found out later.
            assert not any(connection.is_connected for connection in store._connections._idle)
        finally:
            own_redis.cont()
        with own_redis.client() as raw:  # b's command runs now, and its late reply goes out
            await async_wait_until(lambda: raw.dbsize() == 2, timeout=5, what="b's late command to run")
        # a's own answer, not b's late one (b's remaining 9 would read as a's 9 otherwise)
        assert (await limiter.hit("a", "10/hour")).remaining == 8
