"""Redis Cluster: ``redis+cluster://[[user]:password@]host[:port],host[:port]…[?options]``.

The stores talk to the cluster through redis-py's own ``RedisCluster`` (sync and asyncio), which
finds the node of each slot and follows ``MOVED`` and ``ASK`` itself. Both replies, and
``TRYAGAIN``, mean the script did not run, so re-sending it to the right node cannot count twice.
Everything else is left as it is for the standalone store (``stores/redis.py``): the client never
retries a call that may have run (``retry`` with 0 retries: a timeout or a dropped connection is
a ``StoreError``, never a second try), and ``NOSCRIPT`` from any node is followed by one ``EVAL``.

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
refunded and the ``StoreError`` is raised. A failed call may itself have run (a timeout is
ambiguous, as on one node), and a refund that fails leaves its units counted; both are logged
or raised, and both err on the side of denying. The same holds for an asyncio decision
cancelled while its slots commit; once the refunds have started, they finish regardless.

The sync client bounds each network step by ``timeout`` but has no single deadline: redis-py
pauses 0.25 s after ``CLUSTERDOWN`` and up to 0.05 s per ``TRYAGAIN`` before it gives up. The
asyncio store bounds each per-slot call by one ``asyncio.timeout``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

import redis.asyncio.cluster
import redis.cluster
from redis.connection import SSLConnection
from redis.crc import key_slot
from redis.exceptions import NoScriptError, RedisClusterException, RedisError

from .._errors import ConfigError, StoreError, describe, redact_url
from .._lua import DECIDE_SCRIPT, DECIDE_SHA, REFUND_SCRIPT, REFUND_SHA
from ..algorithms import Verdict
from ._base import Item
from .redis import TLS_PARSER, client_options, item_args, marks, parse_hosts_url, script_args, store_error, verdicts

__all__ = ["AsyncClusterStore", "ClusterStore", "slot_groups"]

log = logging.getLogger("sluicegate")

Reply = list[int] | StoreError


def slot_groups(items: Sequence[Item]) -> list[list[int]]:
    """The indexes of ``items`` grouped by hash slot, groups in order of their first item."""
    groups: dict[int, list[int]] = {}
    for index, item in enumerate(items):
        groups.setdefault(key_slot(item.keys[0].encode("utf-8")), []).append(index)
    return list(groups.values())


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
                log.warning(
                    "sluicegate: a cross-slot hit_all was not allowed, but refunding slot %d failed (%s): "
                    "its units stay counted until its state expires",
                    key_slot(self.items[self.groups[position][0]].keys[0].encode("utf-8")),
                    failed,
                )
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


class _TLSConnection(SSLConnection):
    """``SSLConnection`` with ``TLS_PARSER``: the sync cluster client passes only a connection class."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**(kwargs | TLS_PARSER))


def _cluster_url(url: str) -> tuple[list[tuple[str, int]], dict[str, Any]]:
    parsed = parse_hosts_url(url, default_port=6379, extra={})
    if parsed.path not in ("", "0"):
        raise ConfigError(f"Redis Cluster has only database 0; got path {parsed.path!r} in {describe(redact_url(url))}")
    return parsed.hosts, parsed.node_options


class ClusterStore:
    """Decides with ``decide.lua`` on a Redis Cluster (``redis+cluster://``, ``rediss+cluster://``).

    The cluster client is made on first use, so a limiter starts (and falls back) while the
    cluster is unreachable, as it does with a standalone Redis.
    """

    __slots__ = ("_client", "_hosts", "_lock", "_options", "timeout")

    def __init__(self, url: str, *, timeout: float) -> None:
        self._hosts, node_options = _cluster_url(url)
        options = client_options(timeout)
        if node_options.pop("ssl", False):
            options["connection_class"] = _TLSConnection
        self._options = options | node_options
        self._client: redis.cluster.RedisCluster | None = None
        self._lock = threading.Lock()
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"<ClusterStore {','.join(_address(*host) for host in self._hosts)}>"

    def _cluster(self) -> redis.cluster.RedisCluster:
        client = self._client
        if client is None:
            with self._lock:
                if self._client is None:
                    # The url form builds each node's pool from these options (connection_class
                    # included); the other startup nodes only add addresses to try.
                    first, *others = self._hosts
                    options = dict(self._options)
                    node: Callable[[str, int], redis.cluster.ClusterNode] = redis.cluster.ClusterNode
                    self._client = redis.cluster.RedisCluster(
                        url=f"redis://{_address(*first)}",
                        startup_nodes=[node(host, port) for host, port in others],
                        retry=options.pop("retry"),
                        **options,
                    )
                client = self._client
        return client

    def decide(self, items: Sequence[Item], now: int | None, *, commit: bool) -> list[Verdict]:
        plan = _Plan(items, now, commit=commit)
        replies = [self._try(DECIDE_SCRIPT, DECIDE_SHA, args) for args in plan.decide_calls()]
        refunds = {at: self._try(REFUND_SCRIPT, REFUND_SHA, args) for at, args in plan.refund_calls(replies).items()}
        return plan.answer(replies, refunds)

    def _execute(self, *command: Any) -> Any:
        execute: Callable[..., Any] = self._cluster().execute_command  # untyped in redis-py
        return execute(*command)

    def _try(self, script: str, sha: str, args: list[Any]) -> Reply:
        try:
            try:
                reply: list[int] = self._execute("EVALSHA", sha, *args)
            except NoScriptError:  # this node lost its script cache; the script did not run
                reply = self._execute("EVAL", script, *args)
        except (RedisError, RedisClusterException) as exc:
            return _error(exc)
        return reply

    def reset(self, keys: Sequence[str]) -> None:
        # One DEL routed like the scripts (one key's state is one slot), not redis-py's delete(),
        # which splits keys across slots through a cluster pipeline.
        try:
            self._execute("DEL", *keys)
        except (RedisError, RedisClusterException) as exc:
            raise _error(exc) from exc

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None


class AsyncClusterStore:
    """The asyncio twin of ``ClusterStore``; one ``asyncio.timeout`` bounds each per-slot call."""

    __slots__ = ("_client", "_hosts", "timeout")

    def __init__(self, url: str, *, timeout: float) -> None:
        self._hosts, node_options = _cluster_url(url)
        options = client_options(timeout, asynchronous=True)
        options.pop("retry_on_timeout")  # not an asyncio RedisCluster option; retry=0 covers it
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
            return StoreError(f"redis timeout error: no reply within {self.timeout} s", kind="timeout")
        except (RedisError, RedisClusterException) as exc:
            return _error(exc)
        return reply

    async def reset(self, keys: Sequence[str]) -> None:
        try:
            async with asyncio.timeout(self.timeout):
                await self._client.execute_command("DEL", *keys)
        except TimeoutError as exc:
            raise StoreError(f"redis timeout error: no reply within {self.timeout} s", kind="timeout") from exc
        except (RedisError, RedisClusterException) as exc:
            raise _error(exc) from exc

    async def aclose(self) -> None:
        await self._client.aclose()
