"""Envoy's rate limit service (RLS v3) over gRPC: proto ⇄ service types, nothing else.

``start_grpc_server(service, host=..., port=...)`` serves
``envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit``, what Envoy's
``envoy.filters.http.ratelimit`` filter calls (``transport_api_version: V3``), on a ``grpc.aio``
server. Each call becomes one ``RateLimitService.should_rate_limit``; this module only translates:

- request: ``domain``; each descriptor's entries as ``(key, value)`` pairs, its ``limit``
  override (``RateLimitOverride``: requests per unit of an ``envoy.type.v3.RateLimitUnit``,
  applied whatever the config says, as envoyproxy/ratelimit does) and its ``hits_addend``
  (``UInt64Value``; when set, it wins over the request's); the request's ``hits_addend``
  (0 means 1). The service validates all of it.
- response: ``overall_code``; one status per descriptor with ``current_limit`` (requests per
  unit, unit, rule name), ``limit_remaining`` and ``duration_until_reset``; the service's
  ``RateLimit``/``RateLimit-Policy``/``Retry-After`` headers in ``response_headers_to_add``, for
  Envoy to add to the client's response.
- errors: ``InputError`` (unknown domain, malformed descriptor) is ``INVALID_ARGUMENT`` with the
  service's message, cut to ``MAX_DETAILS_CHARS``; ``StoreError`` (a store outage under fallback
  ``"raise"``) is ``UNAVAILABLE``; anything else is ``INTERNAL``, logged with its traceback, the
  client told nothing more. Envoy applies its ``failure_mode_deny`` to all three.

The server binds 127.0.0.1 unless told otherwise, serves plaintext, TLS, or mutual TLS
(``TlsConfig``), accepts messages of at most ``MAX_MESSAGE_BYTES``, and never shares its port with
another process (``SO_REUSEPORT`` off, so a second server on a taken port fails instead of
silently splitting the traffic) but its own workers (``sluicegate serve --workers``, whose
supervisor checks the port is free before they bind it). It also answers the standard health check,
``grpc.health.v1.Health/Check`` (what Envoy's gRPC health checker and ``grpc_health_probe``
call): SERVING for ``""`` and the RLS service name, NOT_FOUND for any other; once ``stop`` begins,
new calls, health checks included, are refused, and a check still in flight says NOT_SERVING.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import grpc
from google.protobuf import wrappers_pb2
from grpc import aio

from .._errors import ConfigError, InputError, StoreError, describe
from .config import Descriptor, LimitOverride
from .proto.envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc

if TYPE_CHECKING:
    from .service import DescriptorStatus, RateLimitResponse, RateLimitService

__all__ = [
    "HEALTH_SERVICE",
    "MAX_DETAILS_CHARS",
    "MAX_MESSAGE_BYTES",
    "SERVICE_NAME",
    "GrpcServer",
    "RateLimitServicer",
    "TlsConfig",
    "start_grpc_server",
]

log = logging.getLogger("sluicegate.service")

#: The fully qualified name of the service Envoy calls.
SERVICE_NAME: Final = "envoy.service.ratelimit.v3.RateLimitService"
#: The standard gRPC health service.
HEALTH_SERVICE: Final = "grpc.health.v1.Health"
#: Largest request or response: gRPC refuses a larger one (RESOURCE_EXHAUSTED) before it is parsed.
#: Envoy's requests are a few hundred bytes; this is tighter than the service's own bounds added
#: up (64 descriptors of up to 3 KiB of entries), which only a hostile client would reach.
MAX_MESSAGE_BYTES: Final = 64 * 1024
#: Longest status message sent back: an error names the bad field, never echoes a whole request.
MAX_DETAILS_CHARS: Final = 512
_UINT32_MAX: Final = 2**32 - 1

_Code = rls_pb2.RateLimitResponse.Code
_Unit = rls_pb2.RateLimitResponse.RateLimit.Unit
_CODES: Final = {"OK": _Code.OK, "OVER_LIMIT": _Code.OVER_LIMIT}
#: DescriptorStatus.limit's unit names to rls.proto's; any other (none today) is UNKNOWN.
_UNITS: Final = {
    "SECOND": _Unit.SECOND,
    "MINUTE": _Unit.MINUTE,
    "HOUR": _Unit.HOUR,
    "DAY": _Unit.DAY,
    "WEEK": _Unit.WEEK,
    "MONTH": _Unit.MONTH,
    "YEAR": _Unit.YEAR,
}
#: Looked up once: an enum wrapper's attribute access runs Python code on every call.
_UNKNOWN_UNIT: Final = _Unit.UNKNOWN
#: envoy.type.v3.RateLimitUnit (a descriptor's limit override) to the config's unit names. An
#: UNKNOWN or undefined unit goes to the service as "unknown" / "unit N", which it refuses.
_OVERRIDE_UNITS: Final = {1: "second", 2: "minute", 3: "hour", 4: "day", 5: "month", 6: "year"}

# grpc.health.v1 messages without a generated module (and so without registering a second
# grpc.health.v1 in the default descriptor pool when grpcio-health-checking is loaded too):
# HealthCheckRequest {string service = 1} has StringValue's wire format, HealthCheckResponse
# {ServingStatus status = 1} Int32Value's (an enum is a varint).
_SERVING, _NOT_SERVING = 1, 2


# --- request and response translation ------------------------------------------------------------


def request_arguments(request: rls_pb2.RateLimitRequest) -> tuple[str, list[Descriptor], int]:
    """``(domain, descriptors, hits_addend)`` for ``RateLimitService.should_rate_limit``."""
    descriptors = []
    for descriptor in request.descriptors:
        entries = tuple((entry.key, entry.value) for entry in descriptor.entries)
        limit = None
        if descriptor.HasField("limit"):
            unit = descriptor.limit.unit
            name = _OVERRIDE_UNITS.get(unit, "unknown" if unit == 0 else f"unit {unit}")
            limit = LimitOverride(descriptor.limit.requests_per_unit, name)
        hits = descriptor.hits_addend.value if descriptor.HasField("hits_addend") else None
        descriptors.append(Descriptor(entries, limit, hits))
    return request.domain, descriptors, request.hits_addend


def response_message(response: RateLimitResponse) -> rls_pb2.RateLimitResponse:
    """The service's answer as rls.proto's ``RateLimitResponse``."""
    message = rls_pb2.RateLimitResponse(overall_code=_CODES[response.overall_code])
    for status in response.statuses:
        _add_status(message.statuses.add(), status)
    for key, value in response.headers:
        message.response_headers_to_add.add(key=key, value=value)  # built in place: no copy
    return message


def _add_status(message: rls_pb2.RateLimitResponse.DescriptorStatus, status: DescriptorStatus) -> None:
    message.code = _CODES[status.code]
    if status.limit is not None:
        requests_per_unit, unit, name = status.limit
        current_limit = message.current_limit
        current_limit.requests_per_unit = _uint32(requests_per_unit)
        current_limit.unit = _UNITS.get(unit, _UNKNOWN_UNIT)
        if name:
            current_limit.name = name
    message.limit_remaining = _uint32(status.limit_remaining)
    if status.limit is not None or status.duration_until_reset > 0:  # none for a descriptor no rule limits
        message.duration_until_reset.FromNanoseconds(max(round(status.duration_until_reset * 1e9), 0))


def _uint32(value: int) -> int:
    return min(max(value, 0), _UINT32_MAX)


def _details(exc: BaseException) -> str:
    text = str(exc)
    return text if len(text) <= MAX_DETAILS_CHARS else text[: MAX_DETAILS_CHARS - 3] + "..."


# --- the servicer ----------------------------------------------------------------------------------


class RateLimitServicer(rls_pb2_grpc.RateLimitServiceServicer):
    """``ShouldRateLimit`` on a ``RateLimitService``."""

    __slots__ = ("service",)

    def __init__(self, service: RateLimitService) -> None:
        self.service = service

    def __repr__(self) -> str:
        return f"<RateLimitServicer {self.service!r}>"

    async def ShouldRateLimit(  # rls.proto's name
        self, request: rls_pb2.RateLimitRequest, context: aio.ServicerContext[Any, Any]
    ) -> rls_pb2.RateLimitResponse:
        # Decide, then abort outside the try: abort() raises, and must not land in `except Exception`.
        try:
            domain, descriptors, hits_addend = request_arguments(request)
            response = await self.service.should_rate_limit(domain, descriptors, hits_addend)
            return response_message(response)
        except InputError as exc:
            code, details = grpc.StatusCode.INVALID_ARGUMENT, _details(exc)
        except StoreError as exc:
            # Not logged per call: an outage would flood the log; the limiter counts store errors.
            code, details = grpc.StatusCode.UNAVAILABLE, f"the rate limit store is unavailable ({exc.kind})"
        except Exception:
            log.exception("sluicegate: ShouldRateLimit for domain %s failed", describe(request.domain))
            code, details = grpc.StatusCode.INTERNAL, "internal error"
        await context.abort(code, details)
        raise AssertionError("unreachable: abort raises")  # pragma: no cover


class _Health:
    """``grpc.health.v1.Health/Check`` for the RLS service, on raw wrapper messages."""

    __slots__ = ("serving",)

    def __init__(self) -> None:
        self.serving = True

    async def check(self, request: wrappers_pb2.StringValue, context: aio.ServicerContext[Any, Any]) -> Any:
        if request.value not in ("", SERVICE_NAME):
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {describe(request.value)}")
        return wrappers_pb2.Int32Value(value=_SERVING if self.serving else _NOT_SERVING)

    def handler(self) -> grpc.GenericRpcHandler:
        check = grpc.unary_unary_rpc_method_handler(
            self.check,
            request_deserializer=wrappers_pb2.StringValue.FromString,
            response_serializer=wrappers_pb2.Int32Value.SerializeToString,
        )
        return grpc.method_handlers_generic_handler(HEALTH_SERVICE, {"Check": check})


# --- the server ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """Server TLS from PEM files: ``cert_file`` (the certificate chain) and ``key_file``. With
    ``client_ca_file``, mutual TLS: a client must present a certificate that CA signed, or the
    handshake fails."""

    cert_file: str | os.PathLike[str]
    key_file: str | os.PathLike[str]
    client_ca_file: str | os.PathLike[str] | None = None

    def credentials(self) -> grpc.ServerCredentials:
        """The gRPC server credentials; ``ConfigError`` when a file cannot be read."""
        cert = _read(self.cert_file, "cert_file")
        key = _read(self.key_file, "key_file")
        client_ca = None if self.client_ca_file is None else _read(self.client_ca_file, "client_ca_file")
        return grpc.ssl_server_credentials(
            [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
        )


def _read(path: str | os.PathLike[str], what: str) -> bytes:
    try:
        with open(path, "rb") as file:
            data = file.read(1 << 20)
    except OSError as exc:
        raise ConfigError(f"TLS {what} {describe(os.fspath(path))}: {exc.strerror or exc}") from None
    if b"-----BEGIN " not in data:
        raise ConfigError(f"TLS {what} {describe(os.fspath(path))}: not a PEM file")
    return data


class GrpcServer:
    """A running gRPC server: ``port`` is the one bound (useful with port 0); ``stop`` ends it."""

    __slots__ = ("_health", "_server", "host", "port", "tls")

    def __init__(self, server: aio.Server, health: _Health, host: str, port: int, tls: bool) -> None:
        self._server = server
        self._health = health
        self.host = host
        self.port = port
        self.tls = tls

    def __repr__(self) -> str:
        scheme = "grpcs" if self.tls else "grpc"
        state = "serving" if self._health.serving else "stopping"
        return f"<GrpcServer {scheme}://{_address(self.host, self.port)} {state}>"

    async def stop(self, grace: float | None = 5.0) -> None:
        """Refuse new calls, let calls in flight finish for up to ``grace`` seconds (None: wait
        for them all), then cancel the rest. A health check in flight answers NOT_SERVING."""
        self._health.serving = False
        await self._server.stop(grace)

    async def wait_for_termination(self) -> None:
        """Return once the server has stopped."""
        await self._server.wait_for_termination()


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


async def start_grpc_server(
    service: RateLimitService,
    *,
    host: str = "127.0.0.1",
    port: int = 8081,
    tls: TlsConfig | None = None,
    max_concurrent_rpcs: int | None = 10_000,
    reuse_port: bool = False,
) -> GrpcServer:
    """Serve ``service`` over Envoy's RLS v3 gRPC API on ``host:port`` (port 0: any free one;
    the returned server's ``port`` says which). ``tls``: TLS or mutual TLS, else plaintext.
    ``max_concurrent_rpcs``: calls beyond it are refused with RESOURCE_EXHAUSTED rather than
    queued (Envoy's filter gives up after its timeout, 20 ms by default, anyway).
    ``reuse_port``: share the port with the other workers of one ``sluicegate serve``.

    Raises ``ConfigError`` when the port cannot be bound or a TLS file cannot be read.
    """
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65_535:
        raise ConfigError(f"port must be an int in 0..65535; got {describe(port)}")
    credentials = None if tls is None else tls.credentials()
    health = _Health()
    server = aio.server(
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", int(reuse_port)),
        ],
        maximum_concurrent_rpcs=max_concurrent_rpcs,
    )
    servicer = RateLimitServicer(service)
    rls_pb2_grpc.add_RateLimitServiceServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    server.add_generic_rpc_handlers((health.handler(),))
    address = _address(host, port)
    try:
        if credentials is None:
            bound = server.add_insecure_port(address)
        else:
            bound = server.add_secure_port(address, credentials)
    except RuntimeError as exc:  # grpcio raises, or returns 0, for an address it cannot bind
        failure: str | None = f": {exc}"
    else:
        failure = None if bound else ""
    if failure is not None:
        await server.stop(None)
        raise ConfigError(f"cannot listen on {address} for gRPC{failure}")
    await server.start()
    return GrpcServer(server, health, host, bound, tls is not None)
