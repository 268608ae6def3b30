from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sluicegate import Policy

ALGORITHMS = ["gcra", "sliding-log", "sliding-window", "fixed-window"]


@pytest.mark.parametrize(
    ("text", "limit", "period"),
    [
        ("100/minute", 100, 60.0),
        ("100/min", 100, 60.0),
        ("100/m", 100, 60.0),
        ("100 per minute", 100, 60.0),
        ("10/second", 10, 1.0),
        ("10/s", 10, 1.0),
        ("5/10s", 5, 10.0),
        ("1000/hour", 1000, 3600.0),
        ("20000/day", 20000, 86400.0),
        ("3/250ms", 3, 0.25),
        ("7 per 2 hours", 7, 7200.0),
        ("  10/S  ", 10, 1.0),
    ],
)
def test_parse_accepts_the_documented_forms(text: str, limit: int, period: float) -> None:
    assert Policy.parse(text) == Policy(limit, period)


def test_parse_options_and_defaults() -> None:
    assert Policy.parse("10/second burst 50") == Policy(10, 1.0, burst=50)
    assert Policy.parse("100/minute", algorithm="sliding-log", name="search") == Policy(
        100, 60.0, algorithm="sliding-log", name="search"
    )
    assert Policy.parse("1/s algorithm fixed-window name api.v1").algorithm == "fixed-window"
    assert Policy.parse("10/s", burst=20).burst == 20
    assert Policy.parse("10/s burst 20", burst=20).burst == 20  # agreeing twice is fine


def test_policy_is_immutable_and_hashable() -> None:
    policy = Policy(100, 60.0)
    with pytest.raises(AttributeError):
        policy.limit = 5  # type: ignore[misc]
    assert {policy: 1}[Policy.parse("100/minute")] == 1
    assert policy.capacity == 100
    assert Policy(10, 1.0, burst=30).capacity == 30


def test_str_is_readable() -> None:
    assert str(Policy(100, 60)) == "100/minute"
    assert str(Policy(10, 1.0, burst=50)) == "10/second burst 50"
    assert str(Policy(5, 10.0, algorithm="sliding-log", name="search")) == "5/10s algorithm sliding-log name search"
    assert str(Policy(3, 1.5)) == "3/1500ms"


@given(
    limit=st.integers(1, 10**9),
    period_ms=st.integers(1, 366 * 86_400_000),
    algorithm=st.sampled_from(ALGORITHMS),
    burst=st.one_of(st.none(), st.integers(1, 10**9)),
    name=st.one_of(st.none(), st.from_regex(r"[A-Za-z0-9_.\-]{1,64}", fullmatch=True)),
)
def test_str_round_trips_through_parse(
    limit: int, period_ms: int, algorithm: str, burst: int | None, name: str | None
) -> None:
    policy = Policy(
        limit, period_ms / 1000, burst=burst if algorithm == "gcra" else None, algorithm=algorithm, name=name
    )
    assert Policy.parse(str(policy)) == policy


def test_state_identity_separates_what_must_be_separate() -> None:
    ids = {
        Policy(100, 60).key_id,
        Policy(100, 60, burst=200).key_id,
        Policy(100, 60, name="a").key_id,
        Policy(100, 60, algorithm="sliding-log").key_id,
        Policy(100, 30).key_id,
        Policy(50, 60).key_id,
    }
    assert len(ids) == 6
    # burst defaults to limit: the same bucket whether it is spelled out or not
    assert Policy(100, 60).key_id == Policy(100, 60, burst=100).key_id


def test_long_whole_millisecond_periods_are_accepted() -> None:
    # Past ~1.7e10 ms the float round trip ms -> s -> ms drifts by more than an absolute 1e-6.
    policy = Policy.parse("1/17020705516ms")
    assert policy.period_ms == 17_020_705_516
    assert Policy.parse(str(policy)) == policy
    assert Policy(1, 17_020_705.516).period_ms == 17_020_705_516
