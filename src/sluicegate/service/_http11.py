"""A small HTTP/1.1 server on asyncio and httptools, hardened for one job: answering short
decision requests from gateways on a trusted network, fast.

Why not uvicorn (or any ASGI server): an ASGI app adds a scope dict, two awaitables and a
send/receive dance per request, roughly doubling the per-request cost of a decision that is
itself ~20-50 µs, and uvicorn has no request-receipt deadline against slowloris (it only
closes idle keep-alive connections). Here the parser is httptools (llhttp, the C parser of
Node.js and uvicorn); the protocol is an ``asyncio.Protocol`` that works the same on uvloop.

What it guards against:

- header deadline: a request's URL and headers must arrive within ``header_timeout`` of its
  first byte (a new connection gets the same deadline to send anything): trickled headers
  (slowloris) lose their connection;
- body deadline: the body must arrive within ``body_timeout`` after the headers;
- sizes: the URL and the headers together at most ``max_header_bytes`` (431), at most
  ``max_headers`` fields (431), a body at most ``max_body`` bytes (413): a ``Content-Length``
  over it is refused as soon as the headers are in, a chunked body as soon as it passes the
  limit, so an oversized body is never buffered;
- keep-alive: an idle connection is closed after ``keepalive_timeout``; pipelined requests are
  answered in order, at most ``max_pipelined`` queued (reading pauses meanwhile);
- a client that stops reading its responses pauses our reading (transport flow control).

A refused request gets its status and ``Connection: close``; the connection is then closed.
Handler exceptions become a bare 500 (logged, never sent). A client that disconnects while
its request is decided does not cancel the decision (a cancelled store call can leave a Redis
connection half-read); the answer is dropped.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Final, cast

import httptools

__all__ = ["HttpServer", "Limits", "Request", "Response"]

log = logging.getLogger("sluicegate.http")

#: status, headers, body
Response = tuple[int, list[tuple[str, str]], bytes]
Handler = Callable[["Request"], Awaitable[Response]]

_REASONS: Final = {status.value: status.phrase.encode("ascii") for status in HTTPStatus}
_CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-connection bounds and deadlines (seconds, bytes)."""

    max_body: int = 64 * 1024
    max_header_bytes: int = 16 * 1024
    max_headers: int = 100
    header_timeout: float = 10.0
    body_timeout: float = 10.0
    keepalive_timeout: float = 60.0
    max_pipelined: int = 16


class Request:
    """One parsed request. ``headers`` maps lower-case names to values (repeated fields joined
    by ``", "`` in order); ``peer`` is the socket peer's address (None for a Unix socket)."""

    __slots__ = ("body", "headers", "keep_alive", "method", "path", "peer", "query")

    def __init__(
        self, method: str, path: str, query: str, headers: dict[str, str], body: bytes, peer: str | None
    ) -> None:
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.body = body
        self.peer = peer
        self.keep_alive = True

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.path[:64]!r} from {self.peer}>"


class _Refused(Exception):
    """Stop parsing: answer ``status`` and close."""

    def __init__(self, status: int) -> None:
        self.status = status


class _DateCache:
    """The ``Date`` header, formatted at most once a second."""

    __slots__ = ("_second", "_value")

    def __init__(self) -> None:
        self._second = -1
        self._value = b""

    def get(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._value = b"date: " + time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(now)).encode() + b"\r\n"
        return self._value


_DATE = _DateCache()


def render(status: int, headers: list[tuple[str, str]], body: bytes, *, close: bool) -> bytes:
    """The response bytes. Header names and values are ours (never request text), so latin-1
    encoding cannot carry a line break a client chose; a value that would is dropped anyway."""
    parts = [b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b"Unknown")), _DATE.get()]
    has_length = False
    for name, value in headers:
        if "\r" in value or "\n" in value:
            log.error("sluicegate: dropped a response header with a line break: %s", name)
            continue
        if name.lower() == "content-length":
            has_length = True
        parts.append(f"{name}: {value}\r\n".encode("latin-1", "replace"))
    if not has_length:
        parts.append(b"content-length: %d\r\n" % len(body))
    if close:
        parts.append(b"connection: close\r\n")
    parts.append(b"\r\n")
    parts.append(body)
    return b"".join(parts)


class _Connection(asyncio.Protocol):
    """One client connection: parse, queue, answer in order, enforce the deadlines."""

    __slots__ = (
        "_body",
        "_body_size",
        "_busy",
        "_closing",
        "_eof",
        "_header_bytes",
        "_headers",
        "_parser",
        "_peer",
        "_queue",
        "_reading_paused",
        "_receiving",
        "_server",
        "_transport",
        "_url",
        "_writing_paused",
        "deadline",
    )

    def __init__(self, server: HttpServer) -> None:
        self._server = server
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._peer: str | None = None
        self._url = b""
        self._headers: dict[str, str] = {}
        self._header_bytes = 0
        self._body: list[bytes] = []
        self._body_size = 0
        self._queue: collections.deque[Request] = collections.deque()
        self._busy = False
        self._closing = False
        self._eof = False
        self._receiving = False
        self.deadline = math.inf  # time.monotonic() when the connection is closed (the sweeper)
        self._reading_paused = False
        self._writing_paused = False

    # --- asyncio.Protocol -----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast("asyncio.Transport", transport)  # uvloop's is not a subclass
        peer = transport.get_extra_info("peername")
        self._peer = peer[0] if isinstance(peer, tuple) else None
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):  # answers are small: send them now, not after 40 ms
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._server.connections.add(self)
        self._arm(self._server.limits.header_timeout)  # say something soon, or go

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        self._disarm()
        self._server.connections.discard(self)
        self._server.connection_closed()

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        try:
            self._parser.feed_data(data)
        except _Refused as refused:
            self._refuse(refused.status)
        except httptools.HttpParserUpgrade:
            self._refuse(400)
        except httptools.HttpParserError as exc:
            cause = exc.__context__
            self._refuse(cause.status if isinstance(cause, _Refused) else 400)

    def eof_received(self) -> bool | None:
        """The client half-closed: answer what it already sent, then close."""
        self._eof = True
        return True if self._busy or self._queue else None

    def pause_writing(self) -> None:
        self._writing_paused = True
        self._pause_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        if len(self._queue) < self._server.limits.max_pipelined:
            self._resume_reading()

    # --- httptools callbacks ----------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._receiving = True
        self._url = b""
        self._headers = {}
        self._header_bytes = 0
        self._body = []
        self._body_size = 0
        if not self._busy:  # idle keep-alive timer -> header deadline, from this first byte
            self._arm(self._server.limits.header_timeout)

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._header_bytes += len(url)
        if self._header_bytes > self._server.limits.max_header_bytes:
            raise _Refused(414 if len(self._url) > self._server.limits.max_header_bytes // 2 else 431)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value) + 4
        limits = self._server.limits
        if self._header_bytes > limits.max_header_bytes or len(self._headers) >= limits.max_headers:
            raise _Refused(431)
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        found = self._headers.get(key)
        self._headers[key] = text if found is None else f"{found}, {text}"

    def on_headers_complete(self) -> None:
        limits = self._server.limits
        length = self._headers.get("content-length")
        # llhttp has validated Content-Length (digits, one value); only its size is ours to judge.
        if length is not None and (not length.isdigit() or int(length) > limits.max_body):
            raise _Refused(413)
        if not self._busy:
            self._arm(limits.body_timeout)
        if self._headers.get("expect", "").lower() == "100-continue" and self._transport is not None:
            self._transport.write(_CONTINUE)

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        if self._body_size > self._server.limits.max_body:
            raise _Refused(413)  # a chunked body that grew past the limit
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._receiving = False
        raw = self._url
        path, _, query = raw.partition(b"?")
        method = self._parser.get_method().decode("ascii", "replace")
        request = Request(
            method,
            path.decode("latin-1"),
            query.decode("latin-1"),
            self._headers,
            b"".join(self._body),
            self._peer,
        )
        request.keep_alive = self._parser.should_keep_alive()
        self._queue.append(request)
        if len(self._queue) >= self._server.limits.max_pipelined:
            if len(self._queue) > 8 * self._server.limits.max_pipelined:
                raise _Refused(503)  # one read held this many requests: not a gateway, a flood
            self._pause_reading()
        if not self._busy:
            self._disarm()
            self._busy = True
            self._server.track(asyncio.ensure_future(self._answer()))

    # --- answering --------------------------------------------------------------------------------

    async def _answer(self) -> None:
        """Answer queued requests in order, then go back to waiting (keep-alive timer)."""
        try:
            while self._queue:
                request = self._queue.popleft()
                try:
                    status, headers, body = await self._server.handler(request)
                except Exception:
                    log.exception("sluicegate: unhandled error answering %r", request)
                    status, headers, body = 500, [("content-type", "text/plain")], b"Internal Server Error\n"
                if self._closing or self._transport is None:
                    return  # the client left; the decision stands, the answer is dropped
                close = not request.keep_alive or self._server.draining or (self._eof and not self._queue)
                if request.method == "HEAD":
                    if not any(name.lower() == "content-length" for name, _ in headers):
                        headers = [*headers, ("content-length", str(len(body)))]
                    body = b""
                self._transport.write(render(status, headers, body, close=close))
                if close:
                    self._close()
                    return
                if self._reading_paused and not self._writing_paused:
                    self._resume_reading()
        finally:
            self._busy = False
        if not self._closing:
            limits = self._server.limits
            self._arm(limits.header_timeout if self._receiving else limits.keepalive_timeout)

    def _refuse(self, status: int) -> None:
        """Answer a request we will not read to the end, then close."""
        if self._transport is not None and not self._closing:
            body = f"{status} {HTTPStatus(status).phrase}\n".encode("ascii")
            self._transport.write(render(status, [("content-type", "text/plain")], body, close=True))
        self._close()

    # --- deadlines and flow ------------------------------------------------------------------------

    # A deadline is a float the server's sweeper compares, not a timer per connection: uvloop's
    # call_later costs a libuv handle each, and arming three per request cut throughput by 70%.
    def _arm(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds

    def _disarm(self) -> None:
        self.deadline = math.inf

    def expired(self) -> None:
        """The sweeper found the deadline passed: close, unless a request is being answered."""
        self.deadline = math.inf
        if not self._busy:
            self._close()

    def _pause_reading(self) -> None:
        if not self._reading_paused and self._transport is not None and not self._closing:
            self._reading_paused = True
            self._transport.pause_reading()

    def _resume_reading(self) -> None:
        if self._reading_paused and self._transport is not None and not self._closing:
            self._reading_paused = False
            self._transport.resume_reading()

    def _close(self) -> None:
        self._closing = True
        self._disarm()
        if self._transport is not None:
            self._transport.close()

    def close_if_idle(self) -> bool:
        """For draining: close now when no request is being answered or received."""
        if self._busy or self._receiving:
            return False  # its answer closes the connection (``draining``)
        self._close()
        return True


class HttpServer:
    """Serves ``handler`` on one listening socket; ``drain`` for a graceful stop."""

    def __init__(self, handler: Handler, limits: Limits | None = None) -> None:
        self.handler = handler
        self.limits = limits or Limits()
        self.connections: set[_Connection] = set()
        self.draining = False
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Future[None]] = set()
        self._idle = asyncio.Event()
        self._sweeper: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<HttpServer {self.address} connections={len(self.connections)}>"

    async def start(self, host: str, port: int, *, backlog: int = 1024, reuse_port: bool = False) -> None:
        """Listen on ``host:port``; ``reuse_port``: share the port with the other workers."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Connection(self), host, port, backlog=backlog, reuse_address=True, reuse_port=reuse_port
        )
        self._sweeper = loop.create_task(self._sweep())

    @property
    def address(self) -> tuple[str, int] | None:
        """The bound ``(host, port)`` (the real port when started on port 0)."""
        if self._server is None or not self._server.sockets:
            return None
        name = self._server.sockets[0].getsockname()
        return (str(name[0]), int(name[1]))

    async def _sweep(self) -> None:
        """Close connections whose deadline passed, a few times per shortest timeout."""
        limits = self.limits
        tick = min(max(min(limits.header_timeout, limits.body_timeout, limits.keepalive_timeout) / 4, 0.02), 1.0)
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            for connection in [c for c in self.connections if c.deadline <= now]:
                connection.expired()

    def track(self, task: asyncio.Future[None]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def connection_closed(self) -> None:
        if self.draining and not self.connections:
            self._idle.set()

    def stop_accepting(self) -> None:
        """Close the listening socket; answers from now on close their connections."""
        self.draining = True
        if self._server is not None:
            self._server.close()

    async def drain(self, timeout: float) -> bool:
        """Stop accepting, let in-flight requests finish (their answers close the connection),
        close idle connections, and wait up to ``timeout`` seconds. True when all finished."""
        self.stop_accepting()
        for connection in list(self.connections):
            connection.close_if_idle()
        if self.connections:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), timeout)
        clean = not self.connections and not self._tasks
        for connection in list(self.connections):
            connection._close()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=max(timeout, 0.1))
        if self._sweeper is not None:
            self._sweeper.cancel()
        return clean
