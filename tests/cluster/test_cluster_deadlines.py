"""One deadline per sync cluster decision: no reply the cluster gives makes it wait longer.

Every decision here is timed with ``time.perf_counter`` (the garbage collector off around the
measured loops) and must return within ``timeout`` + 10 ms, whatever the cluster answers:
``CLUSTERDOWN`` (the cluster is down, or one slot is served by nobody), ``TRYAGAIN`` (a
multi-key call on a slot whose keys are half migrated), a master that hangs in the middle of a
cross-slot ``hit_all`` (its committed slots are refunded in the background, once the caller
has its answer), and nodes that accept connections but never answer, before the client even
knows the slots. redis-py's own command loop paused 0.25 s after ``CLUSTERDOWN`` and up to
0.05 s per ``TRYAGAIN``; the store now routes each script call itself on redis-py's slot table.

``CLUSTERDOWN`` is made deterministic on a one-node cluster of its own, by taking a slot away
(``CLUSTER DELSLOTS``): with ``cluster-require-full-coverage yes`` the whole cluster is down,
with ``no`` only that slot is.
"""

from __future__ import annotations

import gc
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import pytest
import redis
from redis.exceptions import ClusterDownError, SlotNotCoveredError, TryAgainError

import sluicegate
from sluicegate import StoreError
from sluicegate._keys import state_keys
from sluicegate.stores import ClusterStore, Item
from sluicegate.stores.cluster import _Connection, _deadline
from tests.cluster._support import PREFIX, command_calls, frozen, keys_on_masters, slot
from tests.redis_cluster import Cluster, ClusterNode, wait_until
from tests.redis_server import RedisServer

pytestmark = [pytest.mark.redis, pytest.mark.redis_cluster]

TIMEOUT_S = 0.05
BOUND_S = TIMEOUT_S + 0.010
POLICY = sluicegate.Policy(1000, 3600.0, algorithm="sliding-log")
GCRA = sluicegate.Policy(1000, 3600.0)


def _item(key: str, policy: sluicegate.Policy = POLICY) -> Item:
    return Item(state_keys(PREFIX, policy, key), policy, 1)


@contextmanager
def _no_gc() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _timed(call: Callable[[], Any]) -> tuple[float, Any]:
    """How long ``call`` took, and what it returned or raised (a ``StoreError``)."""
    started = time.perf_counter()
    try:
        result = call()
    except StoreError as exc:
        result = exc
    return time.perf_counter() - started, result


def _check_bound(timings: list[tuple[float, Any]], what: str) -> None:
    worst = max(elapsed for elapsed, _ in timings)
    print(f"\n{what}: {len(timings)} calls, worst {worst * 1000:.1f} ms (bound {BOUND_S * 1000:.0f} ms)")
    assert worst <= BOUND_S, f"{what}: {sorted(round(e * 1000, 1) for e, _ in timings)[-5:]} ms"


def _ready(store: ClusterStore, *keys: str) -> None:
    """Until ``store`` has discovered the slots and cached the script on the keys' nodes, counting
    nothing. Discovery runs in the background, and a decision waits for it only until its
    deadline: a garbage collector pass in a long test session can outlast 50 ms."""

    def looks() -> bool:
        try:
            store.decide([_item(key) for key in keys], None, commit=False)
        except StoreError:
            return False
        return True

    wait_until(looks, timeout=5, what="the cluster's slots to be discovered")


def _limiter_ready(limiter: sluicegate.Limiter, key: str, policy: sluicegate.Policy = POLICY) -> None:
    wait_until(lambda: not limiter.peek(key, policy).degraded, timeout=5, what="the limiter's first decision")


def _remaining(store: ClusterStore, key: str) -> int:
    (verdict,) = store.decide([_item(key)], None, commit=False)
    return verdict.remaining + 1  # a look costs 1 as if hit


@pytest.fixture(scope="module")
def solo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterNode]:
    """A one-node cluster serving every slot (a master waits 2 s after it starts to be ok)."""
    node = ClusterNode(tmp_path_factory.mktemp("solo-cluster"), "--cluster-enabled", "yes")
    try:
        with node.client() as client:
            client.execute_command("CLUSTER ADDSLOTSRANGE", 0, 16383)
        wait_until(lambda: _state(node) == "ok", timeout=10, what="the one-node cluster to be ok")
        yield node
    finally:
        node.kill()


def _state(node: ClusterNode) -> str:
    with node.client() as client:
        return str(client.execute_command("CLUSTER INFO")["cluster_state"])


@contextmanager
def _unserved(node: ClusterNode, moved: int, *, full_coverage: bool) -> Iterator[None]:
    """Slot ``moved`` served by nobody inside the block; the cluster down if ``full_coverage``."""
    with node.client() as client:
        client.config_set("cluster-require-full-coverage", "yes" if full_coverage else "no")
        client.execute_command("CLUSTER DELSLOTS", moved)
    try:
        expected = "fail" if full_coverage else "ok"
        wait_until(lambda: _state(node) == expected, timeout=10, what=f"cluster_state:{expected}")
        yield
    finally:
        with node.client() as client:
            client.execute_command("CLUSTER ADDSLOTS", moved)
            client.config_set("cluster-require-full-coverage", "yes")
        wait_until(lambda: _state(node) == "ok", timeout=10, what="the one-node cluster to be ok again")


def _url(node: ClusterNode) -> str:
    return f"redis+cluster://127.0.0.1:{node.port}"


def test_clusterdown_is_answered_within_the_deadline(solo: ClusterNode) -> None:
    key = "down"
    store = ClusterStore(_url(solo), timeout=TIMEOUT_S)
    limiter = sluicegate.Limiter(_url(solo), timeout=TIMEOUT_S, fallback="local", registry=None)
    try:
        _limiter_ready(limiter, key)
        _ready(store, key)
        assert store.decide([_item(key)], None, commit=True)[0].allowed
        with _unserved(solo, (slot(key, POLICY) + 1) % 16384, full_coverage=True):
            with _no_gc():
                decisions = [_timed(lambda: limiter.hit(key, POLICY)) for _ in range(5)]
                direct = [_timed(lambda: store.decide([_item(key)], None, commit=True)) for _ in range(40)]
            assert all(d.degraded for _, d in decisions), "the local fallback decided"
            _check_bound(decisions, "sync decisions during CLUSTERDOWN (fallback='local')")
            assert {type(e).__name__ for _, e in direct} == {"StoreError"}
            assert {e.kind for _, e in direct} == {"cluster"}
            assert {type(e.__cause__) for _, e in direct} == {ClusterDownError}
            _check_bound(direct, "ClusterStore.decide during CLUSTERDOWN")
        assert store.decide([_item(key)], None, commit=True)[0].allowed, "the cluster serves again"
        assert _remaining(store, key) == 1000 - 2, "two hits answered by the cluster; nothing else counted"
    finally:
        limiter.close()
        store.close()


def test_a_slot_nobody_serves_fails_alone_within_the_deadline(solo: ClusterNode) -> None:
    """A cross-slot ``hit_all``: the served slot commits, the other fails (first the node's
    ``CLUSTERDOWN``, then, once the refreshed slot table lacks the slot, at once in the client),
    and the committed slot is refunded before the call returns."""
    served, lost = "served", next(f"lost{n}" for n in range(100) if slot(f"lost{n}", POLICY) != slot("served", POLICY))
    store = ClusterStore(_url(solo), timeout=TIMEOUT_S)
    try:
        _ready(store, served, lost)
        assert all(v.allowed for v in store.decide([_item(served), _item(lost)], None, commit=True))
        with _unserved(solo, slot(lost, POLICY), full_coverage=False):
            assert store.decide([_item(served)], None, commit=True)[0].allowed, "the other slots are served"
            with _no_gc():
                timings = [_timed(lambda: store.decide([_item(served), _item(lost)], None, commit=True))]
                deadline = time.monotonic() + 5
                while time.monotonic() < deadline:  # until the background refresh dropped the slot
                    timings.append(_timed(lambda: store.decide([_item(served), _item(lost)], None, commit=True)))
                    if isinstance(timings[-1][1].__cause__, SlotNotCoveredError):
                        break
                    time.sleep(0.005)
                timings += [
                    _timed(lambda: store.decide([_item(served), _item(lost)], None, commit=True)) for _ in range(30)
                ]
            causes = [type(e.__cause__) for _, e in timings]
            assert causes[0] is ClusterDownError, "the node's answer"
            assert causes[-30:] == [SlotNotCoveredError] * 30, "the client's own table, no round trip"
            assert {e.kind for _, e in timings} == {"cluster"}
            _check_bound(timings, "cross-slot hit_all with one slot served by nobody")
            # Every failed hit_all refunded the served slot: only the single hit above counts.
            wait_until(lambda: _remaining(store, served) == 1000 - 2, timeout=2, what="the refunds")
    finally:
        store.close()


@contextmanager
def _half_migrated(cluster: Cluster, moving: int, moved_keys: Sequence[str]) -> Iterator[RedisServer]:
    """Slot ``moving`` importing/migrating with ``moved_keys`` already on the target; afterwards
    the migration is finished (every key moved, the slot assigned to the target everywhere)."""
    source = cluster.owner(moving)
    target = next(m for m in cluster.masters() if m is not source)
    source_id, target_id = cluster.node_id(source), cluster.node_id(target)
    with target.client() as client:
        client.execute_command("CLUSTER SETSLOT", moving, "IMPORTING", source_id)
    with source.client() as client:
        client.execute_command("CLUSTER SETSLOT", moving, "MIGRATING", target_id)
        client.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *moved_keys)
    try:
        yield target
    finally:
        with source.client() as client:
            left = client.execute_command("CLUSTER GETKEYSINSLOT", moving, 100)
            if left:
                client.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *left)
        for server in [target, source, *(m for m in cluster.masters() if m not in (source, target))]:
            with server.client() as client:
                client.execute_command("CLUSTER SETSLOT", moving, "NODE", target_id)
        cluster.wait_ready()


def test_tryagain_is_answered_within_the_deadline(redis_cluster: Cluster) -> None:
    redis_cluster.flush()
    key = "tryagain"
    both = [_item(key, POLICY), _item(key, GCRA)]  # one user key: one slot, one multi-key call
    store = ClusterStore(redis_cluster.url, timeout=TIMEOUT_S)
    limiter = sluicegate.Limiter(redis_cluster.url, timeout=TIMEOUT_S, fallback="local", registry=None)
    try:
        _ready(store, key)
        _limiter_ready(limiter, key)
        assert all(v.allowed for v in store.decide(both, None, commit=True))
        assert not limiter.hit_all([(key, POLICY), (key, GCRA)]).degraded
        gcra_keys, log_keys = state_keys(PREFIX, GCRA, key), state_keys(PREFIX, POLICY, key)
        with _half_migrated(redis_cluster, slot(key, POLICY), gcra_keys) as target:
            with _no_gc():
                decisions = [_timed(lambda: limiter.hit_all([(key, POLICY), (key, GCRA)])) for _ in range(5)]
                direct = [_timed(lambda: store.decide(both, None, commit=True)) for _ in range(40)]
            assert all(d.degraded for _, d in decisions)
            _check_bound(decisions, "sync hit_all during TRYAGAIN (fallback='local')")
            assert {type(e.__cause__) for _, e in direct} == {TryAgainError}
            assert {e.kind for _, e in direct} == {"cluster"}
            _check_bound(direct, "ClusterStore.decide during TRYAGAIN")
            # One key at a time is served: the source has the log, ASK leads to the target's GCRA
            # (ASKING and EVALSHA in one write; the target's flushed cache costs ASKING and EVAL).
            assert store.decide([both[0]], None, commit=True)[0].allowed
            with target.client() as client:
                client.script_flush()
                client.config_resetstat()
            assert store.decide([both[1]], None, commit=True)[0].allowed
            calls = {name: command_calls(target, name) for name in ("asking", "evalsha", "eval")}
            assert calls == {"asking": 2, "evalsha": 1, "eval": 1}
        # The slot now lives on the target: MOVED, followed within the deadline.
        assert all(v.allowed for v in store.decide(both, None, commit=True))
        assert redis_cluster.owner(slot(key, POLICY)) is target
        with target.client() as client:
            # Four commits included the log (three hit_all, one single): TRYAGAIN ran nothing.
            assert client.zcard(log_keys[0]) == 4
    finally:
        limiter.close()
        store.close()


def test_a_master_hanging_mid_hit_all_costs_the_caller_no_more_than_the_deadline(redis_cluster: Cluster) -> None:
    """The first slot commits, the second master is frozen: the call times out at its deadline
    and the first slot's refund, which no longer fits in it, is sent in the background."""
    redis_cluster.flush()
    (a, _), (b, master_b), _ = keys_on_masters(redis_cluster, POLICY, "hang")
    store = ClusterStore(redis_cluster.url, timeout=TIMEOUT_S)
    try:
        _ready(store, a, b)
        assert all(v.allowed for v in store.decide([_item(a), _item(b)], None, commit=True))
        timings = []
        with frozen(master_b), _no_gc():
            for _ in range(3):
                timings.append(_timed(lambda: store.decide([_item(a), _item(b)], None, commit=True)))
        assert {e.kind for _, e in timings} == {"timeout"}
        _check_bound(timings, "cross-slot hit_all with a frozen master")
        wait_until(lambda: _remaining(store, a) == 1000 - 1, timeout=2, what="the late refunds of a's slot")
    finally:
        store.close()


def test_nodes_that_never_answer_cost_the_first_decisions_no_more_than_the_deadline() -> None:
    """The slots are discovered in the background: a decision waits for that only until its deadline."""
    listeners = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(3)]
    try:
        for listener in listeners:
            listener.bind(("127.0.0.1", 0))
            listener.listen(16)  # connections complete in the backlog; nothing ever answers
        url = "redis+cluster://" + ",".join(f"127.0.0.1:{s.getsockname()[1]}" for s in listeners)
        with sluicegate.Limiter(url, timeout=TIMEOUT_S, fallback="raise", registry=None) as limiter, _no_gc():
            timings = [_timed(lambda: limiter.hit("k", POLICY)) for _ in range(5)]
        assert all(isinstance(e, StoreError) for _, e in timings)
        assert timings[0][1].kind == "timeout"
        _check_bound(timings, "first decisions while no node answers CLUSTER SLOTS")
    finally:
        for listener in listeners:
            listener.close()


def test_a_connection_made_late_in_a_decision_gets_only_what_is_left(solo: ClusterNode) -> None:
    """Connecting counts against the script call's deadline (a second slot's node, a redirection
    target); redis-py's own commands on the connection keep the full socket timeout."""
    connection: Callable[..., Any] = _Connection  # untyped in redis-py
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        filler.connect(listener.getsockname())  # the accept queue is full: SYNs are dropped, as in a blackhole
        hanging = connection(host="127.0.0.1", port=listener.getsockname()[1], socket_connect_timeout=1.0)
        _deadline.at = time.monotonic() + TIMEOUT_S
        started = time.perf_counter()
        try:
            with pytest.raises(redis.TimeoutError):
                hanging.connect()
        finally:
            _deadline.at = None
        assert time.perf_counter() - started <= BOUND_S
    finally:
        filler.close()
        listener.close()
    live = connection(host="127.0.0.1", port=solo.port, socket_connect_timeout=1.0, socket_timeout=1.0)
    _deadline.at = time.monotonic() + TIMEOUT_S
    try:
        live.connect()
    finally:
        _deadline.at = None
    try:
        assert live._sock is not None
        assert live._sock.gettimeout() == 1.0
        assert (live.socket_connect_timeout, live.socket_timeout) == (1.0, 1.0)
    finally:
        live.disconnect()
