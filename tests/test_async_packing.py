"""AsyncRedisStore's connections pack commands with hiredis: the same bytes as redis-py's own
pure-Python packing, for every kind of connection a URL can give."""

from __future__ import annotations

from typing import Any

import pytest

from sluicegate.stores.redis import AsyncRedisStore

COMMANDS = [
    ("EVALSHA", "0" * 40, 2, "sluicegate:g10/1000b10:{user:42}", "k:{é}", "", 1, "g", 10, 1_000_000, 10, 1),
    ("EVAL", "return 1", 0, 1.5, b"\x00raw", "ünïcode ✓"),
    ("DEL",),
    ("SCRIPT LOAD", "return 1"),  # one name, two words on the wire
    (b"CLIENT SETNAME", "x"),
]


@pytest.mark.parametrize("url", ["redis://127.0.0.1:1/0", "rediss://127.0.0.1:1/0", "unix:///tmp/nowhere.sock"])
async def test_hiredis_packing_sends_the_same_bytes(url: str) -> None:
    store = AsyncRedisStore(url, timeout=1.0)
    try:
        packing = store._client.connection_pool.connection_class
        assert packing.__name__.startswith("Hiredis")
        redis_py_class: Any = packing.__mro__[2]  # after the Hiredis… class itself and the packing mixin
        assert redis_py_class.__module__.startswith("redis.")
        connection = packing(**store._client.connection_pool.connection_kwargs)
        for command in COMMANDS:
            ours = b"".join(connection.pack_command(*command))
            assert ours == b"".join(redis_py_class.pack_command(connection, *command))
    finally:
        await store.aclose()
