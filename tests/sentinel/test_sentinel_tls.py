"""``rediss+sentinel://``: a Sentinel and a master that both speak TLS only.

The store speaks TLS to the Sentinel (to find the master) and to the master. Many fresh
limiters check that new TLS connections on both sides are ready (see ``TLS_PARSER``).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import sluicegate
from tests.redis_cluster import SERVICE, SentinelProcess, TLSFiles, wait_until
from tests.redis_server import RedisServer

pytestmark = [pytest.mark.redis, pytest.mark.redis_sentinel]

POLICY = sluicegate.Policy(2, 3600.0, algorithm="sliding-log")


@pytest.fixture(scope="module")
def tls_sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A TLS master watched by one TLS Sentinel (quorum 1); yields the store URL."""
    workdir = tmp_path_factory.mktemp("tls-sentinel")
    files = TLSFiles(workdir / "tls")
    master = RedisServer(workdir / "master", *files.server_args(), tls=True)
    sentinel: SentinelProcess | None = None
    try:
        sentinel = SentinelProcess(workdir / "sentinel", master.port, quorum=1, password=None, tls=files)
        with sentinel.client() as client:
            # The flags read "master,disconnected" until the Sentinel's TLS link to it is up.
            wait_until(lambda: client.sentinel_master(SERVICE)["flags"] == "master", timeout=10, what="the link")
        yield f"rediss+sentinel://127.0.0.1:{sentinel.port}/{SERVICE}?ssl_ca_certs={files.ca}"
    finally:
        if sentinel is not None:
            sentinel.kill()
        master.kill()


def test_tls_sentinel(tls_sentinel: str) -> None:
    with sluicegate.Limiter(tls_sentinel, timeout=2.0, fallback="raise", registry=None) as limiter:
        assert [limiter.hit("tls", POLICY).allowed for _ in range(3)] == [True, True, False]


async def test_tls_sentinel_async(tls_sentinel: str) -> None:
    async with sluicegate.AsyncLimiter(tls_sentinel, timeout=2.0, fallback="raise", registry=None) as limiter:
        assert [(await limiter.hit("atls", POLICY)).allowed for _ in range(3)] == [True, True, False]


def test_tls_sentinel_new_connections_are_ready(tls_sentinel: str) -> None:
    for attempt in range(20):
        with sluicegate.Limiter(tls_sentinel, timeout=2.0, fallback="raise", registry=None) as limiter:
            assert limiter.hit(f"fresh{attempt}", POLICY).allowed
