"""Every public entry point refuses bad input at the call that carries it, with an error that
names the input (bounded, escaped) and is also a ``ValueError``."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest

import sluicegate
from sluicegate import ConfigError, CostError, InputError, InvalidKeyError, PolicyError

P = sluicegate.Policy(10, 1.0)
HUGE = "x" * 10_000

CASES: list[tuple[str, Callable[[sluicegate.Limiter], Any], type[InputError], str]] = [
    # Policy(...)
    ("limit zero", lambda _: sluicegate.Policy(0, 1.0), PolicyError, "limit must be an int in 1..1,000,000,000; got 0"),
    ("limit negative", lambda _: sluicegate.Policy(-5, 1.0), PolicyError, "got -5"),
    ("limit float", lambda _: sluicegate.Policy(10.5, 1.0), PolicyError, "got 10.5"),  # type: ignore[arg-type]
    ("limit nan", lambda _: sluicegate.Policy(math.nan, 1.0), PolicyError, "got nan"),  # type: ignore[arg-type]
    ("limit inf", lambda _: sluicegate.Policy(math.inf, 1.0), PolicyError, "got inf"),  # type: ignore[arg-type]
    ("limit bool", lambda _: sluicegate.Policy(True, 1.0), PolicyError, "got True"),
    ("limit str", lambda _: sluicegate.Policy("10", 1.0), PolicyError, "got '10'"),  # type: ignore[arg-type]
    ("limit too big", lambda _: sluicegate.Policy(10**10, 1.0), PolicyError, "got 10000000000"),
    ("period zero", lambda _: sluicegate.Policy(1, 0), PolicyError, "between 1 ms and 366 days; got 0"),
    ("period negative", lambda _: sluicegate.Policy(1, -1.0), PolicyError, "got -1.0"),
    ("period nan", lambda _: sluicegate.Policy(1, math.nan), PolicyError, "finite number of seconds; got nan"),
    ("period inf", lambda _: sluicegate.Policy(1, math.inf), PolicyError, "got inf"),
    ("period sub-ms", lambda _: sluicegate.Policy(1, 0.0004), PolicyError, "got 0.0004"),
    ("period fractional ms", lambda _: sluicegate.Policy(1, 0.0015), PolicyError, "whole number of milliseconds"),
    ("period over a year", lambda _: sluicegate.Policy(1, 400 * 86400), PolicyError, "366 days"),
    ("period str", lambda _: sluicegate.Policy(1, "1s"), PolicyError, "got '1s'"),  # type: ignore[arg-type]
    ("burst zero", lambda _: sluicegate.Policy(1, 1.0, burst=0), PolicyError, "burst must be an int"),
    ("burst float", lambda _: sluicegate.Policy(1, 1.0, burst=2.5), PolicyError, "got 2.5"),  # type: ignore[arg-type]
    (
        "burst on sliding-log",
        lambda _: sluicegate.Policy(1, 1.0, burst=5, algorithm="sliding-log"),
        PolicyError,
        "burst belongs to the gcra algorithm",
    ),
    (
        "unknown algorithm",
        lambda _: sluicegate.Policy(1, 1.0, algorithm="leaky"),
        PolicyError,
        "unknown algorithm 'leaky'",
    ),
    ("bad name", lambda _: sluicegate.Policy(1, 1.0, name="a b"), PolicyError, "name must match"),
    ("name with brace", lambda _: sluicegate.Policy(1, 1.0, name="{x}"), PolicyError, "got '{x}'"),
    # Policy.parse(...)
    ("junk text", lambda _: sluicegate.Policy.parse("lots"), PolicyError, "cannot parse policy 'lots'"),
    ("empty text", lambda _: sluicegate.Policy.parse(""), PolicyError, "cannot parse policy ''"),
    ("unknown unit", lambda _: sluicegate.Policy.parse("10 per fortnight"), PolicyError, "unknown unit 'fortnight'"),
    ("negative text", lambda _: sluicegate.Policy.parse("-5/s"), PolicyError, "cannot parse policy '-5/s'"),
    ("zero period text", lambda _: sluicegate.Policy.parse("10/0s"), PolicyError, "period must be positive"),
    ("exponent text", lambda _: sluicegate.Policy.parse("1e3/s"), PolicyError, "cannot parse policy '1e3/s'"),
    ("non-ascii digits", lambda _: sluicegate.Policy.parse("١٠/s"), PolicyError, "cannot parse policy"),
    ("zero limit text", lambda _: sluicegate.Policy.parse("0/s"), PolicyError, "limit must be an int"),
    ("trailing junk", lambda _: sluicegate.Policy.parse("10/s extra"), PolicyError, "option 'extra'"),
    ("unknown option", lambda _: sluicegate.Policy.parse("10/s color red"), PolicyError, "unknown option 'color'"),
    ("bad burst text", lambda _: sluicegate.Policy.parse("10/s burst x"), PolicyError, "burst must be a whole number"),
    ("burst in text and arg", lambda _: sluicegate.Policy.parse("10/s burst 5", burst=6), PolicyError, "says burst 5"),
    ("parse non-str", lambda _: sluicegate.Policy.parse(10), PolicyError, "policy text must be a str"),  # type: ignore[arg-type]
    ("huge text", lambda _: sluicegate.Policy.parse(HUGE), PolicyError, "cannot parse policy 'xxx"),
    # keys
    ("empty key", lambda lim: lim.hit("", P), InvalidKeyError, "non-empty str; got ''"),
    ("None key", lambda lim: lim.hit(None, P), InvalidKeyError, "got NoneType None"),  # type: ignore[arg-type]
    ("bytes key", lambda lim: lim.hit(b"k", P), InvalidKeyError, "got bytes b'k'"),  # type: ignore[arg-type]
    ("int key", lambda lim: lim.hit(42, P), InvalidKeyError, "got int 42"),  # type: ignore[arg-type]
    ("key too long", lambda lim: lim.hit("é" * 2049, P), InvalidKeyError, "4098 UTF-8 bytes, more than the 4096"),
    (
        "lone surrogate",
        lambda lim: lim.hit("ab\ud800", P),
        InvalidKeyError,
        "not valid UTF-8 (surrogates not allowed at index 2)",
    ),
    ("peek bad key", lambda lim: lim.peek("", P), InvalidKeyError, "non-empty str"),
    ("reset bad key", lambda lim: lim.reset("", P), InvalidKeyError, "non-empty str"),
    # policies given to the limiter
    ("policy int", lambda lim: lim.hit("k", 5), PolicyError, "must be a Policy or a policy string; got 5"),  # type: ignore[arg-type]
    ("policy bad text", lambda lim: lim.hit("k", "ten per second"), PolicyError, "cannot parse policy"),
    ("reset bad policy", lambda lim: lim.reset("k", None), PolicyError, "got None"),  # type: ignore[arg-type]
    # costs
    ("cost zero", lambda lim: lim.hit("k", P, cost=0), CostError, "cost must be a positive int; got 0"),
    ("cost negative", lambda lim: lim.hit("k", P, cost=-1000), CostError, "got -1000"),
    ("cost float", lambda lim: lim.hit("k", P, cost=1.5), CostError, "got 1.5"),  # type: ignore[arg-type]
    ("cost nan", lambda lim: lim.hit("k", P, cost=math.nan), CostError, "got nan"),  # type: ignore[arg-type]
    ("cost bool", lambda lim: lim.hit("k", P, cost=True), CostError, "got True"),
    (
        "cost over capacity",
        lambda lim: lim.hit("k", P, cost=11),
        CostError,
        "exceeds the capacity 10 of policy '10/second'",
    ),
    ("peek cost over", lambda lim: lim.peek("k", "5/s burst 7", cost=8), CostError, "capacity 7"),
    # hit_all
    ("hit_all empty", lambda lim: lim.hit_all([]), InputError, "at least one"),
    ("hit_all not a pair", lambda lim: lim.hit_all(["k"]), InputError, "item 0 must be (key, policy)"),  # type: ignore[list-item]
    ("hit_all bad key", lambda lim: lim.hit_all([("k", P), ("", P)]), InvalidKeyError, "non-empty str"),
    ("hit_all bad cost", lambda lim: lim.hit_all([("k", P, 0)]), CostError, "got 0"),
    ("hit_all summed cost", lambda lim: lim.hit_all([("k", P, 6), ("k", P, 5)]), CostError, "cost 11 exceeds"),
]


@pytest.fixture
def limiter() -> sluicegate.Limiter:
    return sluicegate.Limiter()


@pytest.mark.parametrize(("case", "call", "error", "message"), CASES, ids=[case[0] for case in CASES])
def test_bad_input_is_refused_with_a_clear_error(
    limiter: sluicegate.Limiter, case: str, call: Callable[[sluicegate.Limiter], Any], error: type, message: str
) -> None:
    with pytest.raises(error) as raised:
        call(limiter)
    assert isinstance(raised.value, ValueError)
    assert message in str(raised.value)
    assert len(str(raised.value)) < 300, "the offending input is echoed bounded"


def test_a_refused_call_consumes_nothing(limiter: sluicegate.Limiter) -> None:
    with pytest.raises(InvalidKeyError):
        limiter.hit_all([("k", P, 3), ("", P)])
    assert limiter.peek("k", P).remaining == 9


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"url": "postgres://x"}, "unsupported store URL 'postgres://x'"),
        ({"url": 42}, "url must be a store URL (str) or a store; got 42"),
        ({"url": "redis+cluster://a:1,b:notaport"}, "bad host 'b:notaport'"),
        ({"url": "memory://?max_keys=0"}, "max_keys must be a positive int; got 0"),
        ({"url": "memory://?max_keys=ten"}, "max_keys must be a positive integer"),
        ({"url": "memory://?size=1"}, "unknown option 'size'"),
        ({"url": "redis://127.0.0.1:notaport/0"}, "invalid Redis URL"),
        ({"prefix": ""}, "prefix must match"),
        ({"prefix": "a{b}"}, "got 'a{b}'"),
        ({"prefix": 5}, "got 5"),
        ({"clock": "sundial"}, "clock must be 'server', 'client' or a callable; got 'sundial'"),
        ({"timeout": 0}, "timeout must be seconds in (0, 60]; got 0"),
        ({"timeout": math.inf}, "got inf"),
        ({"timeout": "1"}, "got '1'"),
    ],
)
@pytest.mark.parametrize("limiter_class", [sluicegate.Limiter, sluicegate.AsyncLimiter])
def test_bad_limiter_options_are_refused(limiter_class: type, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        limiter_class(**kwargs)
    assert isinstance(raised.value, ValueError)
    assert message in str(raised.value)


async def test_async_limiter_refuses_the_same_input() -> None:
    async with sluicegate.AsyncLimiter() as limiter:
        with pytest.raises(InvalidKeyError, match="non-empty str"):
            await limiter.hit("", P)
        with pytest.raises(CostError, match="exceeds the capacity"):
            await limiter.peek("k", P, cost=11)
        with pytest.raises(InputError, match="at least one"):
            await limiter.hit_all([])
        with pytest.raises(PolicyError, match="cannot parse"):
            await limiter.reset("k", "nonsense")


@pytest.mark.parametrize(
    "url", ["redis://:s3cret@127.0.0.1:notaport/0", "postgres://user:s3cret@db/x", "redis+sentinel://:s3cret@a:1"]
)
def test_url_errors_never_show_the_password(url: str) -> None:
    with pytest.raises(ConfigError) as raised:
        sluicegate.Limiter(url)
    assert "s3cret" not in str(raised.value)
    assert ":***@" in str(raised.value)
