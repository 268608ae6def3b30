"""Client address resolution: forwarding headers only from trusted proxies, right to left."""

from __future__ import annotations

import pytest

from sluicegate import ConfigError
from sluicegate._forwarded import MAX_HEADER_CHARS, TrustedProxies, address_key, client_address

PROXIES = TrustedProxies(["10.0.0.0/8", "2001:db8:ffff::/48"])


@pytest.mark.parametrize(
    ("peer", "xff", "client"),
    [
        # No proxy trusted for this peer: the header is a client's say-so and is ignored.
        ("203.0.113.9", "1.2.3.4", "203.0.113.9"),
        ("203.0.113.9", "", "203.0.113.9"),
        # A trusted proxy: its rightmost entry is the address it saw.
        ("10.0.0.1", "198.51.100.7", "198.51.100.7"),
        # A spoofed entry on the left is never reached: the walk stops at the first untrusted hop.
        ("10.0.0.1", "6.6.6.6, 198.51.100.7", "198.51.100.7"),
        # Trusted hops are walked past, right to left.
        ("10.0.0.1", "6.6.6.6, 198.51.100.7, 10.1.1.1, 10.2.2.2", "198.51.100.7"),
        # Every hop trusted: the leftmost is the client.
        ("10.0.0.1", "10.9.9.9, 10.1.1.1", "10.9.9.9"),
        # No header from a trusted proxy: the proxy itself.
        ("10.0.0.1", None, "10.0.0.1"),
        # Ports, brackets and IPv6.
        ("10.0.0.1", "198.51.100.7:5555", "198.51.100.7"),
        ("10.0.0.1", "[2001:db8::1]:443", "2001:db8::1"),
        ("10.0.0.1", "2001:DB8:0::1", "2001:db8::1"),
        ("2001:db8:ffff::5", "198.51.100.7", "198.51.100.7"),
        # IPv4-mapped IPv6 is the IPv4 address, as a peer and as an entry.
        ("::ffff:10.0.0.1", "::ffff:198.51.100.7", "198.51.100.7"),
        ("::ffff:203.0.113.9", "1.2.3.4", "203.0.113.9"),
        # Garbage ends the walk at the last valid address reached.
        ("10.0.0.1", "not-an-ip", "10.0.0.1"),
        ("10.0.0.1", "198.51.100.7, unknown", "10.0.0.1"),
        ("10.0.0.1", "garbage, 10.1.1.1", "10.1.1.1"),
        ("10.0.0.1", "[::1", "10.0.0.1"),
        ("10.0.0.1", "1.2.3.4:port", "10.0.0.1"),
        ("10.0.0.1", ",,,", "10.0.0.1"),
        ("10.0.0.1", "[1.2.3.4]", "10.0.0.1"),
    ],
)
def test_x_forwarded_for(peer: str, xff: str | None, client: str) -> None:
    headers = {} if xff is None else {"x-forwarded-for": xff}
    assert client_address(peer, headers, PROXIES) == client


@pytest.mark.parametrize(
    ("forwarded", "client"),
    [
        ("for=198.51.100.7", "198.51.100.7"),
        ('for="[2001:db8:cafe::17]:4711"', "2001:db8:cafe::17"),
        ("for=6.6.6.6, for=198.51.100.7;proto=https;by=10.0.0.1", "198.51.100.7"),
        ("For=198.51.100.7, for=10.1.1.1", "198.51.100.7"),
        ('for="6.6.6.6, 7.7.7.7", for=198.51.100.7', "198.51.100.7"),  # a comma inside quotes
        ('for="\\1\\9\\8.51.100.7"', "198.51.100.7"),  # quoted-pairs
        ("for=unknown", "10.0.0.1"),
        ("for=_hidden", "10.0.0.1"),
        ("proto=https", "10.0.0.1"),  # no for= node
        ('for="', "10.0.0.1"),
    ],
)
def test_rfc_7239_forwarded(forwarded: str, client: str) -> None:
    headers = {"forwarded": forwarded, "x-forwarded-for": "6.6.6.6"}
    assert client_address("10.0.0.1", headers, PROXIES, header="forwarded") == client


def test_only_the_configured_header_is_read() -> None:
    """A proxy maintaining X-Forwarded-For passes a client's Forwarded through untouched."""
    headers = {"forwarded": "for=6.6.6.6", "x-forwarded-for": "198.51.100.7"}
    assert client_address("10.0.0.1", headers, PROXIES) == "198.51.100.7"


def test_long_headers_are_read_from_the_right_end_only() -> None:
    spoofed = ", ".join(["6.6.6.6"] * 5000)
    headers = {"x-forwarded-for": f"{spoofed}, 198.51.100.7"}
    assert len(headers["x-forwarded-for"]) > MAX_HEADER_CHARS
    assert client_address("10.0.0.1", headers, PROXIES) == "198.51.100.7"
    # A chain of more trusted hops than are walked ends at the last one walked.
    headers = {"x-forwarded-for": ", ".join(f"10.0.{i // 256}.{i % 256}" for i in range(2000))}
    assert client_address("10.0.0.1", headers, PROXIES) == "10.0.7.176"


def test_unknown_or_non_ip_peers() -> None:
    assert client_address(None, {"x-forwarded-for": "1.2.3.4"}, PROXIES) is None
    assert client_address("testclient", {"x-forwarded-for": "1.2.3.4"}, PROXIES) == "testclient"


def test_plain_cidr_lists_are_accepted() -> None:
    assert client_address("10.0.0.1", {"x-forwarded-for": "1.2.3.4"}, ["10.0.0.0/8"]) == "1.2.3.4"
    assert client_address("10.0.0.1", {"x-forwarded-for": "1.2.3.4"}, "10.0.0.1") == "1.2.3.4"


@pytest.mark.parametrize("bad", ["10.0.0.1/8", "not-a-network", "", 42, "10.0.0.0/33"])
def test_bad_trusted_proxies_are_refused(bad: object) -> None:
    with pytest.raises(ConfigError, match="trusted proxy"):
        TrustedProxies([bad])  # type: ignore[list-item]


def test_mapped_trusted_networks_match_ipv4_peers() -> None:
    assert "10.1.2.3" in TrustedProxies(["::ffff:10.0.0.0/104"])
    assert "fe80::1%eth0" in TrustedProxies(["fe80::/10"])
    assert "garbage" not in TrustedProxies(["0.0.0.0/0"])


@pytest.mark.parametrize(
    ("address", "prefix", "key"),
    [
        ("198.51.100.7", 64, "198.51.100.7"),
        ("::ffff:198.51.100.7", 64, "198.51.100.7"),
        ("2001:db8:1:2:aaaa::1", 64, "2001:db8:1:2::/64"),
        ("2001:db8:1:2:ffff:ffff:ffff:ffff", 64, "2001:db8:1:2::/64"),
        ("2001:db8:1:2:aaaa::1", 48, "2001:db8:1::/48"),
        ("2001:db8:1:2:aaaa::1", 128, "2001:db8:1:2:aaaa::1"),
        ("fe80::1%eth0", 64, "fe80::/64"),
        ("testclient", 64, "testclient"),
    ],
)
def test_address_key(address: str, prefix: int, key: str) -> None:
    assert address_key(address, ipv6_prefix=prefix) == key


@pytest.mark.parametrize("prefix", [0, 129, True, 64.0])
def test_address_key_refuses_bad_prefixes(prefix: object) -> None:
    with pytest.raises(ConfigError, match="ipv6_prefix"):
        address_key("::1", ipv6_prefix=prefix)  # type: ignore[arg-type]
