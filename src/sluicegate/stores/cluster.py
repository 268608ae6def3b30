"""Redis Cluster: ``redis+cluster://[[user]:password@]host[:port],host[:port]…[?options]``.

Both stores find the cluster's slots with redis-py's own ``RedisCluster`` (sync and asyncio).

- The asyncio store also runs each call through it: redis-py follows ``MOVED`` and ``ASK`` (and
  retries ``TRYAGAIN``), and one ``asyncio.timeout`` bounds each per-slot call, pauses included.
- The sync store routes each script call itself, on redis-py's slot table and the node's
  connection pool, because redis-py's sync command loop sleeps (0.25 s after ``CLUSTERDOWN``,
  0.05 s per ``TRYAGAIN``) and re-reads the topology on the caller's time. Here one deadline,
  ``timeout`` from the decision's start, bounds every slot's call, redirection, script reload
  and the refunds sent on its time, connecting included (see ``_Cluster``): ``MOVED`` updates
  redis-py's table and re-sends to the new master, ``ASK`` sends ``ASKING`` and the script to
  the target, and ``CLUSTERDOWN``, ``TRYAGAIN`` or a slot nobody serves are a ``StoreError`` at
  once, with a slot table refresh asked of a background thread (at most one per
  ``REFRESH_INTERVAL_S``), as after a timeout or a lost connection: later decisions find the
  new master after a failover. The first discovery runs on that thread too.

``MOVED``, ``ASK`` and ``TRYAGAIN`` mean the script did not run, so re-sending it to the right
node cannot count twice. Everything else is as for the standalone store (``stores/redis.py``):
nothing that may have run is ever sent again (a timeout or a dropped connection is a
``StoreError``, never a second try), and ``NOSCRIPT`` from any node is followed by one ``EVAL``.

One slot, one script call. All state of one user key lives in one slot (the user key is the
hash tag), so ``hit``, ``peek`` and a ``hit_all`` whose keys share a slot are one atomic
``decide.lua`` call on that slot's master, exactly as on a standalone Redis.

A ``hit_all`` over several slots cannot be one atomic call (scripts touch one slot). It is:

1. one ``decide.lua`` call per slot, committing (concurrently in the asyncio store, one after
   the other in the sync store), each all-or-nothing within its slot;
2. if every slot allowed, that is the decision. If a slot denied (it wrote nothing), or failed,
   each slot that committed runs ``refund.lua``, which takes back exactly the units that call
   consumed (see the header of ``lua/refund.lua`` for each algorithm) and reports the state as it
   then stands, which is what an allowed item of a denied ``hit_all`` reports on one node.

What another client can observe: between a slot's commit and its refund (one round trip, plus
the other slots' calls in the sync store) the units of a ``hit_all`` that ends up denied are
counted in that slot, so a concurrent request there may be denied, or see less ``remaining``,
when it would not have been had the ``hit_all`` never run. The refund never gives back units
of another call, so this can only deny too much, never admit too much; and nothing is
consumed once the refunds are done. A GCRA refund gives back less than the cost by what had
drained (``limit/period`` per µs) between the commit and a later write by another call: never
more than the call still holds. The per-slot calls are not simultaneous: a concurrent
``hit_all`` over the same slots may see one slot before and another after this one.

When a slot's call fails (timeout, connection, ``CLUSTERDOWN``…), the slots that committed are
refunded and the ``StoreError`` is raised; the sync store does not even ask the slots after the
failed one. A failed call may itself have run (a timeout is ambiguous, as on one node), and a
refund that fails leaves its units counted; both are logged or raised, and both err on the side
of denying. The same holds for an asyncio decision cancelled while its slots commit; once the
refunds have started, they finish regardless.

Refunds and the sync deadline: a refund is sent on the decision's time while at least
``REFUND_SHARE`` of its timeout remains. When less is left (typically: a later slot timed out),
it is queued for a background thread, which sends it with a timeout of its own, and the caller
has its answer at once. Until it runs, its units stay counted (towards denying); for a denied
``hit_all`` the items of such a slot report the state their commit left, not the refunded one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import redis
import redis.asyncio.cluster
import redis.cluster
from redis.connection import Connection, SSLConnection
from redis.crc import key_slot
from redis.exceptions import (
    AskError,
    ClusterDownError,
    MaxConnectionsError,
    MovedError,
    NoScriptError,
    ReadOnlyError,
    RedisClusterException,
    RedisError,
    SlotNotCoveredError,
    TryAgainError,
)

from .._errors import ConfigError, StoreError, describe, redact_url
from .._lua import DECIDE_SCRIPT, DECIDE_SHA, REFUND_SCRIPT, REFUND_SHA
from ..algorithms import Verdict
from ._base import Item
from .redis import (
    TLS_PARSER,
    client_options,
    item_args,
    marks,
    no_reply_error,
    parse_hosts_url,
    run_script,
    script_args,
    store_error,
    verdicts,
)

__all__ = ["AsyncClusterStore", "ClusterStore", "slot_groups"]

log = logging.getLogger("sluicegate")

Reply = list[int] | StoreError


def slot_groups(items: Sequence[Item]) -> list[list[int]]:
    """The indexes of ``items`` grouped by hash slot, groups in order of their first item."""
    groups: dict[int, list[int]] = {}
    for index, item in enumerate(items):
        groups.setdefault(key_slot(item.keys[0].encode("utf-8")), []).append(index)
    return list(groups.values())


def _log_lost_refund(slot: int, error: StoreError) -> None:
    log.warning(
        "sluicegate: a cross-slot hit_all was not allowed, but refunding slot %d failed (%s): "
        "its units stay counted until its state expires",
        slot,
        error,
    )


class _Plan:
    """One decision over the slots its items fall in, without I/O: what to send, what it means."""

    __slots__ = ("commit", "groups", "items", "now")

    def __init__(self, items: Sequence[Item], now: int | None, *, commit: bool) -> None:
        self.items = items
        self.now = now
        self.commit = commit
        self.groups = slot_groups(items)

    def decide_calls(self) -> list[list[Any]]:
        """``decide.lua``'s arguments for each slot."""
        return [script_args([self.items[i] for i in group], self.now, commit=self.commit) for group in self.groups]

    def refund_calls(self, replies: Sequence[Reply]) -> dict[int, list[Any]]:
        """``refund.lua``'s arguments for each slot that committed when the decision as a whole did
        not (another slot denied or failed), by slot position."""
        if not self.commit or all(not isinstance(reply, StoreError) and reply[0] == 1 for reply in replies):
            return {}
        calls: dict[int, list[Any]] = {}
        for position, (group, reply) in enumerate(zip(self.groups, replies, strict=True)):
            if isinstance(reply, StoreError) or reply[0] != 1:
                continue  # nothing written: denied slots write nothing; a failed one is unknown
            keys: list[str] = []
            argv: list[Any] = ["" if self.now is None else self.now]
            for index, mark in zip(group, marks(reply), strict=True):
                keys.extend(self.items[index].keys)
                argv += (*item_args(self.items[index]), mark)
            calls[position] = [len(keys), *keys, *argv]
        return calls

    def answer(self, replies: Sequence[Reply], refunds: dict[int, Reply]) -> list[Verdict]:
        """Each item's verdict, or the first slot's ``StoreError``. A refunded slot reports the
        state after its refund (``refund.lua`` answers in ``decide.lua``'s format)."""
        for position, failed in refunds.items():
            if isinstance(failed, StoreError):
                _log_lost_refund(key_slot(self.items[self.groups[position][0]].keys[0].encode("utf-8")), failed)
        by_index: dict[int, Verdict] = {}
        for position, (group, reply) in enumerate(zip(self.groups, replies, strict=True)):
            if isinstance(reply, StoreError):
                raise reply
            refund = refunds.get(position)
            final = refund if isinstance(refund, list) else reply
            by_index.update(zip(group, verdicts(final), strict=True))
        return [by_index[index] for index in range(len(self.items))]


def _error(exc: RedisError | RedisClusterException) -> StoreError:
    error = store_error(exc)
    error.__cause__ = exc
    return error


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _cluster_url(url: str) -> tuple[list[tuple[str, int]], dict[str, Any]]:
    parsed = parse_hosts_url(url, default_port=6379, extra={})
    if parsed.path not in ("", "0"):
        raise ConfigError(f"Redis Cluster has only database 0; got path {parsed.path!r} in {describe(redact_url(url))}")
    return parsed.hosts, parsed.node_options


#: Seconds between two topology refreshes (``CLUSTER SLOTS``) at most; asked for meanwhile, one
#: refresh follows when the interval is over.
REFRESH_INTERVAL_S = 0.25
#: ``MOVED`` and ``ASK`` replies followed in one script call at most (all within its deadline).
MAX_REDIRECTS = 5
#: A refund is sent on its decision's time while this share of the timeout remains, else after
#: the decision returns (``_Cluster.later``).
REFUND_SHARE = 0.25

#: Errors after which the slot table may be stale: ask for a refresh in the background.
_STALE = (
    redis.ConnectionError,  # the node is gone (also LOADING: it restarted)
    redis.TimeoutError,  # the node hangs, or is cut off
    ClusterDownError,
    TryAgainError,
    SlotNotCoveredError,
    ReadOnlyError,
    AskError,  # an ASK to a node this client does not know
    RedisClusterException,  # too many redirections
)


class _Deadline(threading.local):
    """The deadline of the script call this thread is making, if any (``time.monotonic()``)."""

    at: float | None = None


_deadline = _Deadline()


def _connect_by_deadline(connection: Any, connect: Callable[[], Any]) -> Any:
    """Run ``connect`` (TCP connect, and the TLS handshake) within ``_deadline``, if one is set:
    a connection made late in a decision (a second slot, a redirection) gets only what is left."""
    at = _deadline.at
    if at is None:
        return connect()
    left = max(at - time.monotonic(), 0.001)
    connect_timeout, socket_timeout = connection.socket_connect_timeout, connection.socket_timeout
    connection.socket_connect_timeout = left if connect_timeout is None else min(connect_timeout, left)
    connection.socket_timeout = left if socket_timeout is None else min(socket_timeout, left)
    try:
        sock = connect()
    finally:
        connection.socket_connect_timeout, connection.socket_timeout = connect_timeout, socket_timeout
    sock.settimeout(socket_timeout)
    return sock


def _by_deadline(kwargs: dict[str, Any]) -> dict[str, Any]:
    """A read without a timeout of its own (the on-connect ``AUTH``, ``CLIENT SETNAME``) during
    a script call: it gets what is left of the call's deadline."""
    at = _deadline.at
    if at is not None and "timeout" not in kwargs:
        kwargs["timeout"] = max(at - time.monotonic(), 0.001)
    return kwargs


class _Connection(Connection):
    """A cluster node's connection: connecting and its handshake count against the deadline of
    the script call being made on this thread (redis-py's own commands keep the socket timeouts)."""

    def _connect(self) -> Any:
        return _connect_by_deadline(self, super()._connect)

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        return super().read_response(*args, **_by_deadline(kwargs))


class _TLSConnection(SSLConnection):
    """``_Connection`` over TLS, with ``TLS_PARSER`` (the sync cluster client takes only a
    connection class)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**(kwargs | TLS_PARSER))

    def _connect(self) -> Any:
        return _connect_by_deadline(self, super()._connect)

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        return super().read_response(*args, **_by_deadline(kwargs))


def _slot(args: Sequence[Any]) -> int:
    """The slot of a script call (``numkeys, KEYS…, ARGV…``): its keys share one."""
    return key_slot(str(args[1]).encode("utf-8"))


class _Cluster:
    """redis-py's ``RedisCluster`` for one ``ClusterStore``, and our script calls on its routing.

    - The client is made (its first ``CLUSTER SLOTS``) and later refreshed by a daemon thread,
      at most once per ``REFRESH_INTERVAL_S``, never on a decision's time; a decision waits for
      the first discovery only until its deadline.
    - ``call`` sends one script call to the master of its slot in redis-py's slot table, on a
      connection from that node's pool, by the caller's deadline. ``MOVED`` updates the table
      (redis-py's ``NodesManager.move_slot``) and re-sends to the new master; ``ASK`` sends
      ``ASKING`` and the script to the target: both mean the script did not run. Anything else
      is returned at once as a ``StoreError``: no sleep, no retry.
    - ``later`` runs jobs (late refunds) in order on a second daemon thread.

    Both threads start with the first discovery and stop on ``close``.
    """

    __slots__ = (
        "_attempts",
        "_busy",
        "_client",
        "_closed",
        "_cond",
        "_error",
        "_jobs",
        "_last_refresh",
        "_make",
        "_started",
        "_wanted",
    )

    def __init__(self, make: Callable[[], redis.cluster.RedisCluster]) -> None:
        self._make = make
        self._cond = threading.Condition()
        self._client: redis.cluster.RedisCluster | None = None
        self._error: BaseException | None = None  # why the last attempt to make the client failed
        self._attempts = 0  # attempts to make the client so far
        self._busy = False  # an attempt to make the client is under way
        self._last_refresh = float("-inf")  # when the last discovery or refresh started
        self._wanted = False  # a discovery or refresh is due
        self._started = False
        self._closed = False
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()

    def client(self, deadline: float) -> redis.cluster.RedisCluster:
        """The client, once discovered; ``StoreError`` if discovery has not succeeded by ``deadline``."""
        client = self._client
        if client is not None:
            return client
        with self._cond:
            if not self._started and not self._closed:
                self._started = True
                for target, name in ((self._refresh_loop, "slots"), (self._work, "refunds")):
                    threading.Thread(target=target, name=f"sluicegate-cluster-{name}", daemon=True).start()
            seen = self._attempts
            self._wanted = True
            self._cond.notify_all()
            if self._error is not None and not self._busy and self._last_refresh + REFRESH_INTERVAL_S >= deadline:
                raise _error_from(self._error)  # the last attempt failed just now; the next is due too late
            while self._client is None and self._attempts == seen and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            if self._client is not None:
                return self._client
            if self._error is not None and self._attempts != seen:
                raise _error_from(self._error)
        raise StoreError("redis timeout error: the cluster's slots were not discovered in time", kind="timeout")

    def refresh(self) -> None:
        """Ask for a slot table refresh in the background (rate-limited; asking twice is one)."""
        if self._wanted:  # already asked for (read without the lock: a stale False only costs it)
            return
        with self._cond:
            self._wanted = True
            self._cond.notify_all()

    def _refresh_loop(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._closed:
                        return
                    due = self._last_refresh + REFRESH_INTERVAL_S - time.monotonic()
                    if self._wanted and due <= 0:
                        break
                    self._cond.wait(due if self._wanted else None)
                self._wanted = False
                self._last_refresh = time.monotonic()
                client = self._client
                self._busy = client is None
            if client is not None:
                try:
                    # No READONLY connections to clear: the pools are left as they are.
                    client.nodes_manager.initialize(disconnect_startup_nodes_pools=False)
                except Exception as exc:  # a failed refresh keeps the table it had
                    log.debug("sluicegate: refreshing the Redis Cluster slots failed: %r", exc)
                continue
            error: BaseException | None = None
            try:
                client = self._make()
            except Exception as exc:
                error = exc
            with self._cond:
                self._busy = False
                self._attempts += 1
                self._error = error
                if client is not None and self._closed:
                    client.close()
                else:
                    self._client = client
                self._cond.notify_all()

    def call(self, script: str, sha: str, args: Sequence[Any], deadline: float) -> Reply:
        """One script call on its slot's master by ``deadline``: the reply, or a ``StoreError``."""
        try:
            reply: list[int] = self._route(_slot(args), script, sha, args, deadline)
        except StoreError as exc:
            return exc
        except (RedisError, RedisClusterException) as exc:
            if isinstance(exc, _STALE) and not isinstance(exc, MaxConnectionsError):
                self.refresh()  # after a failover, later calls find the new master
            return _error(exc)
        return reply

    def _route(self, slot: int, script: str, sha: str, args: Sequence[Any], deadline: float) -> Any:
        client = self.client(deadline)
        nodes = client.nodes_manager
        node = nodes.get_node_from_slot(slot)
        asking = False
        _deadline.at = deadline
        try:
            for _ in range(MAX_REDIRECTS + 1):
                pool = client.get_redis_connection(node).connection_pool
                try:
                    return run_script(pool, deadline, script, sha, args, asking=asking)
                except MovedError as moved:  # the slot has a new master (resharding, failover)
                    with contextlib.suppress(KeyError):  # a refresh just dropped the slot
                        nodes.move_slot(moved)
                    self.refresh()  # other slots may have moved with it
                    node, asking = nodes.get_node(moved.host, moved.port) or nodes.get_node_from_slot(slot), False
                except AskError as ask:  # the slot is migrating and the keys are on the target
                    target = nodes.get_node(ask.host, ask.port)
                    if target is None:
                        raise
                    node, asking = target, True
        finally:
            _deadline.at = None
        raise RedisClusterException(f"more than {MAX_REDIRECTS} redirections for slot {slot}")

    def later(self, job: Callable[[], None]) -> None:
        """Run ``job`` on the worker thread, after the jobs already given."""
        self._jobs.put(job)

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                job()
            except Exception:
                log.exception("sluicegate: a background Redis Cluster job failed")

    def close(self, timeout: float) -> None:
        """Stop the threads (the refunds still queued get up to ``timeout``) and close the client."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            started = self._started
        if started:
            done = threading.Event()
            self._jobs.put(done.set)
            self._jobs.put(None)
            done.wait(timeout)
        with self._cond:
            client, self._client = self._client, None
        if client is not None:
            client.close()


def _error_from(cause: BaseException) -> StoreError:
    """A fresh ``StoreError`` for a cause kept to be raised again (by other threads, too)."""
    if isinstance(cause, RedisError | RedisClusterException):
        return _error(cause)
    error = StoreError(f"redis other error: {type(cause).__name__}: {str(cause)[:200]}", kind="other")
    error.__cause__ = cause
    return error


class ClusterStore:
    """Decides with ``decide.lua`` on a Redis Cluster (``redis+cluster://``, ``rediss+cluster://``).

    Each decision has one deadline, ``timeout`` after it starts, shared by every slot's call,
    their redirections and script reloads, and the refunds sent on its time. The cluster client
    is made on first use, in the background, so a limiter starts (and falls back) while the
    cluster is unreachable, as it does with a standalone Redis.
    """

    __slots__ = ("_cluster", "_hosts", "_options", "timeout")

    def __init__(self, url: str, *, timeout: float) -> None:
        self._hosts, node_options = _cluster_url(url)
        options = client_options(timeout)
        options["connection_class"] = _TLSConnection if node_options.pop("ssl", False) else _Connection
        self._options = options | node_options
        self._cluster = _Cluster(self._make)
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"<ClusterStore {','.join(_address(*host) for host in self._hosts)}>"

    def _make(self) -> redis.cluster.RedisCluster:
        # The url form builds each node's pool from these options (connection_class included);
        # the other startup nodes only add addresses to try.
        first, *others = self._hosts
        options = dict(self._options)
        node: Callable[[str, int], redis.cluster.ClusterNode] = redis.cluster.ClusterNode
        return redis.cluster.RedisCluster(
            url=f"redis://{_address(*first)}",
            startup_nodes=[node(host, port) for host, port in others],
            retry=options.pop("retry"),
            # A slot no node serves fails alone (SlotNotCoveredError), not the whole table.
            require_full_coverage=False,
            **options,
        )

    def decide(self, items: Sequence[Item], now: int | None, *, commit: bool) -> list[Verdict]:
        deadline = time.monotonic() + self.timeout
        plan = _Plan(items, now, commit=commit)
        replies: list[Reply] = []
        failed: StoreError | None = None
        for args in plan.decide_calls():
            # After a failure the decision is an error: the later slots are not even asked.
            reply = failed or self._try(DECIDE_SCRIPT, DECIDE_SHA, args, deadline)
            if isinstance(reply, StoreError):
                failed = reply
            replies.append(reply)
        refunds: dict[int, Reply] = {}
        late: list[list[Any]] = []
        for position, args in plan.refund_calls(replies).items():
            if deadline - time.monotonic() >= self.timeout * REFUND_SHARE:
                refunds[position] = self._try(REFUND_SCRIPT, REFUND_SHA, args, deadline)
            else:
                late.append(args)
        if late:
            cluster = self._cluster
            cluster.later(lambda: self._refund(cluster, late))
        return plan.answer(replies, refunds)

    def _try(self, script: str, sha: str, args: list[Any], deadline: float) -> Reply:
        return self._cluster.call(script, sha, args, deadline)

    def _refund(self, cluster: _Cluster, calls: list[list[Any]]) -> None:
        """Refunds that did not fit in their decision's deadline, each with a timeout of its own."""
        for args in calls:
            failed = cluster.call(REFUND_SCRIPT, REFUND_SHA, args, time.monotonic() + self.timeout)
            if isinstance(failed, StoreError):
                _log_lost_refund(_slot(args), failed)

    def reset(self, keys: Sequence[str]) -> None:
        # One DEL routed like the scripts (one key's state is one slot), not redis-py's delete(),
        # which splits keys across slots through a cluster pipeline. redis-py runs it, with its
        # own handling of redirections and CLUSTERDOWN: a reset is not a decision.
        client = self._cluster.client(time.monotonic() + self.timeout)
        execute: Callable[..., Any] = client.execute_command  # untyped in redis-py
        try:
            execute("DEL", *keys)
        except (RedisError, RedisClusterException) as exc:
            raise _error(exc) from exc

    def close(self) -> None:
        cluster, self._cluster = self._cluster, _Cluster(self._make)
        cluster.close(self.timeout)


class AsyncClusterStore:
    """The asyncio twin of ``ClusterStore``; one ``asyncio.timeout`` bounds each per-slot call."""

    __slots__ = ("_client", "_hosts", "timeout")

    def __init__(self, url: str, *, timeout: float) -> None:
        self._hosts, node_options = _cluster_url(url)
        options = client_options(timeout, asynchronous=True)
        # redis.asyncio's RedisCluster connects on its first command, never here.
        self._client = redis.asyncio.cluster.RedisCluster(
            startup_nodes=[redis.asyncio.cluster.ClusterNode(host, port) for host, port in self._hosts],
            **(options | node_options),
        )
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"<AsyncClusterStore {','.join(_address(*host) for host in self._hosts)}>"

    async def decide(self, items: Sequence[Item], now: int | None, *, commit: bool) -> list[Verdict]:
        plan = _Plan(items, now, commit=commit)
        replies = await self._all(DECIDE_SCRIPT, DECIDE_SHA, plan.decide_calls())
        refund_calls = plan.refund_calls(replies)
        refunds: list[Reply] = []
        if refund_calls:
            # Shielded: a caller that gives up now must not leave committed units behind.
            refunds = await asyncio.shield(self._all(REFUND_SCRIPT, REFUND_SHA, list(refund_calls.values())))
        return plan.answer(replies, dict(zip(refund_calls, refunds, strict=True)))

    async def _all(self, script: str, sha: str, calls: list[list[Any]]) -> list[Reply]:
        if len(calls) <= 1:  # the common case needs no task
            return [await self._try(script, sha, args) for args in calls]
        return await asyncio.gather(*(self._try(script, sha, args) for args in calls))

    async def _try(self, script: str, sha: str, args: list[Any]) -> Reply:
        try:
            # Cancelling a redis-py call mid-reply disconnects that connection, so a late reply
            # is never read as the answer to a later call.
            async with asyncio.timeout(self.timeout):
                try:
                    reply: list[int] = await self._client.execute_command("EVALSHA", sha, *args)
                except NoScriptError:  # this node lost its script cache; the script did not run
                    reply = await self._client.execute_command("EVAL", script, *args)
        except TimeoutError:
            return no_reply_error(self.timeout)
        except (RedisError, RedisClusterException) as exc:
            return _error(exc)
        return reply

    async def reset(self, keys: Sequence[str]) -> None:
        try:
            async with asyncio.timeout(self.timeout):
                await self._client.execute_command("DEL", *keys)
        except TimeoutError as exc:
            raise no_reply_error(self.timeout) from exc
        except (RedisError, RedisClusterException) as exc:
            raise _error(exc) from exc

    async def aclose(self) -> None:
        await self._client.aclose()
