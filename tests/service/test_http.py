"""The HTTP endpoints, served in process on a free port: shapes, bad input, limits, auth."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from sluicegate.service.server import Server
from sluicegate.service.settings import Settings
from tests.redis_server import free_port

CONFIG = """
domain: api
sluicegate: {algorithm: sliding-log}  # exact windows from the first hit: answers do not depend on the hour
descriptors:
  - key: user
    rate_limit: {unit: hour, requests_per_unit: 3, name: per_user}
  - key: path
    rate_limit: {unit: hour, requests_per_unit: 100}
  - key: remote_address
    rate_limit: {unit: hour, requests_per_unit: 2}
  - key: blocked
    rate_limit: {unit: second, requests_per_unit: 0}
  - key: trial
    shadow_mode: true
    rate_limit: {unit: hour, requests_per_unit: 1, name: trial}
"""
DURATION = re.compile(r"^[0-9]+(\.[0-9]{3}|\.[0-9]{6}|\.[0-9]{9})?s$")


@asynccontextmanager
async def running(tmp_path: Path, **settings: Any) -> AsyncIterator[tuple[httpx.AsyncClient, Server]]:
    config = tmp_path / "config.yaml"
    if not config.exists():
        config.write_text(CONFIG)
    settings = {"config": str(config), "port": 0, "reload_interval": 0, **settings}
    server = Server(Settings.from_env({}, **settings), registry=CollectorRegistry())
    await server.start()
    assert server.http is not None
    address = server.http.address
    assert address is not None
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{address[1]}", timeout=5) as client:
        try:
            yield client, server
        finally:
            await server.stop()


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with running(tmp_path) as (client, _):
        yield client


def _envoy(*descriptors: dict[str, str], domain: str = "api", **extra: object) -> dict[str, object]:
    entries = [{"entries": [{"key": k, "value": v} for k, v in d.items()]} for d in descriptors]
    return {"domain": domain, "descriptors": entries, **extra}


# --- POST /json: envoyproxy/ratelimit's endpoint --------------------------------------------------


async def test_json_answers_as_envoyproxy_ratelimit(client: httpx.AsyncClient) -> None:
    answer = await client.post("/json", json=_envoy({"user": "u1"}, {"nothing": "x"}, {"path": "/a"}))
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/json"
    body = answer.json()
    durations = [status.pop("durationUntilReset", None) for status in body["statuses"]]
    assert body == {
        "overallCode": "OK",
        "statuses": [
            {
                "code": "OK",
                "currentLimit": {"name": "per_user", "requestsPerUnit": 3, "unit": "HOUR"},
                "limitRemaining": 2,
            },
            {"code": "OK"},
            {"code": "OK", "currentLimit": {"requestsPerUnit": 100, "unit": "HOUR"}, "limitRemaining": 99},
        ],
        "responseHeadersToAdd": [
            {"key": "RateLimit-Policy", "value": '"api.per_user";q=3;w=3600, "api.path";q=100;w=3600'},
            {"key": "RateLimit", "value": '"api.per_user";r=2;t=3600, "api.path";r=99;t=3600'},
        ],
    }
    assert durations[1] is None
    assert all(DURATION.match(d) for d in (durations[0], durations[2]))


async def test_json_over_the_limit_is_429(client: httpx.AsyncClient) -> None:
    request = _envoy({"user": "u2"}, hitsAddend=2)
    assert (await client.post("/json", json=request)).status_code == 200
    answer = await client.post("/json", json={**request, "hitsAddend": "2"})  # uint as a string, as protojson
    assert answer.status_code == 429
    body = answer.json()
    assert body["overallCode"] == "OVER_LIMIT"
    assert body["statuses"][0]["code"] == "OVER_LIMIT"
    assert body["statuses"][0]["limitRemaining"] == 1
    headers = {item["key"]: item["value"] for item in body["responseHeadersToAdd"]}
    assert int(headers["Retry-After"]) > 3000
    # The proto field name works too; the reference's README example omits the value.
    assert (await client.post("/json", json=_envoy({"user": "u3"}, hits_addend=1))).status_code == 200
    reference = {"domain": "api", "descriptors": [{"entries": [{"key": "user"}]}]}
    assert (await client.post("/json", content=json.dumps(reference))).status_code == 200


async def test_json_zero_requests_per_unit_and_shadow(client: httpx.AsyncClient) -> None:
    blocked = await client.post("/json", json=_envoy({"blocked": "b"}))
    assert blocked.status_code == 429
    assert blocked.json()["statuses"][0]["currentLimit"] == {"unit": "SECOND"}  # 0 is left out, as protojson
    for _ in range(3):
        shadow = await client.post("/json", json=_envoy({"trial": "t"}))
        assert shadow.status_code == 200
    metrics = (await client.get("/metrics")).text
    assert 'sluicegate_shadow_decisions_total{outcome="throttled",policy="api.trial"} 2.0' in metrics


@pytest.mark.parametrize(
    ("body", "detail", "pointer"),
    [
        (b"{", "body: malformed JSON at line 1 column 2", None),
        (b'{"domain": NaN}', "body: NaN is not JSON", None),
        (b'{"domain": "api", "domain": "x"}', "body: duplicate key 'domain'", None),
        (b"[" * 5000 + b"]" * 5000, "body: nested deeper than 32 levels", None),
        (b'{"domain": "\xff"}', "body: not UTF-8", None),
        (b"[]", "body: expected an object", None),
        (b'{"domian": "api"}', "domian: unknown field", "/domian"),
        (
            b'{"domain": "api", "descriptors": [{"entries": [{"key": "user", "value": "a"}]},'
            b' {"entries": [{"key": ""}]}]}',
            "descriptors[1].entries[0].key: must be a non-empty string",
            "/descriptors/1/entries/0/key",
        ),
        (b'{"domain": "api", "descriptors": [{"entries": [{"key": "u", "value": 5}]}]}', "descriptors[0]", None),
        (b'{"domain": "api", "hitsAddend": -1, "descriptors": []}', "hits_addend: expected an integer", None),
        (b'{"domain": "api", "hitsAddend": 1, "hits_addend": 1}', "hits_addend: given twice", None),
        (b'{"domain": "api", "descriptors": []}', "descriptors: must not be empty", None),
        (b'{"domain": "", "descriptors": [{"entries": [{"key": "u", "value": "v"}]}]}', "domain: must be", None),
        (b'{"domain": "nope", "descriptors": [{"entries": [{"key": "u", "value": "v"}]}]}', "unknown domain", None),
    ],
)
async def test_json_bad_input_is_400_with_a_pointer(
    client: httpx.AsyncClient, body: bytes, detail: str, pointer: str | None
) -> None:
    answer = await client.post("/json", content=body)
    assert answer.status_code == 400
    assert answer.headers["content-type"] == "application/problem+json"
    problem = answer.json()
    assert problem["status"] == 400
    assert problem["detail"].startswith(detail), problem["detail"]
    if pointer is not None:
        assert problem["errors"][0]["pointer"] == pointer
    assert len(answer.content) < 1024


# --- POST /v1/check ----------------------------------------------------------------------------------


async def test_check_key_and_policy(client: httpx.AsyncClient) -> None:
    request = {"key": "k1", "policy": "2/hour"}
    first = await client.post("/v1/check", json=request)
    assert first.status_code == 200
    assert first.json() == {
        "allowed": True,
        "key": "k1",
        "policy": "2/hour",
        "limit": 2,
        "remaining": 1,
        "reset_after": pytest.approx(1800, abs=1),
        "retry_after": 0.0,
        "degraded": False,
    }
    assert first.headers["ratelimit"] == '"2/hour";r=1;t=1800'
    assert (await client.post("/v1/check", json=request)).status_code == 200
    denied = await client.post("/v1/check", json=request)
    assert denied.status_code == 429
    assert denied.headers["content-type"] == "application/problem+json"
    assert denied.json()["violated-policies"] == ["2/hour"]
    assert 1 <= int(denied.headers["retry-after"]) <= 1800
    assert "ratelimit-policy" in denied.headers
    too_big = await client.post("/v1/check", json={**request, "cost": 5})
    assert too_big.status_code == 400
    assert too_big.json()["detail"].startswith("cost: 5 exceeds the capacity 2")


async def test_check_against_the_config(client: httpx.AsyncClient) -> None:
    request = {"domain": "api", "descriptor": {"user": "u9"}, "cost": 2}
    first = await client.post("/v1/check", json=request)
    assert first.status_code == 200
    body = first.json()
    assert (body["allowed"], body["remaining"], body["overall_code"]) == (True, 1, "OK")
    assert body["statuses"][0]["limit"] == {"requests_per_unit": 3, "unit": "HOUR", "name": "per_user"}
    denied = await client.post("/v1/check", json={"domain": "api", "descriptors": [[["user", "u9"]]], "cost": 2})
    assert denied.status_code == 429
    assert denied.json()["violated-policies"] == ["api.per_user"]
    blocked = await client.post("/v1/check", json={"domain": "api", "descriptor": {"blocked": "x"}})
    assert blocked.status_code == 429
    assert blocked.headers["retry-after"] == "1"


@pytest.mark.parametrize(
    ("body", "status", "detail"),
    [
        ({"key": "k", "policy": "10 per fortnight"}, 400, "policy: unknown unit"),
        ({"key": "", "policy": "1/s"}, 400, "key: must be a non-empty string"),
        ({"key": "k", "policy": "1/s", "cost": 0}, 400, "cost: must be a positive integer"),
        ({"key": "k", "policy": "1/s", "colour": 1}, 400, "colour: unknown field"),
        ({"domain": "api"}, 400, "descriptor: send one of descriptor and descriptors"),
        ({"domain": "api", "descriptor": {"user": 1}}, 400, "descriptor[0]: the value of 'user' must be a string"),
        ({"domain": "api", "descriptor": [[5, "x"]]}, 400, "descriptor[0]: a key must be a string; got a number"),
    ],
)
async def test_check_bad_input(client: httpx.AsyncClient, body: dict[str, object], status: int, detail: str) -> None:
    answer = await client.post("/v1/check", json=body)
    assert answer.status_code == status
    assert answer.json()["detail"].startswith(detail), answer.json()["detail"]


async def test_check_wants_json(client: httpx.AsyncClient) -> None:
    answer = await client.post("/v1/check", content=b"key=k", headers={"content-type": "text/plain"})
    assert answer.status_code == 415


# --- GET /v1/auth ------------------------------------------------------------------------------------


async def test_auth_counts_each_forwarded_client(client: httpx.AsyncClient) -> None:
    alice = {"x-forwarded-for": "203.0.113.7"}  # the peer (127.0.0.1) is a trusted proxy by default
    for remaining in (1, 0):
        allowed = await client.get("/v1/auth", headers=alice)
        assert allowed.status_code == 200
        assert allowed.headers["ratelimit"].endswith(f"r={remaining};t=3600")
    denied = await client.get("/v1/auth", headers=alice)
    assert denied.status_code == 403  # what nginx's auth_request can pass on
    assert int(denied.headers["retry-after"]) > 3000
    assert "ratelimit-policy" in denied.headers
    bob = await client.get("/v1/auth", headers={"x-forwarded-for": "203.0.113.7, 198.51.100.2"})
    assert bob.status_code == 200  # walked right to left: the client is 198.51.100.2


async def test_auth_for_traefik_answers_429_from_the_forwarded_request(tmp_path: Path) -> None:
    settings = {"auth_deny_status": "429", "auth_descriptors": "method,path; user=header:x-user"}
    (tmp_path / "config.yaml").write_text(
        "domain: edge\nsluicegate: {algorithm: sliding-log}\ndescriptors:\n"
        "  - key: method\n    value: POST\n    descriptors:\n"
        "      - key: path\n        rate_limit: {unit: hour, requests_per_unit: 1}\n"
        "  - key: user\n    rate_limit: {unit: hour, requests_per_unit: 10}\n"
    )
    async with running(tmp_path, **settings) as (client, _):
        post = {"x-forwarded-method": "POST", "x-forwarded-uri": "/orders?page=1"}
        assert (await client.get("/v1/auth", headers=post)).status_code == 200
        again = {**post, "x-forwarded-uri": "/orders?page=2", "x-user": "carol"}
        denied = await client.get("/v1/auth", headers=again)  # the query string is not part of the path
        assert denied.status_code == 429
        assert denied.headers["content-type"] == "application/problem+json"
        assert int(denied.headers["retry-after"]) > 3000
        get = {"x-forwarded-method": "GET", "x-forwarded-uri": "/orders"}
        assert (await client.get("/v1/auth", headers=get)).status_code == 200
        assert (await client.get("/v1/auth")).status_code == 200  # no descriptor could be built


async def test_auth_hashes_long_header_values_rather_than_refusing_the_gateway(tmp_path: Path) -> None:
    """Three 1 KiB header values together pass the service's total-length bound; the client's
    request must still get a bucket (200, then throttled), never a 400 the gateway turns into 500."""
    settings = {"auth_deny_status": "429", "auth_descriptors": "a=header:x-a,b=header:x-b,c=header:x-c"}
    (tmp_path / "config.yaml").write_text(
        "domain: edge\ndescriptors:\n  - key: a\n    descriptors:\n      - key: b\n        descriptors:\n"
        "          - key: c\n            rate_limit: {unit: hour, requests_per_unit: 1}\n"
    )
    headers = {name: name * 1024 for name in ("x-a", "x-b", "x-c")}
    async with running(tmp_path, **settings) as (client, server):
        assert (await client.get("/v1/auth", headers=headers)).status_code == 200
        assert (await client.get("/v1/auth", headers=headers)).status_code == 429
        assert server.http is not None
        assert server.http.address is not None
        port = server.http.address[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        writer.write(f"HEAD /v1/auth HTTP/1.1\r\nhost: t\r\n{head}connection: close\r\n\r\n".encode())
        answer = (await reader.read()).decode("latin-1").lower()
        writer.close()
    assert answer.startswith("http/1.1 429")
    assert answer.count("content-length:") == 1  # HEAD of a throttled answer: one length, no body


# --- operations --------------------------------------------------------------------------------------


async def test_health_ready_metrics_and_routing(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    assert (await client.get("/readyz")).json() == {"status": "ready"}
    await client.post("/json", json=_envoy({"user": "m"}))
    metrics = await client.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    assert 'sluicegate_decisions_total{degraded="false",outcome="allowed",policy="api.per_user"} 1.0' in metrics.text
    assert (await client.get("/nowhere")).status_code == 404
    wrong = await client.get("/json")
    assert (wrong.status_code, wrong.headers["allow"]) == (405, "POST")


async def test_metrics_on_their_own_port(tmp_path: Path) -> None:
    port = free_port()
    async with running(tmp_path, metrics_port=str(port)) as (client, _):
        await client.post("/json", json=_envoy({"user": "m"}))
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as metrics:
            assert "sluicegate_decisions_total" in (await metrics.get("/metrics")).text
            assert (await metrics.post("/json", json=_envoy({"user": "m"}))).status_code == 404


async def test_bearer_token(tmp_path: Path) -> None:
    async with running(tmp_path, auth_token="s3cret") as (client, _):
        assert (await client.get("/healthz")).status_code == 200  # exempt: liveness probes
        for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": "Basic s3cret"}):
            answer = await client.post("/json", json=_envoy({"user": "t"}), headers=headers)
            assert answer.status_code == 401
            assert answer.headers["www-authenticate"] == "Bearer"
        ok = await client.post("/json", json=_envoy({"user": "t"}), headers={"authorization": "Bearer s3cret"})
        assert ok.status_code == 200
        assert ok.json()["statuses"][0]["limitRemaining"] == 2  # the refused calls consumed nothing
        assert (await client.get("/metrics")).status_code == 401


async def test_a_store_outage_is_503_never_4xx(tmp_path: Path) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    async with running(tmp_path, redis_url=dead, fallback="raise") as (client, _):
        for method, path, body in (
            ("POST", "/json", _envoy({"user": "x"})),
            ("POST", "/v1/check", {"key": "k", "policy": "1/s"}),
            ("GET", "/v1/auth", None),
        ):
            answer = await client.request(method, path, json=body)
            assert answer.status_code == 503, path
            assert answer.headers["retry-after"] == "1"
        assert (await client.get("/readyz")).status_code == 503
        assert (await client.get("/healthz")).status_code == 200
    async with running(tmp_path, redis_url=dead, fallback="local") as (client, _):
        assert (await client.post("/json", json=_envoy({"user": "x"}))).status_code == 200
        assert (await client.get("/readyz")).status_code == 200


# --- the transport: limits, deadlines, keep-alive ----------------------------------------------------


async def _raw(port: int, data: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    return reader, writer


async def _port(server: Server) -> int:
    assert server.http is not None
    address = server.http.address
    assert address is not None
    return address[1]


async def test_an_oversized_body_is_refused_before_it_is_sent(tmp_path: Path) -> None:
    async with running(tmp_path) as (_, server):
        port = await _port(server)
        # Only the headers are sent: the answer must not wait for 10 MB that never come.
        reader, writer = await _raw(port, b"POST /json HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), 5)  # read() returns at EOF: the server closed
        assert answer.startswith(b"HTTP/1.1 413 ")
        assert b"connection: close" in answer
        writer.close()
        # A chunked body is cut off as soon as it passes 64 KiB.
        chunk = b"%x\r\n%s\r\n" % (16384, b"x" * 16384)
        head = b"POST /json HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        reader, writer = await _raw(port, head + chunk * 5)
        answer = await asyncio.wait_for(reader.read(), 5)
        assert answer.startswith(b"HTTP/1.1 413 ")
        writer.close()


async def test_huge_headers_are_refused(tmp_path: Path) -> None:
    async with running(tmp_path) as (_, server):
        reader, writer = await _raw(
            await _port(server), b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n"
        )
        assert (await asyncio.wait_for(reader.read(), 5)).startswith(b"HTTP/1.1 431 ")
        writer.close()


async def test_a_slow_client_is_cut_off_at_the_header_deadline(tmp_path: Path) -> None:
    async with running(tmp_path, header_timeout="0.3") as (_, server):
        started = time.monotonic()
        reader, writer = await _raw(await _port(server), b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        for _ in range(3):  # trickled header lines do not extend the deadline
            writer.write(b"X-Slow: 1\r\n")
            await writer.drain()
            await asyncio.sleep(0.05)
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed without an answer
        assert 0.3 <= time.monotonic() - started < 3
        writer.close()
        # A connection that never sends a byte is closed too.
        reader, writer = await _raw(await _port(server), b"")
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()


async def test_keep_alive_and_pipelining(tmp_path: Path) -> None:
    async with running(tmp_path) as (_, server):
        reader, writer = await _raw(
            await _port(server),
            b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /readyz HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        answers = await asyncio.wait_for(reader.read(), 5)
        assert answers.count(b"HTTP/1.1 200 OK") == 3
        assert answers.index(b'{"status":"ok"}') < answers.index(b'{"status":"ready"}')
        writer.close()


async def test_a_malformed_request_is_400(tmp_path: Path) -> None:
    async with running(tmp_path) as (_, server):
        reader, writer = await _raw(await _port(server), b"GARBAGE\r\n\r\n")
        assert (await asyncio.wait_for(reader.read(), 5)).startswith(b"HTTP/1.1 400 ")
        writer.close()
