"""Real Redis Cluster and Sentinel deployments for the tests, on free loopback ports.

- ``Cluster``: 3 masters and 3 replicas (``--cluster-replicas 1``), created with
  ``redis-cli --cluster create`` and ready once every node reports ``cluster_state:ok``, knows
  every other node, and every replica's link to its master is up. A 1-second node timeout keeps
  failovers short (about 2-3 s from a master's death to its replica's promotion).
- ``Sentinels``: a master, its replica and 3 Sentinels (quorum 2, ``down-after-milliseconds``
  1000), password-protected, ready once each Sentinel sees the replica and the other two.

Both start once per session (``redis_cluster`` and ``redis_sentinel`` fixtures); a test that
breaks one must leave it whole again (``Cluster.restore``, ``Sentinels.restore``). ``ClusterNode``,
``SentinelProcess`` and ``TLSFiles`` also build the small TLS deployments of the TLS tests.
Processes are killed by PID at the end, after a SIGCONT in case a test left one stopped. A
missing binary (``redis-server``, ``redis-cli``, ``redis-sentinel``) is a test failure, never a
skip. Readiness is always a condition polled with a deadline, never a fixed sleep.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
import trustme

from tests import waiting
from tests.redis_server import RedisServer, free_port

__all__ = [
    "PASSWORD",
    "SERVICE",
    "Cluster",
    "ClusterNode",
    "SentinelProcess",
    "Sentinels",
    "TLSFiles",
    "redis_cluster",
    "redis_sentinel",
    "wait_until",
]

NODE_TIMEOUT_MS = 1000
SERVICE = "mymaster"
PASSWORD = "s3cret-pass"
_READY_S = 30.0


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"{name} is not installed; run scripts/test, which installs it")
    return path


def wait_until(condition: Callable[[], object], *, timeout: float, what: str, poll: float = 0.01) -> float:
    """``tests.waiting.wait_until`` for nodes: a condition that raises a Redis error (a node still
    starting or already gone) is not met yet."""
    return waiting.wait_until(condition, timeout=timeout, what=what, poll=poll, not_yet=(redis.RedisError,))


class TLSFiles:
    """A throwaway CA and a certificate for 127.0.0.1 it signed, as files, and the server
    options that serve it (clients are not asked for certificates)."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        authority = trustme.CA()
        issued = authority.issue_cert("127.0.0.1")
        self.ca, self.cert, self.key = directory / "ca.pem", directory / "cert.pem", directory / "key.pem"
        authority.cert_pem.write_to_path(str(self.ca))
        issued.cert_chain_pems[0].write_to_path(str(self.cert))
        issued.private_key_pem.write_to_path(str(self.key))

    def server_args(self) -> tuple[str, ...]:
        return (
            *("--tls-cert-file", str(self.cert), "--tls-key-file", str(self.key)),
            *("--tls-ca-cert-file", str(self.ca), "--tls-auth-clients", "no"),
        )


def _info(client: redis.Redis, section: str) -> dict[str, str]:
    return {name: str(value) for name, value in client.info(section).items()}


def _cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free too. Both are drawn below the
    kernel's ephemeral range (32768 and up), where client sockets take theirs."""
    while True:
        port = random.randint(12000, 22000)
        try:
            for candidate in (port, port + 10000):
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                    sock.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        return port


class ClusterNode(RedisServer):
    """A ``RedisServer`` on a port that leaves room for its cluster bus port (at most 55535)."""

    def __init__(self, workdir: Path, *extra_args: str, tls: bool = False) -> None:
        self._port = _cluster_port()
        super().__init__(workdir, *extra_args, tls=tls)

    @property
    def port(self) -> int:
        return self._port

    @port.setter
    def port(self, value: int) -> None:
        """``RedisServer`` draws any free port; the one drawn above is kept."""


class Cluster:
    """Six cluster nodes; ``servers[i]`` keeps its port for the session, whatever its role."""

    def __init__(self, workdir: Path) -> None:
        cli = _binary("redis-cli")
        args = (
            *("--cluster-enabled", "yes", "--cluster-node-timeout", str(NODE_TIMEOUT_MS)),
            # Diskless sync with no delay: a (re)started replica is in sync in milliseconds, not 5 s.
            *("--cluster-config-file", "nodes.conf", "--repl-diskless-sync-delay", "0"),
        )
        self.servers: list[RedisServer] = []
        try:
            for i in range(6):
                self.servers.append(ClusterNode(workdir / f"node{i}", *args))
            subprocess.run(
                [cli, "--cluster", "create", *(f"127.0.0.1:{s.port}" for s in self.servers),
                 "--cluster-replicas", "1", "--cluster-yes"],
                check=True, capture_output=True, timeout=_READY_S,
            )  # fmt: skip
            self.wait_ready()
        except BaseException:
            self.kill()
            raise

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{s.port}" for s in self.servers)

    def live(self) -> list[RedisServer]:
        return [s for s in self.servers if s.process is not None]

    def by_port(self, port: int) -> RedisServer:
        return next(s for s in self.servers if s.port == port)

    def masters(self) -> list[RedisServer]:
        return [s for s in self.live() if _info(s.client(), "replication")["role"] == "master"]

    def slot_table(self) -> list[tuple[int, int, RedisServer]]:
        """(first slot, last slot, master) for every range, as a live node sees it."""
        with self.live()[0].client() as client:
            ranges = client.execute_command("CLUSTER SLOTS")
        return [(int(start), int(end), self.by_port(int(master[1]))) for start, end, master, *_ in ranges]

    def owner(self, slot: int, table: list[tuple[int, int, RedisServer]] | None = None) -> RedisServer:
        """The master serving ``slot``."""
        for start, end, master in table or self.slot_table():
            if start <= slot <= end:
                return master
        raise AssertionError(f"slot {slot} is not served")

    def node_id(self, server: RedisServer) -> str:
        with server.client() as client:
            node_id = client.execute_command("CLUSTER MYID")
        return node_id.decode() if isinstance(node_id, bytes) else str(node_id)

    def is_ready(self) -> bool:
        """Every live node sees the cluster ok and all live nodes; every replica's link is up."""
        live = self.live()
        for server in live:
            with server.client() as client:
                info = _info(client, "replication")
                fields = client.execute_command("CLUSTER INFO")
            if fields["cluster_state"] != "ok" or int(fields["cluster_known_nodes"]) < len(live):
                return False
            if info["role"] == "slave" and info.get("master_link_status") != "up":
                return False
        return True

    def wait_ready(self, timeout: float = _READY_S) -> None:
        wait_until(self.is_ready, timeout=timeout, what="the cluster to be ok with every replica in sync")

    def flush(self) -> None:
        """Empty every master (replicas follow) and forget command statistics everywhere."""
        for server in self.masters():
            with server.client() as client:
                client.flushall()
        for server in self.live():
            with server.client() as client:
                client.config_resetstat()

    def restore(self) -> None:
        """Start any killed node again (it rejoins as a replica) and wait for the cluster."""
        for server in self.servers:
            if server.process is None:
                server.start()
        self.wait_ready()

    def kill(self) -> None:
        for server in self.servers:
            server.kill()


class SentinelProcess:
    """One ``redis-sentinel`` with its own writable config file (Sentinel rewrites it). With
    ``tls`` it speaks TLS only, to its clients and to the data nodes it watches."""

    def __init__(
        self,
        workdir: Path,
        master_port: int,
        *,
        quorum: int = 2,
        password: str | None = PASSWORD,
        tls: TLSFiles | None = None,
    ) -> None:
        binary = _binary("redis-sentinel")
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.tls = tls
        ports = f"port {self.port}\n"
        if tls is not None:
            options = tls.server_args()
            ports = f"port 0\ntls-port {self.port}\ntls-replication yes\n" + "".join(
                f"{name[2:]} {value}\n" for name, value in zip(options[::2], options[1::2], strict=True)
            )
        config = workdir / "sentinel.conf"
        config.write_text(
            f"{ports}bind 127.0.0.1\ndir {workdir}\nlogfile {workdir / 'sentinel.log'}\n"
            f"sentinel monitor {SERVICE} 127.0.0.1 {master_port} {quorum}\n"
            + ("" if password is None else f"sentinel auth-pass {SERVICE} {password}\n")
            + f"sentinel down-after-milliseconds {SERVICE} 1000\n"
            f"sentinel failover-timeout {SERVICE} 2000\n"
            f"sentinel parallel-syncs {SERVICE} 1\n"
        )
        self.process: subprocess.Popen[bytes] | None = subprocess.Popen(
            [binary, str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_until(lambda: bool(self.client().ping()), timeout=10, what=f"redis-sentinel on port {self.port}")

    def client(self) -> redis.Redis:
        # The tests' own control connection; it trusts the test's throwaway certificate.
        tls = self.tls is not None
        return redis.Redis(
            host="127.0.0.1", port=self.port, socket_timeout=5, decode_responses=True, ssl=tls, ssl_cert_reqs="none"
        )

    def kill(self) -> None:
        if self.process is not None:
            os.kill(self.process.pid, signal.SIGCONT)
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None


class Sentinels:
    """A master, one replica and three Sentinels watching them as ``SERVICE``, all on loopback.

    Both data nodes require ``PASSWORD``: it is set once they run, because ``RedisServer`` checks
    that a server is up with a password-less ``PING``.
    """

    def __init__(self, workdir: Path) -> None:
        args = ("--repl-diskless-sync-delay", "0")
        self.servers: list[RedisServer] = []
        self.sentinels: list[SentinelProcess] = []
        try:
            self.servers += [RedisServer(workdir / "a", *args), RedisServer(workdir / "b", *args)]
            master, replica = self.servers
            for server in self.servers:
                with server.client() as client:
                    client.config_set("masterauth", PASSWORD)
                    client.config_set("requirepass", PASSWORD)
            with self.client(replica) as client:
                client.replicaof("127.0.0.1", master.port)
            self.sentinels = [SentinelProcess(workdir / f"sentinel{i}", master.port) for i in range(3)]
            self.wait_ready()
        except BaseException:
            self.kill()
            raise

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://:{PASSWORD}@{hosts}/{SERVICE}"

    @staticmethod
    def client(server: RedisServer) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=server.port, password=PASSWORD, socket_timeout=5)

    def master_port(self) -> int:
        """The master's port as the first Sentinel names it."""
        with self.sentinels[0].client() as client:
            return int(client.sentinel_get_master_addr_by_name(SERVICE)[1])

    def master(self) -> RedisServer:
        port = self.master_port()
        return next(s for s in self.servers if s.port == port)

    def is_ready(self) -> bool:
        """Every Sentinel names the same master, which every data node agrees with, sees the
        replica in sync and the other two Sentinels."""
        port = self.master_port()
        for sentinel in self.sentinels:
            with sentinel.client() as client:
                state = client.sentinel_master(SERVICE)
                replicas = client.sentinel_slaves(SERVICE)
            if int(state["port"]) != port or state["num-other-sentinels"] != 2 or state["flags"] != "master":
                return False
            if [replica["flags"] for replica in replicas] != ["slave"]:
                return False
        for server in self.servers:
            with self.client(server) as client:
                info = _info(client, "replication")
            role = "master" if server.port == port else "slave"
            if info["role"] != role or (role == "slave" and info.get("master_link_status") != "up"):
                return False
        return True

    def wait_ready(self, timeout: float = _READY_S) -> None:
        wait_until(self.is_ready, timeout=timeout, what="the Sentinels to agree on a master with its replica in sync")

    def flush(self) -> None:
        with self.client(self.master()) as client:
            client.flushall()

    def restore(self, old_master: RedisServer) -> None:
        """Resume a stopped former master as the new master's replica, and wait until ready.
        (The Sentinels would demote it themselves, but only after it has been back for 8 s.)"""
        old_master.cont()
        port = self.master_port()
        if port != old_master.port:
            with self.client(old_master) as client:
                client.replicaof("127.0.0.1", port)
        self.wait_ready()

    def kill(self) -> None:
        for sentinel in self.sentinels:
            sentinel.kill()
        for server in self.servers:
            server.kill()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """The session's cluster, emptied per test by ``cluster`` fixtures in the test modules."""
    cluster = Cluster(tmp_path_factory.mktemp("cluster"))
    yield cluster
    cluster.kill()


@pytest.fixture(scope="session")
def redis_sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sentinels]:
    sentinels = Sentinels(tmp_path_factory.mktemp("sentinel"))
    yield sentinels
    sentinels.kill()
