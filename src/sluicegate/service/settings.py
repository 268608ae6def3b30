"""``Settings`` of ``sluicegate serve``: one frozen value, read from ``SLUICEGATE_*`` environment
variables (as envoyproxy/ratelimit reads its settings), each overridable by a command-line flag.

=============================== ======================= ===================================================
variable                        default                 meaning
=============================== ======================= ===================================================
SLUICEGATE_HOST                 127.0.0.1               HTTP (and gRPC) bind address; loopback unless told
SLUICEGATE_PORT                 8080                    HTTP port (0: any free port)
SLUICEGATE_METRICS_PORT         (none)                  also serve /metrics alone here (no token: keep internal)
SLUICEGATE_METRICS_HOST         127.0.0.1               ... bound here
SLUICEGATE_GRPC_PORT            (none)                  start the gRPC server (Envoy RLS) on this port
SLUICEGATE_GRPC_TLS_CERT        (none: plaintext)       gRPC server certificate chain (PEM); needs the key
SLUICEGATE_GRPC_TLS_KEY         (none)                  ... its private key (PEM)
SLUICEGATE_GRPC_TLS_CLIENT_CA   (none)                  mutual TLS: clients must present a cert this CA signed
SLUICEGATE_REDIS_URL            (none: memory://)       store URL: redis://, rediss://, unix://, cluster...
SLUICEGATE_CONFIG               (none: built-in)        rule config file or directory (envoy YAML format)
SLUICEGATE_PREFIX               sluicegate              store key prefix
SLUICEGATE_TIMEOUT              0.05                    seconds a store call may take
SLUICEGATE_FALLBACK             local                   default fallback: local, allow, deny, raise
SLUICEGATE_FALLBACK_SHARE       1.0                     local fallback's share of each limit (1/N instances)
SLUICEGATE_WORKERS              1                       serving processes sharing the ports (needs Redis)
SLUICEGATE_SHADOW_MODE          false                   report every rule's denials, enforce none
SLUICEGATE_AUTH_TOKEN           (none)                  bearer token every HTTP call but /healthz needs
SLUICEGATE_AUTH_TOKEN_FILE      (none)                  ... read from this file instead (first line)
SLUICEGATE_TRUSTED_PROXIES      127.0.0.1/32,::1/128    CIDRs whose X-Forwarded-For is believed ("": none)
SLUICEGATE_FORWARDED_HEADER     x-forwarded-for         or ``forwarded`` (RFC 7239): the one header read
SLUICEGATE_IPV6_PREFIX          64                      IPv6 clients are counted per /64
SLUICEGATE_AUTH_DOMAIN          (the config's only one) domain of /v1/auth requests
SLUICEGATE_AUTH_DESCRIPTORS     remote_address          descriptors /v1/auth builds (see ``_auth``)
SLUICEGATE_AUTH_DENY_STATUS     403                     /v1/auth over the limit: 403 (nginx) or 429 (Traefik)
SLUICEGATE_ADHOC_POLICIES       true                    /v1/check accepts {"key", "policy"} requests
SLUICEGATE_RELOAD_INTERVAL      1.0                     seconds between config mtime polls (0: SIGHUP only)
SLUICEGATE_DRAIN_TIMEOUT        10                      seconds SIGTERM waits for in-flight requests
SLUICEGATE_HEADER_TIMEOUT       10                      seconds a request's headers may take to arrive
SLUICEGATE_BODY_TIMEOUT         10                      seconds its body may take after them
SLUICEGATE_KEEPALIVE_TIMEOUT    60                      seconds an idle connection stays open
SLUICEGATE_LOG_FORMAT           text                    text or json (one JSON object per line)
SLUICEGATE_LOG_LEVEL            info                    debug, info, warning, error
=============================== ======================= ===================================================

A bad value is a ``ConfigError`` naming the variable (or flag) and what it accepts.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any, Final, Literal

from .._errors import ConfigError, describe
from .._forwarded import ForwardedHeader, TrustedProxies
from ..limiter import FALLBACKS, Fallback

__all__ = ["ENV_PREFIX", "MAX_WORKERS", "Settings"]

ENV_PREFIX: Final = "SLUICEGATE_"
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")
LogFormat = Literal["text", "json"]


def _port(text: str) -> int:
    if not text.isascii() or not text.isdigit() or not 0 <= int(text) <= 65_535:
        raise ValueError("a port number in 0..65535")
    return int(text)


def _optional_port(text: str) -> int | None:
    return None if text == "" else _port(text)


def _seconds(low: float, high: float) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not low <= value <= high:  # NaN fails too
            raise ValueError(f"seconds in {low:g}..{high:g}")
        return value

    return parse


def _positive_seconds(high: float) -> Callable[[str], float]:
    within = _seconds(0, high)

    def parse(text: str) -> float:
        value = within(text)
        if value <= 0:
            raise ValueError(f"seconds in (0, {high:g}]")
        return value

    return parse


def _share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value <= 1:
        raise ValueError("a number in (0, 1]")
    return value


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError("true or false (1/0, yes/no, on/off)")


def _choice(*options: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        lowered = text.strip().lower()
        if lowered not in options:
            raise ValueError(" or ".join(options))
        return lowered

    return parse


def _cidrs(text: str) -> tuple[str, ...]:
    cidrs = tuple(part.strip() for part in text.split(",") if part.strip())
    try:
        TrustedProxies(cidrs)
    except ConfigError as exc:
        raise ValueError(f"comma-separated CIDRs ({exc})") from None
    return cidrs


def _ipv6_prefix(text: str) -> int:
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= 128:
        raise ValueError("a prefix length in 1..128")
    return int(text)


#: More serving processes than this only adds context switches (each one is single-threaded).
MAX_WORKERS: Final = 64


def _workers(text: str) -> int:
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= MAX_WORKERS:
        raise ValueError(f"a number of processes in 1..{MAX_WORKERS}")
    return int(text)


def _deny_status(text: str) -> int:
    if text.strip() not in ("403", "429"):
        raise ValueError("403 or 429")
    return int(text)


def _text(text: str) -> str:
    return text


def _optional_text(text: str) -> str | None:
    return text or None


_PARSERS: Final[dict[str, Callable[[str], Any]]] = {
    "host": _text,
    "port": _port,
    "metrics_port": _optional_port,
    "metrics_host": _text,
    "grpc_port": _optional_port,
    "grpc_tls_cert": _optional_text,
    "grpc_tls_key": _optional_text,
    "grpc_tls_client_ca": _optional_text,
    "redis_url": _optional_text,
    "config": _optional_text,
    "prefix": _text,
    "timeout": _positive_seconds(60),
    "fallback": _choice(*FALLBACKS),
    "fallback_share": _share,
    "workers": _workers,
    "shadow_mode": _bool,
    "auth_token": _optional_text,
    "auth_token_file": _optional_text,
    "trusted_proxies": _cidrs,
    "forwarded_header": _choice("x-forwarded-for", "forwarded"),
    "ipv6_prefix": _ipv6_prefix,
    "auth_domain": _optional_text,
    "auth_descriptors": _text,
    "auth_deny_status": _deny_status,
    "adhoc_policies": _bool,
    "reload_interval": _seconds(0, 3600),
    "drain_timeout": _seconds(0, 3600),
    "header_timeout": _positive_seconds(3600),
    "body_timeout": _positive_seconds(3600),
    "keepalive_timeout": _positive_seconds(3600),
    "log_format": _choice("text", "json"),
    "log_level": _choice("debug", "info", "warning", "error"),
}


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything ``sluicegate serve`` is told (see the module docstring for each field)."""

    host: str = "127.0.0.1"
    port: int = 8080
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    grpc_port: int | None = None
    grpc_tls_cert: str | None = None
    grpc_tls_key: str | None = None
    grpc_tls_client_ca: str | None = None
    redis_url: str | None = None
    config: str | None = None
    prefix: str = "sluicegate"
    timeout: float = 0.05
    fallback: Fallback = "local"
    fallback_share: float = 1.0
    workers: int = 1
    shadow_mode: bool = False
    auth_token: str | None = dataclasses.field(default=None, repr=False)
    auth_token_file: str | None = None
    trusted_proxies: tuple[str, ...] = ("127.0.0.1/32", "::1/128")
    forwarded_header: ForwardedHeader = "x-forwarded-for"
    ipv6_prefix: int = 64
    auth_domain: str | None = None
    auth_descriptors: str = "remote_address"
    auth_deny_status: int = 403
    adhoc_policies: bool = True
    reload_interval: float = 1.0
    drain_timeout: float = 10.0
    header_timeout: float = 10.0
    body_timeout: float = 10.0
    keepalive_timeout: float = 60.0
    log_format: LogFormat = "text"
    log_level: str = "info"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        """Settings from ``SLUICEGATE_*`` variables of ``environ`` (default ``os.environ``), then
        ``overrides`` (already-typed values, e.g. from command-line flags; None means unset)."""
        environ = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for field in fields(cls):
            name = ENV_PREFIX + field.name.upper()
            if name in environ:
                values[field.name] = _parse(field.name, environ[name], name)
        for key, value in overrides.items():
            if key not in _PARSERS:
                raise ConfigError(f"unknown setting {describe(key)}")
            if value is not None:
                values[key] = _parse(key, value, "--" + key.replace("_", "-")) if isinstance(value, str) else value
        return cls(**values)  # type: ignore[arg-type]

    @property
    def store_url(self) -> str:
        return self.redis_url or "memory://"

    def token(self) -> str | None:
        """The bearer token: ``auth_token``, else the first line of ``auth_token_file``."""
        if self.auth_token:
            return self.auth_token
        if self.auth_token_file is None:
            return None
        try:
            with open(self.auth_token_file, encoding="utf-8") as file:
                token = file.readline().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"auth token file {describe(self.auth_token_file)}: {exc}") from None
        if not token:
            raise ConfigError(f"auth token file {describe(self.auth_token_file)} is empty")
        return token


def _parse(field: str, text: str, where: str) -> object:
    try:
        return _PARSERS[field](text)
    except ValueError as exc:
        raise ConfigError(f"{where}: expected {exc}; got {describe(text)}") from None
