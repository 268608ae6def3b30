"""Helpers shared by the Redis integration tests: server statistics, raw state, waiting."""

from __future__ import annotations

import asyncio
from typing import Any

import redis


def command_calls(stats: dict[str, Any]) -> dict[str, int]:
    """``INFO commandstats`` (as parsed by redis-py) -> {command: calls}."""
    return {name.removeprefix("cmdstat_"): int(entry["calls"]) for name, entry in stats.items()}


def command_stat(stats: dict[str, Any], command: str, field: str = "calls") -> int:
    """One field of one command's ``INFO commandstats`` entry; 0 when the command never ran."""
    entry = stats.get(f"cmdstat_{command}")
    return 0 if entry is None else int(entry[field])


def server_time_us(client: redis.Redis) -> int:
    """The server's clock (``TIME``) in µs: the clock ``decide.lua`` reads."""
    seconds, micros = client.time()
    return int(seconds) * 1_000_000 + int(micros)


def raw_value(client: redis.Redis, key: bytes | str) -> tuple[str, Any]:
    """A key's type and full content, whatever its type."""
    kind = client.type(key)
    kind = kind.decode() if isinstance(kind, bytes) else str(kind)
    if kind == "string":
        return kind, client.get(key)
    if kind == "zset":
        return kind, client.zrange(key, 0, -1, withscores=True)
    if kind == "hash":
        return kind, client.hgetall(key)
    if kind == "none":
        return kind, None
    raise AssertionError(f"unexpected type {kind} for key {key!r}")


def all_keys(client: redis.Redis) -> list[bytes]:
    return sorted(client.scan_iter(count=1000))


def sockets_with_unread_input(port: int) -> int:
    """How many of the server's accepted connections on ``port`` hold bytes the server has not
    read yet (the kernel's receive queue, from /proc/net/tcp). While the server is frozen with
    SIGSTOP this counts the connections whose client has sent a request and waits for a reply."""
    count = 0
    with open("/proc/net/tcp", encoding="ascii") as table:
        next(table)
        for line in table:
            fields = line.split()
            local, state, queues = fields[1], fields[3], fields[4]
            local_port = int(local.rsplit(":", 1)[1], 16)
            rx_queue = int(queues.split(":")[1], 16)
            if local_port == port and state == "01" and rx_queue > 0:  # 01: ESTABLISHED
                count += 1
    return count


def awaiting(task: asyncio.Task[Any]) -> list[str]:
    """The names of the coroutines ``task`` is suspended in, outermost first."""
    names: list[str] = []
    awaitable: Any = task.get_coro()
    while awaitable is not None:
        frame = getattr(awaitable, "cr_frame", None) or getattr(awaitable, "gi_frame", None)
        if frame is not None:
            names.append(frame.f_code.co_name)
        awaitable = getattr(awaitable, "cr_await", None) or getattr(awaitable, "gi_yieldfrom", None)
    return names
