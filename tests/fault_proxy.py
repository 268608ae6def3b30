"""A small TCP proxy on 127.0.0.1 that tests put between a client and a server to break the
network in the ways Redis clients meet in production (Toxiproxy's vocabulary, §9.3 of the
reliability notes), without root, iptables or Docker.

Modes, switchable at any time:

- ``pass_through()``: bytes go both ways unchanged (the default);
- ``add_latency(seconds)``: every chunk coming back from the server (a reply) is delivered
  ``seconds`` late, in order; requests go up at once;
- ``blackhole()``: connections are still accepted and their bytes read, but nothing is forwarded
  either way and nothing is answered: the client sees a connect that succeeds and a read that
  never completes (like a stopped server, or a partition that drops packets). Connections
  accepted while blackholed stay blackholed for their whole life;
- ``refuse()``: the listener is closed and every open connection is aborted (RST): new connects
  are refused, like a dead server. Any other mode listens again on the same port.

And one action: ``reset_connections()`` aborts (RST) every open connection and keeps the mode
and the listener, like a network blip, a NAT or load balancer dropping its state, or a server
closing its clients: a request in flight fails, a new connection works.

The proxy is an asyncio server in a child process of its own (``python tests/fault_proxy.py``),
driven by one-line commands on its stdin. In a thread of the test process it would compete for
the GIL with the code under test: with a test spinning on decisions, each of the proxy's hops
waited for the GIL (up to the 5 ms switch interval), which added tens of milliseconds to a
round trip and made healthy probes time out. A separate process behaves like the network.

``received`` (bytes read from clients), ``forwarded`` (bytes sent upstream) and ``accepted``
(connections) let a test wait for "the request has left the client" without sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import threading
from typing import Literal

__all__ = ["FaultProxy", "Mode"]

Mode = Literal["pass", "latency", "blackhole", "refuse"]
_CHUNK = 65536
_CONTROL_TIMEOUT_S = 5.0


# --- the test's side --------------------------------------------------------------------------


class FaultProxy:
    """``127.0.0.1:<port>`` forwarding to ``upstream_host:upstream_port`` (see the module doc)."""

    def __init__(self, upstream_port: int, *, upstream_host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self.mode: Mode = "pass"
        self.latency = 0.0
        self._process = subprocess.Popen(
            [sys.executable, "-u", __file__, upstream_host, str(upstream_port)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        first = self._read()
        if not first.startswith("port "):
            self.close()
            raise RuntimeError(f"the fault proxy did not start: {first!r}")
        self.port = int(first.split()[1])

    def __repr__(self) -> str:
        return f"<FaultProxy 127.0.0.1:{self.port} -> {self.upstream[0]}:{self.upstream[1]} mode={self.mode}>"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def pass_through(self) -> None:
        self._command("pass")
        self.mode, self.latency = "pass", 0.0

    def add_latency(self, seconds: float) -> None:
        self._command(f"latency {seconds!r}")
        self.mode, self.latency = "latency", seconds

    def blackhole(self) -> None:
        self._command("blackhole")
        self.mode = "blackhole"

    def refuse(self) -> None:
        self._command("refuse")
        self.mode = "refuse"

    def reset_connections(self) -> None:
        self._command("reset")

    @property
    def received(self) -> int:
        return self._stats()[0]

    @property
    def forwarded(self) -> int:
        return self._stats()[1]

    @property
    def accepted(self) -> int:
        return self._stats()[2]

    def close(self) -> None:
        if self._process.poll() is None:
            with contextlib.suppress(OSError, RuntimeError):
                self._command("quit")
            try:
                self._process.wait(timeout=_CONTROL_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        for stream in (self._process.stdin, self._process.stdout):
            if stream is not None:
                stream.close()

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _stats(self) -> tuple[int, int, int]:
        received, forwarded, accepted = (int(n) for n in self._command("stats").split())
        return received, forwarded, accepted

    def _command(self, line: str) -> str:
        assert self._process.stdin is not None
        self._process.stdin.write(line + "\n")
        self._process.stdin.flush()
        answer = self._read()
        if not answer.startswith("ok"):
            raise RuntimeError(f"the fault proxy answered {answer!r} to {line!r}")
        return answer[2:].strip()

    def _read(self) -> str:
        assert self._process.stdout is not None
        line = self._process.stdout.readline()
        if not line:
            raise RuntimeError(f"the fault proxy exited (status {self._process.poll()})")
        return line.strip()


# --- the child process ------------------------------------------------------------------------


class _Link:
    """One client connection and, unless it was born blackholed, its upstream connection."""

    def __init__(self, client: asyncio.StreamWriter, upstream: asyncio.StreamWriter | None) -> None:
        self.client = client
        self.upstream = upstream
        self.tasks: list[asyncio.Future[None]] = []

    def abort(self) -> None:
        for writer in (self.client, self.upstream):
            if writer is not None:
                writer.transport.abort()
        for task in self.tasks:
            task.cancel()


class _Proxy:
    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.port = 0
        self.mode: Mode = "pass"
        self.latency = 0.0
        self.received = 0
        self.forwarded = 0
        self.accepted = 0
        self._links: set[_Link] = set()
        self._server: asyncio.Server | None = None

    async def set(self, mode: Mode, latency: float) -> None:
        self.mode, self.latency = mode, latency
        if mode != "refuse":
            if self._server is None:
                await self.listen()
            return
        server, self._server = self._server, None
        if server is not None:
            server.close()
        links, self._links = list(self._links), set()
        for link in links:
            link.abort()
        if server is not None:
            await server.wait_closed()
        others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        if others:
            await asyncio.wait(others, timeout=_CONTROL_TIMEOUT_S)

    async def reset(self) -> None:
        links, self._links = list(self._links), set()
        for link in links:
            link.abort()

    async def listen(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self.mode == "blackhole":
            link = _Link(client_writer, None)
            self._links.add(link)
            try:
                while data := await client_reader.read(_CHUNK):
                    self.received += len(data)
            except OSError:
                pass
            finally:
                self._finish(link)
            return
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            client_writer.transport.abort()  # nothing upstream: the client sees a reset
            return
        link = _Link(client_writer, upstream_writer)
        self._links.add(link)
        replies: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()
        link.tasks = [
            asyncio.ensure_future(self._requests(link, client_reader, upstream_writer)),
            asyncio.ensure_future(self._replies(upstream_reader, replies)),
            asyncio.ensure_future(self._deliver(link, replies, client_writer)),
        ]
        await asyncio.gather(*link.tasks, return_exceptions=True)
        self._finish(link)

    async def _requests(self, link: _Link, reader: asyncio.StreamReader, upstream: asyncio.StreamWriter) -> None:
        """Client → server: forwarded at once, or read and dropped while blackholed."""
        try:
            while data := await reader.read(_CHUNK):
                self.received += len(data)
                if self.mode != "blackhole":
                    upstream.write(data)
                    self.forwarded += len(data)
                    await upstream.drain()
        except OSError:
            pass
        finally:
            link.abort()

    async def _replies(self, reader: asyncio.StreamReader, replies: asyncio.Queue[tuple[float, bytes] | None]) -> None:
        """Server → client: each chunk stamped with the time it may be delivered."""
        loop = asyncio.get_running_loop()
        try:
            while data := await reader.read(_CHUNK):
                replies.put_nowait((loop.time() + self.latency, data))
        except OSError:
            pass
        finally:
            replies.put_nowait(None)

    async def _deliver(
        self, link: _Link, replies: asyncio.Queue[tuple[float, bytes] | None], client: asyncio.StreamWriter
    ) -> None:
        loop = asyncio.get_running_loop()
        try:
            while (reply := await replies.get()) is not None:
                due, data = reply
                if due > loop.time():
                    await asyncio.sleep(due - loop.time())
                if self.mode != "blackhole":  # a blackhole swallows replies not yet delivered
                    client.write(data)
                    await client.drain()
        except OSError:
            pass
        finally:
            link.abort()

    def _finish(self, link: _Link) -> None:
        self._links.discard(link)
        for writer in (link.client, link.upstream):
            if writer is not None:
                with contextlib.suppress(Exception):
                    writer.close()


def _main(upstream_host: str, upstream_port: int) -> None:
    loop = asyncio.new_event_loop()
    proxy = _Proxy((upstream_host, upstream_port))
    loop.run_until_complete(proxy.listen())
    print(f"port {proxy.port}", flush=True)

    def control() -> None:
        """Commands from the test, one per line; each answered "ok…" once applied."""
        for line in sys.stdin:
            command, *args = line.split()
            if command == "stats":
                print(f"ok {proxy.received} {proxy.forwarded} {proxy.accepted}", flush=True)
                continue
            if command == "reset":
                asyncio.run_coroutine_threadsafe(proxy.reset(), loop).result(timeout=_CONTROL_TIMEOUT_S)
                print("ok", flush=True)
                continue
            mode: Mode = "refuse" if command == "quit" else command  # type: ignore[assignment]
            latency = float(args[0]) if args else 0.0
            asyncio.run_coroutine_threadsafe(proxy.set(mode, latency), loop).result(timeout=_CONTROL_TIMEOUT_S)
            print("ok", flush=True)
            if command == "quit":
                break
        loop.call_soon_threadsafe(loop.stop)

    threading.Thread(target=control, name="control", daemon=True).start()
    loop.run_forever()
    loop.close()


if __name__ == "__main__":
    _main(sys.argv[1], int(sys.argv[2]))
