"""`sluicegate serve` under load on this machine, as one process and as `--workers 2`: HTTP
`/v1/check` and `/v1/auth` driven by wrk, gRPC `ShouldRateLimit` driven by h2load (Envoy's
call, a pre-encoded message), and, as the gRPC floors, an empty `grpc.aio` servicer driven the
same way, alone and awaiting one Redis PING per call. The load generators run on the same 2
cores as the service and Redis. After each run the service's own /metrics must show zero
degraded decisions and zero store errors, or the row says how many there were.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import httpx

from sluicegate.service.proto.envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc

Row = dict[str, Any]

#: Open connections (HTTP) and streams in flight (gRPC): as many requests outstanding as the
#: library workloads' 64 asyncio tasks.
CONNECTIONS = 64
GRPC_CONNECTIONS, GRPC_STREAMS = 4, 16
#: ``sluicegate serve --workers``: one per core of this machine.
WORKERS = 2
GRPC_PATH = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit"
CONFIG = """\
domain: bench
sluicegate:
  algorithm: gcra
descriptors:
  - key: user
    rate_limit: {unit: hour, requests_per_unit: 1000000000}
  - key: remote_address
    rate_limit: {unit: hour, requests_per_unit: 1000000000}
"""
# wrk scripts: a different key per request, so every decision is its own round trip's work.
CHECK_LUA = """\
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local n = 0
request = function()
  n = n + 1
  return wrk.format(nil, "/v1/check", nil, '{"domain": "bench", "descriptor": {"user": "u' .. (n % 100000) .. '"}}')
end
"""
AUTH_LUA = """\
local n = 0
request = function()
  n = n + 1
  local address = "10." .. (n % 256) .. "." .. (math.floor(n / 256) % 256) .. ".1"
  return wrk.format("GET", "/v1/auth", {["X-Forwarded-For"] = address})
end
"""
TOOLS = {"wrk": "wrk", "h2load": "nghttp2-client"}


def missing_tools() -> list[str]:
    """The Debian packages of the load generators that are not on the PATH."""
    return [package for tool, package in TOOLS.items() if shutil.which(tool) is None]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for_ports(ports: list[int], process: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 30
    waiting = list(ports)
    while waiting:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not listen on port(s) {waiting} within 30 s")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", waiting[0])) == 0:
                waiting.pop(0)
                continue
        time.sleep(0.05)


@contextmanager
def _process(command: list[str], env: dict[str, str], ports: list[int], what: str) -> Iterator[None]:
    """Run ``command`` until the block ends, once it listens on every one of ``ports``."""
    process = subprocess.Popen(command, env={**os.environ, **env}, stdout=subprocess.DEVNULL)
    try:
        _wait_for_ports(ports, process, what)
        yield
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _grpc_body() -> bytes:
    """One length-prefixed RateLimitRequest: domain bench, descriptor (user, grpc), as Envoy sends."""
    request = rls_pb2.RateLimitRequest(domain="bench")
    request.descriptors.add().entries.add(key="user", value="grpc")
    message = request.SerializeToString()
    return b"\x00" + struct.pack(">I", len(message)) + message


def _check_answers(http_port: int, grpc_port: int, body: bytes) -> None:
    """One call of each kind answers OK before the load: h2load counts a gRPC error as a 200."""
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        stub = rls_pb2_grpc.RateLimitServiceStub(channel)
        reply = stub.ShouldRateLimit(rls_pb2.RateLimitRequest.FromString(body[5:]), timeout=10)
    assert reply.overall_code == rls_pb2.RateLimitResponse.OK, reply
    check = httpx.post(f"http://127.0.0.1:{http_port}/v1/check", json={"domain": "bench", "descriptor": {"user": "x"}})
    auth = httpx.get(f"http://127.0.0.1:{http_port}/v1/auth", headers={"X-Forwarded-For": "10.0.0.1"})
    assert check.status_code == auth.status_code == 200, (check.text, auth.text)


_WRK_UNITS = {"us": 1.0, "ms": 1e3, "s": 1e6}


def _wrk(url: str, script: Path, seconds: float) -> tuple[float, float, float, int]:
    """decisions/s, p50 and p99 (µs), and the count of answers that were not 2xx."""
    out = subprocess.run(
        ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{seconds:g}s", "--latency", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
        timeout=seconds + 60,
    ).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    quantiles = {q: float(v) * _WRK_UNITS[u] for q, v, u in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)$", out, re.M)}
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sockets = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    failed = (int(errors.group(1)) if errors else 0) + (sum(map(int, sockets.groups())) if sockets else 0)
    return rate, quantiles["50"], quantiles["99"], failed


def _h2load(port: int, body: Path, seconds: float) -> tuple[float, float, float, int]:
    """The same as ``_wrk`` for gRPC, from h2load's per-request log."""
    with tempfile.TemporaryDirectory() as workdir:
        log = Path(workdir) / "requests.log"
        out = subprocess.run(
            [
                "h2load",
                f"-D{seconds:g}",
                f"-c{GRPC_CONNECTIONS}",
                f"-m{GRPC_STREAMS}",
                "-d",
                str(body),
                "-H",
                "content-type: application/grpc",
                "-H",
                "te: trailers",
                f"--log-file={log}",
                f"http://127.0.0.1:{port}{GRPC_PATH}",
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=seconds + 60,
        ).stdout
        durations = sorted(int(line.split("\t")[2]) for line in log.read_text().splitlines())
    rate = float(re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out).group(1))
    done = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed, (\d+) errored", out)
    failed = int(done.group(2)) + int(done.group(3)) if done else len(durations)
    return rate, float(durations[len(durations) // 2]), float(durations[int(len(durations) * 0.99)]), failed


def _degraded(http_port: int) -> int:
    """Degraded decisions plus store errors so far, from the service's /metrics."""
    text = httpx.get(f"http://127.0.0.1:{http_port}/metrics", timeout=10).text
    degraded = re.findall(r'^sluicegate_decisions_total\{degraded="true"[^}]*\} ([\d.e+]+)$', text, re.M)
    errors = re.findall(r"^sluicegate_store_errors_total\{[^}]*\} ([\d.e+]+)$", text, re.M)
    return int(sum(float(v) for v in degraded + errors))


def _row(name: str, runs: list[tuple[float, float, float, int]], degraded: int | None) -> Row:
    rates = [run[0] for run in runs]
    row = {
        "library": name,
        "rate_min": min(rates),
        "rate_median": statistics.median(rates),
        "rate_max": max(rates),
        "p50_us": statistics.median(run[1] for run in runs),
        "p99_us": max(run[2] for run in runs),
        "failed": sum(run[3] for run in runs),
        "degraded": degraded,
    }
    print(
        f"  {name:45} {row['rate_median']:>9,.0f}/s p99 {row['p99_us'] / 1000:6.2f} ms"
        f" failed {row['failed']} degraded {degraded}",
        flush=True,
    )
    return row


def w_service(redis_url: str, seconds: float, reps: int) -> list[Row]:
    """The service (uvloop when installed) deciding against ``redis_url``, as one process and as
    ``WORKERS`` workers, and the gRPC floors."""
    with tempfile.TemporaryDirectory() as workdir:
        work = Path(workdir)
        (work / "bench.yaml").write_text(CONFIG)
        (work / "check.lua").write_text(CHECK_LUA)
        (work / "auth.lua").write_text(AUTH_LUA)
        (work / "grpc.bin").write_bytes(_grpc_body())
        rows = []
        for workers in (1, WORKERS):
            rows += _serve_rows(redis_url, work, seconds, reps, workers)
        floor_port = _free_port()
        floors = [
            ("gRPC floor (empty grpc.aio servicer)", []),
            ("gRPC floor + one awaited Redis PING per call", [redis_url]),
        ]
        for name, extra in floors:
            floor = [sys.executable, "-m", "bench.grpc_floor", str(floor_port), *extra]
            with _process(floor, {}, [floor_port], name):
                _h2load(floor_port, work / "grpc.bin", seconds)  # warm-up
                runs = [_h2load(floor_port, work / "grpc.bin", seconds) for _ in range(reps)]
                rows.append(_row(name, runs, None))
    return rows


def _serve_rows(redis_url: str, work: Path, seconds: float, reps: int, workers: int) -> list[Row]:
    http_port, grpc_port = _free_port(), _free_port()
    env = {
        "SLUICEGATE_REDIS_URL": redis_url,
        "SLUICEGATE_CONFIG": str(work / "bench.yaml"),
        "SLUICEGATE_PORT": str(http_port),
        "SLUICEGATE_GRPC_PORT": str(grpc_port),
        "SLUICEGATE_AUTH_DOMAIN": "bench",
        "SLUICEGATE_WORKERS": str(workers),
        "SLUICEGATE_LOG_LEVEL": "warning",
    }
    url = f"http://127.0.0.1:{http_port}"
    serve = "sluicegate serve" if workers == 1 else f"sluicegate serve --workers {workers}"
    loads: list[tuple[str, Callable[[], tuple[float, float, float, int]]]] = [
        (f"{serve}, HTTP /v1/check", lambda: _wrk(url, work / "check.lua", seconds)),
        (f"{serve}, HTTP /v1/auth", lambda: _wrk(url, work / "auth.lua", seconds)),
        (f"{serve}, gRPC ShouldRateLimit", lambda: _h2load(grpc_port, work / "grpc.bin", seconds)),
    ]
    rows = []
    with _process([sys.executable, "-m", "sluicegate", "serve"], env, [http_port, grpc_port], serve):
        _check_answers(http_port, grpc_port, _grpc_body())
        for name, load in loads:
            load()  # warm-up: connections, script cache, first requests
            before = _degraded(http_port)
            runs = [load() for _ in range(reps)]
            rows.append(_row(name, runs, _degraded(http_port) - before))
    return rows
