"""Cancelling in-flight async decisions leaves the connection pool consistent: no later
decision ever receives a reply meant for a cancelled one.

Every key gets its own gcra limit, spaced 10 apart, so a reply is recognisable by its
``remaining``: a fresh key's first hit leaves ``limit - 1``, and a peek (which reports what a
hit would leave) shows ``limit - 1`` if the cancelled hit never ran and ``limit - 2`` if it
did. A reply read for the wrong request would be off by at least 8.

A cancelled hit may still have run on the server (it was sent, only the reply was dropped),
and on Python 3.11 ``task.cancel()`` can even be lost: redis-py sends with
``asyncio.wait_for``, which there returns the finished send instead of raising when the
cancellation arrives just as the send completes, and the decision then completes normally.
Either way its reply must be its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

import sluicegate
from sluicegate.stores.redis import BATCH_SIZE, EARLY_BATCH, MAX_IN_FLIGHT, AsyncRedisStore
from tests.redis._support import awaiting, sockets_with_unread_input
from tests.waiting import async_wait_until

pytestmark = pytest.mark.redis

TASKS = 32


def _policy(limit: int) -> str:
    return f"{limit}/hour"


async def _check_outcomes(limiter, keys: list[str], limits: list[int], outcomes: Sequence[object]) -> int:
    """Each outcome is a cancellation/timeout or this key's own first-hit reply; a peek of each
    key agrees with whether its hit ran. Returns how many hits ran."""
    peeks = await asyncio.gather(*(limiter.peek(k, _policy(limit)) for k, limit in zip(keys, limits, strict=True)))
    ran = 0
    for key, limit, outcome, peek in zip(keys, limits, outcomes, peeks, strict=True):
        assert peek.key == key
        assert peek.remaining in (limit - 1, limit - 2), f"{key} (limit {limit}): peek says {peek.remaining}"
        ran += peek.remaining == limit - 2
        assert not peek.degraded
        if isinstance(outcome, sluicegate.Decision):
            assert not outcome.degraded
            assert outcome.key == key
            assert outcome.allowed
            assert outcome.remaining == limit - 1, f"{key} (limit {limit}) got {outcome.remaining}"
            assert peek.remaining == limit - 2
        else:
            assert isinstance(outcome, asyncio.CancelledError | TimeoutError), repr(outcome)
    return ran


async def _check_fresh_decisions(limiter, label: str, base: int) -> None:
    """Concurrent and sequential first hits on fresh keys all get their own replies."""
    limits = [base + 10 * j for j in range(TASKS)]
    keys = [f"{label}:fresh:{j}" for j in range(TASKS)]
    concurrent = await asyncio.gather(*(limiter.hit(k, _policy(n)) for k, n in zip(keys, limits, strict=True)))
    for key, limit, decision in zip(keys, limits, concurrent, strict=True):
        assert (decision.key, decision.remaining, decision.degraded) == (key, limit - 1, False)
    for key, limit in zip(keys, limits, strict=True):
        decision = await limiter.hit(key, _policy(limit))
        assert (decision.key, decision.remaining, decision.degraded) == (key, limit - 2, False)


async def _assert_no_leaked_connections(server) -> None:
    """Cancelled calls' connections get closed, not leaked: the limiter soon holds at most one
    connection per concurrent task. (Soon: the server may not have seen the last closes yet.)"""

    def limiter_connections() -> int:
        with server.client() as client:
            return int(client.info("clients")["connected_clients"]) - 1  # not this client

    await async_wait_until(
        lambda: limiter_connections() <= TASKS,
        timeout=2.0,
        what=lambda: f"at most {TASKS} connections; the limiter has {limiter_connections()}",
    )


async def test_cancelling_after_each_number_of_loop_steps(own_redis):
    async with sluicegate.AsyncLimiter(own_redis.url, timeout=2.0) as limiter:
        await limiter.hit("warm-up", _policy(10))
        cancelled = ran = lost = 0
        for steps in range(40):  # from "before it starts" to "after it has finished"
            keys = [f"steps-{steps}:{i}" for i in range(TASKS)]
            limits = [1000 + 10 * i for i in range(TASKS)]
            tasks = [asyncio.create_task(limiter.hit(k, _policy(n))) for k, n in zip(keys, limits, strict=True)]
            for _ in range(steps):
                await asyncio.sleep(0)
            requested = [task.cancel() for task in tasks]  # True: the task had not finished
            outcomes = await asyncio.gather(*tasks, return_exceptions=True)
            cancelled += sum(isinstance(o, asyncio.CancelledError) for o in outcomes)
            lost += sum(
                r and not isinstance(o, asyncio.CancelledError) for r, o in zip(requested, outcomes, strict=True)
            )
            ran += await _check_outcomes(limiter, keys, limits, outcomes)
            await _check_fresh_decisions(limiter, f"steps-{steps}", 5000)
        await _assert_no_leaked_connections(own_redis)
    print(f"\n{40 * TASKS} hits: {cancelled} cancelled, {lost} cancellations lost, {ran} ran on the server")
    assert cancelled > 0


async def test_cancelling_through_wait_for_timeouts(own_redis):
    async with sluicegate.AsyncLimiter(own_redis.url, timeout=2.0) as limiter:
        await limiter.hit("warm-up", _policy(10))
        timed_out = 0
        for round_number, timeout in enumerate([0, 0.0001, 0.0003, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.01] * 2):
            keys = [f"wait-for-{round_number}:{i}" for i in range(TASKS)]
            limits = [1000 + 10 * i for i in range(TASKS)]
            outcomes = await asyncio.gather(
                *(asyncio.wait_for(limiter.hit(k, _policy(n)), timeout) for k, n in zip(keys, limits, strict=True)),
                return_exceptions=True,
            )
            timed_out += sum(isinstance(o, TimeoutError) for o in outcomes)
            await _check_outcomes(limiter, keys, limits, outcomes)
            await _check_fresh_decisions(limiter, f"wait-for-{round_number}", 5000)
        await _assert_no_leaked_connections(own_redis)
    assert timed_out > 0


@pytest.mark.parametrize("batch_size", [1, BATCH_SIZE], ids=["unbatched", "batched"])
async def test_cancelling_requests_a_frozen_server_holds(own_redis, batch_size):
    """SIGSTOP the server, let every request reach it (its bytes wait unread in the server's
    sockets), cancel them all, continue the server: it then runs the requests and answers into
    closed sockets; nothing of that may reach a later decision.

    Unbatched, each request is its own call on its own connection. Batched, the first request
    goes out alone and the others in batches (EARLY_BATCH, then the rest at the end of the loop
    iteration), each on a connection of its own; their tasks wait in the store's queue for the
    batch's reply, and the batches' late replies must not reach later decisions.
    (Queued decisions cancelled before they are sent: ``test_batching``.)"""
    store = AsyncRedisStore(own_redis.url, timeout=2.0, batch_size=batch_size)
    async with sluicegate.AsyncLimiter(store, timeout=2.0) as limiter:
        await _check_fresh_decisions(limiter, "before", 3000)  # pooled connections
        keys = [f"frozen:{i}" for i in range(TASKS)]
        limits = [1000 + 10 * i for i in range(TASKS)]
        batches = -(-(TASKS - 1) // EARLY_BATCH)  # behind the first: EARLY_BATCH, then the rest
        assert 1 + batches <= MAX_IN_FLIGHT  # every request on the wire, none left queued
        sent = TASKS if batch_size == 1 else 1 + batches  # script calls on the wire
        reading = TASKS if batch_size == 1 else 1  # tasks reading a reply themselves
        try:
            own_redis.stop()
            tasks = [asyncio.create_task(limiter.hit(k, _policy(n))) for k, n in zip(keys, limits, strict=True)]
            # In flight: the request waits unread in the frozen server's socket, and its task waits
            # for the reply (past redis-py's send, whose asyncio.wait_for would swallow a
            # cancellation on Python 3.11: see the module docstring). Batched: the rest wait
            # in the store's queue.
            await async_wait_until(
                lambda: (
                    sockets_with_unread_input(own_redis.port) == sent
                    and sum("read_response" in awaiting(task) for task in tasks) == reading
                    and all("read_response" in awaiting(task) or "decide" in awaiting(task) for task in tasks)
                ),
                timeout=1.5,
                what="every request to wait for its reply from the frozen server (or in the queue)",
            )
            assert not any(task.done() for task in tasks)
            for task in tasks:
                task.cancel()
            outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            own_redis.cont()
        assert all(isinstance(o, asyncio.CancelledError) for o in outcomes), outcomes
        ran = await _check_outcomes(limiter, keys, limits, outcomes)
        await _check_fresh_decisions(limiter, "after", 5000)
        await _assert_no_leaked_connections(own_redis)
    print(f"\n{TASKS} hits cancelled while the server was frozen; {ran} ran once it continued")
