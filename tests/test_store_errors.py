"""Redis errors become StoreError with a fixed, metric-safe kind (one translation seam)."""

from __future__ import annotations

import pytest
from redis import exceptions

from sluicegate.stores.redis import store_error


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (exceptions.TimeoutError("Timeout reading from socket"), "timeout"),
        (exceptions.ConnectionError("Connection refused"), "connection"),
        (exceptions.BusyLoadingError("Redis is loading the dataset in memory"), "busy"),
        (exceptions.ResponseError("BUSY Redis is busy running a script"), "busy"),
        (exceptions.ReadOnlyError("You can't write against a read only replica."), "readonly"),
        (exceptions.OutOfMemoryError("command not allowed when used memory > 'maxmemory'"), "oom"),
        (exceptions.NoScriptError("No matching script"), "noscript"),
        (exceptions.ResponseError("CLUSTERDOWN The cluster is down"), "cluster"),
        (exceptions.ResponseError("TRYAGAIN Multiple keys request during rehashing"), "cluster"),
        (exceptions.MaxConnectionsError("Too many connections"), "pool"),
        (exceptions.ResponseError("ERR something else"), "other"),
    ],
)
def test_each_redis_error_maps_to_one_kind(error: exceptions.RedisError, kind: str) -> None:
    translated = store_error(error)
    assert translated.kind == kind
    assert kind in str(translated)


def test_messages_are_bounded() -> None:
    assert len(str(store_error(exceptions.ResponseError("ERR " + "x" * 10_000)))) < 300


def test_only_a_failed_connect_counts_as_refused() -> None:
    refused = exceptions.ConnectionError("Error 111 connecting to 127.0.0.1:1. Connection refused.")
    assert store_error(refused).refused
    assert not store_error(exceptions.ConnectionError("Connection closed by server.")).refused
    assert not store_error(exceptions.TimeoutError("Timeout connecting to server")).refused
