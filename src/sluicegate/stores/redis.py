"""The Redis store: every decision is one ``EVALSHA`` of ``lua/decide.lua``, one round trip.

- Time comes from ``TIME`` inside the script unless the limiter passes the caller's clock.
- Losing the script cache (``SCRIPT FLUSH``, a restart, a failover) costs one ``EVAL`` that
  runs the script and caches it again: one extra round trip, never an error. ``NOSCRIPT`` means
  the script did not run, so that is the only failure it is safe to follow with a second call.
- The client never retries on its own: a call that timed out may have run on the server, and
  replaying it would count the request twice.
- Redis errors become ``StoreError`` here and nowhere else.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import redis
import redis.asyncio
from redis._parsers import _RESP2Parser
from redis.backoff import NoBackoff
from redis.exceptions import (
    BusyLoadingError,
    NoScriptError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
)
from redis.retry import Retry

from .._errors import ConfigError, StoreError, describe, redact_url
from .._lua import DECIDE_SCRIPT, DECIDE_SHA
from .._policy import ALGORITHMS
from ..algorithms import Verdict
from ._base import Item

__all__ = ["AsyncRedisStore", "RedisStore", "client_options", "script_args", "store_error", "verdicts"]


def client_options(timeout: float) -> dict[str, Any]:
    """redis-py settings for a rate limiter rather than a cache."""
    return {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        # No hidden retries: a retried decision may count twice (the first try may have run).
        "retry": Retry(NoBackoff(), 0),
        "retry_on_timeout": False,
        "health_check_interval": 0,
        # No CLIENT SETINFO on connect: a new connection costs no extra round trip.
        "driver_info": None,
        "protocol": 2,
    }


def script_args(items: Sequence[Item], now: int | None, *, commit: bool) -> list[Any]:
    """``numkeys, KEYS…, ARGV…`` for ``decide.lua``."""
    keys: list[str] = []
    argv: list[Any] = ["" if now is None else now, 1 if commit else 0]
    for item in items:
        policy = item.policy
        keys.extend(item.keys)
        argv += (ALGORITHMS[policy.algorithm], policy.limit, policy.period_ms * 1000, policy.capacity, item.cost)
    return [len(keys), *keys, *argv]


def verdicts(reply: list[int]) -> list[Verdict]:
    """Parse the script's flat reply (the first integer, "all allowed", is implied by the rest)."""
    return [Verdict(reply[i] == 1, reply[i + 1], reply[i + 2], reply[i + 3]) for i in range(1, len(reply), 4)]


def store_error(exc: RedisError) -> StoreError:
    """Translate a redis-py error into ``StoreError`` with a metric-safe ``kind``."""
    message = str(exc)
    if isinstance(exc, redis.TimeoutError):
        kind = "timeout"
    elif isinstance(exc, BusyLoadingError) or message.startswith("BUSY"):  # before its base class
        kind = "busy"
    elif isinstance(exc, redis.ConnectionError):
        kind = "connection"
    elif isinstance(exc, ReadOnlyError):
        kind = "readonly"
    elif isinstance(exc, OutOfMemoryError):
        kind = "oom"
    elif isinstance(exc, NoScriptError):
        kind = "noscript"
    elif message.startswith(("CLUSTERDOWN", "TRYAGAIN", "MOVED", "ASK", "CROSSSLOT")):
        kind = "cluster"
    else:
        kind = "other"
    return StoreError(f"redis {kind} error: {type(exc).__name__}: {message[:200]}", kind=kind)


class RedisStore:
    """Decides with ``decide.lua`` on a standalone Redis (``redis://``, ``rediss://``, ``unix://``).

    Each call has one deadline, ``timeout`` after it starts, shared by connecting, sending,
    reading and a script reload, so no call outlasts it whatever Redis does.
    """

    __slots__ = ("_client", "_pool", "timeout")

    def __init__(self, url: str, *, timeout: float) -> None:
        options = client_options(timeout)
        if url.lower().startswith("rediss:"):
            # redis-py's pool checks a new connection with the hiredis parser's raw-socket
            # readability; a TLS 1.3 server's session tickets arrive after the handshake and make
            # that check fail at random ("Connection not ready"). The pure-Python parser reads
            # through the TLS layer, so TLS connections use it.
            options["parser_class"] = _RESP2Parser
        try:
            self._client: redis.Redis = redis.Redis.from_url(url, **options)
        except ValueError as exc:
            raise ConfigError(f"invalid Redis URL {describe(redact_url(url))}: {exc}") from None
        self._pool = self._client.connection_pool
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"<RedisStore {self._pool!r}>"

    def decide(self, items: Sequence[Item], now: int | None, *, commit: bool) -> list[Verdict]:
        args = script_args(items, now, commit=commit)
        deadline = time.monotonic() + self.timeout
        try:
            connection = self._pool.get_connection()
        except RedisError as exc:
            raise store_error(exc) from exc
        try:
            try:
                reply = self._call(connection, deadline, "EVALSHA", DECIDE_SHA, *args)
            except NoScriptError:  # the script did not run: safe to send it whole
                reply = self._call(connection, deadline, "EVAL", DECIDE_SCRIPT, *args)
        except RedisError as exc:
            raise store_error(exc) from exc
        finally:
            self._pool.release(connection)
        return verdicts(reply)

    @staticmethod
    def _call(connection: Any, deadline: float, *command: Any) -> Any:
        connection.send_command(*command)
        # A reply that does not come by the deadline disconnects the connection: its reply, if
        # it ever comes, must not be read as the answer to a later call.
        return connection.read_response(timeout=max(deadline - time.monotonic(), 0.001))

    def reset(self, keys: Sequence[str]) -> None:
        try:
            self._client.delete(*keys)
        except RedisError as exc:
            raise store_error(exc) from exc

    def close(self) -> None:
        self._client.close()


class AsyncRedisStore:
    """The asyncio twin of ``RedisStore``; one ``asyncio.timeout`` bounds each call."""

    __slots__ = ("_client", "_execute", "timeout")

    def __init__(self, url: str, *, timeout: float) -> None:
        try:
            self._client: redis.asyncio.Redis = redis.asyncio.Redis.from_url(url, **client_options(timeout))
        except ValueError as exc:
            raise ConfigError(f"invalid Redis URL {describe(redact_url(url))}: {exc}") from None
        self._execute: Callable[..., Awaitable[Any]] = self._client.execute_command
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"<AsyncRedisStore {self._client.connection_pool!r}>"

    async def decide(self, items: Sequence[Item], now: int | None, *, commit: bool) -> list[Verdict]:
        args = script_args(items, now, commit=commit)
        try:
            # Cancelling a redis-py call mid-reply disconnects that connection, so a late
            # reply is never read as the answer to a later call.
            async with asyncio.timeout(self.timeout):
                try:
                    reply = await self._execute("EVALSHA", DECIDE_SHA, *args)
                except NoScriptError:  # the script did not run: safe to send it whole
                    reply = await self._execute("EVAL", DECIDE_SCRIPT, *args)
        except TimeoutError as exc:
            raise StoreError(f"redis timeout error: no reply within {self.timeout} s", kind="timeout") from exc
        except RedisError as exc:
            raise store_error(exc) from exc
        return verdicts(reply)

    async def reset(self, keys: Sequence[str]) -> None:
        try:
            async with asyncio.timeout(self.timeout):
                await self._client.delete(*keys)
        except TimeoutError as exc:
            raise StoreError(f"redis timeout error: no reply within {self.timeout} s", kind="timeout") from exc
        except RedisError as exc:
            raise store_error(exc) from exc

    async def aclose(self) -> None:
        await self._client.aclose()
