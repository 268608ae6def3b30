"""Waiting on a condition with a deadline: what tests do instead of sleeping "to let it settle"."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

Description = str | Callable[[], str]


def _timed_out(timeout: float, what: Description) -> AssertionError:
    return AssertionError(f"timed out after {timeout} s waiting for {what if isinstance(what, str) else what()}")


def wait_until(
    condition: Callable[[], object],
    *,
    timeout: float,
    what: Description,
    poll: float = 0.001,
    not_yet: tuple[type[BaseException], ...] = (),
) -> float:
    """Poll ``condition`` until it is truthy and return the seconds that took. After ``timeout``
    fail naming ``what`` (or what it returns: the state at the deadline). A condition raising one
    of ``not_yet`` (say, a server still starting) is not met yet."""
    start = time.monotonic()
    while True:
        try:
            if condition():
                return time.monotonic() - start
        except not_yet:
            pass
        if time.monotonic() - start > timeout:
            raise _timed_out(timeout, what)
        time.sleep(poll)


async def async_wait_until(
    condition: Callable[[], object | Awaitable[object]], *, timeout: float, what: Description, poll: float = 0.001
) -> float:
    """``wait_until`` for the event loop, which keeps running while it waits; ``condition`` may
    be a coroutine function."""
    start = time.monotonic()
    while True:
        result = condition()
        if isinstance(result, Awaitable):
            result = await result
        if result:
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise _timed_out(timeout, what)
        await asyncio.sleep(poll)
