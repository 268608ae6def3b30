"""Side-by-side benchmark: sluicegate against limits, pyrate-limiter, throttled-py and a raw
EVALSHA floor, and `sluicegate serve` under wrk and h2load, all on one redis-server this run
starts on loopback. Writes bench/results/latest.json, docs/benchmarks.md and the charts under
docs/benchmarks/. scripts/bench installs what it needs (wrk, h2load) and runs it.

    .venv/bin/python -m bench [--quick] [--only hot,distinct,async,abusive,contention,memory,service]
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.peers import PEERS, AsyncHit, Closer, Peer, SyncHit, versions
from bench.service import missing_tools, w_service

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tests.redis_server, when run from elsewhere
from tests.redis_server import RedisServer  # noqa: E402

WORKLOADS = ("hot", "distinct", "async", "abusive", "contention", "memory", "service")
#: Throughput policy: a limit no run reaches, so every decision is a real round trip.
OPEN = (1_000_000_000, 3600.0)
#: Contention and abuse policy: a day, so nothing refills during a run; the exact answer is LIMIT.
LIMIT = 500
DAY = 86_400.0
DISTINCT_KEYS = 100_000
TASKS = 64
PROCESSES = 8
ATTEMPTS_PER_PROCESS = 250
MEMORY_HITS = 100

Row = dict[str, Any]


def label(peer: Peer) -> str:
    return f"{peer.name} ({peer.algorithm})"


def summarize(rates: list[float], latencies_s: list[float]) -> Row:
    q = statistics.quantiles(latencies_s, n=100)
    return {
        "rate_min": min(rates),
        "rate_median": statistics.median(rates),
        "rate_max": max(rates),
        "p50_us": q[49] * 1e6,
        "p99_us": q[98] * 1e6,
        "decisions": len(latencies_s),
    }


async def _maybe_await(value: object) -> None:
    if inspect.isawaitable(value):
        await value


def _close(close: Closer) -> None:
    result = close()
    if inspect.isawaitable(result):  # pragma: no cover - sync closers only here
        asyncio.run(_maybe_await(result))


def rep_sync(hit: SyncHit, keys: Callable[[int], str], seconds: float, counter: list[int]) -> tuple[float, list[float]]:
    """One repetition: decisions/s and each decision's latency (s)."""
    latencies: list[float] = []
    started = now = time.perf_counter()
    deadline = started + seconds
    while now < deadline:
        key = keys(counter[0])
        counter[0] += 1
        before = time.perf_counter()
        hit(key)
        now = time.perf_counter()
        latencies.append(now - before)
    return len(latencies) / (now - started), latencies


async def rep_async(
    hit: AsyncHit, keys: Callable[[int], str], seconds: float, counter: list[int]
) -> tuple[float, list[float]]:
    latencies: list[float] = []
    started = time.perf_counter()
    deadline = started + seconds

    async def worker() -> None:
        while time.perf_counter() < deadline:
            key = keys(counter[0])
            counter[0] += 1
            before = time.perf_counter()
            await hit(key)
            latencies.append(time.perf_counter() - before)

    await asyncio.gather(*(worker() for _ in range(TASKS)))
    return len(latencies) / (time.perf_counter() - started), latencies


def interleaved(names: list[str], run_rep: Callable[[int], tuple[float, list[float]]], reps: int) -> list[Row]:
    """Repetitions round-robin over the contenders, so a noisy neighbour slows them alike."""
    rates: list[list[float]] = [[] for _ in names]
    lats: list[list[float]] = [[] for _ in names]
    for _ in range(reps):
        for i in range(len(names)):
            rate, latencies = run_rep(i)
            rates[i].append(rate)
            lats[i].extend(latencies)
    rows = [{"library": n, **summarize(r, lt)} for n, r, lt in zip(names, rates, lats, strict=True)]
    for row in rows:
        print(f"  {row['library']:45} {row['rate_median']:>9,.0f}/s p50 {row['p50_us']:6.0f} µs", flush=True)
    return rows


def hot_key(_: int) -> str:
    return "hot"


def distinct_key(i: int) -> str:
    return f"user:{i % DISTINCT_KEYS}"


def flush(server: RedisServer) -> None:
    with server.client() as client:
        client.flushall()


# --- workloads ----------------------------------------------------------------------------------


def w_sync(
    server: RedisServer, keys: Callable[[int], str], seconds: float, reps: int, *, abusive: bool = False
) -> list[Row]:
    """Throughput on the open policy; or, ``abusive``, on a key whose 10-per-day policy is exhausted."""
    flush(server)
    built = [peer.sync(server.url, *((10, DAY) if abusive else OPEN)) for peer in PEERS]
    counters = [[0] for _ in PEERS]
    try:
        for hit, _ in built:
            for i in range(200):  # warm up: connection, script cache, parsed policies
                hit(f"warm:{i % 4}")
            if abusive:
                while hit("abuser"):
                    pass
        if abusive:
            keys = hot_key
            built = [((lambda h: lambda _k: h("abuser"))(hit), close) for hit, close in built]
        rows = interleaved([label(p) for p in PEERS], lambda i: rep_sync(built[i][0], keys, seconds, counters[i]), reps)
        for peer, (hit, _) in zip(PEERS, built, strict=True):
            assert hit(keys(0)) != abusive, f"{label(peer)}: unexpected answer after the run"
    finally:
        for _, close in built:
            _close(close)
    return rows


def w_async(server: RedisServer, seconds: float, reps: int) -> dict[str, list[Row]]:
    out: dict[str, list[Row]] = {}

    async def run(keys: Callable[[int], str]) -> list[Row]:
        built = [await peer.async_(server.url, *OPEN) for peer in PEERS]
        counters = [[0] for _ in PEERS]
        try:
            for hit, _ in built:
                await asyncio.gather(*(hit(f"warm:{i % 4}") for i in range(TASKS)))
            names = [label(p) for p in PEERS]
            rates: list[list[float]] = [[] for _ in names]
            lats: list[list[float]] = [[] for _ in names]
            for _ in range(reps):
                for i, (hit, _) in enumerate(built):
                    rate, latencies = await rep_async(hit, keys, seconds, counters[i])
                    rates[i].append(rate)
                    lats[i].extend(latencies)
            return [{"library": n, **summarize(r, lt)} for n, r, lt in zip(names, rates, lats, strict=True)]
        finally:
            for _, close in built:
                await _maybe_await(close())

    for name, keys in (("hot", hot_key), ("distinct", distinct_key)):
        print(f" async {TASKS} tasks, {name} key(s)", flush=True)
        flush(server)
        out[name] = asyncio.run(run(keys))
        for row in out[name]:
            print(f"  {row['library']:45} {row['rate_median']:>9,.0f}/s p50 {row['p50_us']:6.0f} µs", flush=True)
    return out


def _contender(peer_index: int, url: str, attempts: int, barrier: Any, results: Any) -> None:
    hit, close = PEERS[peer_index].sync(url, LIMIT, DAY)
    hit("warm")  # connect before the start line
    barrier.wait()
    admitted = sum(hit("contended") for _ in range(attempts))
    _close(close)
    results.put(admitted)


def w_contention(server: RedisServer, attempts: int) -> list[Row]:
    ctx = multiprocessing.get_context("fork")
    rows = []
    for index, peer in enumerate(PEERS):
        flush(server)
        barrier = ctx.Barrier(PROCESSES)
        results = ctx.Queue()
        procs = [
            ctx.Process(target=_contender, args=(index, server.url, attempts, barrier, results))
            for _ in range(PROCESSES)
        ]
        started = time.perf_counter()
        for p in procs:
            p.start()
        admitted = sum(results.get(timeout=120) for _ in procs)
        for p in procs:
            p.join(timeout=30)
        elapsed = time.perf_counter() - started
        expected = min(LIMIT, PROCESSES * attempts)
        rows.append(
            {
                "library": label(peer),
                "attempts": PROCESSES * attempts,
                "admitted": admitted,
                "expected": expected,
                "error": admitted - expected,
                "seconds": elapsed,
            }
        )
        print(f"  {label(peer):45} admitted {admitted} of {PROCESSES * attempts}, expected {expected}", flush=True)
    return rows


def w_memory(server: RedisServer) -> list[Row]:
    """Bytes of every key a library writes for one busy key (hit MEMORY_HITS times), by MEMORY USAGE."""
    rows = []
    for peer in PEERS:
        flush(server)
        hit, close = peer.sync(server.url, 1000, 3600.0)
        try:
            for _ in range(MEMORY_HITS):
                hit("busy")
        finally:
            _close(close)
        with server.client() as client:
            keys = [k for k in client.scan_iter(count=1000)]
            sizes = {k.decode(): int(client.memory_usage(k, samples=0) or 0) for k in keys}
        rows.append({"library": label(peer), "bytes": sum(sizes.values()), "keys": sorted(sizes)})
        print(f"  {label(peer):45} {sum(sizes.values())} bytes in {len(sizes)} key(s)", flush=True)
    return rows


# --- machine, report ----------------------------------------------------------------------------


def machine(server: RedisServer) -> dict[str, Any]:
    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with server.client() as client:
        info = client.info("server")
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "redis_server": info.get("redis_version"),
        "libraries": versions(),
        "when": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a fast smoke run (short repetitions)")
    parser.add_argument("--only", default=",".join(WORKLOADS), help=f"comma-separated subset of {','.join(WORKLOADS)}")
    parser.add_argument("--seconds", type=float, default=None, help="length of one repetition (default 2; quick 0.2)")
    parser.add_argument("--reps", type=int, default=None, help="repetitions (default 5; quick 2)")
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "latest.json")
    parser.add_argument("--no-docs", action="store_true", help="do not rewrite docs/benchmarks.md and charts")
    args = parser.parse_args()
    only = [w.strip() for w in args.only.split(",") if w.strip()]
    unknown = set(only) - set(WORKLOADS)
    if unknown:
        parser.error(f"unknown workload(s) {', '.join(sorted(unknown))}; choose from {', '.join(WORKLOADS)}")
    if "service" in only and missing_tools():
        parser.error(f"the service workload needs {', '.join(missing_tools())} (Debian); scripts/bench installs them")
    seconds = args.seconds or (0.2 if args.quick else 2.0)
    reps = args.reps or (2 if args.quick else 5)
    attempts = 100 if args.quick else ATTEMPTS_PER_PROCESS

    results: dict[str, Any] = {
        "settings": {
            "seconds_per_repetition": seconds,
            "repetitions": reps,
            "quick": args.quick,
            "open_policy": f"{OPEN[0]} per {OPEN[1]:.0f} s",
            "limited_policy": f"{LIMIT} per day",
            "tasks": TASKS,
            "processes": PROCESSES,
            "distinct_keys": DISTINCT_KEYS,
        }
    }
    with tempfile.TemporaryDirectory() as workdir:
        server = RedisServer(Path(workdir))
        try:
            results["machine"] = machine(server)
            print(json.dumps(results["machine"]), flush=True)
            if "hot" in only:
                print(" sync, one hot key", flush=True)
                results["hot"] = w_sync(server, hot_key, seconds, reps)
            if "distinct" in only:
                print(f" sync, {DISTINCT_KEYS:,} distinct keys", flush=True)
                results["distinct"] = w_sync(server, distinct_key, seconds, reps)
            if "async" in only:
                results["async"] = w_async(server, seconds, reps)
            if "abusive" in only:
                print(" abusive client, already throttled", flush=True)
                results["abusive"] = w_sync(server, hot_key, seconds, reps, abusive=True)
            if "contention" in only:
                print(f" {PROCESSES} processes, one key, {LIMIT} per day", flush=True)
                results["contention"] = w_contention(server, attempts)
            if "memory" in only:
                print(" Redis memory per busy key", flush=True)
                results["memory"] = w_memory(server)
            if "service" in only:
                print(" sluicegate serve under wrk and h2load", flush=True)
                flush(server)
                results["service"] = w_service(server.url, max(seconds, 1.0) * 2, reps)
        finally:
            server.kill()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {args.output}")
    if not args.no_docs:
        from bench.report import write_docs

        write_docs(results, ROOT)


if __name__ == "__main__":
    main()
