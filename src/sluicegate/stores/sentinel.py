"""Redis Sentinel: ``redis+sentinel://[[user]:password@]host[:port],host[:port]…/service[?options]``.

The hosts are the Sentinels (port 26379 unless given) and the path names the monitored service.
The user, password, ``?db=N`` and ``client_name`` are the master's; ``?sentinel_username=`` and
``?sentinel_password=`` authenticate to the Sentinels themselves. ``rediss+sentinel://`` speaks
TLS (with the ``ssl_*`` options) to the Sentinels and to the master.

The stores are ``RedisStore`` and ``AsyncRedisStore`` over a client from redis-py's own
``Sentinel.master_for``, so a decision is what it is on one Redis: one ``EVALSHA``, one deadline,
no retries, ``NOSCRIPT`` followed by one ``EVAL``. What Sentinel adds is where the master is:

- every new connection asks the Sentinels for the master's address (``SENTINEL MASTERS``,
  first Sentinel that answers) and gets an error while they report it down;
- when the address changes, idle connections to the old master are dropped; a connection that
  meets ``READONLY`` (the old master, demoted) is closed and raises a connection error.

So after a failover each open connection to the old master fails once (a timeout when it hangs,
an error when it died or was demoted), the limiter's breaker opens and its fallback decides,
and the next connection (the breaker's probe) reaches the new master. Scripts are not replicated,
so the first call there costs one ``NOSCRIPT`` and one ``EVAL``. Replication is asynchronous:
units the old master counted but had not yet sent to the replica are lost in a failover.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import redis
import redis.asyncio
import redis.asyncio.sentinel
import redis.sentinel

from .._errors import ConfigError, describe, redact_url
from .redis import CALL_DEADLINE_ONLY, TLS_PARSER, AsyncRedisStore, RedisStore, client_options, parse_hosts_url

__all__ = ["AsyncSentinelStore", "SentinelStore"]

_OPTIONS: dict[str, Callable[[str], Any]] = {"db": int, "sentinel_username": str, "sentinel_password": str}

# redis-py's Sentinel classes carry no annotations; these say what the stores rely on.
_Sentinel: Callable[..., redis.sentinel.Sentinel] = redis.sentinel.Sentinel
_AsyncSentinel: Callable[..., redis.asyncio.sentinel.Sentinel] = redis.asyncio.sentinel.Sentinel


class _Target:
    """A parsed Sentinel URL: the Sentinels, the service, and the options for each side."""

    __slots__ = ("master", "sentinel", "sentinels", "service")

    def __init__(self, url: str, timeout: float, *, asynchronous: bool) -> None:
        parsed = parse_hosts_url(url, default_port=26379, extra=_OPTIONS)
        if not parsed.path or "/" in parsed.path:
            raise ConfigError(
                f"a Sentinel URL names its service as the path, as in redis+sentinel://host:26379/mymaster; "
                f"got {describe(redact_url(url))}"
            )
        self.sentinels = parsed.hosts
        self.service = parsed.path
        options = client_options(timeout, asynchronous=asynchronous)
        self.master: dict[str, Any] = options | parsed.node_options | {"db": parsed.extra.get("db", 0)}
        self.sentinel: dict[str, Any] = options | parsed.tls_options
        for name in ("username", "password"):
            if f"sentinel_{name}" in parsed.extra:
                self.sentinel[name] = parsed.extra[f"sentinel_{name}"]
        if parsed.tls_options and not asynchronous:
            self.master |= TLS_PARSER


class SentinelStore(RedisStore):
    """``RedisStore`` on the master that the Sentinels name (``redis+sentinel://``)."""

    __slots__ = ("_sentinel", "_service")

    def _open(self, url: str, timeout: float) -> redis.Redis:
        target = _Target(url, timeout, asynchronous=False)
        self._service = target.service
        self._sentinel = _Sentinel(target.sentinels, sentinel_kwargs=target.sentinel, **target.master)
        if target.sentinel.get("ssl"):
            # The Sentinels' own clients take no parser option: set TLS_PARSER on their pools.
            for client in self._sentinel.sentinels:
                client.connection_pool.connection_kwargs |= TLS_PARSER
        master_for: Callable[[str], redis.Redis] = self._sentinel.master_for
        return master_for(self._service)

    def __repr__(self) -> str:
        return f"<SentinelStore {self._service!r} via {self._sentinel!r}>"

    def close(self) -> None:
        super().close()
        self._sentinel.close()


class AsyncSentinelStore(AsyncRedisStore):
    """``AsyncRedisStore`` on the master that the Sentinels name (``redis+sentinel://``)."""

    __slots__ = ("_sentinel", "_service")

    def _open(self, url: str, timeout: float) -> redis.asyncio.Redis:
        target = _Target(url, timeout, asynchronous=True)
        self._service = target.service
        # The Sentinels keep their socket timeout: discovery moves on from one that hangs.
        master = target.master | CALL_DEADLINE_ONLY
        self._sentinel = _AsyncSentinel(target.sentinels, sentinel_kwargs=target.sentinel, **master)
        master_for: Callable[[str], redis.asyncio.Redis] = self._sentinel.master_for
        return master_for(self._service)

    def __repr__(self) -> str:
        return f"<AsyncSentinelStore {self._service!r} via {self._sentinel!r}>"

    async def aclose(self) -> None:
        await super().aclose()
        await self._sentinel.aclose()
