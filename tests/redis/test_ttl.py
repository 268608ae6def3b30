"""Every key sluicegate writes expires, no later than its state matters and no earlier; every
key carries the limiter's prefix; user keys can neither collide nor steer the hash tag."""

from __future__ import annotations

import time

import pytest
import redis

import sluicegate
from sluicegate._keys import state_keys
from tests.redis._support import all_keys

pytestmark = pytest.mark.redis

#: Different periods per algorithm, so a TTL computed from the wrong policy shows.
POLICIES = {
    "gcra": "10/40s",
    "sliding-log": "10/30s algorithm sliding-log",
    "sliding-window": "10/20s algorithm sliding-window",
    "fixed-window": "10/50s algorithm fixed-window",
}
KEYS_PER_ALGORITHM = 2_500  # 10,000 user keys, 12,500 Redis keys (a sliding log has two)
BATCH = 50


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def test_every_key_expires_within_what_its_policy_needs(redis_url):
    # (state keys, the TTL the decision implies in ms, when the call started, algorithm)
    written: list[tuple[tuple[str, ...], int, float, str]] = []
    items = [
        (f"user-{n}:{algorithm}", policy, 1 + n % 3)
        for n in range(KEYS_PER_ALGORITHM)
        for algorithm, policy in POLICIES.items()
    ]
    with sluicegate.Limiter(redis_url, timeout=2.0) as limiter:
        for start in range(0, len(items), BATCH):
            batch = items[start : start + BATCH]
            started = time.monotonic()
            if start % (10 * BATCH) == 0:  # some by plain hits, the rest in hit_all batches
                decisions = [limiter.hit(key, policy, cost=cost) for key, policy, cost in batch]
            else:
                decision = limiter.hit_all(batch)
                assert decision.allowed
                decisions = list(decision.results)
            for (key, policy, _), result in zip(batch, decisions, strict=True):
                assert result.allowed
                assert not result.degraded
                assert result.key == key
                ttl_ms = _ceil_div(round(result.reset_after * 1_000_000), 1000)  # PX ceil(reset / 1000)
                parsed = sluicegate.Policy.parse(policy)
                written.append((state_keys("sluicegate", parsed, key), ttl_ms, started, parsed.algorithm))

    with redis.Redis.from_url(redis_url) as client:
        keys = all_keys(client)
        pipe = client.pipeline(transaction=False)
        for state, _, _, _ in written:
            for state_key in state:
                pipe.pttl(state_key)
        pttls = iter(pipe.execute())
        read_at = time.monotonic()
        keyspace = client.info("keyspace")

    expected_keys = {k.encode() for state, _, _, _ in written for k in state}
    assert len(expected_keys) == 12_500
    assert set(keys) <= expected_keys  # nothing else was written
    assert keyspace["db0"]["keys"] == keyspace["db0"]["expires"]
    gone: set[bytes] = set()
    for state, ttl_ms, started, algorithm in written:
        period_ms = sluicegate.Policy.parse(POLICIES[algorithm]).period_ms
        longest = 2 * period_ms if algorithm == "sliding-window" else period_ms
        elapsed_ms = (read_at - started) * 1000
        for state_key in state:
            pttl = next(pttls)
            if pttl == -2 and ttl_ms <= elapsed_ms + 1:
                # Legitimately gone: a fixed window that ended since (its key lives until the
                # window's end, which can be a moment after the hit).
                gone.add(state_key.encode())
                continue
            assert pttl > 0, f"{state_key} does not expire or vanished early ({pttl})"
            assert pttl <= longest, f"{state_key} lives {pttl} ms, longer than its policy ever needs"
            # Exactly as long as the decision says the state matters: no longer, and no shorter
            # (the key may only have aged by the time since the call started).
            assert ttl_ms - elapsed_ms - 1 <= pttl <= ttl_ms, f"{state_key}: PTTL {pttl}, decision says {ttl_ms}"
    assert expected_keys - set(keys) <= gone  # (the scan ran first: it may still list a few of these)
    print(f"\n{len(expected_keys)} keys checked, {len(gone)} expired with their fixed window before the check")


@pytest.mark.parametrize("prefix", ["sluicegate", "acme.rl:v2", "T-1_x"])
def test_every_key_starts_with_the_prefix(redis_url, prefix):
    with sluicegate.Limiter(redis_url, prefix=prefix, timeout=2.0) as limiter:
        for algorithm, policy in POLICIES.items():
            assert limiter.hit(f"k:{algorithm}", policy).remaining == 9
        assert limiter.hit_all([("k:all", policy) for policy in POLICIES.values()]).allowed
    with redis.Redis.from_url(redis_url) as client:
        keys = all_keys(client)
    assert len(keys) == 2 * 5
    assert all(key.startswith(f"{prefix}:".encode()) for key in keys), keys


def test_limiters_with_different_prefixes_keep_separate_state(redis_url):
    with (
        sluicegate.Limiter(redis_url, timeout=2.0) as default,
        sluicegate.Limiter(redis_url, prefix="tenant-b", timeout=2.0) as other,
    ):
        for algorithm, policy in POLICIES.items():
            key = f"shared:{algorithm}"
            assert default.hit(key, policy, cost=4).remaining == 6
            assert other.hit(key, policy, cost=1).remaining == 9
            assert default.peek(key, policy).remaining == 5
            assert other.peek(key, policy).remaining == 8


#: Keys that differ only in characters a careless encoding would confuse.
TRICKY_KEYS = [
    "a:b", "a%3Ab", "a%3ab", "a{b}", "a%7Bb%7D", "{a}b", "a}b{", "{", "}", "{}", "}{", "{{}}",
    "%", "%25", "%%", "%2525", "a*b", "a?b", "a[b]", "*", "a b", "a%20b", "a+b", "a\tb", "a%09b",
    "a\nb", "a\x00b", "a%00b", "a\x7fb", " ", "  ", "ü", "%C3%BC", "u\u0308", "日本語", "🙂",
    "\u00a0", "\u3000", "user:{42}", "user:42", "x}:n", "x", "sluicegate:g10/3600000b10:{x}",
]  # fmt: skip


def _percent_encoded(key: str) -> str:
    """The documented encoding: ``%``, braces, ASCII whitespace and controls become ``%XX``."""
    return "".join(f"%{ord(c):02X}" if c in "%{}" or ord(c) <= 0x20 or ord(c) == 0x7F else c for c in key)


def test_user_keys_neither_collide_nor_steer_the_hash_tag(redis_url):
    assert len(set(TRICKY_KEYS)) == len(TRICKY_KEYS)
    policies = [f"1000/hour algorithm {algorithm}" for algorithm in POLICIES]
    with sluicegate.Limiter(redis_url, timeout=2.0) as limiter:
        for n, key in enumerate(TRICKY_KEYS):
            for policy in policies:
                assert limiter.hit(key, policy, cost=n + 1).remaining == 1000 - (n + 1)
        # Had two keys shared state, one of them would now show the other's usage too.
        for n, key in enumerate(TRICKY_KEYS):
            for policy in policies:
                assert limiter.peek(key, policy).remaining == 1000 - (n + 1) - 1, (key, policy)
    with redis.Redis.from_url(redis_url) as client:
        keys = [key.decode("utf-8") for key in all_keys(client)]

    assert len(keys) == len(TRICKY_KEYS) * 5  # a sliding log keeps two keys
    tags: dict[str, int] = {}
    for key in keys:
        assert key.startswith("sluicegate:")
        opening = key.index("{")
        tag = key[opening + 1 : key.index("}", opening)]
        tags[tag] = tags.get(tag, 0) + 1
    # Each user key's state sits under exactly its own encoding as the tag (one Cluster slot).
    assert tags == {_percent_encoded(key): 5 for key in TRICKY_KEYS}
