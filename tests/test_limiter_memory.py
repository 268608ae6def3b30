"""``Limiter`` and ``AsyncLimiter`` over ``memory://``, driven by a fake clock.

The clock starts at a whole second (1_700_000_000 s) and moves by binary fractions of a second,
so every time is a whole number of µs and every window of 1 s starts on the clock's whole seconds.
"""

from __future__ import annotations

from sluicegate import AsyncLimiter, Decision, Limiter, Policy
from sluicegate.stores import MemoryStore
from tests.conftest import FakeClock

GCRA = "10/second"  # one unit drains every 100 ms
FIXED = "3/second algorithm fixed-window"

HITS = [
    # advance s, cost, allowed, remaining, reset_after, retry_after
    (0.0, 1, True, 9, 0.1, 0.0),
    (0.0, 9, True, 0, 1.0, 0.0),
    (0.0, 1, False, 0, 1.0, 0.1),
    (0.25, 3, False, 2, 0.75, 0.05),  # 7.5 in use: 2 whole units free, the third in 50 ms
    (0.125, 3, True, 0, 0.925, 0.0),  # 6.25 in use, then 9.25
    (1.0, 1, True, 9, 0.1, 0.0),  # drained
]


def answer(decision: Decision) -> tuple[bool, int, float, float]:
    return decision.allowed, decision.remaining, decision.reset_after, decision.retry_after


def test_peek_answers_what_hit_does_and_hit_consumes(clock: FakeClock) -> None:
    limiter = Limiter("memory://", clock=clock)
    for advance, cost, *expected in HITS:
        clock.advance(advance)
        peeked = limiter.peek("user:1", GCRA, cost=cost)
        assert limiter.peek("user:1", GCRA, cost=cost) == peeked  # peeking consumed nothing
        hit = limiter.hit("user:1", GCRA, cost=cost)
        assert hit == peeked
        assert answer(hit) == tuple(expected)


async def test_async_peek_answers_what_hit_does_and_hit_consumes(clock: FakeClock) -> None:
    limiter = AsyncLimiter("memory://", clock=clock)
    for advance, cost, *expected in HITS:
        clock.advance(advance)
        peeked = await limiter.peek("user:1", GCRA, cost=cost)
        assert await limiter.peek("user:1", GCRA, cost=cost) == peeked
        hit = await limiter.hit("user:1", GCRA, cost=cost)
        assert hit == peeked
        assert answer(hit) == tuple(expected)


def test_reset_forgets_only_that_key_and_policy(clock: FakeClock) -> None:
    limiter = Limiter("memory://", clock=clock)
    for key, policy in [("a", FIXED), ("b", FIXED), ("a", GCRA)]:
        limiter.hit(key, policy, cost=3)
    limiter.reset("a", FIXED)
    assert answer(limiter.peek("a", FIXED)) == (True, 2, 1.0, 0.0)  # as if new
    assert answer(limiter.peek("b", FIXED)) == (False, 0, 1.0, 1.0)
    assert answer(limiter.peek("a", GCRA)) == (True, 6, 0.4, 0.0)


async def test_async_reset_forgets(clock: FakeClock) -> None:
    limiter = AsyncLimiter("memory://", clock=clock)
    await limiter.hit("a", FIXED, cost=3)
    await limiter.reset("a", FIXED)
    assert answer(await limiter.hit("a", FIXED, cost=3)) == (True, 0, 1.0, 0.0)


def test_policies_on_one_key_keep_separate_state(clock: FakeClock) -> None:
    limiter = Limiter("memory://", clock=clock)
    limiter.hit("k", FIXED, cost=3)
    # a different name, algorithm or limit is another policy: none of them has seen the 3 units
    for other in ["3/second algorithm fixed-window name search", "3/second algorithm sliding-log", "4/second"]:
        assert limiter.hit("k", other, cost=3).allowed, other
    assert not limiter.hit("k", FIXED).allowed


def test_hit_all_denied_consumes_nothing_anywhere(clock: FakeClock) -> None:
    limiter = Limiter("memory://", clock=clock)
    clock.advance(0.25)
    limiter.hit("org", FIXED, cost=2)
    decision = limiter.hit_all([("user", GCRA), ("org", FIXED, 2), ("user", FIXED)])
    user = Decision(True, "user", Policy.parse(GCRA), 10, 10, 0.0, 0.0)  # a look: nothing consumed
    org = Decision(False, "org", Policy.parse(FIXED), 3, 1, 0.75, 0.75)  # 2 + 2 > 3 until the window ends
    user_fixed = Decision(True, "user", Policy.parse(FIXED), 3, 3, 0.0, 0.0)
    assert decision == Decision(False, "org", Policy.parse(FIXED), 3, 1, 0.75, 0.75, results=(user, org, user_fixed))
    assert answer(limiter.peek("user", GCRA)) == (True, 9, 0.1, 0.0)
    assert answer(limiter.peek("org", FIXED)) == (True, 0, 0.75, 0.0)
    assert answer(limiter.peek("user", FIXED)) == (True, 2, 0.75, 0.0)


async def test_async_hit_all_denied_consumes_nothing(clock: FakeClock) -> None:
    limiter = AsyncLimiter("memory://", clock=clock)
    await limiter.hit("org", FIXED, cost=3)
    decision = await limiter.hit_all([("user", GCRA), ("org", FIXED)])
    assert [answer(result) for result in decision.results] == [(True, 10, 0.0, 0.0), (False, 0, 1.0, 1.0)]
    assert answer(decision) == (False, 0, 1.0, 1.0)
    assert answer(await limiter.peek("user", GCRA)) == (True, 9, 0.1, 0.0)


def test_hit_all_allowed_consumes_everywhere(clock: FakeClock) -> None:
    limiter = Limiter("memory://", clock=clock)
    decision = limiter.hit_all([("user", GCRA, 4), ("org", FIXED)])
    # the answer is the item with the least remaining
    assert answer(decision) == (True, 2, 1.0, 0.0)
    assert [answer(result) for result in decision.results] == [(True, 6, 0.4, 0.0), (True, 2, 1.0, 0.0)]
    assert answer(limiter.peek("user", GCRA)) == (True, 5, 0.5, 0.0)
    assert answer(limiter.peek("org", FIXED)) == (True, 1, 1.0, 0.0)


def test_hit_all_duplicates_act_as_their_summed_cost(clock: FakeClock) -> None:
    limiter = Limiter("memory://", clock=clock)
    clock.advance(0.25)
    both = limiter.hit_all([("k", FIXED), ("k", FIXED, 2)])  # one hit of cost 3
    assert [answer(result) for result in both.results] == [(True, 0, 0.75, 0.0)] * 2
    limiter.reset("k", FIXED)
    limiter.hit("k", FIXED, cost=2)
    # each would fit alone (1 left), together they do not: denied, and nothing consumed
    both = limiter.hit_all([("k", FIXED), ("k", FIXED)])
    assert [answer(result) for result in both.results] == [(False, 1, 0.75, 0.75)] * 2
    assert answer(limiter.hit("k", FIXED)) == (True, 0, 0.75, 0.0)


def test_max_keys_evicts_the_least_recently_used(clock: FakeClock) -> None:
    store = MemoryStore(max_keys=2)
    limiter = Limiter(store, clock=clock)
    limiter.hit("a", FIXED, cost=3)
    limiter.hit("b", FIXED, cost=3)
    limiter.peek("a", FIXED)  # a is now more recently used than b
    limiter.hit("c", FIXED, cost=3)
    assert len(store) == 2
    assert not limiter.peek("a", FIXED).allowed  # kept
    assert limiter.peek("b", FIXED).allowed  # evicted: its usage is forgotten
    assert not limiter.peek("c", FIXED).allowed


def test_expired_state_is_dropped(clock: FakeClock) -> None:
    store = MemoryStore()
    limiter = Limiter(store, clock=clock)
    limiter.hit("a", GCRA)  # matters for 100 ms
    limiter.hit("b", GCRA)
    limiter.hit("c", "1/minute")
    assert len(store) == 3
    clock.advance(0.125)
    limiter.peek("a", GCRA)  # reading expired state drops it
    assert len(store) == 2
    limiter.hit("d", GCRA)  # writing drops expired state from the least recently used end
    assert len(store) == 2  # c and d


def test_a_clock_that_steps_back_does_not_shorten_what_is_remembered(clock: FakeClock) -> None:
    """A gcra state written from behind its own time must still be there when it matters."""
    limiter = Limiter("memory://", clock=clock)
    clock.advance(1.0)
    assert answer(limiter.hit("k", GCRA, cost=6)) == (True, 4, 0.6, 0.0)
    clock.advance(-0.125)  # the clock steps back; the 10 units in use now drain by 2 s
    assert limiter.hit("k", GCRA, cost=4).allowed
    clock.advance(1.0)  # 1.875 s: 1.25 units still in use, so 8 are free, not 10
    assert answer(limiter.hit("k", GCRA, cost=10)) == (False, 8, 0.125, 0.125)
