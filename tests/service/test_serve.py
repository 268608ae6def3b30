"""``sluicegate serve`` as a real process: startup, SIGHUP and file-change reloads, SIGTERM drain."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import socket
from pathlib import Path

import httpx
import pytest
import trustme

from sluicegate import ConfigError
from sluicegate._forwarded import TrustedProxies
from sluicegate.service._auth import AuthDescriptors
from sluicegate.service.settings import Settings
from tests.service.serve_process import DEADLINE_S, Serve

CONFIG = """
domain: api
sluicegate: {algorithm: sliding-log}
descriptors:
  - key: user
    rate_limit: {unit: hour, requests_per_unit: 1, name: per_user}
"""


def _decide(serve: Serve, user: str = "u") -> httpx.Response:
    request = {"domain": "api", "descriptors": [{"entries": [{"key": "user", "value": user}]}]}
    return httpx.post(f"{serve.url}/json", json=request, timeout=5)


def test_without_config_or_redis_it_serves_the_example_on_memory(processes: list[Serve]) -> None:
    serve = Serve()
    processes.append(serve)
    serve.started()
    serve.wait_for(r"no config given .* built-in example config, 1 domain \(example\)")
    serve.wait_for(r"no Redis URL given .* memory://")
    request = {"domain": "example", "descriptors": [{"entries": [{"key": "remote_address", "value": "192.0.2.1"}]}]}
    answer = httpx.post(f"{serve.url}/json", json=request, timeout=5)
    assert answer.status_code == 200
    assert answer.json()["statuses"][0]["currentLimit"] == {"requestsPerUnit": 10, "unit": "SECOND"}
    assert serve.stop() == 0


def test_sighup_reloads_a_good_config_and_keeps_the_old_one_for_a_bad_one(
    tmp_path: Path, processes: list[Serve]
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG)
    serve = Serve("--config", str(config), env={"SLUICEGATE_RELOAD_INTERVAL": "0"})
    processes.append(serve)
    serve.started()
    assert _decide(serve).status_code == 200
    assert _decide(serve).status_code == 429

    config.write_text(CONFIG.replace("requests_per_unit: 1", "requests_per_unit: 5"))
    mark = serve.signal(signal.SIGHUP)
    serve.wait_for(r"config reloaded \(SIGHUP\): 1 domain \(api\), 1 rule", after=mark)
    answer = _decide(serve)
    assert answer.status_code == 200
    assert answer.json()["statuses"][0]["currentLimit"]["requestsPerUnit"] == 5

    config.write_text(CONFIG.replace("unit: hour", "unit: fortnight"))
    mark = serve.signal(signal.SIGHUP)
    serve.wait_for(r"config rejected: .*config\.yaml:\d+: descriptors\[0\]\.rate_limit\.unit: unknown unit", after=mark)
    serve.wait_for(r"rejected \(SIGHUP\): 1 problem; still serving the previous config", after=mark)
    answer = _decide(serve)
    assert answer.status_code == 200
    assert answer.json()["statuses"][0]["currentLimit"]["requestsPerUnit"] == 5
    assert serve.stop() == 0


def test_a_changed_file_is_reloaded(tmp_path: Path, processes: list[Serve]) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG)
    serve = Serve("--config", str(config), env={"SLUICEGATE_RELOAD_INTERVAL": "0.1"})
    processes.append(serve)
    serve.started()
    replacement = tmp_path / "new.yaml.tmp"
    replacement.write_text(CONFIG.replace("requests_per_unit: 1", "requests_per_unit: 7"))
    os.replace(replacement, config)  # as editors and Kubernetes ConfigMaps swap files
    serve.wait_for(r"config reloaded \(the file changed\)")
    assert _decide(serve).json()["statuses"][0]["currentLimit"]["requestsPerUnit"] == 7
    assert serve.stop() == 0


def test_sigterm_lets_a_request_in_flight_finish(tmp_path: Path, processes: list[Serve]) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG)
    serve = Serve("--config", str(config), "--log-format", "json")
    processes.append(serve)
    serve.started()
    body = json.dumps({"domain": "api", "descriptors": [{"entries": [{"key": "user", "value": "d"}]}]}).encode()
    with socket.create_connection(("127.0.0.1", serve.port), timeout=DEADLINE_S) as client:
        head = b"POST /json HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body)
        client.sendall(head + body[:10])  # in flight: the server has half of it
        mark = serve.signal(signal.SIGTERM)
        serve.wait_for(r"draining", after=mark)
        with pytest.raises(ConnectionRefusedError):  # no new connections once draining
            socket.create_connection(("127.0.0.1", serve.port), timeout=1).close()
        client.sendall(body[10:])
        answer = b""
        while chunk := client.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"connection: close" in answer
    assert b'"overallCode":"OK"' in answer
    assert serve.process.wait(DEADLINE_S) == 0
    for line in serve.lines:  # --log-format json: every line is one JSON object
        entry = json.loads(line)
        assert {"time", "level", "logger", "message"} <= entry.keys()


def test_a_bad_config_at_startup_exits_1(tmp_path: Path, processes: list[Serve]) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG.replace("requests_per_unit: 1", "requests_per_unit: -1"))
    serve = Serve("--config", str(config))
    processes.append(serve)
    assert serve.process.wait(DEADLINE_S) == 1
    serve.wait_for(r"requests_per_unit: must be a whole number")
    serve.wait_for(r"1 problem; not starting")


def test_bad_settings_exit_1(processes: list[Serve]) -> None:
    serve = Serve(env={"SLUICEGATE_FALLBACK": "maybe"})
    processes.append(serve)
    assert serve.process.wait(DEADLINE_S) == 1
    serve.wait_for(r"SLUICEGATE_FALLBACK: expected local or allow or deny or raise; got 'maybe'")


def test_grpc_is_served_when_a_port_is_set(processes: list[Serve]) -> None:
    serve = Serve("--grpc-port", "0")
    processes.append(serve)
    serve.started()
    serve.wait_for(r"serving gRPC \(plaintext\) on 127\.0\.0\.1:\d+")
    assert serve.stop() == 0


def test_grpc_tls_and_mutual_tls_come_from_the_settings(processes: list[Serve], tmp_path: Path) -> None:
    authority = trustme.CA()
    issued = authority.issue_cert("127.0.0.1", "localhost")
    cert, key, ca = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    authority.cert_pem.write_to_path(str(ca))
    tls = Serve("--grpc-port", "0", "--grpc-tls-cert", str(cert), "--grpc-tls-key", str(key))
    processes.append(tls)
    tls.started()
    tls.wait_for(r"serving gRPC \(TLS\) on 127\.0\.0\.1:\d+")
    assert tls.stop() == 0
    env = {"SLUICEGATE_GRPC_TLS_CERT": str(cert), "SLUICEGATE_GRPC_TLS_KEY": str(key)}
    mutual = Serve("--grpc-port", "0", env={**env, "SLUICEGATE_GRPC_TLS_CLIENT_CA": str(ca)})
    processes.append(mutual)
    mutual.started()
    mutual.wait_for(r"serving gRPC \(mutual TLS\) on 127\.0\.0\.1:\d+")
    assert mutual.stop() == 0


def test_a_grpc_key_without_its_certificate_is_refused(processes: list[Serve], tmp_path: Path) -> None:
    serve = Serve("--grpc-port", "0", "--grpc-tls-key", str(tmp_path / "key.pem"))
    processes.append(serve)
    assert serve.process.wait(DEADLINE_S) == 1
    serve.wait_for(r"SLUICEGATE_GRPC_TLS_CERT and SLUICEGATE_GRPC_TLS_KEY go together")


# --- settings (in process) ---------------------------------------------------------------------------


def test_settings_come_from_the_environment_and_flags_override_them(tmp_path: Path) -> None:
    defaults = Settings.from_env({})
    assert (defaults.host, defaults.port, defaults.store_url, defaults.fallback) == (
        "127.0.0.1",
        8080,
        "memory://",
        "local",
    )
    assert defaults.trusted_proxies == ("127.0.0.1/32", "::1/128")
    env = {"SLUICEGATE_PORT": "9000", "SLUICEGATE_SHADOW_MODE": "yes", "SLUICEGATE_TRUSTED_PROXIES": ""}
    settings = Settings.from_env(env, port="9001", fallback=None)
    assert (settings.port, settings.shadow_mode, settings.trusted_proxies) == (9001, True, ())
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    assert Settings.from_env({"SLUICEGATE_AUTH_TOKEN_FILE": str(token)}).token() == "s3cret"
    assert "s3cret" not in repr(Settings.from_env({"SLUICEGATE_AUTH_TOKEN": "s3cret"}))


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SLUICEGATE_PORT": "99999"}, "SLUICEGATE_PORT: expected a port number in 0..65535; got '99999'"),
        ({"SLUICEGATE_TIMEOUT": "0"}, "SLUICEGATE_TIMEOUT: expected seconds in (0, 60]"),
        ({"SLUICEGATE_SHADOW_MODE": "maybe"}, "SLUICEGATE_SHADOW_MODE: expected true or false"),
        ({"SLUICEGATE_TRUSTED_PROXIES": "10.0.0.0/33"}, "SLUICEGATE_TRUSTED_PROXIES: expected comma-separated CIDRs"),
        ({"SLUICEGATE_AUTH_DENY_STATUS": "500"}, "SLUICEGATE_AUTH_DENY_STATUS: expected 403 or 429"),
    ],
)
def test_bad_settings_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(env)
    assert str(caught.value).startswith(message)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "no descriptors"),
        ("remote_address; cookie", "unknown source 'cookie'"),
        ("header:bad name", "unknown source 'header:bad name'"),
        ("const:x", "'const:x' needs a key"),
    ],
)
def test_bad_auth_descriptors(spec: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        AuthDescriptors(spec, trusted_proxies=TrustedProxies())


def test_auth_descriptors_from_a_forwarded_request() -> None:
    auth = AuthDescriptors(
        "remote_address; method,path; key=header:X-Api-Key; plan=const:free",
        trusted_proxies=TrustedProxies(["127.0.0.1/32"]),
    )
    headers = {"x-forwarded-for": "2001:db8::1", "x-original-method": "GET", "x-original-uri": "/a?b=c"}
    assert auth.build("127.0.0.1", {**headers, "x-api-key": "k" * 2000}) == [
        [("remote_address", "2001:db8::/64")],
        [("method", "GET"), ("path", "/a")],
        [("key", "sha256:" + hashlib.sha256(b"k" * 2000).hexdigest())],  # too long to be a value
        [("plan", "free")],
    ]
    # An untrusted peer's X-Forwarded-For is ignored; a missing source drops its descriptor.
    assert auth.build("192.0.2.9", headers)[:2] == [
        [("remote_address", "192.0.2.9")],
        [("method", "GET"), ("path", "/a")],
    ]
    assert auth.build("192.0.2.9", {}) == [[("remote_address", "192.0.2.9")], [("plan", "free")]]
