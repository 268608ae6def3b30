"""The Envoy RLS v3 gRPC transport, through a real gRPC client on loopback.

Every call goes through the stub generated from the vendored protos (or, for the wire checks, raw
bytes on the method's path), against a server each test starts on a free port.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import grpc
import pytest
import trustme
import yaml
from google.protobuf import unknown_fields, wrappers_pb2
from grpc import aio

from sluicegate import AsyncLimiter, ConfigError, StoreError
from sluicegate.service.config import RateLimitConfig, load, loads
from sluicegate.service.grpc import (
    MAX_DETAILS_CHARS,
    MAX_MESSAGE_BYTES,
    SERVICE_NAME,
    GrpcServer,
    TlsConfig,
    start_grpc_server,
)
from sluicegate.service.proto.envoy.config.core.v3 import base_pb2
from sluicegate.service.proto.envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from sluicegate.service.proto.envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from sluicegate.service.proto.envoy.type.v3 import ratelimit_unit_pb2
from sluicegate.service.service import DescriptorStatus as ServiceStatus
from sluicegate.service.service import RateLimitResponse as ServiceResponse
from sluicegate.service.service import RateLimitService
from sluicegate.stores import Item
from tests.conftest import FakeClock

EXAMPLE = Path(__file__).parents[2] / "examples" / "envoy"
METHOD = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit"
HEALTH = "/grpc.health.v1.Health/Check"
TIMEOUT = 10.0  # per call: a handshake that fails must fail, not hang the suite

CONFIG = """
domain: edge
descriptors:
  - key: user
    rate_limit: {unit: minute, requests_per_unit: 2, name: per_user}
  - key: path
    rate_limit: {unit: hour, requests_per_unit: 100}
  - key: blocked
    rate_limit: {unit: second, requests_per_unit: 0}
  - key: week
    rate_limit: {unit: week, requests_per_unit: 7}
"""

Code = rls_pb2.RateLimitResponse.Code
Unit = rls_pb2.RateLimitResponse.RateLimit.Unit


def request(*descriptors: Sequence[tuple[str, str]], domain: str = "edge", hits: int = 0) -> rls_pb2.RateLimitRequest:
    message = rls_pb2.RateLimitRequest(domain=domain, hits_addend=hits)
    for entries in descriptors:
        descriptor = message.descriptors.add()
        for key, value in entries:
            descriptor.entries.add(key=key, value=value)
    return message


def headers(response: rls_pb2.RateLimitResponse) -> dict[str, str]:
    return {header.key: header.value for header in response.response_headers_to_add}


@pytest.fixture
def config() -> RateLimitConfig:
    return loads(CONFIG, source="edge.yaml")


@pytest.fixture
async def service(config: RateLimitConfig, clock: FakeClock) -> AsyncIterator[RateLimitService]:
    service = RateLimitService(config, AsyncLimiter("memory://", clock=clock, registry=None), registry=None)
    yield service
    await service.aclose()


@pytest.fixture
async def server(service: RateLimitService) -> AsyncIterator[GrpcServer]:
    server = await start_grpc_server(service, port=0)
    yield server
    await server.stop(0)


@pytest.fixture
async def channel(server: GrpcServer) -> AsyncIterator[aio.Channel]:
    async with aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield channel


@pytest.fixture
def stub(channel: aio.Channel) -> rls_pb2_grpc.RateLimitServiceStub:
    return rls_pb2_grpc.RateLimitServiceStub(channel)  # type: ignore[no-untyped-call]


async def call(stub: rls_pb2_grpc.RateLimitServiceStub, message: rls_pb2.RateLimitRequest) -> rls_pb2.RateLimitResponse:
    return cast("rls_pb2.RateLimitResponse", await stub.ShouldRateLimit(message, timeout=TIMEOUT))


async def failure(stub: rls_pb2_grpc.RateLimitServiceStub, message: rls_pb2.RateLimitRequest) -> aio.AioRpcError:
    with pytest.raises(aio.AioRpcError) as caught:
        await call(stub, message)
    return caught.value


# --- decisions -----------------------------------------------------------------------------------


async def test_ok_then_over_limit(stub: rls_pb2_grpc.RateLimitServiceStub) -> None:
    first = await call(stub, request([("user", "alice")]))
    assert first.overall_code == Code.OK
    [status] = first.statuses
    assert status.code == Code.OK
    assert (status.current_limit.requests_per_unit, status.current_limit.unit) == (2, Unit.MINUTE)
    assert status.current_limit.name == "per_user"
    assert status.limit_remaining == 1
    assert 0 < status.duration_until_reset.ToTimedelta().total_seconds() <= 60
    assert "RateLimit" in headers(first)
    assert "RateLimit-Policy" in headers(first)

    second = await call(stub, request([("user", "alice")]))
    assert second.overall_code == Code.OK
    assert second.statuses[0].limit_remaining == 0

    third = await call(stub, request([("user", "alice")]))
    assert third.overall_code == Code.OVER_LIMIT
    [status] = third.statuses
    assert status.code == Code.OVER_LIMIT
    assert status.limit_remaining == 0
    assert status.current_limit.requests_per_unit == 2
    wait = status.duration_until_reset.ToTimedelta().total_seconds()
    assert 0 < wait <= 60
    assert 1 <= int(headers(third)["Retry-After"]) <= 60

    other = await call(stub, request([("user", "bob")]))  # every value counts on its own
    assert other.overall_code == Code.OK


async def test_one_status_per_descriptor_in_order(stub: rls_pb2_grpc.RateLimitServiceStub) -> None:
    response = await call(stub, request([("path", "/a")], [("nothing", "matches")], [("user", "carol")]))
    assert response.overall_code == Code.OK
    assert [status.code for status in response.statuses] == [Code.OK, Code.OK, Code.OK]
    path, unmatched, user = response.statuses
    assert (path.current_limit.requests_per_unit, path.current_limit.unit, path.limit_remaining) == (100, Unit.HOUR, 99)
    assert path.current_limit.name == ""  # the rule has no name
    assert not unmatched.HasField("current_limit")
    assert unmatched.limit_remaining == 0
    assert (user.current_limit.unit, user.limit_remaining) == (Unit.MINUTE, 1)


async def test_a_rejected_request_consumes_nothing_from_its_other_descriptors(
    stub: rls_pb2_grpc.RateLimitServiceStub,
) -> None:
    for _ in range(2):
        assert (await call(stub, request([("user", "dave")]))).overall_code == Code.OK

    for _ in range(5):
        rejected = await call(stub, request([("path", "/shared")], [("user", "dave")]))
        assert rejected.overall_code == Code.OVER_LIMIT
        assert rejected.statuses[1].code == Code.OVER_LIMIT

    alone = await call(stub, request([("path", "/shared")]))
    assert alone.statuses[0].limit_remaining == 99  # the first hit that counted


async def test_zero_requests_per_unit_and_week_units(stub: rls_pb2_grpc.RateLimitServiceStub) -> None:
    blocked = await call(stub, request([("blocked", "x")]))
    assert blocked.overall_code == Code.OVER_LIMIT
    assert (blocked.statuses[0].current_limit.requests_per_unit, blocked.statuses[0].current_limit.unit) == (
        0,
        Unit.SECOND,
    )
    weekly = await call(stub, request([("week", "x")]))
    assert (weekly.statuses[0].current_limit.unit, weekly.statuses[0].limit_remaining) == (Unit.WEEK, 6)


async def test_hits_addend_of_the_request_and_of_a_descriptor(stub: rls_pb2_grpc.RateLimitServiceStub) -> None:
    both = await call(stub, request([("user", "erin")], hits=2))
    assert (both.overall_code, both.statuses[0].limit_remaining) == (Code.OK, 0)

    message = request([("user", "frank")], hits=2)
    message.descriptors[0].hits_addend.value = 1  # the descriptor's own wins over the request's
    own = await call(stub, message)
    assert (own.overall_code, own.statuses[0].limit_remaining) == (Code.OK, 1)

    too_many = await call(stub, request([("user", "grace")], hits=3))
    assert too_many.overall_code == Code.OVER_LIMIT


async def test_a_descriptor_limit_override_is_honoured(stub: rls_pb2_grpc.RateLimitServiceStub) -> None:
    message = request([("tenant", "acme")])  # no rule for it in the config
    message.descriptors[0].limit.requests_per_unit = 1
    message.descriptors[0].limit.unit = ratelimit_unit_pb2.RateLimitUnit.SECOND

    first = await call(stub, message)
    assert first.overall_code == Code.OK
    assert (first.statuses[0].current_limit.requests_per_unit, first.statuses[0].current_limit.unit) == (
        1,
        Unit.SECOND,
    )
    assert (await call(stub, message)).overall_code == Code.OVER_LIMIT

    overridden = request([("user", "heidi")])  # the override beats the config's 2/minute
    overridden.descriptors[0].limit.requests_per_unit = 5
    overridden.descriptors[0].limit.unit = ratelimit_unit_pb2.RateLimitUnit.HOUR
    response = await call(stub, overridden)
    assert (response.statuses[0].current_limit.requests_per_unit, response.statuses[0].limit_remaining) == (5, 4)


# --- errors --------------------------------------------------------------------------------------


async def test_unknown_domain_is_invalid_argument(stub: rls_pb2_grpc.RateLimitServiceStub) -> None:
    error = await failure(stub, request([("user", "x")], domain="nowhere"))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "nowhere" in (error.details() or "")


@pytest.mark.parametrize(
    ("descriptors", "field"),
    [
        ([[("", "v")]], "descriptors[0].entries[0].key"),
        ([[("user", "x")], []], "descriptors[1].entries"),
        ([], "descriptors"),
        ([[("user", "v" * 5000)]], "descriptors[0].entries[0].value"),
    ],
)
async def test_invalid_descriptors_are_invalid_argument(
    stub: rls_pb2_grpc.RateLimitServiceStub, descriptors: list[list[tuple[str, str]]], field: str
) -> None:
    error = await failure(stub, request(*descriptors))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = error.details() or ""
    assert details.startswith(field)
    assert len(details) <= MAX_DETAILS_CHARS


@pytest.mark.parametrize("unit", [ratelimit_unit_pb2.RateLimitUnit.UNKNOWN, 99])
async def test_a_limit_override_without_a_known_unit_is_invalid_argument(
    stub: rls_pb2_grpc.RateLimitServiceStub, unit: Any
) -> None:
    message = request([("user", "ivan")])
    message.descriptors[0].limit.requests_per_unit = 1
    message.descriptors[0].limit.unit = unit  # 99: undefined, as a newer Envoy's unit would be
    error = await failure(stub, message)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "descriptors[0].limit" in (error.details() or "")


async def test_a_request_over_the_message_bound_is_refused(stub: rls_pb2_grpc.RateLimitServiceStub) -> None:
    huge = request(*([("user", "x" * 1000)] for _ in range(MAX_MESSAGE_BYTES // 1000 + 1)))
    error = await failure(stub, huge)
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


class DownStore:
    """A store that is down: every call fails as a refused connection."""

    def __init__(self) -> None:
        self.calls = 0

    async def decide(self, items: Sequence[Item], now: int | None, *, commit: bool) -> list[Any]:
        self.calls += 1
        raise StoreError("connection refused (test)", kind="connection", refused=True)

    async def reset(self, keys: Sequence[str]) -> None:
        raise StoreError("connection refused (test)", kind="connection", refused=True)

    async def aclose(self) -> None:
        pass


async def test_a_store_outage_under_fallback_raise_is_unavailable(config: RateLimitConfig) -> None:
    store = DownStore()
    service = RateLimitService(config, AsyncLimiter(store, fallback="raise", registry=None), registry=None)
    server = await start_grpc_server(service, port=0)
    try:
        async with aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = rls_pb2_grpc.RateLimitServiceStub(channel)  # type: ignore[no-untyped-call]
            error = await failure(stub, request([("user", "judy")]))
            assert error.code() == grpc.StatusCode.UNAVAILABLE
            assert error.details() == "the rate limit store is unavailable (connection)"
            assert store.calls >= 1
            # Decided without the store: still answered.
            assert (await call(stub, request([("nothing", "matches")]))).overall_code == Code.OK
    finally:
        await server.stop(0)
        await service.aclose()


class BrokenService:
    async def should_rate_limit(self, domain: str, descriptors: Sequence[Any], hits_addend: int = 1) -> Any:
        raise RuntimeError("a bug, with a secret: hunter2")


async def test_anything_else_is_internal_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    server = await start_grpc_server(cast("RateLimitService", BrokenService()), port=0)
    try:
        async with aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = rls_pb2_grpc.RateLimitServiceStub(channel)  # type: ignore[no-untyped-call]
            error = await failure(stub, request([("user", "x")]))
    finally:
        await server.stop(0)
    assert error.code() == grpc.StatusCode.INTERNAL
    assert error.details() == "internal error"  # nothing of the exception reaches the client
    [record] = [record for record in caplog.records if record.name == "sluicegate.service"]
    assert record.exc_info is not None
    assert "hunter2" in str(record.exc_info[1])


# --- the server ----------------------------------------------------------------------------------


async def test_binds_loopback_by_default_and_refuses_a_taken_port(service: RateLimitService) -> None:
    server = await start_grpc_server(service, port=0)
    try:
        assert server.host == "127.0.0.1"
        assert server.port > 0
        assert repr(server) == f"<GrpcServer grpc://127.0.0.1:{server.port} serving>"
        with pytest.raises(ConfigError, match="cannot listen"):
            await start_grpc_server(service, port=server.port)
    finally:
        await server.stop(0)


async def test_a_bad_port_or_tls_file_is_a_config_error(service: RateLimitService, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="port"):
        await start_grpc_server(service, port=70_000)
    (tmp_path / "junk.pem").write_text("not a certificate")
    with pytest.raises(ConfigError, match="cert_file"):
        await start_grpc_server(service, port=0, tls=TlsConfig(tmp_path / "missing.pem", tmp_path / "junk.pem"))
    with pytest.raises(ConfigError, match="not a PEM file"):
        await start_grpc_server(service, port=0, tls=TlsConfig(tmp_path / "junk.pem", tmp_path / "junk.pem"))


class SlowService:
    """Answers OK once ``release`` is set; ``started`` is set when a call is waiting."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.release = asyncio.Event()

    async def should_rate_limit(self, domain: str, descriptors: Sequence[Any], hits_addend: int = 1) -> Any:
        self.started.set()
        await self.release.wait()
        return ServiceResponse("OK", (ServiceStatus("OK", None, 0, 0.0),) * len(descriptors), (), None)


async def test_stop_lets_calls_in_flight_finish_and_refuses_new_ones() -> None:
    slow = SlowService()
    server = await start_grpc_server(cast("RateLimitService", slow), port=0)
    async with aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = rls_pb2_grpc.RateLimitServiceStub(channel)  # type: ignore[no-untyped-call]
        in_flight = asyncio.ensure_future(call(stub, request([("user", "x")])))
        await asyncio.wait_for(slow.started.wait(), TIMEOUT)
        stopping = asyncio.ensure_future(server.stop(TIMEOUT))
        await asyncio.sleep(0)  # let stop() begin
        assert repr(server).endswith(" stopping>")
        slow.release.set()
        assert (await in_flight).overall_code == Code.OK
        await asyncio.wait_for(stopping, TIMEOUT)
        with pytest.raises(aio.AioRpcError) as refused:
            await call(stub, request([("user", "y")]))
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_health_check(server: GrpcServer, channel: aio.Channel) -> None:
    check = channel.unary_unary(
        HEALTH,
        request_serializer=wrappers_pb2.StringValue.SerializeToString,
        response_deserializer=lambda data: data,
    )
    # HealthCheckResponse{status: SERVING}: field 1, varint 1.
    assert await check(wrappers_pb2.StringValue(value=""), timeout=TIMEOUT) == b"\x08\x01"
    service = "envoy.service.ratelimit.v3.RateLimitService"
    assert await check(wrappers_pb2.StringValue(value=service), timeout=TIMEOUT) == b"\x08\x01"
    with pytest.raises(aio.AioRpcError) as caught:
        await check(wrappers_pb2.StringValue(value="some.Other"), timeout=TIMEOUT)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


# --- TLS -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def server_tls(ca: trustme.CA, tmp_path: Path) -> TlsConfig:
    cert = ca.issue_cert("localhost", "127.0.0.1")
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "server.pem"))
    for extra in cert.cert_chain_pems[1:]:
        extra.write_to_path(str(tmp_path / "server.pem"), append=True)
    cert.private_key_pem.write_to_path(str(tmp_path / "server.key"))
    return TlsConfig(tmp_path / "server.pem", tmp_path / "server.key")


def client_credentials(trusted: trustme.CA, *, cert_from: trustme.CA | None = None) -> grpc.ChannelCredentials:
    """A client trusting ``trusted``'s certificates, presenting one ``cert_from`` signed, if given."""
    if cert_from is None:
        return grpc.ssl_channel_credentials(root_certificates=trusted.cert_pem.bytes())
    client = cert_from.issue_cert("client.example")
    return grpc.ssl_channel_credentials(
        root_certificates=trusted.cert_pem.bytes(),
        private_key=client.private_key_pem.bytes(),
        certificate_chain=b"".join(pem.bytes() for pem in client.cert_chain_pems),
    )


async def decide_over(address: str, credentials: grpc.ChannelCredentials | None) -> rls_pb2.RateLimitResponse:
    channel = aio.insecure_channel(address) if credentials is None else aio.secure_channel(address, credentials)
    async with channel:
        stub = rls_pb2_grpc.RateLimitServiceStub(channel)  # type: ignore[no-untyped-call]
        return await call(stub, request([("user", "tls")]))


async def test_tls(service: RateLimitService, server_tls: TlsConfig, ca: trustme.CA) -> None:
    server = await start_grpc_server(service, port=0, tls=server_tls)
    address = f"127.0.0.1:{server.port}"
    try:
        assert repr(server).startswith("<GrpcServer grpcs://")
        response = await decide_over(address, client_credentials(ca))
        assert response.overall_code == Code.OK
        with pytest.raises(aio.AioRpcError) as plaintext:
            await decide_over(address, None)
        assert plaintext.value.code() == grpc.StatusCode.UNAVAILABLE
        with pytest.raises(aio.AioRpcError) as untrusted:  # a server certificate from another CA
            await decide_over(address, client_credentials(trustme.CA()))
        assert untrusted.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await server.stop(0)


async def test_mutual_tls_refuses_a_client_without_a_certificate(
    service: RateLimitService, server_tls: TlsConfig, ca: trustme.CA, tmp_path: Path
) -> None:
    ca.cert_pem.write_to_path(str(tmp_path / "clients-ca.pem"))
    mtls = TlsConfig(server_tls.cert_file, server_tls.key_file, client_ca_file=tmp_path / "clients-ca.pem")
    server = await start_grpc_server(service, port=0, tls=mtls)
    address = f"127.0.0.1:{server.port}"
    try:
        response = await decide_over(address, client_credentials(ca, cert_from=ca))
        assert response.overall_code == Code.OK
        with pytest.raises(aio.AioRpcError) as without:
            await decide_over(address, client_credentials(ca))
        assert without.value.code() == grpc.StatusCode.UNAVAILABLE
        with pytest.raises(aio.AioRpcError) as foreign:  # a certificate the server's client CA did not sign
            await decide_over(address, client_credentials(ca, cert_from=trustme.CA()))
        assert foreign.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await server.stop(0)


# --- wire compatibility: field numbers checked against hand-encoded protobuf ---------------------


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def field(number: int, value: int | bytes | str) -> bytes:
    """One field as protobuf encodes it: a varint (wire type 0) or length-delimited (type 2)."""
    if isinstance(value, int):
        return varint(number << 3) + varint(value)
    data = value.encode() if isinstance(value, str) else value
    return varint(number << 3 | 2) + varint(len(data)) + data


def decode(data: bytes) -> list[tuple[int, int | bytes]]:
    """A message's fields as (number, value) in wire order: varints as int, the rest as bytes."""
    fields: list[tuple[int, int | bytes]] = []
    position = 0

    def read_varint() -> int:
        nonlocal position
        result = shift = 0
        while True:
            byte = data[position]
            position += 1
            result |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return result

    while position < len(data):
        tag = read_varint()
        number, wire_type = tag >> 3, tag & 7
        if wire_type == 0:
            fields.append((number, read_varint()))
        elif wire_type == 2:
            length = read_varint()
            fields.append((number, data[position : position + length]))
            position += length
        else:
            raise AssertionError(f"unexpected wire type {wire_type} for field {number}")
    return fields


# What Envoy sends for a route with a remote_address action, a descriptor-level override of
# 10/minute and a descriptor hits_addend of 3, with the request's hits_addend 2, written field by
# field from rls.proto's and ratelimit.proto's numbers.
ENVOY_REQUEST = (
    field(1, "edge")  # RateLimitRequest.domain = 1
    + field(
        2,  # RateLimitRequest.descriptors = 2: RateLimitDescriptor
        field(1, field(1, "remote_address") + field(2, "10.0.0.1"))  # entries = 1: Entry{key = 1, value = 2}
        + field(2, field(1, 10) + field(2, 2))  # limit = 2: {requests_per_unit = 1, unit = 2 (MINUTE)}
        + field(3, field(1, 3)),  # hits_addend = 3: UInt64Value{value = 1}
    )
    + field(2, field(1, field(1, "user") + field(2, "kim")))
    + field(2, field(1, field(1, "nothing") + field(2, "matches")))
    + field(3, 2)  # RateLimitRequest.hits_addend = 3
)


def test_the_generated_request_matches_hand_encoded_protobuf() -> None:
    message = rls_pb2.RateLimitRequest(domain="edge", hits_addend=2)
    descriptor = message.descriptors.add()
    descriptor.entries.add(key="remote_address", value="10.0.0.1")
    descriptor.limit.requests_per_unit = 10
    descriptor.limit.unit = ratelimit_unit_pb2.RateLimitUnit.MINUTE
    descriptor.hits_addend.value = 3
    message.descriptors.add().entries.add(key="user", value="kim")
    message.descriptors.add().entries.add(key="nothing", value="matches")
    assert message.SerializeToString(deterministic=True) == ENVOY_REQUEST

    parsed = rls_pb2.RateLimitRequest.FromString(ENVOY_REQUEST)
    assert parsed == message
    assert len(unknown_fields.UnknownFieldSet(parsed)) == 0


def test_names_and_enum_numbers_are_envoys() -> None:
    assert rls_pb2.DESCRIPTOR.package == "envoy.service.ratelimit.v3"
    service = rls_pb2.DESCRIPTOR.services_by_name["RateLimitService"]
    assert service.full_name == "envoy.service.ratelimit.v3.RateLimitService"
    method = service.methods_by_name["ShouldRateLimit"]
    assert method.input_type.full_name == "envoy.service.ratelimit.v3.RateLimitRequest"
    assert method.output_type.full_name == "envoy.service.ratelimit.v3.RateLimitResponse"
    descriptor = ratelimit_pb2.RateLimitDescriptor.DESCRIPTOR
    assert descriptor.full_name == "envoy.extensions.common.ratelimit.v3.RateLimitDescriptor"
    assert base_pb2.HeaderValue.DESCRIPTOR.full_name == "envoy.config.core.v3.HeaderValue"
    assert dict(Code.items()) == {"UNKNOWN": 0, "OK": 1, "OVER_LIMIT": 2}
    assert dict(Unit.items()) == {
        "UNKNOWN": 0,
        "SECOND": 1,
        "MINUTE": 2,
        "HOUR": 3,
        "DAY": 4,
        "MONTH": 5,
        "YEAR": 6,
        "WEEK": 7,
    }
    assert dict(ratelimit_unit_pb2.RateLimitUnit.items()) == {
        "UNKNOWN": 0,
        "SECOND": 1,
        "MINUTE": 2,
        "HOUR": 3,
        "DAY": 4,
        "MONTH": 5,
        "YEAR": 6,
    }


async def test_envoy_encoded_bytes_in_and_the_response_decoded_by_field_number(channel: aio.Channel) -> None:
    raw: aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(METHOD)  # bytes in, bytes out
    answer: bytes = await raw(ENVOY_REQUEST, timeout=TIMEOUT)
    fields = decode(answer)

    assert fields[0] == (1, 1)  # overall_code = 1: OK
    statuses = [decode(cast("bytes", value)) for number, value in fields if number == 2]  # statuses = 2
    assert len(statuses) == 3
    override, user, unmatched = statuses
    assert override[0] == (1, 1)  # DescriptorStatus.code = 1: OK
    current_limit = dict(decode(cast("bytes", dict(override)[2])))  # current_limit = 2
    assert current_limit == {1: 10, 2: 2}  # requests_per_unit = 1, unit = 2 (MINUTE); no name (3)
    assert dict(override)[3] == 7  # limit_remaining = 3: 10 - hits_addend 3
    reset = dict(decode(cast("bytes", dict(override)[4])))  # duration_until_reset = 4: Duration
    assert 0 < cast("int", reset.get(1, 0)) + cast("int", reset.get(2, 0)) / 1e9 <= 60  # seconds = 1, nanos = 2
    assert user[0] == (1, 1)
    assert dict(decode(cast("bytes", dict(user)[2]))) == {1: 2, 2: 2, 3: b"per_user"}  # RateLimit.name = 3
    assert 3 not in dict(user)  # limit_remaining 0 (2/minute, hits_addend 2): proto3 leaves a zero out
    assert unmatched == [(1, 1)]  # OK; no current_limit, limit_remaining 0 and no duration_until_reset

    added = [dict(decode(cast("bytes", value))) for number, value in fields if number == 3]  # response_headers_to_add
    names = {cast("bytes", header[1]).decode() for header in added}  # HeaderValue.key = 1
    assert "RateLimit" in names
    assert all(isinstance(header[2], bytes) and header[2] for header in added)  # HeaderValue.value = 2
    assert {number for number, _ in fields} <= {1, 2, 3}


# --- examples/envoy: Envoy's config and sluicegate's rules agree ----------------------------------


def envoy_config() -> dict[str, Any]:
    return cast("dict[str, Any]", yaml.safe_load((EXAMPLE / "envoy.yaml").read_text()))


def ratelimit_filter(envoy: Mapping[str, Any]) -> dict[str, Any]:
    [listener] = envoy["static_resources"]["listeners"]
    [manager] = listener["filter_chains"][0]["filters"]
    [found] = [f for f in manager["typed_config"]["http_filters"] if f["name"] == "envoy.filters.http.ratelimit"]
    return cast("dict[str, Any]", found["typed_config"])


def envoy_descriptors(
    envoy: Mapping[str, Any], path: str, client: str, request_headers: Mapping[str, str]
) -> list[list[tuple[str, str]]]:
    """The descriptors Envoy builds for a request, from the first matching route's rate_limits
    (the actions envoy.yaml uses: remote_address, generic_key, request_headers)."""
    [listener] = envoy["static_resources"]["listeners"]
    [manager] = listener["filter_chains"][0]["filters"]
    [host] = manager["typed_config"]["route_config"]["virtual_hosts"]
    route = next(
        r for r in host["routes"] if r["match"].get("path") == path or path.startswith(r["match"].get("prefix", "\0"))
    )
    descriptors = []
    for limit in route["route"].get("rate_limits", []):
        entries: list[tuple[str, str]] = []
        for action in limit["actions"]:
            [(kind, spec)] = action.items()
            if kind == "remote_address":
                entries.append(("remote_address", client))
            elif kind == "generic_key":
                entries.append((spec.get("descriptor_key", "generic_key"), spec["descriptor_value"]))
            elif kind == "request_headers":
                value = request_headers.get(spec["header_name"])
                if value is None:
                    break  # skip_if_absent: no descriptor
                entries.append((spec["descriptor_key"], value))
            else:
                raise AssertionError(f"envoy.yaml uses an action this test does not model: {kind}")
        else:
            descriptors.append(entries)
    return descriptors


def test_the_envoy_example_points_at_sluicegate() -> None:
    envoy = envoy_config()
    config = load(EXAMPLE / "ratelimit.yaml")
    ratelimit = ratelimit_filter(envoy)
    assert ratelimit["@type"] == "type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit"
    assert config.domains == (ratelimit["domain"],)
    service = ratelimit["rate_limit_service"]
    assert service["transport_api_version"] == "V3"
    clusters = {cluster["name"]: cluster for cluster in envoy["static_resources"]["clusters"]}
    cluster = clusters[service["grpc_service"]["envoy_grpc"]["cluster_name"]]
    options = cluster["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    assert "http2_protocol_options" in options["explicit_http_config"]  # gRPC is HTTP/2
    [endpoint] = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
    assert endpoint["endpoint"]["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 8081}
    [health] = cluster["health_checks"]
    assert health["grpc_health_check"]["service_name"] == SERVICE_NAME


async def test_the_envoy_example_decides_what_its_readme_says(clock: FakeClock) -> None:
    envoy = envoy_config()
    config = load(EXAMPLE / "ratelimit.yaml")
    service = RateLimitService(config, AsyncLimiter("memory://", clock=clock, registry=None), registry=None)
    server = await start_grpc_server(service, port=0)
    domain = ratelimit_filter(envoy)["domain"]
    try:
        async with aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = rls_pb2_grpc.RateLimitServiceStub(channel)  # type: ignore[no-untyped-call]

            async def codes(path: str, client: str, headers: Mapping[str, str] | None = None) -> list[int]:
                descriptors = envoy_descriptors(envoy, path, client, headers or {})
                response = await call(stub, request(*descriptors, domain=domain))
                assert len(response.statuses) == len(descriptors)
                return [response.overall_code, *(status.code for status in response.statuses)]

            search = envoy_descriptors(envoy, "/search", "203.0.113.7", {"x-api-key": "k1"})
            assert search == [
                [("remote_address", "203.0.113.7")],
                [("path", "search"), ("remote_address", "203.0.113.7")],
                [("api_key", "k1")],
            ]
            # /search: 5 per minute per client (within one second's 10 per address).
            for _ in range(5):
                assert await codes("/search", "203.0.113.7", {"x-api-key": "k1"}) == [Code.OK] * 4
            over = await codes("/search", "203.0.113.7", {"x-api-key": "k1"})
            assert over == [Code.OVER_LIMIT, Code.OK, Code.OVER_LIMIT, Code.OK]
            # /: 10 per second per address; the 6th request above charged nothing, so 5 remain.
            for _ in range(5):
                assert (await codes("/", "203.0.113.7"))[0] == Code.OK
            assert (await codes("/", "203.0.113.7"))[0] == Code.OVER_LIMIT
            clock.advance(1)
            assert (await codes("/", "203.0.113.7"))[0] == Code.OK
            # /healthz: matched by an unlimited rule, never limited.
            for _ in range(20):
                assert await codes("/healthz", "203.0.113.7") == [Code.OK, Code.OK]
    finally:
        await server.stop(0)
        await service.aclose()
