"""Per-algorithm throughput and latency of the sync Limiter on a real Redis on loopback, and the
Redis memory each algorithm keeps per key. Starts its own redis-server; prints a Markdown table.

    .venv/bin/python -m bench.core [--decisions 20000]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from tests.redis_server import RedisServer

import sluicegate
from sluicegate._keys import state_keys

# Limits no run reaches: every decision is a round trip (a denied key would be answered by the
# blocked-key cache instead). Memory is measured on a sliding log of 100 entries.
POLICIES = {
    "gcra": sluicegate.Policy(1_000_000, 1.0),
    "sliding-log": sluicegate.Policy(1_000_000, 3600.0, algorithm="sliding-log"),
    "sliding-window": sluicegate.Policy(1_000_000, 1.0, algorithm="sliding-window"),
    "fixed-window": sluicegate.Policy(1_000_000, 1.0, algorithm="fixed-window"),
}
MEMORY_LOG_ENTRIES = 100


def measure(url: str, policy: sluicegate.Policy, decisions: int) -> tuple[float, float, float]:
    """Decisions per second, p50 and p99 latency (µs) of `hit` on one hot key, one thread."""
    latencies = []
    with sluicegate.Limiter(url, timeout=1.0) as limiter:
        for _ in range(200):  # warm up: connection, script cache, parsed policy
            limiter.hit("warm", policy)
        started = time.perf_counter()
        for _ in range(decisions):
            before = time.perf_counter()
            limiter.hit("hot", policy)
            latencies.append(time.perf_counter() - before)
        elapsed = time.perf_counter() - started
        assert limiter.peek("hot", policy).allowed, "the limit was reached: later decisions skipped Redis"
    quantiles = statistics.quantiles(latencies, n=100)
    return decisions / elapsed, quantiles[49] * 1e6, quantiles[98] * 1e6


def memory_per_key(server: RedisServer, policy: sluicegate.Policy) -> int:
    """Bytes Redis reports (MEMORY USAGE, summed over the state's keys) for a busy key: hit 100
    times, so a sliding log holds 100 entries."""
    with sluicegate.Limiter(server.url, timeout=1.0) as limiter, server.client() as client:
        for _ in range(MEMORY_LOG_ENTRIES):
            limiter.hit("memory", policy)
        return sum(client.memory_usage(key) or 0 for key in state_keys("sluicegate", policy, "memory"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decisions", type=int, default=20_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        server = RedisServer(Path(workdir))
        try:
            print("| algorithm | decisions/s | p50 µs | p99 µs | Redis bytes per key |")
            print("|---|---|---|---|---|")
            for name, policy in POLICIES.items():
                rate, p50, p99 = measure(server.url, policy, args.decisions)
                print(f"| {name} | {rate:,.0f} | {p50:.0f} | {p99:.0f} | {memory_per_key(server, policy)} |")
        finally:
            server.kill()


if __name__ == "__main__":
    main()
