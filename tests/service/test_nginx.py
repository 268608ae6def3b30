"""End to end: a real nginx with examples/nginx/nginx.conf, asking ``sluicegate serve`` through
``auth_request`` before every request to a small upstream app.

nginx missing is a failure, not a skip: scripts/test installs nginx-light.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import httpx
import pytest

from tests.redis_server import free_port
from tests.service.serve_process import Serve

EXAMPLE = Path(__file__).parents[2] / "examples" / "nginx" / "nginx.conf"
DEADLINE_S = 10.0

CONFIG = """
domain: edge
sluicegate: {algorithm: sliding-log}
descriptors:
  - key: remote_address
    rate_limit: {unit: hour, requests_per_unit: 3, name: per_client}
"""


def _nginx() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None)
    if found is None:
        pytest.fail("nginx is not installed; scripts/test installs it (Debian package nginx-light)")
    return found


class _Upstream(BaseHTTPRequestHandler):
    seen: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        _Upstream.seen.append(self.path)
        body = b"upstream ok\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def upstream() -> Iterator[int]:
    _Upstream.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield int(server.server_address[1])
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture
def sluicegate(tmp_path: Path) -> Iterator[Serve]:
    config = tmp_path / "edge.yaml"
    config.write_text(CONFIG)
    serve = Serve("--config", str(config))
    try:
        yield serve.started()
    finally:
        serve.close()


def _templated(sluicegate_port: int, upstream_port: int, listen_port: int) -> str:
    text = EXAMPLE.read_text()
    for old, new in (
        ("server 127.0.0.1:8080;", f"server 127.0.0.1:{sluicegate_port};"),
        ("server 127.0.0.1:9000;", f"server 127.0.0.1:{upstream_port};"),
        ("listen 127.0.0.1:8000;", f"listen 127.0.0.1:{listen_port};"),
    ):
        assert text.count(old) == 1, f"examples/nginx/nginx.conf no longer has {old!r} once"
        text = text.replace(old, new)
    return text


@pytest.fixture
def nginx(tmp_path: Path, sluicegate: Serve, upstream: int) -> Iterator[str]:
    prefix = tmp_path / "nginx"
    (prefix / "tmp").mkdir(parents=True)
    port = free_port()
    conf = prefix / "nginx.conf"
    conf.write_text(_templated(sluicegate.port, upstream, port))
    log = (prefix / "stderr.log").open("wb")
    process = subprocess.Popen(
        [_nginx(), "-p", f"{prefix}/", "-c", str(conf), "-g", "daemon off;"], stdout=log, stderr=log
    )
    try:
        deadline = time.monotonic() + DEADLINE_S
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    log.flush()
                    raise AssertionError(f"nginx did not start: {(prefix / 'stderr.log').read_text()}") from None
                time.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(DEADLINE_S)
        log.close()


def test_nginx_asks_sluicegate_and_answers_429_over_the_limit(nginx: str) -> None:
    with httpx.Client(base_url=nginx, timeout=5) as client:
        for remaining in (2, 1, 0):
            answer = client.get(f"/page/{remaining}?q=1")
            assert answer.status_code == 200
            assert answer.text == "upstream ok\n"
            assert answer.headers["ratelimit"] == f'"edge.per_client";r={remaining};t=3600'
            assert answer.headers["ratelimit-policy"] == '"edge.per_client";q=3;w=3600'
        denied = client.get("/page/over")
        assert denied.status_code == 429
        assert 3500 < int(denied.headers["retry-after"]) <= 3600
        assert denied.headers["ratelimit-policy"] == '"edge.per_client";q=3;w=3600'
        assert denied.headers["content-type"] == "application/problem+json"
        # A client cannot pick a fresh bucket: nginx replaces X-Forwarded-For with the address it saw.
        spoofed = client.get("/page/spoofed", headers={"X-Forwarded-For": "203.0.113.99"})
        assert spoofed.status_code == 429
    assert _Upstream.seen == ["/page/2?q=1", "/page/1?q=1", "/page/0?q=1"]  # the denied ones never reached it
