"""The Redis store: every decision is one ``EVALSHA`` of ``lua/decide.lua``, one round trip.

- Time comes from ``TIME`` inside the script unless the limiter passes the caller's clock.
- Losing the script cache (``SCRIPT FLUSH``, a restart, a failover) costs one ``EVAL`` that
  runs the script and caches it again: one extra round trip, never an error. ``NOSCRIPT`` means
  the script did not run, so that is the only failure it is safe to follow with a second call.
- The client never retries on its own: a call that timed out may have run on the server, and
  replaying it would count the request twice.
- Redis errors become ``StoreError`` here and nowhere else.

``AsyncRedisStore`` batches: a decision asked for while none is in flight is sent at once (no
timer, no added wait); decisions asked for while calls are in flight queue, and what is queued
goes out as one script call of up to ``batch_size`` groups (``decide.lua``'s batch mode) as soon
as ``EARLY_BATCH`` of them wait, else at the end of the loop iteration that queued them, or,
once ``MAX_IN_FLIGHT`` calls are out, when one of them returns. Sending early keeps both cores
busy: Redis runs one batch while the client runs the callers of the next. Groups are decided in
queue order, each seeing the writes of the ones before it, and each call is atomic, so each
decision is exactly what it would have been alone, in some serial order. Waiting for a call in
flight costs a queued decision up to one more round trip, so the store batches only while twice
a recent round trip fits in ``timeout``; on a slower link (or after a timeout) each decision
goes out alone, as if unbatched, until round trips are fast again.
Peeks are batched too (each group carries its own commit flag and time). The Sentinel store
inherits this; the Cluster store does not batch (its calls go to one node per slot).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import hiredis
import redis
import redis.asyncio
import redis.asyncio.retry
from redis._parsers import _RESP2Parser
from redis.backoff import NoBackoff
from redis.exceptions import (
    AskError,
    BusyLoadingError,
    ClusterCrossSlotError,
    ClusterError,
    MaxConnectionsError,
    NoScriptError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisClusterException,
    RedisError,
    ResponseError,
    TryAgainError,
)
from redis.retry import Retry
from redis.utils import HIREDIS_AVAILABLE

from .._errors import ConfigError, StoreError, describe, redact_url
from .._lua import DECIDE_SCRIPT, DECIDE_SHA
from .._policy import ALGORITHMS
from ..algorithms import Verdict
from ._base import Item

__all__ = [
    "BATCH_SIZE",
    "EARLY_BATCH",
    "MAX_IN_FLIGHT",
    "AsyncRedisStore",
    "HeldConnections",
    "HostsURL",
    "RedisStore",
    "batch_args",
    "batch_verdicts",
    "client_options",
    "item_args",
    "marks",
    "no_reply_error",
    "parse_hosts_url",
    "run_script",
    "script_args",
    "store_error",
    "verdicts",
]


def client_options(timeout: float, *, asynchronous: bool = False) -> dict[str, Any]:
    """redis-py settings for a rate limiter rather than a cache (``asynchronous``: for redis.asyncio)."""
    return {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        # No hidden retries: a retried decision may count twice (the first try may have run).
        "retry": redis.asyncio.retry.Retry(NoBackoff(), 0) if asynchronous else Retry(NoBackoff(), 0),
        "health_check_interval": 0,
        # No CLIENT SETINFO on connect: a new connection costs no extra round trip.
        "driver_info": None,
        "protocol": 2,
    }


#: The asyncio stores' own connections: every call runs under one ``asyncio.timeout_at`` of the
#: store's, which bounds the connect, the send and the read together. redis-py's per-operation
#: socket timeout on top wrapped each send in ``asyncio.wait_for`` (a task per call on Python
#: 3.11) and each read in a timeout context: 25-40 µs of client CPU per call, for nothing.
CALL_DEADLINE_ONLY: dict[str, Any] = {"socket_timeout": None}

#: redis-py's pool checks a new connection with the hiredis parser's raw-socket readability; a
#: TLS 1.3 server's session tickets arrive after the handshake and make that check fail at random
#: ("Connection not ready"). The pure-Python parser reads through the TLS layer, so synchronous
#: TLS connections use it.
TLS_PARSER: dict[str, Any] = {"parser_class": _RESP2Parser}


def _flag(text: str) -> bool:
    flags = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}
    if text.lower() not in flags:
        raise ValueError(text)
    return flags[text.lower()]


#: Query options of a Cluster or Sentinel URL that apply to every data node, and how to read them.
_NODE_OPTIONS: dict[str, Callable[[str], Any]] = {
    "client_name": str,
    "ssl_ca_certs": str,
    "ssl_ca_path": str,
    "ssl_certfile": str,
    "ssl_keyfile": str,
    "ssl_cert_reqs": str,
    "ssl_check_hostname": _flag,
}


@dataclass(frozen=True)
class HostsURL:
    """A parsed ``scheme://[[user]:password@]host[:port],host[:port]…[/path][?options]`` URL."""

    hosts: list[tuple[str, int]]
    #: the path without its leading "/" (the Sentinel service name)
    path: str
    #: redis-py keyword arguments for the data nodes: credentials, client_name, TLS
    node_options: dict[str, Any]
    #: ``ssl`` and the ``ssl_*`` options alone (empty unless the scheme is ``rediss+…``)
    tls_options: dict[str, Any]
    #: the store's own query options, read by the parsers it passed
    extra: dict[str, Any]


def parse_hosts_url(url: str, *, default_port: int, extra: Mapping[str, Callable[[str], Any]]) -> HostsURL:
    """Parse a Cluster or Sentinel URL (several hosts, which redis-py's ``from_url`` cannot)."""
    shown = describe(redact_url(url))
    parts = urlsplit(url)
    userinfo, at, host_list = parts.netloc.rpartition("@")
    hosts: list[tuple[str, int]] = []
    for entry in host_list.split(","):
        try:
            node = urlsplit(f"//{entry}")
            host, port = node.hostname, node.port or default_port
        except ValueError:
            host = None
        if not host:
            raise ConfigError(f"bad host {describe(entry)} in {shown}; expected host[:port],host[:port],…")
        hosts.append((host, port))
    parsers = {**_NODE_OPTIONS, **extra}
    values: dict[str, Any] = {}
    for name, texts in parse_qs(parts.query, keep_blank_values=True).items():
        if name not in parsers:
            raise ConfigError(f"unknown option {describe(name)} in {shown}; expected {', '.join(sorted(parsers))}")
        try:
            values[name] = parsers[name](texts[-1])
        except ValueError:
            raise ConfigError(f"invalid value for {name} in {shown}") from None
    tls = parts.scheme.lower().startswith("rediss")
    tls_options = {name: value for name, value in values.items() if name.startswith("ssl_")}
    if tls_options and not tls:
        raise ConfigError(f"{sorted(tls_options)[0]} needs TLS (rediss+…://) in {shown}")
    node_options = {name: value for name, value in values.items() if name in _NODE_OPTIONS}
    if at:
        username, colon, password = userinfo.partition(":")
        if username:
            node_options["username"] = unquote(username)
        if colon:
            node_options["password"] = unquote(password)
    if tls:
        tls_options["ssl"] = True
        node_options["ssl"] = True
    extra_values = {name: value for name, value in values.items() if name not in _NODE_OPTIONS}
    return HostsURL(hosts, unquote(parts.path.lstrip("/")), node_options, tls_options, extra_values)


def item_args(item: Item) -> tuple[str, int, int, int, int]:
    """One item's ARGV in the scripts: algorithm code, limit, period (µs), capacity, cost."""
    policy = item.policy
    return ALGORITHMS[policy.algorithm], policy.limit, policy.period_ms * 1000, policy.capacity, item.cost


def script_args(items: Sequence[Item], now: int | None, *, commit: bool) -> list[Any]:
    """``numkeys, KEYS…, ARGV…`` for ``decide.lua``."""
    keys: list[str] = []
    argv: list[Any] = ["" if now is None else now, 1 if commit else 0]
    for item in items:
        keys.extend(item.keys)
        argv += item_args(item)
    return [len(keys), *keys, *argv]


def batch_args(groups: Sequence[tuple[Sequence[Item], int | None, bool]]) -> list[Any]:
    """``numkeys, KEYS…, ARGV…`` for ``decide.lua``'s batch mode: (items, now, commit) per group."""
    keys: list[str] = []
    argv: list[Any] = [len(groups), "b"]
    for items, now, commit in groups:
        argv += ["" if now is None else now, 1 if commit else 0, len(items)]
        for item in items:
            keys.extend(item.keys)
            argv += item_args(item)
    return [len(keys), *keys, *argv]


def batch_verdicts(reply: list[int], sizes: Sequence[int]) -> list[list[Verdict]]:
    """Split a batch-mode reply into each group's verdicts (``sizes``: each group's item count)."""
    groups, start = [], 0
    for size in sizes:
        end = start + 1 + 5 * size
        groups.append(verdicts(reply[start:end]))
        start = end
    return groups


def verdicts(reply: list[int]) -> list[Verdict]:
    """Parse the script's flat reply (the first integer, "all allowed", is implied by the rest)."""
    return [Verdict(reply[i] == 1, reply[i + 1], reply[i + 2], reply[i + 3]) for i in range(1, len(reply), 5)]


def marks(reply: list[int]) -> list[int]:
    """Each item's mark from the script's reply: what ``refund.lua`` needs to undo its write."""
    return reply[5::5]


def no_reply_error(timeout: float) -> StoreError:
    """What an ``asyncio.timeout`` around a store call becomes."""
    return StoreError(f"redis timeout error: no reply within {timeout} s", kind="timeout")


def store_error(exc: RedisError | RedisClusterException) -> StoreError:
    """Translate a redis-py error into ``StoreError`` with a metric-safe ``kind``."""
    if isinstance(exc, RedisClusterException) and isinstance(exc.__cause__, RedisError):
        # "Redis Cluster cannot be connected": no startup node answered; the cause says why.
        return store_error(exc.__cause__)
    message = str(exc)
    if isinstance(exc, redis.TimeoutError):
        kind = "timeout"
    elif isinstance(exc, BusyLoadingError) or message.startswith("BUSY"):  # before its base class
        kind = "busy"
    elif isinstance(exc, MaxConnectionsError):  # also a ConnectionError, but no fault of the store
        kind = "pool"
    elif isinstance(exc, redis.ConnectionError):
        kind = "connection"
    elif isinstance(exc, ReadOnlyError):
        kind = "readonly"
    elif isinstance(exc, OutOfMemoryError):
        kind = "oom"
    elif isinstance(exc, NoScriptError):
        kind = "noscript"
    elif isinstance(exc, ClusterError | TryAgainError | AskError | ClusterCrossSlotError | RedisClusterException):
        kind = "cluster"  # redis-py strips the CLUSTERDOWN, TRYAGAIN, MOVED… code from the message
    elif message.startswith(("CLUSTERDOWN", "TRYAGAIN", "MOVED", "ASK", "CROSSSLOT")):
        kind = "cluster"
    else:
        kind = "other"
    # redis-py words a failed connect "Error N connecting to host:port": the store is down.
    refused = kind == "connection" and " connecting to " in message
    return StoreError(f"redis {kind} error: {type(exc).__name__}: {message[:200]}", kind=kind, refused=refused)


def run_script(pool: Any, deadline: float, script: str, sha: str, args: Sequence[Any], *, asking: bool = False) -> Any:
    """Run ``script`` once on a connection from ``pool``, all of it by ``deadline`` (a
    ``time.monotonic()`` time): ``EVALSHA``, then one ``EVAL`` if the node answers ``NOSCRIPT``
    (the script did not run, so sending it whole cannot count twice). ``asking`` puts Redis
    Cluster's ``ASKING`` before each, in the same write. redis-py's errors, error replies
    included, are raised as they are; nothing that may have run is ever sent again.

    Shared by ``RedisStore`` and the sync ``ClusterStore``, which routes each call itself."""
    connection = pool.get_connection()
    try:
        try:
            return _call(connection, deadline, asking, "EVALSHA", sha, *args)
        except NoScriptError:
            return _call(connection, deadline, asking, "EVAL", script, *args)
    finally:
        pool.release(connection)


def _call(connection: Any, deadline: float, asking: bool, *command: Any) -> Any:
    if deadline <= time.monotonic():  # connecting took it all: send nothing, so nothing runs
        raise redis.TimeoutError("no time left to send the command")
    if asking:
        connection.send_packed_command(connection.pack_commands([("ASKING",), command]))
        try:
            _read(connection, deadline)
        except ResponseError:
            connection.disconnect()  # the command's own reply is still to come
            raise
    else:
        # Packed by hiredis directly: redis-py's packer copies every argument first.
        connection.send_packed_command([hiredis.pack_command(command)], check_health=False)
    return _read(connection, deadline)


def _read(connection: Any, deadline: float) -> Any:
    # A reply that does not come by the deadline disconnects the connection: its reply, if it
    # ever comes, must not be read as the answer to a later call. Said explicitly: redis-py's
    # Sentinel connections default to keeping the connection.
    return connection.read_response(timeout=max(deadline - time.monotonic(), 0.001), disconnect_on_error=True)


class HeldConnections:
    """The sync store's connections: a free list in front of a redis-py pool.

    redis-py's ``get_connection`` and ``release`` take a lock, update its pool metrics and
    dispatch an event on every call: about 20 of the 60 µs of client CPU a decision took. Here a
    thread pops a connection off a list and pushes it back (each atomic under the GIL). Only a
    new connection comes from the pool, and the pool still owns every connection (its
    ``disconnect`` closes them all). A connection is checked as redis-py checks it: one that is
    readable while idle (its server closed it, say after a restart) is reconnected before use.
    """

    __slots__ = ("_idle", "_pid", "_pool")

    def __init__(self, pool: Any) -> None:
        self._pool = pool
        self._idle: list[Any] = []
        self._pid = os.getpid()

    def __repr__(self) -> str:
        return repr(self._pool)

    def get_connection(self) -> Any:
        if self._pid != os.getpid():  # a forked child must not share its parent's sockets
            self._idle, self._pid = [], os.getpid()
        try:
            connection = self._idle.pop()
        except IndexError:
            return self._pool.get_connection()  # connected and checked by redis-py
        try:
            connection.connect()  # after an error disconnected it; a no-op otherwise
            try:
                if connection.can_read():
                    raise redis.ConnectionError("idle connection has data")
            except (redis.ConnectionError, redis.TimeoutError, OSError):
                connection.disconnect()
                connection.connect()
        except BaseException:
            self._idle.append(connection)
            raise
        return connection

    def release(self, connection: Any) -> None:
        self._idle.append(connection)


class RedisStore:
    """Decides with ``decide.lua`` on a standalone Redis (``redis://``, ``rediss://``, ``unix://``).

    Each call has one deadline, ``timeout`` after it starts, shared by connecting, sending,
    reading and a script reload, so no call outlasts it whatever Redis does.
    """

    __slots__ = ("_client", "_pool", "timeout")

    def __init__(self, url: str, *, timeout: float) -> None:
        self._client: redis.Redis = self._open(url, timeout)
        self._pool = HeldConnections(self._client.connection_pool)
        self.timeout = timeout

    def _open(self, url: str, timeout: float) -> redis.Redis:
        """The client for ``url`` (the Sentinel store opens one through its Sentinels instead)."""
        options = client_options(timeout)
        if url.lower().startswith("rediss:"):
            options |= TLS_PARSER
        try:
            return redis.Redis.from_url(url, **options)
        except ValueError as exc:
            raise ConfigError(f"invalid Redis URL {describe(redact_url(url))}: {exc}") from None

    def __repr__(self) -> str:
        return f"<RedisStore {self._pool!r}>"

    def decide(self, items: Sequence[Item], now: int | None, *, commit: bool) -> list[Verdict]:
        args = script_args(items, now, commit=commit)
        try:
            reply = run_script(self._pool, time.monotonic() + self.timeout, DECIDE_SCRIPT, DECIDE_SHA, args)
        except RedisError as exc:
            raise store_error(exc) from exc
        return verdicts(reply)

    def reset(self, keys: Sequence[str]) -> None:
        try:
            self._client.delete(*keys)
        except RedisError as exc:
            raise store_error(exc) from exc

    def close(self) -> None:
        self._client.close()


class _HiredisPacking:
    """Packs commands with hiredis, as redis-py's sync connections do. Its asyncio connections
    pack in pure Python, argument by argument: a quarter of the client's CPU in profiles of
    batched decisions (hundreds of arguments per call). The bytes on the wire are the same."""

    def pack_command(self, *args: Any) -> list[bytes]:
        name = args[0]
        if " " in name if isinstance(name, str) else b" " in name:  # "SCRIPT LOAD": two words on the wire
            args = (*name.split(), *args[1:])
        return [hiredis.pack_command(args)]


class AsyncHeldConnections:
    """The asyncio store's connections: a free list in front of a redis-py asyncio pool, as
    ``HeldConnections`` is for the sync store.

    ``Redis.execute_command`` takes the pool's lock twice, records observability metrics and
    runs the command in a retry wrapper, each a coroutine of its own: 12-16 of the 55 µs of
    client CPU a lone call took here. ``execute`` pops a connection, checks it as redis-py's
    pool does (``ensure_connection``: connected, and not readable while idle), sends, reads the
    reply and pushes the connection back, also after an error: redis-py disconnected it then
    (a cancelled read included), and the next use connects it again. Only a new connection
    comes from the pool, which still owns them all (closing it closes them).
    """

    __slots__ = ("_idle", "_pool")

    def __init__(self, pool: Any) -> None:
        self._pool = pool
        self._idle: list[Any] = []

    def __repr__(self) -> str:
        return repr(self._pool)

    async def execute(self, *command: Any) -> Any:
        """Send ``command`` and return its reply (an error reply raised as redis-py raises it)."""
        try:
            connection = self._idle.pop()
        except IndexError:
            connection = await self._pool.get_connection()  # connected and checked by redis-py
        else:
            try:
                await self._pool.ensure_connection(connection)
            except BaseException:
                self._idle.append(connection)
                raise
        try:
            await connection.send_packed_command(connection.pack_command(*command), check_health=False)
            return await connection.read_response()
        finally:
            self._idle.append(connection)


def _pack_with_hiredis(pool: Any) -> None:
    """Make ``pool`` (asyncio) open connections that pack with hiredis, whatever their kind
    (TCP, TLS, Unix socket, Sentinel-managed)."""
    base = pool.connection_class
    if HIREDIS_AVAILABLE and not issubclass(base, _HiredisPacking):
        pool.connection_class = type(f"Hiredis{base.__name__}", (_HiredisPacking, base), {})


#: The most decisions ``AsyncRedisStore`` sends in one batched script call.
BATCH_SIZE = 64
#: Queued decisions that go out at once, without waiting for the end of the loop iteration:
#: Redis runs them while the client is still running the callers of the next ones. A call
#: costs the client a fixed amount whatever its size (the socket write, the reply's wake-up), so
#: half a full batch. With 64 tasks, when a call cost 50 µs, 32 did 15-30 % more decisions/s
#: than 16, and 64 (nothing left to overlap) 30 % fewer; with 16 or 256 tasks 16 and 32 did the
#: same. Since calls cost about half that (``AsyncHeldConnections``), 16 and 32 measure the same
#: within this machine's noise.
EARLY_BATCH = 32
#: The most script calls ``AsyncRedisStore`` keeps in flight; beyond it, queued decisions wait
#: for one to return.
MAX_IN_FLIGHT = 4


class _Request:
    """A decision waiting in ``AsyncRedisStore``'s queue to be sent."""

    __slots__ = ("commit", "deadline", "future", "items", "now")

    def __init__(
        self, items: Sequence[Item], now: int | None, commit: bool, future: asyncio.Future[Any], deadline: float
    ) -> None:
        self.items, self.now, self.commit, self.future, self.deadline = items, now, commit, future, deadline


def _copy(exc: StoreError) -> StoreError:
    """One exception object per waiter: a shared one would collect every waiter's traceback."""
    copy = StoreError(str(exc), kind=exc.kind, refused=exc.refused)
    copy.__cause__ = exc.__cause__
    return copy


class AsyncRedisStore:
    """The asyncio twin of ``RedisStore``; one deadline bounds each call.

    Concurrent decisions are coalesced (see the module docstring); ``batch_size=1`` turns that
    off. Every decision keeps its own deadline, ``timeout`` after it was asked for, whether it
    went out at once or waited in the queue first: a batched call's deadline is the earliest of
    its decisions'. A failed batched call fails each decision in it with the same
    ``StoreError``. A cancelled decision leaves the batch it is in untouched (the others still
    get their answers; its own may still have run, as with any sent call).
    """

    __slots__ = (
        "_batch_size",
        "_client",
        "_connections",
        "_execute",
        "_flush_due",
        "_in_flight",
        "_queue",
        "_round_trip",
        "_tasks",
        "timeout",
    )

    def __init__(self, url: str, *, timeout: float, batch_size: int = BATCH_SIZE) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive int; got {describe(batch_size)}")
        self._client: redis.asyncio.Redis = self._open(url, timeout)
        _pack_with_hiredis(self._client.connection_pool)
        self._connections = AsyncHeldConnections(self._client.connection_pool)
        self._execute: Callable[..., Awaitable[Any]] = self._connections.execute
        self.timeout = timeout
        self._batch_size = batch_size
        self._in_flight = 0  # script calls sent and not yet returned
        self._queue: deque[_Request] = deque()
        self._flush_due = False  # a flush is scheduled for the end of this loop iteration
        self._tasks: set[asyncio.Task[None]] = set()  # the batched calls (kept from the GC)
        # A recent round trip (s): rises at once to a slower call, decays a fifth per faster one.
        self._round_trip = 0.0

    def _open(self, url: str, timeout: float) -> redis.asyncio.Redis:
        """The client for ``url`` (the Sentinel store opens one through its Sentinels instead)."""
        try:
            return redis.asyncio.Redis.from_url(url, **client_options(timeout, asynchronous=True) | CALL_DEADLINE_ONLY)
        except ValueError as exc:
            raise ConfigError(f"invalid Redis URL {describe(redact_url(url))}: {exc}") from None

    def __repr__(self) -> str:
        return f"<AsyncRedisStore {self._connections!r} in_flight={self._in_flight} queued={len(self._queue)}>"

    async def decide(self, items: Sequence[Item], now: int | None, *, commit: bool) -> list[Verdict]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        # Nothing to batch with, or no time to wait for the call in flight: send it now.
        if not self._in_flight or self._batch_size == 1 or 2 * self._round_trip > self.timeout:
            self._in_flight += 1
            try:
                reply = await self._call(script_args(items, now, commit=commit), deadline)
            finally:
                self._in_flight -= 1
                self._flush()
            return verdicts(reply)
        future: asyncio.Future[list[Verdict]] = loop.create_future()
        self._queue.append(_Request(items, now, commit, future, deadline))
        if self._in_flight < MAX_IN_FLIGHT and len(self._queue) >= min(EARLY_BATCH, self._batch_size):
            self._flush()
        elif not self._flush_due:  # the rest of this loop iteration's decisions go together
            self._flush_due = True
            loop.call_soon(self._flush_if_free)
        # No timer of its own: the call it waits for, and then its own, end by its deadline.
        return await future  # cancelling this cancels the future: _flush skips it

    def _flush_if_free(self) -> None:
        self._flush_due = False
        if self._in_flight < MAX_IN_FLIGHT:
            self._flush()

    def _flush(self) -> None:
        """Send everything queued (but what its caller gave up on), ``batch_size`` per call."""
        while self._queue:
            batch: list[_Request] = []
            while self._queue and len(batch) < self._batch_size:
                request = self._queue.popleft()
                if not request.future.done():
                    batch.append(request)
            if batch:
                self._in_flight += 1
                task = asyncio.get_running_loop().create_task(self._send(batch), name="sluicegate-batch")
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _send(self, batch: list[_Request]) -> None:
        """One script call for ``batch``; each request's future gets its verdicts or the error."""
        deadline = min(request.deadline for request in batch)
        try:
            if len(batch) == 1:
                [request] = batch
                reply = await self._call(script_args(request.items, request.now, commit=request.commit), deadline)
                results = [verdicts(reply)]
            else:
                reply = await self._call(batch_args([(r.items, r.now, r.commit) for r in batch]), deadline)
                results = batch_verdicts(reply, [len(r.items) for r in batch])
        except StoreError as exc:
            for request in batch:
                if not request.future.done():
                    request.future.set_exception(_copy(exc))
        except asyncio.CancelledError:  # aclose
            for request in batch:
                if not request.future.done():
                    request.future.set_exception(StoreError("redis connection error: store closed", kind="connection"))
            raise
        else:
            for request, result in zip(batch, results, strict=True):
                if not request.future.done():
                    request.future.set_result(result)
        finally:
            self._in_flight -= 1
            self._flush()

    async def _call(self, args: list[Any], deadline: float) -> Any:
        """``decide.lua`` once, by ``deadline`` (the loop's time): ``EVALSHA``, then ``EVAL`` on
        ``NOSCRIPT``. Nothing is sent once the deadline has passed, so nothing late runs."""
        started = time.monotonic()
        try:
            if deadline <= asyncio.get_running_loop().time():
                raise TimeoutError
            # Cancelling a redis-py call mid-reply disconnects that connection, so a late
            # reply is never read as the answer to a later call.
            async with asyncio.timeout_at(deadline):
                try:
                    reply = await self._execute("EVALSHA", DECIDE_SHA, *args)
                except NoScriptError:  # the script did not run: safe to send it whole
                    reply = await self._execute("EVAL", DECIDE_SCRIPT, *args)
        except TimeoutError as exc:
            self._round_trip = self.timeout
            raise no_reply_error(self.timeout) from exc
        except RedisError as exc:
            raise store_error(exc) from exc
        elapsed = time.monotonic() - started
        self._round_trip = max(elapsed, 0.8 * self._round_trip + 0.2 * elapsed)
        return reply

    async def reset(self, keys: Sequence[str]) -> None:
        try:
            async with asyncio.timeout(self.timeout):
                await self._client.delete(*keys)
        except TimeoutError as exc:
            raise no_reply_error(self.timeout) from exc
        except RedisError as exc:
            raise store_error(exc) from exc

    async def aclose(self) -> None:
        while self._queue:
            request = self._queue.popleft()
            if not request.future.done():
                request.future.set_exception(StoreError("redis connection error: store closed", kind="connection"))
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._client.aclose()
