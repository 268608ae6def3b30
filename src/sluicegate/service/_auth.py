"""The descriptors ``GET /v1/auth`` builds from a forwarded request (nginx ``auth_request``,
Traefik ``ForwardAuth``), as ``SLUICEGATE_AUTH_DESCRIPTORS`` says.

The setting lists descriptors separated by ``;``, each a comma-separated list of entries, each
``[key=]source`` (the key defaults to the source's name, for a header its lower-cased name)::

    remote_address; method,path; api_key=header:x-api-key; plan=const:free

Sources, read from the auth request (the gateway copies the client's headers onto it):

- ``remote_address``: the client's address, from the socket peer or, when the peer is a trusted
  proxy, from ``X-Forwarded-For`` (or ``Forwarded``) walked right to left (``_forwarded``);
  IPv6 clients counted per /64;
- ``method``: ``X-Original-Method`` (nginx, set in its config), else ``X-Forwarded-Method`` (Traefik);
- ``path``: ``X-Original-URI`` (nginx ``$request_uri``), else ``X-Forwarded-Uri`` (Traefik), the
  query string cut off (a new query must not make a new bucket);
- ``host``: ``X-Forwarded-Host``, else ``Host``;
- ``header:<name>``: that request header;
- ``const:<value>``: a fixed value (Envoy's ``generic_key``).

A descriptor whose source is missing or empty is left out, as Envoy leaves out a descriptor
whose action finds no value. Values longer than the service accepts (a client-chosen header)
are replaced by a SHA-256 digest, so each still counts on its own.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from .._errors import ConfigError, describe
from .._forwarded import ForwardedHeader, TrustedProxies, address_key, client_address
from .service import MAX_DESCRIPTOR_CHARS, MAX_DESCRIPTORS, MAX_ENTRIES, MAX_KEY_CHARS, MAX_VALUE_CHARS

__all__ = ["AuthDescriptors"]

_SOURCES: Final = ("remote_address", "method", "path", "host")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,128}")  # an RFC 9110 token
_FALLBACK_HEADERS: Final = {
    "method": ("x-original-method", "x-forwarded-method"),
    "path": ("x-original-uri", "x-forwarded-uri"),
    "host": ("x-forwarded-host", "host"),
}


@dataclass(frozen=True, slots=True)
class _Entry:
    key: str
    source: str  # one of _SOURCES, "header", "const"
    argument: str = ""  # the header name (lower case) or the constant


class AuthDescriptors:
    """The parsed setting; ``build`` turns one auth request into descriptors."""

    __slots__ = ("_descriptors", "_header", "_ipv6_prefix", "_trusted", "spec")

    def __init__(
        self,
        spec: str,
        *,
        trusted_proxies: TrustedProxies,
        forwarded_header: ForwardedHeader = "x-forwarded-for",
        ipv6_prefix: int = 64,
    ) -> None:
        self.spec = spec
        self._trusted = trusted_proxies
        self._header: ForwardedHeader = forwarded_header
        self._ipv6_prefix = ipv6_prefix
        self._descriptors = _parse(spec)

    def __repr__(self) -> str:
        return f"AuthDescriptors({self.spec!r})"

    def build(self, peer: str | None, headers: Mapping[str, str]) -> list[list[tuple[str, str]]]:
        """The descriptors for a request from ``peer`` with ``headers`` (lower-case names)."""
        built = []
        for entries in self._descriptors:
            descriptor = []
            for entry in entries:
                value = self._value(entry, peer, headers)
                if not value:
                    break
                descriptor.append((entry.key, _digest(value) if len(value) > MAX_VALUE_CHARS else value))
            else:
                built.append(_fitted(descriptor))
        return built

    def _value(self, entry: _Entry, peer: str | None, headers: Mapping[str, str]) -> str | None:
        if entry.source == "remote_address":
            address = client_address(peer, headers, self._trusted, header=self._header)
            return None if address is None else address_key(address, ipv6_prefix=self._ipv6_prefix)
        if entry.source == "header":
            return headers.get(entry.argument)
        if entry.source == "const":
            return entry.argument
        for name in _FALLBACK_HEADERS[entry.source]:
            value = headers.get(name)
            if value:
                return value.partition("?")[0] if entry.source == "path" else value
        return None


def _parse(spec: str) -> tuple[tuple[_Entry, ...], ...]:
    where = "SLUICEGATE_AUTH_DESCRIPTORS"
    descriptors = []
    for text in spec.split(";"):
        if not text.strip():
            continue
        entries = []
        for part in text.split(","):
            part = part.strip()
            key, equals, source = part.partition("=")
            if not equals:
                key, source = "", part
            key, source = key.strip(), source.strip()
            entry = _entry(key, source, where)
            entries.append(entry)
        if len(entries) > MAX_ENTRIES:
            raise ConfigError(f"{where}: a descriptor has {len(entries)} entries; at most {MAX_ENTRIES}")
        descriptors.append(tuple(entries))
    if not descriptors:
        raise ConfigError(f"{where}: no descriptors in {describe(spec)}; e.g. 'remote_address'")
    if len(descriptors) > MAX_DESCRIPTORS:
        raise ConfigError(f"{where}: {len(descriptors)} descriptors; at most {MAX_DESCRIPTORS}")
    return tuple(descriptors)


def _entry(key: str, source: str, where: str) -> _Entry:
    kind, colon, argument = source.partition(":")
    if source in _SOURCES:
        entry = _Entry(key or source, source)
    elif colon and kind == "header" and _HEADER_NAME.fullmatch(argument):
        entry = _Entry(key or argument.lower(), "header", argument.lower())
    elif colon and kind == "const" and argument and len(argument) <= MAX_VALUE_CHARS:
        if not key:
            raise ConfigError(f"{where}: {describe(source)} needs a key: name=const:value")
        entry = _Entry(key, "const", argument)
    else:
        raise ConfigError(
            f"{where}: unknown source {describe(source)}; expected remote_address, method, path, host, "
            "header:<name> or const:<value>, optionally as key=source"
        )
    if not entry.key or len(entry.key) > MAX_KEY_CHARS:
        raise ConfigError(f"{where}: key {describe(entry.key)} must be 1..{MAX_KEY_CHARS} characters")
    return entry


def _digest(value: str) -> str:
    """A long request value's stand-in: same value, same bucket; bounded length."""
    return "sha256:" + hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()


_DIGEST_CHARS = len(_digest(""))


def _fitted(descriptor: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """``descriptor`` within the service's total-length bound: values a client sent at full
    length can add up past it, which must cost the client a bucket, not the gateway a 400."""
    if sum(len(key) + len(value) for key, value in descriptor) <= MAX_DESCRIPTOR_CHARS:
        return descriptor
    return [(key, _digest(value) if len(value) > _DIGEST_CHARS else value) for key, value in descriptor]
