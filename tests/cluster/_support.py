"""Helpers for the cluster tests: user keys placed on chosen masters, raw state on the nodes."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from redis.crc import key_slot

import sluicegate
from sluicegate._keys import state_keys
from tests.redis_cluster import Cluster, wait_until
from tests.redis_server import RedisServer

PREFIX = "sluicegate"


def slot(key: str, policy: sluicegate.Policy) -> int:
    return key_slot(state_keys(PREFIX, policy, key)[0].encode())


def keys_on_masters(cluster: Cluster, policy: sluicegate.Policy, stem: str) -> list[tuple[str, RedisServer]]:
    """One user key per master (in the order of ``cluster.masters()``), with its master."""
    wanted = cluster.masters()
    table = cluster.slot_table()
    found: dict[int, str] = {}
    for n in range(10_000):
        key = f"{stem}{n}"
        owner = cluster.owner(slot(key, policy), table)
        found.setdefault(owner.port, key)
        if len(found) == len(wanted):
            return [(found[server.port], server) for server in wanted]
    raise AssertionError("could not place a key on every master")


def raw_state(server: RedisServer, key: str, policy: sluicegate.Policy) -> list[tuple[str, Any]]:
    """The type and content of each of ``key``'s state keys on ``server``."""
    result: list[tuple[str, Any]] = []
    with server.client() as client:
        for name in state_keys(PREFIX, policy, key):
            kind = client.type(name).decode()
            if kind == "string":
                result.append((kind, client.get(name).decode()))
            elif kind == "zset":
                result.append((kind, client.zrange(name, 0, -1, withscores=True)))
            elif kind == "hash":
                result.append((kind, {k.decode(): v.decode() for k, v in client.hgetall(name).items()}))
            else:
                result.append((kind, None))
    return result


def ttls_ms(server: RedisServer, key: str, policy: sluicegate.Policy) -> list[int]:
    with server.client() as client:
        return [int(client.pttl(name)) for name in state_keys(PREFIX, policy, key)]


@dataclass
class Load:
    """Decisions made in a background thread until ``stop``, each logged with the time it was asked for."""

    decide: Callable[[int], sluicegate.Decision]
    pause_s: float = 0.002
    log: list[tuple[float, int, sluicegate.Decision | BaseException]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Load:
        self._thread = threading.Thread(target=self._run, name="load", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            assert not self._thread.is_alive(), "the load thread is stuck"

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            # The time it was asked for: one answered by a server just before a fault stopped
            # it may return after the fault, and must not count as answered after it.
            asked = time.monotonic()
            try:
                result: sluicegate.Decision | BaseException = self.decide(n)
            except BaseException as exc:  # every failure is logged, and the test fails on it
                result = exc
            self.log.append((asked, n, result))
            n += 1
            self._stop.wait(self.pause_s)  # paces the load: a few hundred decisions a second

    @property
    def count(self) -> int:
        return len(self.log)

    def errors(self) -> list[BaseException]:
        return [r for _, _, r in self.log if isinstance(r, BaseException)]

    def decisions(self) -> list[tuple[float, int, sluicegate.Decision]]:
        return [(t, n, r) for t, n, r in self.log if isinstance(r, sluicegate.Decision)]


def command_calls(server: RedisServer, command: str, field_name: str = "calls") -> int:
    with server.client() as client:
        stats = client.info("commandstats")
    entry = stats.get(f"cmdstat_{command}")
    return 0 if entry is None else int(entry[field_name])


def _process_state(pid: int) -> str:
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0]


@contextmanager
def frozen(server: RedisServer) -> Iterator[None]:
    """``server`` stopped (SIGSTOP, and the kernel has stopped it) inside the block."""
    assert server.process is not None
    pid = server.process.pid
    server.stop()
    try:
        wait_until(lambda: _process_state(pid) == "T", timeout=5, what=f"redis-server {pid} to stop")
        yield
    finally:
        server.cont()
