"""``rediss+cluster://``: a one-node cluster (every slot on it) that speaks TLS only.

One node still has 16384 slots, so a ``hit_all`` over keys in different slots goes through the
per-slot calls and refunds, over TLS. Many fresh limiters check that new TLS connections are
ready (the synchronous client reads them with the pure-Python parser, see ``TLS_PARSER``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import sluicegate
from sluicegate import StoreError
from tests.redis_cluster import ClusterNode, TLSFiles, wait_until

pytestmark = [pytest.mark.redis, pytest.mark.redis_cluster]

POLICY = sluicegate.Policy(2, 3600.0, algorithm="fixed-window")


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ClusterNode, TLSFiles]]:
    workdir = tmp_path_factory.mktemp("tls-cluster")
    files = TLSFiles(workdir / "tls")
    node = ClusterNode(
        workdir / "node", "--cluster-enabled", "yes", "--tls-cluster", "yes", *files.server_args(), tls=True
    )
    try:
        with node.client() as client:
            client.execute_command("CLUSTER ADDSLOTSRANGE", 0, 16383)
            wait_until(lambda: client.execute_command("CLUSTER INFO")["cluster_state"] == "ok", timeout=10, what="ok")
        yield node, files
    finally:
        node.kill()


def _url(node: ClusterNode, ca: Path) -> str:
    return f"rediss+cluster://127.0.0.1:{node.port}?ssl_ca_certs={ca}"


def test_tls_cluster(tls_cluster: tuple[ClusterNode, TLSFiles]) -> None:
    node, files = tls_cluster
    with sluicegate.Limiter(_url(node, files.ca), timeout=2.0, fallback="raise", registry=None) as limiter:
        assert [limiter.hit("tls", POLICY).allowed for _ in range(3)] == [True, True, False]
        denied = limiter.hit_all([("a", POLICY), ("b", POLICY), ("tls", POLICY)])  # three slots
        assert not denied.allowed
        assert [d.remaining for d in denied.results] == [2, 2, 0]
        assert limiter.hit_all([("a", POLICY, 2), ("b", POLICY, 2)]).allowed


async def test_tls_cluster_async(tls_cluster: tuple[ClusterNode, TLSFiles]) -> None:
    node, files = tls_cluster
    async with sluicegate.AsyncLimiter(_url(node, files.ca), timeout=2.0, fallback="raise", registry=None) as limiter:
        assert (await limiter.hit("atls", POLICY, cost=2)).allowed
        assert not (await limiter.hit_all([("c", POLICY), ("atls", POLICY)])).allowed
        assert (await limiter.peek("c", POLICY, cost=2)).allowed


def test_tls_cluster_new_connections_are_ready(tls_cluster: tuple[ClusterNode, TLSFiles]) -> None:
    node, files = tls_cluster
    for attempt in range(20):
        with sluicegate.Limiter(_url(node, files.ca), timeout=2.0, fallback="raise", registry=None) as limiter:
            assert limiter.hit(f"fresh{attempt}", POLICY).allowed


def test_tls_cluster_refuses_an_untrusted_server(tls_cluster: tuple[ClusterNode, TLSFiles]) -> None:
    node, _ = tls_cluster
    url = f"rediss+cluster://127.0.0.1:{node.port}"
    with sluicegate.Limiter(url, timeout=2.0, fallback="raise", registry=None) as limiter:
        with pytest.raises(StoreError) as raised:
            limiter.hit("k", POLICY)
        assert raised.value.kind == "connection"
        assert "CERTIFICATE_VERIFY_FAILED" in str(raised.value)
