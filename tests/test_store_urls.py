"""Every standalone URL scheme reaches a real server: redis://, rediss:// (TLS) and unix://."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

import sluicegate
from tests.redis_server import RedisServer

pytestmark = pytest.mark.redis


def _decides(url: str) -> None:
    with sluicegate.Limiter(url, timeout=2.0, fallback="raise") as limiter:
        assert [limiter.hit("k", "2/minute").allowed for _ in range(3)] == [True, True, False]


async def _decides_async(url: str) -> None:
    async with sluicegate.AsyncLimiter(url, timeout=2.0, fallback="raise") as limiter:
        assert [(await limiter.hit("k", "2/minute")).allowed for _ in range(3)] == [True, True, False]


@pytest.fixture
def unix_redis(tmp_path: Path) -> Iterator[Path]:
    socket_path = tmp_path / "redis.sock"
    server = RedisServer(tmp_path / "unix", "--unixsocket", str(socket_path))
    yield socket_path
    server.kill()


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[tuple[RedisServer, Path]]:
    """A server that speaks TLS only on its port; returns it and the CA file that signed it."""
    authority = trustme.CA()
    certificate = authority.issue_cert("127.0.0.1")
    ca_file, cert_file, key_file = tmp_path / "ca.pem", tmp_path / "cert.pem", tmp_path / "key.pem"
    authority.cert_pem.write_to_path(str(ca_file))
    certificate.cert_chain_pems[0].write_to_path(str(cert_file))
    certificate.private_key_pem.write_to_path(str(key_file))
    server = RedisServer(
        tmp_path / "tls",
        *("--tls-cert-file", str(cert_file), "--tls-key-file", str(key_file)),
        *("--tls-ca-cert-file", str(ca_file), "--tls-auth-clients", "no"),
        tls=True,
    )
    yield server, ca_file
    server.kill()


def test_unix_socket_url(unix_redis: Path) -> None:
    _decides(f"unix://{unix_redis}?db=0")


async def test_unix_socket_url_async(unix_redis: Path) -> None:
    await _decides_async(f"unix://{unix_redis}")


def test_tls_url(tls_redis: tuple[RedisServer, Path]) -> None:
    server, ca_file = tls_redis
    _decides(f"rediss://127.0.0.1:{server.port}/0?ssl_ca_certs={ca_file}")


async def test_tls_url_async(tls_redis: tuple[RedisServer, Path]) -> None:
    server, ca_file = tls_redis
    await _decides_async(f"rediss://127.0.0.1:{server.port}/0?ssl_ca_certs={ca_file}")


def test_tls_new_connections_are_ready(tls_redis: tuple[RedisServer, Path]) -> None:
    # TLS 1.3 session tickets arriving after the handshake used to fail about half of all new
    # connections with "Connection not ready" (redis-py's hiredis readiness check).
    server, ca_file = tls_redis
    for attempt in range(40):
        url = f"rediss://127.0.0.1:{server.port}/0?ssl_ca_certs={ca_file}"
        with sluicegate.Limiter(url, timeout=2.0, fallback="raise") as limiter:
            assert limiter.hit(f"fresh{attempt}", "1/minute").allowed


def test_tls_refuses_an_untrusted_server(tls_redis: tuple[RedisServer, Path]) -> None:
    server, _ = tls_redis
    limiter = sluicegate.Limiter(f"rediss://127.0.0.1:{server.port}/0", timeout=2.0, fallback="raise")
    with limiter, pytest.raises(sluicegate.StoreError) as raised:
        limiter.hit("k", "2/minute")
    assert raised.value.kind == "connection"
    assert "CERTIFICATE_VERIFY_FAILED" in str(raised.value)
