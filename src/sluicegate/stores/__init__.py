"""Stores hold the rate-limit state: ``memory://`` in-process, or Redis.

URLs:

- ``memory://`` (optionally ``memory://?max_keys=100000``)
- ``redis://[[user]:password@]host[:port][/db]``, ``rediss://…`` (TLS), ``unix:///path/redis.sock[?db=N]``
- ``redis+cluster://[[user]:password@]host[:port],host[:port]…`` (``rediss+cluster://``: TLS),
  see ``stores.cluster``
- ``redis+sentinel://[[user]:password@]host[:port],…/service[?db=N]`` (``rediss+sentinel://``: TLS),
  see ``stores.sentinel``
"""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

from .._errors import ConfigError, describe, redact_url
from ._base import AsyncStore, Item, Store
from .cluster import AsyncClusterStore, ClusterStore
from .memory import DEFAULT_MAX_KEYS, AsyncMemoryStore, MemoryStore
from .redis import AsyncRedisStore, RedisStore
from .sentinel import AsyncSentinelStore, SentinelStore

__all__ = [
    "AsyncClusterStore",
    "AsyncMemoryStore",
    "AsyncRedisStore",
    "AsyncSentinelStore",
    "AsyncStore",
    "ClusterStore",
    "Item",
    "MemoryStore",
    "RedisStore",
    "SentinelStore",
    "Store",
    "open_async_store",
    "open_store",
    "store_kind",
]

#: scheme -> the store kind (also the metric label)
_KINDS = {
    "memory": "memory",
    "redis": "redis",
    "rediss": "redis",
    "unix": "redis",
    "redis+cluster": "cluster",
    "rediss+cluster": "cluster",
    "redis+sentinel": "sentinel",
    "rediss+sentinel": "sentinel",
}


def _kind(url: object) -> str:
    if not isinstance(url, str):
        raise ConfigError(f"store URL must be a str; got {describe(url)}")
    kind = _KINDS.get(urlsplit(url).scheme.lower())
    if kind is None:
        raise ConfigError(
            f"unsupported store URL {describe(redact_url(url))}; expected memory://, redis://, rediss://, unix://, "
            "redis+cluster://, redis+sentinel:// (or rediss+…)"
        )
    return kind


def _memory(url: str) -> MemoryStore:
    query = parse_qs(urlsplit(url).query)
    unknown = set(query) - {"max_keys"}
    if unknown:
        raise ConfigError(f"unknown option {describe(sorted(unknown)[0])} in {describe(url)}; memory:// takes max_keys")
    text = query.get("max_keys", [str(DEFAULT_MAX_KEYS)])[-1]
    if not text.isascii() or not text.isdigit():
        raise ConfigError(f"max_keys must be a positive integer in {describe(url)}")
    return MemoryStore(max_keys=int(text))


def store_kind(url: object) -> str:
    """A short, bounded name for the store behind ``url``, for metric labels."""
    if isinstance(url, str):
        return _KINDS.get(urlsplit(url).scheme.lower(), "redis")
    return {MemoryStore: "memory", AsyncMemoryStore: "memory"}.get(type(url), "custom")


def open_store(url: str, *, timeout: float) -> Store:
    """The synchronous store for ``url``."""
    kind = _kind(url)
    if kind == "memory":
        return _memory(url)
    if kind == "cluster":
        return ClusterStore(url, timeout=timeout)
    if kind == "sentinel":
        return SentinelStore(url, timeout=timeout)
    return RedisStore(url, timeout=timeout)


def open_async_store(url: str, *, timeout: float) -> AsyncStore:
    """The asyncio store for ``url``."""
    kind = _kind(url)
    if kind == "memory":
        return AsyncMemoryStore(_memory(url))
    if kind == "cluster":
        return AsyncClusterStore(url, timeout=timeout)
    if kind == "sentinel":
        return AsyncSentinelStore(url, timeout=timeout)
    return AsyncRedisStore(url, timeout=timeout)
