"""The pure rendering: exact header values, the 429 problem+json body, and what never leaks."""

from __future__ import annotations

import dataclasses
import json

import pytest

from sluicegate import Decision, InputError, Policy
from sluicegate.middleware.headers import (
    MAX_VIOLATED_POLICIES,
    PROBLEM_TYPE,
    policy_identifier,
    rate_limit_headers,
    throttled_response,
    unavailable_response,
)


def decision(policy: str | Policy, *, allowed: bool = True, remaining: int = 5, reset: float = 12.0, retry=0.0):
    resolved = Policy.parse(policy) if isinstance(policy, str) else policy
    return Decision(
        allowed=allowed,
        key="k",
        policy=resolved,
        limit=resolved.capacity,
        remaining=remaining,
        reset_after=reset,
        retry_after=retry,
    )


def batch(*items: Decision) -> Decision:
    """What hit_all returns: the denying item (longest wait) or the least remaining, plus all."""
    denied = [d for d in items if not d.allowed]
    chosen = max(denied, key=lambda d: d.retry_after) if denied else min(items, key=lambda d: d.remaining)
    return dataclasses.replace(chosen, results=items)


def test_one_policy_allowed() -> None:
    headers = rate_limit_headers(decision("10/minute name api", remaining=7, reset=18.0))
    assert headers == [("RateLimit-Policy", '"api";q=10;w=60'), ("RateLimit", '"api";r=7;t=18')]


def test_unnamed_policy_is_identified_by_its_text() -> None:
    headers = dict(rate_limit_headers(decision("100/hour", remaining=99, reset=36.0)))
    assert headers == {"RateLimit-Policy": '"100/hour";q=100;w=3600', "RateLimit": '"100/hour";r=99;t=36'}


def test_times_are_rounded_up_to_whole_seconds() -> None:
    headers = dict(rate_limit_headers(decision("5/second", reset=0.2)))
    assert headers["RateLimit"] == '"5/second";r=5;t=1'
    # Float noise from µs arithmetic does not add a second.
    assert dict(rate_limit_headers(decision("5/second", reset=12.000000000001)))["RateLimit"].endswith("t=12")


def test_sub_second_windows_leave_out_w() -> None:
    """The draft has no sub-second windows; ``w`` is optional, so it is left out."""
    assert dict(rate_limit_headers(decision("10/1500ms")))["RateLimit-Policy"] == '"10/1500ms";q=10'


def test_gcra_burst_is_a_vendor_parameter() -> None:
    headers = dict(rate_limit_headers(decision("10/second burst 50 name b", remaining=49)))
    assert headers["RateLimit-Policy"] == '"b";q=10;w=1;sluicegate-burst=50'


def test_denied_adds_retry_after_and_the_window_is_the_wait() -> None:
    """Retry-After never points before the end of the denying item's effective window (draft §6)."""
    headers = rate_limit_headers(decision("2/minute name api", allowed=False, remaining=0, reset=60.0, retry=29.2))
    assert headers == [
        ("RateLimit-Policy", '"api";q=2;w=60'),
        ("RateLimit", '"api";r=0;t=30'),
        ("Retry-After", "30"),
    ]


def test_retry_after_is_at_least_one_second() -> None:
    headers = dict(rate_limit_headers(decision("1000/second", allowed=False, remaining=0, retry=0.000001)))
    assert headers["Retry-After"] == "1"


def test_hit_all_lists_every_policy_in_order() -> None:
    both = batch(
        decision("10/second name burst", remaining=3, reset=0.7),
        decision("1000/day name daily", remaining=900, reset=8640.0),
    )
    headers = dict(rate_limit_headers(both))
    assert headers["RateLimit-Policy"] == '"burst";q=10;w=1, "daily";q=1000;w=86400'
    assert headers["RateLimit"] == '"burst";r=3;t=1, "daily";r=900;t=8640'
    assert "Retry-After" not in headers


def test_the_same_policy_twice_gets_distinct_identifiers() -> None:
    """Two rules with one policy text: each RateLimit item must point at one policy item."""
    both = batch(decision("100/minute", remaining=9), decision("100/minute", remaining=50))
    headers = dict(rate_limit_headers(both))
    assert headers["RateLimit"] == '"100/minute";r=9;t=12, "100/minute#2";r=50;t=12'


def test_legacy_headers() -> None:
    headers = dict(rate_limit_headers(decision("10/minute", remaining=4, reset=36.5), legacy=True))
    assert headers["X-RateLimit-Limit"] == "10"
    assert headers["X-RateLimit-Remaining"] == "4"
    assert headers["X-RateLimit-Reset"] == "37"


def test_legacy_headers_describe_the_deciding_item_of_a_batch() -> None:
    both = batch(
        decision("10/second burst 20", remaining=3),
        decision("5/minute name slow", allowed=False, remaining=0, reset=60.0, retry=12.0),
    )
    headers = dict(rate_limit_headers(both, legacy=True))
    assert (headers["X-RateLimit-Limit"], headers["X-RateLimit-Remaining"], headers["Retry-After"]) == ("5", "0", "12")


def test_identifiers_are_escaped_sf_strings_without_line_breaks() -> None:
    """Policy names are validated, but a policy forged past validation still cannot break a header."""
    policy = Policy(5, 60, name="ok")
    object.__setattr__(policy, "name", 'x"y\\z\r\nSet-Cookie: a=b\x00é')
    headers = rate_limit_headers(decision(policy, allowed=False, remaining=0, retry=3.0), legacy=True)
    for name, value in headers:
        assert all(" " <= char <= "~" for char in name + value), (name, value)
    assert dict(headers)["RateLimit"] == '"x\\"y\\\\z??Set-Cookie: a=b??";r=0;t=3'


def test_identifiers_are_bounded() -> None:
    policy = Policy(5, 60, name="n")
    object.__setattr__(policy, "name", "x" * 10_000)
    assert len(policy_identifier(policy)) == 128
    assert len(dict(rate_limit_headers(decision(policy)))["RateLimit"]) < 160


def test_every_value_is_printable_ascii_for_odd_inputs() -> None:
    odd = batch(
        decision("1/ms", remaining=0, allowed=False, retry=0.0005, reset=0.001),
        decision("1000000000/366d algorithm fixed-window name " + "a" * 64, remaining=10**9),
    )
    for name, value in rate_limit_headers(odd, legacy=True):
        assert all(" " <= char <= "~" for char in value), (name, value)


def test_throttled_response_is_problem_json() -> None:
    both = batch(
        decision("100/hour name hourly", remaining=10),
        decision("2/minute name api", allowed=False, remaining=0, retry=30.0),
    )
    status, headers, body = throttled_response(both, instance="/orders/7")
    assert status == 429
    fields = dict(headers)
    assert fields["Content-Type"] == "application/problem+json"
    assert fields["Content-Length"] == str(len(body))
    assert fields["Retry-After"] == "30"
    assert json.loads(body) == {
        "type": PROBLEM_TYPE,
        "title": "Request cannot be satisfied as assigned quota has been exceeded",
        "status": 429,
        "detail": "Too many requests; retry after 30 seconds.",
        "violated-policies": ["api"],
        "instance": "/orders/7",
    }


def test_throttled_body_is_bounded_and_ascii() -> None:
    items = [decision(f"{n}/minute", allowed=False, remaining=0, retry=1.0) for n in range(1, 40)]
    _, _, body = throttled_response(batch(*items), instance="/" + "é" * 100_000)
    problem = json.loads(body)
    assert len(problem["violated-policies"]) == MAX_VIOLATED_POLICIES
    assert len(problem["instance"]) == 512
    assert body.isascii()
    assert problem["detail"] == "Too many requests; retry after 1 second."


def test_throttled_response_refuses_an_allowed_decision() -> None:
    with pytest.raises(InputError, match="denied decision"):
        throttled_response(decision("5/minute"))


def test_unavailable_response_is_a_503_problem() -> None:
    status, headers, body = unavailable_response()
    assert status == 503
    assert dict(headers)["Retry-After"] == "1"
    assert json.loads(body)["status"] == 503
