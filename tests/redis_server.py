"""Real redis-server processes for the tests, on free loopback ports, that tests may break.

A missing ``redis-server`` binary is a test failure, never a skip: CI must install it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import redis

_START_DEADLINE_S = 10.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """One redis-server with no persistence; ``stop``/``cont``/``kill``/``restart`` break it."""

    def __init__(self, workdir: Path, *extra_args: str, tls: bool = False) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed; run scripts/test, which installs it")
        self.binary = binary
        self.workdir = workdir
        self.extra_args = extra_args
        self.tls = tls
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        # The tests' own control connection; it trusts the test server's throwaway certificate.
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5, ssl=self.tls, ssl_cert_reqs="none")

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        ports = ("--port", "0", "--tls-port", str(self.port)) if self.tls else ("--port", str(self.port))
        self.process = subprocess.Popen(
            [self.binary, *ports, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir), "--logfile", str(self.workdir / "redis.log"), *self.extra_args],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + _START_DEADLINE_S
        while True:
            try:
                with self.client() as client:
                    client.ping()
                return
            except redis.ConnectionError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server on port {self.port} did not start; see {self.workdir}") from None
                time.sleep(0.02)

    def stop(self) -> None:
        """Freeze the server (SIGSTOP): connections stay open, nothing answers. Returns once the
        kernel has stopped it (the signal is delivered asynchronously)."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)
        stat = Path(f"/proc/{self.process.pid}/stat")
        deadline = time.monotonic() + _START_DEADLINE_S
        # the state is the field after the parenthesised command name: T = stopped
        while stat.read_text().rpartition(")")[2].split()[0] != "T":
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server {self.process.pid} did not stop")
            time.sleep(0.001)

    def cont(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)

    def kill(self) -> None:
        """Kill -9 where it stands (stopped or not) and wait: the state is gone, like a crash
        without persistence. No SIGCONT first, which would let a frozen server answer."""
        if self.process is None:
            return
        self.process.kill()
        self.process.wait(timeout=10)
        self.process = None

    def restart(self) -> None:
        """Kill and start again, empty, on the same port."""
        self.kill()
        self.start()
