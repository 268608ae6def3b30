"""A store failure reaches the caller as ``sluicegate.StoreError`` with a ``kind`` a metric can
use (with ``fallback="raise"``; the default fallback answers a degraded decision instead, in the
same time), within the limiter's timeout; once the server is back, decisions succeed again.

Timing bound: a failure must arrive within ``timeout + 0.25 s`` (the margin covers scheduling
on a loaded 2-core CI machine, not a second attempt: the limiter never retries).

A refused connection opens the circuit breaker at once: decisions then fail fast without
touching the store until the limiter's background probe (about once a second) finds the server
back. "Decisions succeed again" therefore waits for that, with a deadline.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
from typing import Any

import pytest

import sluicegate
from tests.redis._support import sockets_with_unread_input
from tests.waiting import async_wait_until, wait_until

pytestmark = pytest.mark.redis

MARGIN_S = 0.25
POLICY = "10/hour"
OPERATIONS = ["hit", "peek", "hit_all", "reset"]


def _run(limiter: sluicegate.Limiter, operation: str, key: str) -> Any:
    if operation == "hit_all":
        return limiter.hit_all([(key, POLICY), (f"{key}:log", f"{POLICY} algorithm sliding-log")])
    return getattr(limiter, operation)(key, POLICY)


async def _arun(limiter: sluicegate.AsyncLimiter, operation: str, key: str) -> Any:
    if operation == "hit_all":
        return await limiter.hit_all([(key, POLICY), (f"{key}:log", f"{POLICY} algorithm sliding-log")])
    return await getattr(limiter, operation)(key, POLICY)


def _limiter_options(timeout: float | None) -> dict[str, Any]:
    return {"fallback": "raise", **({} if timeout is None else {"timeout": timeout})}


DEFAULT_TIMEOUT = float(inspect.signature(sluicegate.Limiter).parameters["timeout"].default)


def _effective(timeout: float | None) -> float:
    return DEFAULT_TIMEOUT if timeout is None else timeout


def _assert_store_error(exc_info: Any, kind: str, elapsed: float, timeout: float) -> None:
    error = exc_info.value
    assert type(error) is sluicegate.StoreError
    assert error.kind == kind, str(error)
    assert elapsed <= timeout + MARGIN_S, f"{kind} took {elapsed:.3f} s with a {timeout} s timeout"


RECOVERY_S = 3.0  # the probe runs about once a second (±20 %); this bounds a limiter that never recovers


def _store_answers(limiter: sluicegate.Limiter) -> bool:
    try:
        return not limiter.peek("after:probe", POLICY).degraded
    except sluicegate.StoreError:
        return False


async def _store_answers_async(limiter: sluicegate.AsyncLimiter) -> bool:
    try:
        return not (await limiter.peek("after:probe", POLICY)).degraded
    except sluicegate.StoreError:
        return False


def _assert_healthy(limiter: sluicegate.Limiter) -> None:
    """The limiter decides with the store again (once its breaker, if open, has closed), with
    replies of its own: a fresh key's first two hits."""
    wait_until(
        lambda: _store_answers(limiter), timeout=RECOVERY_S, what=lambda: f"the store to decide again: {limiter!r}"
    )
    first, second = limiter.hit("after:fresh", "7/hour"), limiter.hit("after:fresh", "7/hour")
    assert (first.degraded, first.remaining, second.degraded, second.remaining) == (False, 6, False, 5)


async def _aassert_healthy(limiter: sluicegate.AsyncLimiter) -> None:
    await async_wait_until(
        lambda: _store_answers_async(limiter),
        timeout=RECOVERY_S,
        what=lambda: f"the store to decide again: {limiter!r}",
    )
    first, second = await limiter.hit("after:fresh", "7/hour"), await limiter.hit("after:fresh", "7/hour")
    assert (first.degraded, first.remaining, second.degraded, second.remaining) == (False, 6, False, 5)


# --- a killed server: "connection" ---------------------------------------------------------


@pytest.mark.parametrize("operation", ["hit", "hit_all", "reset"])
def test_a_killed_server_is_a_connection_error(own_redis, operation):
    with sluicegate.Limiter(own_redis.url, **_limiter_options(None)) as limiter:
        limiter.hit("before", POLICY)  # a pooled connection to a server about to die
        own_redis.kill()
        for _ in range(2):  # the dead pooled connection, then the breaker it opened
            started = time.monotonic()
            with pytest.raises(sluicegate.StoreError) as exc_info:
                _run(limiter, operation, "k")
            _assert_store_error(exc_info, "connection", time.monotonic() - started, DEFAULT_TIMEOUT)
        own_redis.restart()
        _assert_healthy(limiter)


@pytest.mark.parametrize("operation", ["hit", "hit_all", "reset"])
async def test_a_killed_server_is_a_connection_error_async(own_redis, operation):
    async with sluicegate.AsyncLimiter(own_redis.url, **_limiter_options(None)) as limiter:
        await limiter.hit("before", POLICY)
        own_redis.kill()
        for _ in range(2):
            started = time.monotonic()
            with pytest.raises(sluicegate.StoreError) as exc_info:
                await _arun(limiter, operation, "k")
            _assert_store_error(exc_info, "connection", time.monotonic() - started, DEFAULT_TIMEOUT)
        own_redis.restart()
        await _aassert_healthy(limiter)


# --- a frozen server (SIGSTOP): "timeout" ----------------------------------------------------


@pytest.mark.parametrize("warm", [True, False], ids=["pooled-connection", "new-connection"])
@pytest.mark.parametrize("operation", OPERATIONS)
@pytest.mark.parametrize("timeout", [None, 0.3])
def test_a_frozen_server_is_a_timeout(own_redis, operation, timeout, warm):
    with sluicegate.Limiter(own_redis.url, **_limiter_options(timeout)) as limiter:
        if warm:
            limiter.hit("before", POLICY)
        try:
            own_redis.stop()
            started = time.monotonic()
            with pytest.raises(sluicegate.StoreError) as exc_info:
                _run(limiter, operation, "k")
            elapsed = time.monotonic() - started
        finally:
            own_redis.cont()
        _assert_store_error(exc_info, "timeout", elapsed, _effective(timeout))
        assert elapsed >= _effective(timeout) - 0.01  # it did wait for the answer that long
        # The late answer to the timed-out request must not reach a later decision.
        _assert_healthy(limiter)
        if operation == "hit":  # the timed-out hit may or may not have run meanwhile
            assert limiter.peek("k", POLICY).remaining in (9, 8)


@pytest.mark.parametrize("warm", [True, False], ids=["pooled-connection", "new-connection"])
@pytest.mark.parametrize("operation", OPERATIONS)
@pytest.mark.parametrize("timeout", [None, 0.3])
async def test_a_frozen_server_is_a_timeout_async(own_redis, operation, timeout, warm):
    async with sluicegate.AsyncLimiter(own_redis.url, **_limiter_options(timeout)) as limiter:
        if warm:
            await limiter.hit("before", POLICY)
        try:
            own_redis.stop()
            started = time.monotonic()
            with pytest.raises(sluicegate.StoreError) as exc_info:
                await _arun(limiter, operation, "k")
            elapsed = time.monotonic() - started
        finally:
            own_redis.cont()
        _assert_store_error(exc_info, "timeout", elapsed, _effective(timeout))
        assert elapsed >= _effective(timeout) - 0.01
        await _aassert_healthy(limiter)
        if operation == "hit":
            assert (await limiter.peek("k", POLICY)).remaining in (9, 8)


# --- killed while a request is in flight: "connection" ---------------------------------------


def test_a_server_dying_mid_request_is_a_connection_error(own_redis):
    with sluicegate.Limiter(own_redis.url, timeout=2.0, fallback="raise") as limiter:
        limiter.hit("before", POLICY)
        outcome: list[BaseException | sluicegate.Decision] = []

        def request() -> None:
            try:
                outcome.append(limiter.hit("k", POLICY))
            except BaseException as exc:
                outcome.append(exc)

        try:
            own_redis.stop()
            thread = threading.Thread(target=request)
            started = time.monotonic()
            thread.start()
            wait_until(lambda: sockets_with_unread_input(own_redis.port) == 1, timeout=1.5, what="the request")
        finally:
            own_redis.kill()  # the request never gets its answer
        thread.join(timeout=5)
        elapsed = time.monotonic() - started
        [error] = outcome
        assert isinstance(error, sluicegate.StoreError), repr(error)
        assert error.kind == "connection", str(error)
        assert elapsed <= 2.0 + MARGIN_S
        own_redis.restart()
        _assert_healthy(limiter)


async def test_a_server_dying_mid_request_is_a_connection_error_async(own_redis):
    async with sluicegate.AsyncLimiter(own_redis.url, timeout=2.0, fallback="raise") as limiter:
        await limiter.hit("before", POLICY)
        try:
            own_redis.stop()
            started = time.monotonic()
            task = asyncio.create_task(limiter.hit("k", POLICY))
            await async_wait_until(
                lambda: sockets_with_unread_input(own_redis.port) == 1, timeout=1.5, what="the request"
            )
        finally:
            own_redis.kill()
        with pytest.raises(sluicegate.StoreError) as exc_info:
            await task
        _assert_store_error(exc_info, "connection", time.monotonic() - started, 2.0)
        own_redis.restart()
        await _aassert_healthy(limiter)


# --- the default fallback: a degraded decision, in the same time ------------------------------


def _break(server: Any, failure: str) -> None:
    if failure == "killed":
        server.kill()
    else:
        server.stop()


def _mend(server: Any, failure: str) -> None:
    if failure == "killed":
        server.restart()
    else:
        server.cont()


@pytest.mark.parametrize("failure", ["killed", "frozen"])
def test_with_the_default_fallback_a_failure_is_a_degraded_decision(own_redis, failure):
    with sluicegate.Limiter(own_redis.url) as limiter:
        assert not limiter.hit("before", POLICY).degraded
        try:
            _break(own_redis, failure)
            started = time.monotonic()
            decision = limiter.hit("k", POLICY)
            elapsed = time.monotonic() - started
        finally:
            _mend(own_redis, failure)
        assert decision.degraded
        assert decision.allowed
        assert elapsed <= DEFAULT_TIMEOUT + MARGIN_S
        _assert_healthy(limiter)


@pytest.mark.parametrize("failure", ["killed", "frozen"])
async def test_with_the_default_fallback_a_failure_is_a_degraded_decision_async(own_redis, failure):
    async with sluicegate.AsyncLimiter(own_redis.url) as limiter:
        assert not (await limiter.hit("before", POLICY)).degraded
        try:
            _break(own_redis, failure)
            started = time.monotonic()
            decision = await limiter.hit("k", POLICY)
            elapsed = time.monotonic() - started
        finally:
            _mend(own_redis, failure)
        assert decision.degraded
        assert decision.allowed
        assert elapsed <= DEFAULT_TIMEOUT + MARGIN_S
        await _aassert_healthy(limiter)
