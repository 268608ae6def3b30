"""``sluicegate serve --workers N``: N processes serving the same ports.

One process decides on one core at most (its event loop is single-threaded), so on a machine
with more cores the service needs more processes. Each worker runs the whole single-process
server (``server.serve``) with its listening sockets bound with ``SO_REUSEPORT``: the kernel
spreads new connections (HTTP connections, gRPC channels) across the workers. Workers share
nothing but the store, so more than one needs Redis: over memory:// each worker would enforce
every limit on its own.

The supervisor, the process that was started:

- checks once what every worker would check (a shared store, the config), so a bad setting is
  reported once and nothing starts;
- checks that each port is free with a plain bind, then holds it with a bound (not listening)
  ``SO_REUSEPORT`` socket until it exits, without ``SO_REUSEADDR`` unless an earlier server's
  connections on the port still wait in TIME_WAIT: no other program can bind the port
  meanwhile, and a second ``sluicegate serve`` on it (with workers or not) fails instead of
  silently splitting the traffic. Port 0 is resolved here, once, so that every worker binds
  the same port;
- starts the workers (fresh interpreters: ``multiprocessing``'s spawn), each in its own process
  group so that a terminal's Ctrl-C reaches the supervisor alone, and logs ready once all
  serve. A worker that fails to start stops the others, and the supervisor exits 1;
- forwards SIGHUP (reload the config) to the workers that serve (one still starting reads the
  config as it starts) and turns SIGTERM or SIGINT into one SIGTERM per worker (drain), then
  exits once they all have: 0, or 1 when one of them failed;
- restarts a worker that exits on its own, ``RESTART_DELAY`` later, twice as long after each
  crash of a worker that had not served for ``STEADY`` seconds (up to ``MAX_RESTART_DELAY``):
  a worker that keeps failing costs a log line now and then, and the metrics files of each
  dead worker (prometheus_client keeps its counters) stop piling up;
- gives the workers a fresh ``PROMETHEUS_MULTIPROC_DIR`` (removed on exit; one already in the
  environment is not used, since it must start empty): prometheus_client then keeps each
  worker's values in files there, and /metrics, whichever worker answers it, shows them added
  up. Counters keep the counts of a worker that died; ``sluicegate_fallback_active`` is the
  largest of the live workers' values; per-process collectors (``process_*``, ``python_*``)
  are not shown.

A worker whose supervisor is killed (SIGKILL, the OOM killer) notices within a second and
drains. The local fallback's share (``fallback_share``) is split evenly among the workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Final

from prometheus_client.multiprocess import mark_process_dead

from .._errors import ConfigError
from ..stores import store_kind
from .config import RateLimitConfigError, load
from .server import WorkerRole, configure_logging, report_config_error, run_loop, serve
from .settings import Settings

__all__ = ["MAX_RESTART_DELAY", "RESTART_DELAY", "STEADY", "restart_delay", "supervise"]

log = logging.getLogger("sluicegate.serve")

#: Seconds between a worker's unexpected exit and its replacement: a worker that keeps failing
#: costs a log line a second, not a busy loop.
RESTART_DELAY: Final = 1.0
#: The longest wait before a replacement.
MAX_RESTART_DELAY: Final = 60.0
#: Seconds a worker must have served for its crash to count as a first one again.
STEADY: Final = 60.0


def restart_delay(crashes: int) -> float:
    """Seconds before replacing a worker after ``crashes`` crashes in a row (the first is 1)."""
    return min(RESTART_DELAY * 2.0 ** min(crashes - 1, 16), MAX_RESTART_DELAY)


def supervise(settings: Settings) -> int:
    """Run ``settings.workers`` workers until SIGTERM/SIGINT; the exit code."""
    held: list[socket.socket] = []
    try:
        try:
            if store_kind(settings.store_url) == "memory":
                raise ConfigError(
                    f"{settings.workers} workers need a shared store (SLUICEGATE_REDIS_URL or --redis): "
                    "over memory:// each worker would enforce every limit on its own"
                )
            if settings.config is not None:
                load(settings.config)
            settings = _hold_ports(settings, held)
        except RateLimitConfigError as exc:
            report_config_error(settings.config, exc)
            return 1
        except ConfigError as exc:
            log.error("not starting: %s", exc)
            return 1
        return _run_with_metrics_dir(settings)
    finally:
        for sock in held:
            sock.close()


def _run_with_metrics_dir(settings: Settings) -> int:
    metrics_dir = tempfile.mkdtemp(prefix="sluicegate-metrics-")
    before = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir  # read by each worker's prometheus_client
    try:
        return asyncio.run(_Supervisor(settings, metrics_dir).run())
    finally:
        if before is None:
            del os.environ["PROMETHEUS_MULTIPROC_DIR"]
        else:
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = before
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _hold_ports(settings: Settings, held: list[socket.socket]) -> Settings:
    """``settings`` with each port bound here (and so resolved when 0) for the workers to share."""
    port = _hold(settings.host, settings.port, "HTTP", held)
    metrics_port = settings.metrics_port
    if metrics_port is not None:
        metrics_port = _hold(settings.metrics_host, metrics_port, "metrics", held)
    grpc_port = settings.grpc_port
    if grpc_port is not None:
        grpc_port = _hold(settings.host, grpc_port, "gRPC", held)
    return dataclasses.replace(
        settings,
        port=port,
        metrics_port=metrics_port,
        grpc_port=grpc_port,
        fallback_share=settings.fallback_share / settings.workers,
    )


def _hold(host: str, port: int, what: str, held: list[socket.socket]) -> int:
    """Check ``host:port`` is free, then keep it bound with ``SO_REUSEPORT``; the port."""
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        for family, kind, protocol, _, address in addresses:
            # A plain bind fails on a port anyone listens on, SO_REUSEPORT users included.
            with socket.socket(family, kind, protocol) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind((address[0], port, *address[2:]))
                port = probe.getsockname()[1]  # the first address's, when port 0 asked for any
            sock = socket.socket(family, kind, protocol)
            held.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            try:  # without SO_REUSEADDR, no other program's bind can share the port
                sock.bind((address[0], port, *address[2:]))
            except OSError:  # an earlier server's connections on it wait in TIME_WAIT
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((address[0], port, *address[2:]))
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port} for {what}: {exc.strerror or exc}") from None
    return port


def _worker(settings: Settings, index: int, supervisor_pid: int, ready: Connection) -> None:
    """A worker process's main: the single-process server on the shared ports."""
    os.setpgrp()  # a terminal's Ctrl-C goes to the supervisor alone, which forwards one SIGTERM
    configure_logging(settings.log_format, settings.log_level, worker=index)

    def say_ready() -> None:
        ready.send_bytes(b"ready")
        ready.close()

    sys.exit(run_loop(serve(settings, role=WorkerRole(index, supervisor_pid, say_ready))))


@dataclass
class _Worker:
    index: int
    process: BaseProcess
    ready_pipe: Connection
    started_at: float
    ready: bool = False


class _Supervisor:
    def __init__(self, settings: Settings, metrics_dir: str) -> None:
        self.settings = settings
        self.metrics_dir = metrics_dir
        self.workers: dict[int, _Worker] = {}  # by index, 1..settings.workers
        self.stopping = False
        self.serving = False  # every worker was ready once
        self.failed = False
        self._crashes: dict[int, int] = {}  # by index: crashes in a row, each before it was steady
        self._context = multiprocessing.get_context("spawn")
        self._changed = asyncio.Event()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.stop)
        loop.add_signal_handler(signal.SIGHUP, self._reload)
        for index in range(1, self.settings.workers + 1):
            self._start(index)
        await self._until(lambda: self.stopping or all(worker.ready for worker in self.workers.values()))
        if not self.stopping:
            self.serving = True
            pids = ", ".join(str(worker.process.pid) for worker in self.workers.values())
            log.info(
                "ready: %d workers (pids %s; supervisor %d); SIGHUP reloads the config, SIGTERM drains and stops",
                len(self.workers),
                pids,
                os.getpid(),
            )
        await self._until(lambda: self.stopping and not self.workers)
        log.info("stopped%s", " (a worker failed)" if self.failed else "")
        return 1 if self.failed else 0

    async def _until(self, condition: Callable[[], bool]) -> None:
        while not condition():
            await self._changed.wait()
            self._changed.clear()

    def stop(self) -> None:
        """Drain every worker; a second request stops them at once, as it does one server."""
        self.stopping = True
        self._forward(signal.SIGTERM)
        self._changed.set()

    def _reload(self) -> None:
        """SIGHUP to every ready worker: one still starting has no handler yet (SIGHUP would end
        it) and reads the config as it starts; a draining one has none any more."""
        if not self.stopping:
            self._forward(signal.SIGHUP, ready_only=True)

    def _forward(self, signum: int, *, ready_only: bool = False) -> None:
        for worker in self.workers.values():
            if worker.ready or not ready_only:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.process.pid or 0, signum)

    def _start(self, index: int) -> None:
        if self.stopping:
            return
        loop = asyncio.get_running_loop()
        receive, send = self._context.Pipe(duplex=False)
        process = self._context.Process(
            target=_worker, args=(self.settings, index, os.getpid(), send), name=f"sluicegate-worker-{index}"
        )
        try:
            process.start()
        except OSError as exc:  # out of processes, memory or file descriptors
            receive.close()
            log.error("cannot start worker %d: %s", index, exc)
            if self.serving:
                loop.call_later(RESTART_DELAY, self._start, index)
            else:
                self.failed = True
                self.stop()
            return
        finally:
            send.close()
        worker = self.workers[index] = _Worker(index, process, receive, loop.time())
        loop.add_reader(receive.fileno(), self._on_ready, worker)
        loop.add_reader(process.sentinel, self._on_exit, worker)

    def _on_ready(self, worker: _Worker) -> None:
        asyncio.get_running_loop().remove_reader(worker.ready_pipe.fileno())
        with contextlib.suppress(EOFError, OSError):  # EOF: it exited before it was ready
            worker.ready = worker.ready_pipe.recv_bytes() == b"ready"
        worker.ready_pipe.close()
        self._changed.set()

    def _on_exit(self, worker: _Worker) -> None:
        loop = asyncio.get_running_loop()
        loop.remove_reader(worker.process.sentinel)
        if not worker.ready_pipe.closed:
            loop.remove_reader(worker.ready_pipe.fileno())
            worker.ready_pipe.close()
        worker.process.join()
        code, pid = worker.process.exitcode, worker.process.pid
        worker.process.close()
        del self.workers[worker.index]
        if pid is not None:
            mark_process_dead(pid, self.metrics_dir)  # type: ignore[no-untyped-call]
        self._changed.set()
        if self.stopping:  # one stopped while it started (Ctrl-C reached it too) did not fail
            self.failed |= worker.ready and code is not None and code > 0
        elif not self.serving:
            log.error("worker %d (pid %s) failed to start (exit code %s): stopping", worker.index, pid, code)
            self.failed = True
            self.stop()
        else:
            steady = loop.time() - worker.started_at >= STEADY
            crashes = self._crashes[worker.index] = 1 if steady else self._crashes.get(worker.index, 0) + 1
            delay = restart_delay(crashes)
            log.error("worker %d (pid %s) exited (code %s); starting another in %gs", worker.index, pid, code, delay)
            loop.call_later(delay, self._start, worker.index)
