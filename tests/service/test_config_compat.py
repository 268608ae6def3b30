"""envoyproxy/ratelimit configs load unchanged and decide as the reference documents.

The configs are the reference's README examples 1-9 and its test configs (``basic_config.yaml``,
``wildcard.yaml``); the expectations are those the README and its ``config_test.go`` state. A few
are driven through a real ``Limiter`` on ``memory://`` with a fake clock.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sluicegate import Limiter
from sluicegate.service import config
from sluicegate.service.config import Check, RateLimitConfig, Rule
from tests.conftest import FakeClock

Entries = list[tuple[str, str]]


def limit_of(rule: Rule | None) -> tuple[int, int] | str | None:
    """A matched rule as (requests_per_unit, period in seconds), "unlimited", or None."""
    if rule is None:
        return None
    if rule.unlimited:
        return "unlimited"
    assert rule.period is not None
    return (rule.requests_per_unit, rule.period)


def rule_of(check: Check | None) -> Rule | None:
    return None if check is None else check.rule


def hit(limiter: Limiter, checks: tuple[Check | None, ...]) -> bool:
    """The service's decision for one request, in miniature: enforced checks all-or-nothing."""
    enforced = [check for check in checks if check is not None and not check.shadow and not check.unlimited]
    if any(check.rule.always_over for check in enforced):
        return False
    items = [check.item for check in enforced]
    return not items or limiter.hit_all(items).allowed


@pytest.fixture
def limiter(clock: FakeClock) -> Limiter:
    return Limiter("memory://", clock=clock, registry=None)


# --- README example 1: two values of one key ----------------------------------------------------

EXAMPLE_1 = """
domain: mongo_cps
descriptors:
  - key: database
    value: users
    rate_limit:
      unit: second
      requests_per_unit: 500

  - key: database
    value: default
    rate_limit:
      unit: second
      requests_per_unit: 500
"""


def test_example_1_each_value_its_own_limit() -> None:
    rules = config.loads(EXAMPLE_1)
    assert limit_of(rules.match("mongo_cps", [("database", "users")])) == (500, 1)
    assert limit_of(rules.match("mongo_cps", [("database", "default")])) == (500, 1)
    assert rules.match("mongo_cps", [("database", "other")]) is None
    users = rules.match("mongo_cps", [("database", "users")])
    assert users is not None
    assert users.algorithm == "fixed-window"


# --- README example 2: nested descriptors, several descriptors per request ---------------------

EXAMPLE_2 = """
domain: messaging
descriptors:
  # Only allow 5 marketing messages a day
  - key: message_type
    value: marketing
    descriptors:
      - key: to_number
        rate_limit:
          unit: day
          requests_per_unit: 5

  # Only allow 100 messages a day to any unique phone number
  - key: to_number
    rate_limit:
      unit: day
      requests_per_unit: 100
"""
MARKETING = [("message_type", "marketing"), ("to_number", "2061111111")]


def test_example_2_matching() -> None:
    rules = config.loads(EXAMPLE_2)
    assert limit_of(rules.match("messaging", MARKETING)) == (5, 86_400)
    assert limit_of(rules.match("messaging", [("to_number", "2061111111")])) == (100, 86_400)
    assert rules.match("messaging", [("message_type", "marketing")]) is None  # a placeholder, no limit
    assert rules.match("messaging", [("message_type", "transactional"), ("to_number", "1")]) is None


def test_example_2_five_marketing_messages_a_day_per_number(limiter: Limiter, clock: FakeClock) -> None:
    rules = config.loads(EXAMPLE_2)
    both = [MARKETING, [("to_number", "2061111111")]]  # the README's request with two descriptors
    assert [hit(limiter, rules.checks("messaging", both)) for _ in range(6)] == [True] * 5 + [False]
    other = [("message_type", "marketing"), ("to_number", "2062222222")]
    assert hit(limiter, rules.checks("messaging", [other]))  # every number has its own 5
    # The overall limit for the first number counted the 5 admitted requests only (all-or-nothing).
    plain = [[("to_number", "2061111111")]]
    assert [hit(limiter, rules.checks("messaging", plain)) for _ in range(96)] == [True] * 95 + [False]
    clock.advance(86_400)  # the next day's window
    assert hit(limiter, rules.checks("messaging", both))


# --- README example 3: the most specific match wins --------------------------------------------

EXAMPLE_3 = """
domain: edge_proxy_per_ip
descriptors:
  - key: remote_address
    rate_limit:
      unit: second
      requests_per_unit: 10

  # Black list IP
  - key: remote_address
    value: 50.0.0.5
    rate_limit:
      unit: second
      requests_per_unit: 0
"""


def test_example_3_key_value_before_key(limiter: Limiter, clock: FakeClock) -> None:
    rules = config.loads(EXAMPLE_3)
    assert limit_of(rules.match("edge_proxy_per_ip", [("remote_address", "50.0.0.1")])) == (10, 1)
    blocked = rules.match("edge_proxy_per_ip", [("remote_address", "50.0.0.5")])
    assert blocked is not None
    assert blocked.always_over
    assert blocked.policy is None
    ip = [[("remote_address", "50.0.0.1")]]
    assert [hit(limiter, rules.checks("edge_proxy_per_ip", ip)) for _ in range(11)] == [True] * 10 + [False]
    clock.advance(1.0)
    assert hit(limiter, rules.checks("edge_proxy_per_ip", ip))
    assert not hit(limiter, rules.checks("edge_proxy_per_ip", [[("remote_address", "50.0.0.5")]]))


# --- README example 4: the request's depth must be the config's --------------------------------

EXAMPLE_4_FLAT = """
domain: example4
descriptors:
  - key: key
    value: value
    rate_limit:
      requests_per_unit: 300
      unit: second
"""
EXAMPLE_4_NESTED = """
domain: example4
descriptors:
  - key: key
    value: value
    descriptors:
      - key: subkey
        rate_limit:
          requests_per_unit: 300
          unit: second
"""


def test_example_4_depth() -> None:
    request = [("key", "value"), ("subkey", "subvalue")]
    assert config.loads(EXAMPLE_4_FLAT).match("example4", request) is None
    assert limit_of(config.loads(EXAMPLE_4_NESTED).match("example4", request)) == (300, 1)


# --- README example 5: unlimited ----------------------------------------------------------------

EXAMPLE_5 = """
domain: internal
descriptors:
  - key: ldap
    rate_limit:
      unlimited: true

  - key: azure
    rate_limit:
      unit: minute
      requests_per_unit: 100
"""


def test_example_5_unlimited_is_matched_but_never_limited() -> None:
    rules = config.loads(EXAMPLE_5)
    ldap, azure = rules.checks("internal", [[("ldap", "x")], [("azure", "y")]])
    assert ldap is not None
    assert ldap.unlimited
    assert ldap.policy is None
    with pytest.raises(ValueError, match="needs no store"):
        _ = ldap.item
    assert azure is not None
    assert not azure.unlimited
    assert limit_of(azure.rule) == (100, 60)
    assert rules.checks("internal", [[("other", "z")]]) == (None,)  # unknown: no rule at all


# --- README example 6: shadow mode --------------------------------------------------------------

EXAMPLE_6 = """
domain: example6
descriptors:
  - key: service
    descriptors:
      - key: user
        value: user-a
        rate_limit:
          requests_per_unit: 10
          unit: second
        shadow_mode: true
      - key: user
        value: user-b
        rate_limit:
          requests_per_unit: 20
          unit: second
"""


def test_example_6_shadow_mode_counts_but_never_limits(limiter: Limiter) -> None:
    rules = config.loads(EXAMPLE_6)
    a, b = rules.checks(
        "example6",
        [[("service", "auth-service"), ("user", "user-a")], [("service", "auth-service"), ("user", "user-b")]],
    )
    assert a is not None
    assert a.shadow
    assert limit_of(a.rule) == (10, 1)
    assert b is not None
    assert not b.shadow
    assert limit_of(b.rule) == (20, 1)
    # user-a is counted (its limit is reached: the service reports it) but never denied
    user_a = [[("service", "auth-service"), ("user", "user-a")]]
    counted = [limiter.hit_all([check.item for check in rules.checks("example6", user_a) if check]) for _ in range(11)]
    assert [decision.allowed for decision in counted] == [True] * 10 + [False]
    assert all(hit(limiter, rules.checks("example6", user_a)) for _ in range(5))


# --- README example 7: replaces -----------------------------------------------------------------

EXAMPLE_7 = """
domain: example7
descriptors:
  - key: key_1
    value: value_1
    descriptors:
      - key: user
        value: bkthomps
        rate_limit:
          name: specific_limit
          requests_per_unit: 5
          unit: second
  - key: key_2
    value: value_2
    descriptors:
      - key: user
        value: bkthomps
        rate_limit:
          replaces:
            - name: specific_limit
          requests_per_unit: 10
          unit: second
"""
FIRST = [("key_1", "value_1"), ("user", "bkthomps")]
SECOND = [("key_2", "value_2"), ("user", "bkthomps")]


def test_example_7_replaces() -> None:
    rules = config.loads(EXAMPLE_7)
    assert [limit_of(rule_of(c)) for c in rules.checks("example7", [FIRST])] == [(5, 1)]
    assert [limit_of(rule_of(c)) for c in rules.checks("example7", [SECOND])] == [(10, 1)]
    assert [limit_of(rule_of(c)) for c in rules.checks("example7", [FIRST, SECOND])] == [None, (10, 1)]
    assert [limit_of(rule_of(c)) for c in rules.checks("example7", [SECOND, FIRST])] == [(10, 1), None]


def test_example_7_the_replaced_limit_is_left_alone(limiter: Limiter) -> None:
    rules = config.loads(EXAMPLE_7)
    both = [FIRST, SECOND]
    assert [hit(limiter, rules.checks("example7", both)) for _ in range(11)] == [True] * 10 + [False]
    # ten requests went through while specific_limit (5/s) was replaced: its counter was not touched
    assert [hit(limiter, rules.checks("example7", [FIRST])) for _ in range(6)] == [True] * 5 + [False]


# --- README examples 8 and 9: detailed metrics, wildcards ----------------------------------------

EXAMPLE_8 = """
domain: example8
descriptors:
  - key: key1
    detailed_metric: true
    rate_limit:
      unit: minute
      requests_per_unit: 10
  - key: key1
    value: value1
    rate_limit:
      unit: minute
      requests_per_unit: 20
"""
EXAMPLE_9 = """
domain: example9
descriptors:
  - key: key1
    value: value*
    rate_limit:
      unit: minute
      requests_per_unit: 20
"""


def test_example_8_detailed_metric() -> None:
    rules = config.loads(EXAMPLE_8)
    unspecified = rules.match("example8", [("key1", "unspecified_value")])
    assert unspecified is not None
    assert unspecified.detailed_metric
    assert limit_of(unspecified) == (10, 60)
    assert limit_of(rules.match("example8", [("key1", "value1")])) == (20, 60)
    assert unspecified.metric_name == "example8.key1"  # sluicegate never puts request values in labels


def test_example_9_wildcard_each_value_counted_on_its_own(limiter: Limiter) -> None:
    rules = config.loads(EXAMPLE_9)
    for value in ("value1", "value2", "value"):
        assert limit_of(rules.match("example9", [("key1", value)])) == (20, 60)
    assert rules.match("example9", [("key1", "valu")]) is None
    one = [[("key1", "value1")]]
    assert [hit(limiter, rules.checks("example9", one)) for _ in range(21)] == [True] * 20 + [False]
    assert hit(limiter, rules.checks("example9", [[("key1", "value2")]]))


# --- the reference's test configs -----------------------------------------------------------------

BASIC_CONFIG = """
# Basic configuration for testing.
domain: test-domain
descriptors:
  # Top level key/value with no default rate limit.
  - key: key1
    value: value1
    descriptors:
      # 2nd level key only with default rate limit.
      - key: subkey1
        rate_limit:
          unit: second
          requests_per_unit: 5

      # 2nd level key/value with limit. Specific override at 2nd level.
      - key: subkey1
        value: subvalue1
        rate_limit:
          unit: second
          requests_per_unit: 10

  # Top level key only with default rate limit.
  - key: key2
    rate_limit:
      unit: minute
      requests_per_unit: 20

  # Top level key/value with limit. Specific override at 1st level.
  - key: key2
    value: value2
    rate_limit:
      unit: minute
      requests_per_unit: 30

  # Top level key/value with no limit, effectively whitelisted.
  - key: key2
    value: value3

  - key: key3
    rate_limit:
      unit: hour
      requests_per_unit: 1

  - key: key4
    rate_limit:
      unit: day
      requests_per_unit: 1

  - key: key5
    value: value5
    rate_limit:
      unit: day
      requests_per_unit: 15
    descriptors:
      - key: subkey5
        value: subvalue5
        rate_limit:
          unit: day
          requests_per_unit: 25
"""

BASIC_CASES: list[tuple[Entries, tuple[int, int] | None]] = [
    ([], None),
    ([("key1", "something")], None),
    ([("key1", "value1")], None),  # a placeholder with nested descriptors
    ([("key2", "value2"), ("subkey", "subvalue")], None),  # deeper than the config
    ([("key5", "value5"), ("subkey5", "subvalue")], None),
    ([("key5", "value5")], (15, 86_400)),
    ([("key5", "value5"), ("subkey5", "subvalue5")], (25, 86_400)),
    ([("key1", "value1"), ("subkey1", "something")], (5, 1)),
    ([("key1", "value1"), ("subkey1", "subvalue1")], (10, 1)),
    ([("key2", "something")], (20, 60)),
    ([("key2", "value2")], (30, 60)),
    ([("key2", "value3")], None),  # the exact match has no limit: whitelisted, no fallback to key2
    ([("key3", "foo")], (1, 3_600)),
    ([("key4", "foo")], (1, 86_400)),
]


@pytest.mark.parametrize(("entries", "expected"), BASIC_CASES)
def test_basic_config(entries: Entries, expected: tuple[int, int] | None) -> None:
    assert limit_of(config.loads(BASIC_CONFIG).match("test-domain", entries)) == expected


WILDCARD_CONFIG = """
# Basic configuration for testing.
domain: test-domain
descriptors:
  - key: wild
    value: foo*
    rate_limit:
      unit: minute
      requests_per_unit: 20
  - key: noWild
    value: foo
    rate_limit:
      unit: minute
      requests_per_unit: 20
  - key: noVal
    rate_limit:
      unit: minute
      requests_per_unit: 20
  - key: midWild
    value: bar*b
    rate_limit:
      unit: minute
      requests_per_unit: 20
"""


@pytest.mark.parametrize(
    ("entries", "matches"),
    [
        ([("wild", "foo1")], True),
        ([("wild", "foo")], True),
        ([("wild", "bar")], False),
        ([("noWild", "foo1")], False),
        ([("noWild", "foo")], True),
        ([("noVal", "foo")], True),
        ([("midWild", "barab")], False),  # only a trailing * is a wildcard
        ([("midWild", "bar*b")], True),
    ],
)
def test_wildcard_config(entries: Entries, matches: bool) -> None:
    assert (config.loads(WILDCARD_CONFIG).match("test-domain", entries) is not None) == matches


def test_reference_scalars_are_read_as_written() -> None:
    """Unquoted numbers and booleans in key and value are strings as written, as yaml.v2 reads them."""
    rules = config.loads(
        "domain: 42\ndescriptors:\n"
        "  - {key: status, value: 500, rate_limit: {unit: SECOND, requests_per_unit: 1}}\n"
        "  - {key: flag, value: true, rate_limit: {unit: Minute, requests_per_unit: 2}}\n"
        "  - {key: blank, value: '', rate_limit: {unit: hour, requests_per_unit: 3}}\n"
    )
    assert rules.domains == ("42",)
    assert limit_of(rules.match("42", [("status", "500")])) == (1, 1)
    assert limit_of(rules.match("42", [("flag", "true")])) == (2, 60)
    assert limit_of(rules.match("42", [("blank", "anything")])) == (3, 3_600)  # '' is no value at all


def test_every_unit_and_the_multiplier() -> None:
    units = {"second": 1, "minute": 60, "hour": 3_600, "day": 86_400, "week": 604_800}
    units |= {"month": 2_592_000, "year": 31_536_000}
    lines = ["domain: units", "descriptors:"]
    lines += [f"  - {{key: {unit}, rate_limit: {{unit: {unit}, requests_per_unit: 7}}}}" for unit in units]
    lines += ["  - {key: five, rate_limit: {unit: minute, unit_multiplier: 5, requests_per_unit: 20}}"]
    rules = config.loads("\n".join(lines))
    for unit, seconds in units.items():
        rule = rules.match("units", [(unit, "x")])
        assert limit_of(rule) == (7, seconds)
        assert rule is not None
        assert rule.policy is not None
        assert rule.policy.period == seconds
    assert limit_of(rules.match("units", [("five", "x")])) == (20, 300)


def test_anchors_aliases_and_merge_keys_work_as_in_yaml_v2() -> None:
    rules = config.loads(
        """
domain: shared
descriptors:
  - key: a
    rate_limit: &per_second {unit: second, requests_per_unit: 5}
  - key: b
    rate_limit: *per_second
  - key: c
    rate_limit:
      <<: *per_second
      requests_per_unit: 9
"""
    )
    assert [limit_of(rules.match("shared", [(key, "x")])) for key in "abc"] == [(5, 1), (5, 1), (9, 1)]


def test_a_directory_of_domains(tmp_path: Path) -> None:
    for name, text in (("a.yaml", EXAMPLE_1), ("b.yml", EXAMPLE_2), ("c.yaml", EXAMPLE_3)):
        (tmp_path / name).write_text(text)
    rules = config.load(tmp_path)
    assert rules.domains == ("edge_proxy_per_ip", "messaging", "mongo_cps")
    assert len(rules.rules) == 6
    assert rules.source("messaging").endswith("b.yml")


def test_the_config_is_immutable() -> None:
    rules = config.loads(EXAMPLE_1)
    rule = rules.rules[0]
    with pytest.raises(AttributeError):
        rule.requests_per_unit = 1  # type: ignore[misc]
    with pytest.raises(AttributeError):
        rules.extra = 1  # type: ignore[attr-defined]
    assert isinstance(rules, RateLimitConfig)
