"""Who is the client? The address a request came from, and the bucket it is counted in.

A request's socket peer is the only address nobody can forge. Behind a reverse proxy the peer is
the proxy, and the client is in ``X-Forwarded-For`` (or RFC 7239 ``Forwarded``), which anyone
can also send. So the header is read only when the peer is a trusted proxy, and it is walked
**right to left**: each proxy appends the address it saw, so the rightmost entries are the ones
our own proxies wrote, and the first untrusted address met is the client. Leftmost-first parsing
lets a client pick its own address, and with it a fresh rate-limit bucket per request.

Only one header is read, chosen by the deployment: a proxy that appends to ``X-Forwarded-For``
usually passes a client's ``Forwarded`` through untouched, and reading both would let the client
write the entry we trust.

Parsing is bounded (the last ``MAX_HEADER_CHARS`` characters, ``MAX_HOPS`` entries) and never
raises on what a client sent: garbage ends the walk at the last valid address reached.

``address_key`` then turns an address into a bucket: IPv6 clients get a /64 each by default
(one subscriber typically holds a whole /64 and can rotate through 2**64 addresses), and an
IPv4-mapped IPv6 address counts as the IPv4 address it maps.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from typing import Literal

from ._errors import ConfigError, describe

__all__ = [
    "MAX_HEADER_CHARS",
    "MAX_HOPS",
    "ForwardedHeader",
    "TrustedProxies",
    "address_key",
    "client_address",
    "parse_ip",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
#: Which header a deployment's proxies maintain (lower-case field name).
ForwardedHeader = Literal["x-forwarded-for", "forwarded"]

#: Only this many trailing characters of the header are parsed: the right end is the part our
#: proxies wrote, and a client cannot make us parse megabytes.
MAX_HEADER_CHARS = 4096
#: At most this many entries are walked; a longer chain of trusted hops ends at the last one.
MAX_HOPS = 32
_MAX_ENTRY_CHARS = 128  # an address with brackets, port and zone fits easily
_QUOTED_PAIR = re.compile(r"\\(.)")


def parse_ip(text: str) -> IPAddress | None:
    """``text`` as an address (IPv4-mapped IPv6 as IPv4, IPv6 zone dropped), or None."""
    if not 2 <= len(text) <= _MAX_ENTRY_CHARS:
        return None
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address.scope_id is not None:  # fe80::1%eth0: the zone names our interface, not the client
            return ipaddress.IPv6Address(int(address))
    return address


class TrustedProxies:
    """The networks whose requests may tell us the client's address. Parse once, test often."""

    __slots__ = ("_networks",)

    def __init__(self, cidrs: Iterable[str | IPNetwork] = ()) -> None:
        if isinstance(cidrs, str):  # "10.0.0.0/8" would iterate as characters
            cidrs = (cidrs,)
        networks: list[IPNetwork] = []
        for cidr in cidrs:
            try:
                if not isinstance(cidr, str | ipaddress.IPv4Network | ipaddress.IPv6Network):
                    raise TypeError  # ip_network(42) would be 0.0.0.42/32
                # strict: "10.0.0.1/8" is a typo for a host or a network; refuse to guess which.
                network = ipaddress.ip_network(cidr, strict=True)
            except (TypeError, ValueError):
                raise ConfigError(
                    f"trusted proxy must be an IP address or network like '10.0.0.0/8'; got {describe(cidr)}"
                ) from None
            if isinstance(network, ipaddress.IPv6Network) and network.network_address.ipv4_mapped is not None:
                # ::ffff:10.0.0.0/104 means 10.0.0.0/8: addresses are compared in their IPv4 form.
                mapped = network.network_address.ipv4_mapped
                network = ipaddress.IPv4Network((mapped, max(network.prefixlen - 96, 0)))
            networks.append(network)
        self._networks = tuple(networks)

    def __contains__(self, address: object) -> bool:
        if isinstance(address, str):
            address = parse_ip(address)
        if not isinstance(address, ipaddress.IPv4Address | ipaddress.IPv6Address):
            return False
        return any(address.version == net.version and address in net for net in self._networks)

    def __bool__(self) -> bool:
        return bool(self._networks)

    def __repr__(self) -> str:
        return f"TrustedProxies({[str(net) for net in self._networks]!r})"


def client_address(
    peer: str | None,
    headers: Mapping[str, str],
    trusted_proxies: TrustedProxies | Iterable[str | IPNetwork],
    *,
    header: ForwardedHeader = "x-forwarded-for",
) -> str | None:
    """The client's address for a request from ``peer`` (the socket peer, None if unknown).

    ``headers`` maps lower-case field names to values, several field lines joined by ``", "`` in
    order (as ASGI and WSGI servers deliver them). The forwarding ``header`` is honoured only when
    ``peer`` is in ``trusted_proxies``; it is walked right to left past trusted hops, and the first
    untrusted address is the client. When every hop is trusted, the leftmost is the client; when an
    entry is garbage, the last valid address before it is.

    IP addresses come back in canonical form (IPv4-mapped as IPv4). A peer that is not an IP
    address (a Unix socket, a test client's name) comes back as it is.
    """
    trusted = trusted_proxies if isinstance(trusted_proxies, TrustedProxies) else TrustedProxies(trusted_proxies)
    if peer is None:
        return None
    current = parse_ip(peer)
    if current is None:
        return peer
    if current not in trusted:
        return str(current)
    value = headers.get(header)
    if not value:
        return str(current)
    entries = _forwarded_for(value) if header == "forwarded" else _x_forwarded_for(value)
    for entry in entries:
        hop = _entry_ip(entry)
        if hop is None:
            break  # garbage: the hop to its right (trusted) is the best we know
        current = hop
        if hop not in trusted:
            break
    return str(current)


def address_key(address: str, *, ipv6_prefix: int = 64) -> str:
    """The bucket ``address`` is counted in: an IPv4 address as it is; an IPv6 address as its
    ``/ipv6_prefix`` network (``"2001:db8:1:2::/64"``); anything else unchanged."""
    if isinstance(ipv6_prefix, bool) or not isinstance(ipv6_prefix, int) or not 1 <= ipv6_prefix <= 128:
        raise ConfigError(f"ipv6_prefix must be an int in 1..128; got {describe(ipv6_prefix)}")
    ip = parse_ip(address)
    if ip is None:
        return address
    if isinstance(ip, ipaddress.IPv4Address) or ipv6_prefix == 128:
        return str(ip)
    return str(ipaddress.IPv6Network((ip, ipv6_prefix), strict=False))


# --- parsing, right to left -------------------------------------------------------------------


def _tail(value: str) -> tuple[str, bool]:
    """The last ``MAX_HEADER_CHARS`` of ``value``, and whether anything was cut off."""
    if len(value) <= MAX_HEADER_CHARS:
        return value, False
    return value[-MAX_HEADER_CHARS:], True


def _x_forwarded_for(value: str) -> list[str]:
    """``X-Forwarded-For`` entries, rightmost first, at most ``MAX_HOPS``."""
    text, cut = _tail(value)
    entries = text.split(",")
    if cut:
        entries = entries[1:]  # the first one may be the end of an entry cut in half
    return [entry.strip() for entry in reversed(entries[-MAX_HOPS:])]


def _forwarded_for(value: str) -> list[str]:
    """The ``for=`` node of each RFC 7239 ``Forwarded`` element, rightmost first, at most
    ``MAX_HOPS``; ``""`` for an element without one (which ends the walk like garbage)."""
    text, cut = _tail(value)
    elements = _split_outside_quotes(text, ",")
    if cut:
        elements = elements[1:]
    nodes = []
    for element in reversed(elements[-MAX_HOPS:]):
        node = ""
        for pair in _split_outside_quotes(element, ";"):
            name, _, raw = pair.partition("=")
            if name.strip().lower() == "for":
                node = _unquote(raw.strip())
                break
        nodes.append(node)
    return nodes


def _split_outside_quotes(text: str, separator: str) -> list[str]:
    """``text`` split on ``separator`` except inside quoted-strings (RFC 9110 §5.6.4)."""
    parts: list[str] = []
    start, quoted, escaped = 0, False, False
    for index, char in enumerate(text):
        if escaped:
            escaped = False
        elif quoted and char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == separator and not quoted:
            parts.append(text[start:index])
            start = index + 1
    parts.append(text[start:])
    return parts


def _unquote(text: str) -> str:
    if len(text) >= 2 and text[0] == text[-1] == '"':
        return _QUOTED_PAIR.sub(r"\1", text[1:-1])
    return text


def _entry_ip(entry: str) -> IPAddress | None:
    """One forwarded entry as an address: ``1.2.3.4``, ``1.2.3.4:80``, ``2001:db8::1``,
    ``[2001:db8::1]`` or ``[2001:db8::1]:80``. ``unknown``, ``_hidden`` and garbage are None."""
    if entry.startswith("["):
        host, bracket, rest = entry[1:].partition("]")
        if not bracket or (rest and not (rest.startswith(":") and rest[1:].isdigit())):
            return None
        return parse_ip(host) if ":" in host else None  # brackets hold IPv6 only
    if entry.count(":") == 1:  # IPv4 with a port; bare IPv6 has at least two colons
        host, _, port = entry.partition(":")
        return parse_ip(host) if port.isdigit() else None
    return parse_ip(entry)
