"""``sluicegate serve --workers N`` as real processes: the supervisor, its workers on shared ports,
limits and /metrics across workers, signals, a dying worker, a dying supervisor."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import time
from pathlib import Path
from types import SimpleNamespace

import grpc
import httpx
import pytest

from sluicegate import ConfigError
from sluicegate.service.proto.envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from sluicegate.service.settings import Settings
from sluicegate.service.workers import _hold_ports, _Supervisor, _Worker, restart_delay
from tests.service.serve_process import DEADLINE_S, Serve

LIMIT = 10
CONFIG = f"""
domain: api
sluicegate: {{algorithm: sliding-log}}
descriptors:
  - key: user
    rate_limit: {{unit: hour, requests_per_unit: {LIMIT}, name: per_user}}
"""


def _start(tmp_path: Path, redis_url: str, *args: str, workers: int = 2) -> tuple[Serve, list[int]]:
    """A supervisor of ``workers`` workers, ready; and the workers' pids."""
    config = tmp_path / "config.yaml"
    if not config.exists():
        config.write_text(CONFIG)
    serve = Serve(
        "--workers", str(workers), "--redis", redis_url, "--config", str(config), *args,
        env={"SLUICEGATE_RELOAD_INTERVAL": "0"},
    )  # fmt: skip
    ready = serve.wait_for(rf"ready: {workers} workers \(pids ([\d, ]+); supervisor (\d+)\)")
    serve.port = int(serve.wait_for(r"\(worker 1\): serving HTTP on http://127\.0\.0\.1:(\d+)").group(1))
    assert int(ready.group(2)) == serve.process.pid
    return serve, [int(pid) for pid in ready.group(1).split(", ")]


def _request(user: str) -> bytes:
    body = b'{"domain": "api", "descriptors": [{"entries": [{"key": "user", "value": "%s"}]}]}' % user.encode()
    return b"POST /json HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


def _status(connection: socket.socket) -> int:
    """The status of the one answer due on ``connection``, read to its end."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += connection.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"content-length: (\d+)", head, re.IGNORECASE).group(1))  # type: ignore[union-attr]
    while len(body) < length:
        body += connection.recv(65536)
    return int(head.split()[1])


def _owners(port: int, pids: list[int]) -> dict[int, int]:
    """How many of the established connections to ``port`` each of ``pids`` holds (from /proc)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "01":  # local port, ESTABLISHED
                inodes.add(fields[9])
    owners = {}
    for pid in pids:
        sockets = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
        owners[pid] = sum(f"socket:[{inode}]" in sockets for inode in inodes)
    return owners


def _metric(text: str, name: str, **labels: str) -> float:
    """The one sample of ``name`` with ``labels`` in an exposition ``text``."""
    wanted = {f'{key}="{value}"' for key, value in labels.items()}
    found = [
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name + "{") and wanted <= set(line[len(name) + 1 : line.index("}")].split(","))
    ]
    assert len(found) == 1, (name, labels, found)
    return found[0]


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"  # exited, not yet reaped


def _wait_until_gone(pids: list[int]) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not all(_gone(pid) for pid in pids):
        assert time.monotonic() < deadline, [pid for pid in pids if not _gone(pid)]
        time.sleep(0.05)


def test_workers_share_the_port_the_limits_and_the_metrics(
    tmp_path: Path, redis_url: str, processes: list[Serve]
) -> None:
    serve, pids = _start(tmp_path, redis_url, "--metrics-port", "0")
    processes.append(serve)
    assert len(set(pids)) == 2
    metrics_port = int(serve.wait_for(r"\(worker 2\): serving metrics on http://127\.0\.0\.1:(\d+)").group(1))
    assert int(serve.wait_for(r"\(worker 1\): serving metrics on http://127\.0\.0\.1:(\d+)").group(1)) == metrics_port
    connections = [socket.create_connection(("127.0.0.1", serve.port), timeout=DEADLINE_S) for _ in range(32)]
    try:
        statuses = []
        for connection in connections:  # one request per connection, all for the same user
            connection.sendall(_request("shared"))
            statuses.append(_status(connection))
        # The kernel spread the connections (32 of them: both workers get some but once in 2**31).
        owners = _owners(serve.port, pids)
        assert sum(owners.values()) == 32, owners
        assert all(owners.values()), owners
    finally:
        for connection in connections:
            connection.close()
    assert statuses.count(200) == LIMIT
    assert statuses.count(429) == 32 - LIMIT

    for port in (serve.port, metrics_port, serve.port, metrics_port):  # new connections: either worker answers
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        decisions = "sluicegate_decisions_total"
        assert _metric(text, decisions, policy="api.per_user", outcome="allowed", degraded="false") == LIMIT
        assert _metric(text, decisions, policy="api.per_user", outcome="throttled", degraded="false") == 32 - LIMIT
        assert _metric(text, "sluicegate_fallback_active") == 0  # the live workers' largest, not one per pid
    assert serve.stop() == 0
    _wait_until_gone(pids)


def test_grpc_is_served_by_every_worker(tmp_path: Path, redis_url: str, processes: list[Serve]) -> None:
    serve, pids = _start(tmp_path, redis_url, "--grpc-port", "0")
    processes.append(serve)
    port = int(serve.wait_for(r"\(worker 2\): serving gRPC \(plaintext\) on 127\.0\.0\.1:(\d+)").group(1))
    assert int(serve.wait_for(r"\(worker 1\): serving gRPC \(plaintext\) on 127\.0\.0\.1:(\d+)").group(1)) == port
    request = rls_pb2.RateLimitRequest(domain="api")
    request.descriptors.add().entries.add(key="user", value="grpc")
    codes = []
    # A connection each: channels of one process share their connections unless told not to.
    options = [("grpc.use_local_subchannel_pool", 1)]
    channels = [grpc.insecure_channel(f"127.0.0.1:{port}", options=options) for _ in range(2 * LIMIT)]
    try:
        for channel in channels:
            stub = rls_pb2_grpc.RateLimitServiceStub(channel)  # type: ignore[no-untyped-call]
            reply = stub.ShouldRateLimit(request, timeout=DEADLINE_S)
            codes.append(reply.overall_code)
        owners = _owners(port, pids)
        assert all(owners.values()), owners  # 20 channels: both workers get some but once in 2**19
    finally:
        for channel in channels:
            channel.close()
    assert codes.count(rls_pb2.RateLimitResponse.OK) == LIMIT
    assert codes.count(rls_pb2.RateLimitResponse.OVER_LIMIT) == LIMIT
    assert serve.stop() == 0


def test_sighup_reloads_every_worker(tmp_path: Path, redis_url: str, processes: list[Serve]) -> None:
    serve, _ = _start(tmp_path, redis_url)
    processes.append(serve)
    (tmp_path / "config.yaml").write_text(CONFIG.replace(f"requests_per_unit: {LIMIT}", "requests_per_unit: 3"))
    mark = serve.signal(signal.SIGHUP)
    for worker in (1, 2):
        serve.wait_for(rf"\(worker {worker}\): config reloaded \(SIGHUP\): 1 domain \(api\), 1 rule", after=mark)
    assert serve.stop() == 0


def test_a_worker_that_dies_is_replaced_and_its_counts_are_kept(
    tmp_path: Path, redis_url: str, processes: list[Serve]
) -> None:
    serve, pids = _start(tmp_path, redis_url)
    processes.append(serve)
    for user in "abcdef":  # fresh connections: decided by either worker
        request = {"domain": "api", "descriptors": [{"entries": [{"key": "user", "value": user}]}]}
        assert httpx.post(f"{serve.url}/json", json=request, timeout=5).status_code == 200
    mark = len(serve.lines)
    os.kill(pids[0], signal.SIGKILL)
    serve.wait_for(rf"worker 1 \(pid {pids[0]}\) exited \(code -9\); starting another in 1s", after=mark)
    serve.wait_for(r"\(worker 1\): serving HTTP on", after=mark)
    text = httpx.get(f"{serve.url}/metrics", timeout=5).text
    assert _metric(text, "sluicegate_decisions_total", policy="api.per_user", outcome="allowed") == 6
    [replacement] = set(_worker_pids(serve.process.pid)) - set(pids)
    mark = len(serve.lines)
    os.kill(replacement, signal.SIGKILL)  # again, before it was steady: a longer wait
    serve.wait_for(rf"worker 1 \(pid {replacement}\) exited \(code -9\); starting another in 2s", after=mark)
    serve.wait_for(r"\(worker 1\): serving HTTP on", after=mark)
    assert serve.stop() == 0
    _wait_until_gone([*pids, replacement])


def _worker_pids(supervisor: int) -> list[int]:
    """The supervisor's worker processes (its other child is multiprocessing's resource tracker)."""
    children = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()
    return [int(pid) for pid in children if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()]


def test_workers_stop_when_their_supervisor_is_killed(tmp_path: Path, redis_url: str, processes: list[Serve]) -> None:
    serve, pids = _start(tmp_path, redis_url)
    processes.append(serve)
    environ = dict(
        entry.split("=", 1) for entry in Path(f"/proc/{pids[0]}/environ").read_text().split("\0") if "=" in entry
    )
    metrics_dir = Path(environ["PROMETHEUS_MULTIPROC_DIR"])
    assert metrics_dir.name.startswith("sluicegate-metrics-")
    serve.process.kill()
    for worker in (1, 2):
        serve.wait_for(rf"\(worker {worker}\): the supervisor \(pid \d+\) is gone: draining and stopping")
    _wait_until_gone(pids)
    with socket.socket() as sock:  # the port is free again
        sock.bind(("127.0.0.1", serve.port))
    shutil.rmtree(metrics_dir)  # the supervisor removes it when it can: not when killed


def test_a_port_in_use_is_refused_not_shared(tmp_path: Path, redis_url: str, processes: list[Serve]) -> None:
    first, _ = _start(tmp_path, redis_url)
    processes.append(first)
    second = Serve("--workers", "2", "--redis", redis_url, "--port", str(first.port))
    processes.append(second)
    assert second.process.wait(DEADLINE_S) == 1
    second.wait_for(rf"not starting: cannot listen on 127\.0\.0\.1:{first.port} for HTTP: Address already in use")
    single = Serve("--redis", redis_url, "--port", str(first.port))  # nor by a server of one process
    processes.append(single)
    assert single.process.wait(DEADLINE_S) == 1
    single.wait_for(rf"cannot listen on 127\.0\.0\.1:{first.port} for HTTP")
    with socket.socket() as sock, pytest.raises(OSError, match="Address already in use"):  # nor another program
        sock.bind(("127.0.0.1", first.port))
    assert first.stop() == 0


def test_workers_need_a_shared_store(processes: list[Serve]) -> None:
    serve = Serve("--workers", "2")
    processes.append(serve)
    assert serve.process.wait(DEADLINE_S) == 1
    serve.wait_for(r"not starting: 2 workers need a shared store \(SLUICEGATE_REDIS_URL or --redis\)")


def test_a_bad_config_is_reported_once(tmp_path: Path, redis_url: str, processes: list[Serve]) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG.replace(f"requests_per_unit: {LIMIT}", "requests_per_unit: -1"))
    serve = Serve("--workers", "2", "--redis", redis_url, "--config", str(config))
    processes.append(serve)
    assert serve.process.wait(DEADLINE_S) == 1
    serve.wait_for(r"1 problem; not starting")
    assert sum("not starting" in line for line in serve.lines) == 1
    assert not any("(worker" in line for line in serve.lines)


def test_a_worker_that_cannot_start_stops_everything(tmp_path: Path, redis_url: str, processes: list[Serve]) -> None:
    missing = str(tmp_path / "missing.pem")
    serve = Serve("--workers", "2", "--redis", redis_url, "--grpc-port", "0", "--grpc-tls-cert", missing,
                  "--grpc-tls-key", missing)  # fmt: skip
    processes.append(serve)
    assert serve.process.wait(DEADLINE_S) == 1
    serve.wait_for(r"\(worker \d\): not starting: TLS cert_file '.*: No such file or directory")
    serve.wait_for(r"worker \d \(pid \d+\) failed to start \(exit code 1\): stopping")
    assert not any(line.endswith("SIGTERM drains and stops") for line in serve.lines)


# --- the supervisor's checks (in process) -----------------------------------------------------------


def test_ports_are_held_resolved_once_and_the_fallback_share_split() -> None:
    held: list[socket.socket] = []
    try:
        settings = _hold_ports(Settings(port=0, grpc_port=0, workers=4, fallback_share=0.5), held)
        assert settings.port != 0
        assert settings.grpc_port not in (0, settings.port)
        assert settings.fallback_share == 0.125
        assert settings.metrics_port is None
        assert len(held) == 2
        with socket.socket() as other:  # no other program binds it, SO_REUSEADDR or not
            other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            with pytest.raises(OSError, match="Address already in use"):
                other.bind(("127.0.0.1", settings.port))
        with socket.socket() as sock:  # a worker binds the held port with SO_REUSEPORT and listens
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(("127.0.0.1", settings.port))
            sock.listen()
            with pytest.raises(ConfigError, match=rf"cannot listen on 127\.0\.0\.1:{settings.port} for HTTP"):
                _hold_ports(Settings(port=settings.port, workers=2), held)
    finally:
        for sock in held:
            sock.close()


def test_sighup_goes_only_to_workers_that_serve(monkeypatch: pytest.MonkeyPatch) -> None:
    """A starting worker has no SIGHUP handler yet and a draining one none any more: SIGHUP's
    default action would end them (and a worker ending while it starts stops everything)."""
    sent: list[tuple[int, int]] = []
    monkeypatch.setattr(os, "kill", lambda pid, signum: sent.append((pid, signum)))
    supervisor = _Supervisor(Settings(workers=2), "/nonexistent")
    for index, ready in ((1, True), (2, False)):
        process = SimpleNamespace(pid=1000 + index)
        supervisor.workers[index] = _Worker(index, process, None, 0.0, ready)  # type: ignore[arg-type]
    supervisor._reload()
    assert sent == [(1001, signal.SIGHUP)]
    supervisor.stopping = True
    supervisor._reload()
    assert sent == [(1001, signal.SIGHUP)]


def test_a_worker_that_keeps_crashing_is_replaced_ever_more_slowly() -> None:
    assert [restart_delay(crashes) for crashes in range(1, 9)] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert restart_delay(10_000) == 60


def test_a_port_whose_connections_wait_in_time_wait_is_held() -> None:
    """A server that just stopped leaves its closed connections in TIME_WAIT on its port: a
    restart there with workers must not fail for the next minute."""
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = listener.accept()
        accepted.close()  # the server's side closes first: it is the side that waits
        client.close()
    held: list[socket.socket] = []
    try:
        assert _hold_ports(Settings(port=port, workers=2), held).port == port
    finally:
        for sock in held:
            sock.close()


@pytest.mark.parametrize("value", ["0", "65", "two", "-1", ""])
def test_bad_worker_counts_are_refused(value: str) -> None:
    with pytest.raises(ConfigError, match=r"SLUICEGATE_WORKERS: expected a number of processes in 1\.\.64; got"):
        Settings.from_env({"SLUICEGATE_WORKERS": value})
    assert Settings.from_env({"SLUICEGATE_WORKERS": "3"}).workers == 3
