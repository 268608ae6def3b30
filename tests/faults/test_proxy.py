"""The fault proxy itself: each mode produces the symptom a client of the real thing would see.

Against a plain echo server (raw sockets: what the bytes do) and against a real redis-server
(what redis-py reports: a slow reply, a ``TimeoutError``, a ``ConnectionError``).
"""

from __future__ import annotations

import contextlib
import socket
import socketserver
import threading
import time
from collections.abc import Iterator

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.fault_proxy import FaultProxy
from tests.redis_server import RedisServer
from tests.waiting import wait_until

pytestmark = pytest.mark.faults

READ_TIMEOUT_S = 0.3


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        server: EchoServer = self.server  # type: ignore[assignment]
        try:
            while data := self.request.recv(4096):
                server.received += len(data)
                self.request.sendall(data)
        except OSError:
            pass


class EchoServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Echo)
        self.received = 0
        self.port: int = self.server_address[1]


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    server = EchoServer()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.fixture
def proxy(echo: EchoServer) -> Iterator[FaultProxy]:
    with FaultProxy(echo.port) as fault_proxy:
        yield fault_proxy


def _connect(proxy: FaultProxy) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=READ_TIMEOUT_S)
    sock.settimeout(READ_TIMEOUT_S)
    return sock


def _round_trip(sock: socket.socket, payload: bytes) -> tuple[bytes, float]:
    """Send ``payload``, read it all back; returns the reply and the seconds it took."""
    start = time.perf_counter()
    sock.sendall(payload)
    reply = b""
    while len(reply) < len(payload):
        chunk = sock.recv(4096)
        if not chunk:
            break
        reply += chunk
    return reply, time.perf_counter() - start


def test_pass_through_forwards_both_ways(proxy, echo):
    with _connect(proxy) as sock:
        reply, took = _round_trip(sock, b"hello\r\n")
    assert reply == b"hello\r\n"
    assert took < READ_TIMEOUT_S
    assert echo.received == proxy.received == proxy.forwarded == 7


def test_latency_delays_each_reply_not_the_request(proxy, echo):
    proxy.add_latency(0.15)
    with _connect(proxy) as sock:
        sock.settimeout(2.0)
        sent = time.perf_counter()
        sock.sendall(b"one")
        wait_until(lambda: echo.received == 3, timeout=2, what="the request to reach the server")
        reached = time.perf_counter() - sent
        assert sock.recv(16) == b"one"
        replied = time.perf_counter() - sent
        reply, second = _round_trip(sock, b"two")
    assert reply == b"two"
    assert 0.15 <= replied < 2.0
    assert reached < replied - 0.1  # the request went up at once; only the reply waited
    assert 0.15 <= second < 2.0


def test_blackhole_accepts_and_reads_but_never_answers(proxy, echo):
    with _connect(proxy) as before:  # connected while passing
        assert _round_trip(before, b"a")[0] == b"a"
        proxy.blackhole()
        before.sendall(b"lost")
        with pytest.raises(TimeoutError):
            before.recv(16)
        with _connect(proxy) as during:  # the connect itself succeeds
            during.sendall(b"also lost")
            with pytest.raises(TimeoutError):
                during.recv(16)
        assert proxy.received == 1 + 4 + 9  # read...
        assert echo.received == 1  # ...and never forwarded
        proxy.pass_through()
        assert _round_trip(before, b"back")[0] == b"back"  # the old connection passes again


def test_refuse_closes_the_listener_and_resets_open_connections(proxy):
    with _connect(proxy) as open_before:
        assert _round_trip(open_before, b"x")[0] == b"x"
        proxy.refuse()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", proxy.port), timeout=READ_TIMEOUT_S)
        with contextlib.suppress(ConnectionResetError):  # a reset, or...
            assert open_before.recv(16) == b""  # ...EOF, depending on what reached the socket first
    proxy.pass_through()  # listens again, on the same port
    with _connect(proxy) as sock:
        assert _round_trip(sock, b"again")[0] == b"again"


def test_reset_connections_aborts_open_connections_and_keeps_listening(proxy):
    with _connect(proxy) as before:
        assert _round_trip(before, b"x")[0] == b"x"
        proxy.reset_connections()
        with contextlib.suppress(ConnectionResetError):
            assert before.recv(16) == b""
    with _connect(proxy) as after:
        assert _round_trip(after, b"y")[0] == b"y"


@pytest.mark.redis
def test_redis_client_symptoms(own_redis: RedisServer):
    """What redis-py sees through each mode, with a 100 ms socket timeout and no retries."""
    with FaultProxy(own_redis.port) as proxy:
        client = redis.Redis(
            port=proxy.port, socket_timeout=0.1, socket_connect_timeout=0.1, retry=Retry(NoBackoff(), 0)
        )
        try:
            assert client.ping() is True

            proxy.add_latency(0.04)
            start = time.perf_counter()
            assert client.ping() is True
            assert time.perf_counter() - start >= 0.04

            proxy.blackhole()
            start = time.perf_counter()
            with pytest.raises(redis.TimeoutError):
                client.ping()
            assert 0.1 <= time.perf_counter() - start < 0.5

            proxy.pass_through()
            assert client.ping() is True
            proxy.reset_connections()
            assert client.ping() is True  # an idle connection reset: the pool notices and reconnects

            proxy.refuse()
            with pytest.raises(redis.ConnectionError, match="refused"):
                client.ping()

            proxy.pass_through()
            assert client.ping() is True
        finally:
            client.close()
