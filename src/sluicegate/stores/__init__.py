"""Stores hold the rate-limit state: ``memory://`` in-process, or Redis.

URLs:

- ``memory://`` (optionally ``memory://?max_keys=100000``)
- ``redis://[[user]:password@]host[:port][/db]``, ``rediss://…`` (TLS), ``unix:///path/redis.sock[?db=N]``
- reserved for Redis Cluster and Sentinel: ``redis+cluster://``, ``redis+sentinel://`` and their
  ``rediss+…`` TLS variants.
"""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

from .._errors import ConfigError, describe, redact_url
from ._base import AsyncStore, Item, Store
from .memory import DEFAULT_MAX_KEYS, AsyncMemoryStore, MemoryStore
from .redis import AsyncRedisStore, RedisStore

__all__ = [
    "AsyncMemoryStore",
    "AsyncRedisStore",
    "AsyncStore",
    "Item",
    "MemoryStore",
    "RedisStore",
    "Store",
    "open_async_store",
    "open_store",
    "store_kind",
]

_REDIS_SCHEMES = ("redis", "rediss", "unix")
_RESERVED_SCHEMES = ("redis+cluster", "rediss+cluster", "redis+sentinel", "rediss+sentinel")


def _scheme(url: object) -> str:
    if not isinstance(url, str):
        raise ConfigError(f"store URL must be a str; got {describe(url)}")
    shown = describe(redact_url(url))
    scheme = urlsplit(url).scheme.lower()
    if scheme in _RESERVED_SCHEMES:
        raise ConfigError(f"{scheme}:// is reserved for Redis Cluster and Sentinel, not supported yet: {shown}")
    if scheme != "memory" and scheme not in _REDIS_SCHEMES:
        raise ConfigError(f"unsupported store URL {shown}; expected memory://, redis://, rediss:// or unix://")
    return scheme


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
        scheme = urlsplit(url).scheme.lower()
        return "memory" if scheme == "memory" else "redis"
    return {MemoryStore: "memory", AsyncMemoryStore: "memory"}.get(type(url), "custom")


def open_store(url: str, *, timeout: float) -> Store:
    """The synchronous store for ``url``."""
    if _scheme(url) == "memory":
        return _memory(url)
    return RedisStore(url, timeout=timeout)


def open_async_store(url: str, *, timeout: float) -> AsyncStore:
    """The asyncio store for ``url``."""
    if _scheme(url) == "memory":
        return AsyncMemoryStore(_memory(url))
    return AsyncRedisStore(url, timeout=timeout)
