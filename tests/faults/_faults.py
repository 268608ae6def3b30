"""Ways to break a test's own redis-server, as context managers that yield the URL a limiter
should use while the fault lasts and undo it (``cont()``, ``SCRIPT KILL``, …) in a ``finally``."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.fault_proxy import FaultProxy
from tests.faults._support import dead_url, freeze
from tests.redis_server import RedisServer, free_port
from tests.waiting import wait_until

__all__ = ["FAULTS", "raw_client"]


def raw_client(server: RedisServer, *, timeout: float | None = 1.0) -> redis.Redis:
    """A control client that reports what the server says at once: no retries, no handshake."""
    return redis.Redis(
        host="127.0.0.1",
        port=server.port,
        socket_timeout=timeout,
        socket_connect_timeout=1.0,
        retry=Retry(NoBackoff(), 0),
        driver_info=None,
    )


def _error_of(server: RedisServer) -> str:
    """What a PING gets right now: "ok", or the error's class name and first word."""
    client = raw_client(server)
    try:
        client.ping()
    except redis.RedisError as exc:
        return f"{type(exc).__name__}: {str(exc).split(' ', 1)[0]}"
    finally:
        client.close()
    return "ok"


@contextlib.contextmanager
def refused(server: RedisServer) -> Iterator[str]:
    """Nothing listens: every connect is refused at once."""
    yield dead_url()


@contextlib.contextmanager
def stopped(server: RedisServer) -> Iterator[str]:
    """SIGSTOP: connects still succeed (the kernel's backlog), nothing is ever answered."""
    freeze(server)
    try:
        yield server.url
    finally:
        server.cont()


@contextlib.contextmanager
def blackholed(server: RedisServer) -> Iterator[str]:
    """The proxy accepts and reads but never forwards or answers."""
    with FaultProxy(server.port) as proxy:
        proxy.blackhole()
        yield proxy.url


@contextlib.contextmanager
def slow_replies(server: RedisServer) -> Iterator[str]:
    """Every reply 200 ms late: well past the 50 ms timeout."""
    with FaultProxy(server.port) as proxy:
        proxy.add_latency(0.2)
        yield proxy.url


@contextlib.contextmanager
def read_only(server: RedisServer) -> Iterator[str]:
    """A replica (of a master that is not there): scripts that write get READONLY."""
    with raw_client(server) as control:
        control.replicaof("127.0.0.1", free_port())
        try:
            yield server.url
        finally:
            control.replicaof("NO", "ONE")


@contextlib.contextmanager
def out_of_memory(server: RedisServer) -> Iterator[str]:
    """``maxmemory`` 1 byte with ``noeviction``: every write is refused with OOM."""
    with raw_client(server) as control:
        control.config_set("maxmemory-policy", "noeviction")
        control.config_set("maxmemory", 1)
        try:
            yield server.url
        finally:
            control.config_set("maxmemory", 0)


@contextlib.contextmanager
def busy(server: RedisServer) -> Iterator[str]:
    """Another client runs a never-ending (read-only, so killable) script; past
    ``busy-reply-threshold`` (10 ms here) every other command gets BUSY."""
    control = raw_client(server)
    control.config_set("busy-reply-threshold", 10)

    def run_forever() -> None:
        # the script ends with "Script killed by user with SCRIPT KILL"
        with raw_client(server, timeout=None) as runner, contextlib.suppress(redis.ResponseError):
            runner.eval("while true do end", 0)

    runner = threading.Thread(target=run_forever, name="busy-script", daemon=True)
    runner.start()
    try:
        wait_until(lambda: _error_of(server).endswith(": BUSY"), timeout=5, what="BUSY replies")
        yield server.url
    finally:
        wait_until(lambda: _script_kill(control), timeout=5, what="SCRIPT KILL to succeed")
        runner.join(timeout=5)
        control.close()


def _script_kill(control: redis.Redis) -> bool:
    try:
        control.script_kill()
    except redis.ResponseError as exc:  # NOTBUSY: the script has not started yet
        return not str(exc).startswith("NOTBUSY")
    return True


@contextlib.contextmanager
def loading(server: RedisServer) -> Iterator[str]:
    """The server restarts and loads its dataset slowly (``key-load-delay``), answering LOADING
    to everything meanwhile; ~1.3 s here, events processed every ~20 ms."""
    with raw_client(server) as control:
        pipe = control.pipeline(transaction=False)
        for i in range(16_000):
            pipe.set(f"filler:{i}", b"x" * 200)
        pipe.execute()
        control.save()
    server.kill()
    server.extra_args = (*server.extra_args, "--key-load-delay", "1", "--loading-process-events-interval-bytes", "1024")
    starting = threading.Thread(target=server.start, name="redis-loading", daemon=True)
    starting.start()  # returns once the dataset is loaded
    try:
        wait_until(lambda: _error_of(server) == "BusyLoadingError: Redis", timeout=5, what="LOADING replies")
        yield server.url
    finally:
        starting.join(timeout=30)


#: name -> (the fault, the StoreError kinds it may produce)
FAULTS: dict[str, tuple[Callable[[RedisServer], contextlib.AbstractContextManager[str]], set[str]]] = {
    "refused": (refused, {"connection"}),
    "sigstop": (stopped, {"timeout"}),
    "blackhole": (blackholed, {"timeout"}),
    "slow-replies": (slow_replies, {"timeout"}),
    "readonly": (read_only, {"readonly"}),
    "oom": (out_of_memory, {"oom"}),
    "busy": (busy, {"busy", "timeout"}),
    "loading": (loading, {"busy", "timeout"}),
}
