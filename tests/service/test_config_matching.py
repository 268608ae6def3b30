"""Matching precedence, rate-limit keys, policy names, request descriptors and sluicegate's
extensions."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sluicegate import InputError, Limiter, Policy
from sluicegate.service import config
from sluicegate.service.config import Descriptor, DescriptorError, LimitOverride, UnknownDomainError
from tests.conftest import FakeClock

EXAMPLES = Path(__file__).parents[2] / "examples" / "config"

PRECEDENCE = """
domain: p
descriptors:
  - {key: ip, rate_limit: {unit: second, requests_per_unit: 1, name: default}}
  - {key: ip, value: "10.*", rate_limit: {unit: second, requests_per_unit: 2, name: wide}}
  - {key: ip, value: "10.0.*", rate_limit: {unit: second, requests_per_unit: 3, name: narrow}}
  - {key: ip, value: 10.0.0.1, rate_limit: {unit: second, requests_per_unit: 4, name: exact}}
  - {key: any, value: "*", rate_limit: {unit: second, requests_per_unit: 5, name: star}}
  - key: tenant
    value: acme
    rate_limit: {unit: second, requests_per_unit: 6, name: acme}
  - key: tenant
    descriptors:
      - {key: user, rate_limit: {unit: second, requests_per_unit: 7, name: tenant_user}}
      - key: path
        value: "/api/*"
        descriptors:
          - {key: method, value: GET, rate_limit: {unit: second, requests_per_unit: 8, name: deep}}
  - key: a_b
    value: c
    rate_limit: {unit: second, requests_per_unit: 9, name: underscored}
"""


def name_of(entries: list[tuple[str, str]]) -> str | None:
    rule = config.loads(PRECEDENCE).match("p", entries)
    return None if rule is None else rule.name


@pytest.mark.parametrize(
    ("entries", "expected"),
    [
        ([("ip", "10.0.0.1")], "exact"),  # exact before any wildcard
        ([("ip", "10.0.0.2")], "wide"),  # the first wildcard in file order, not the longest
        ([("ip", "10.9.9.9")], "wide"),
        ([("ip", "192.168.0.1")], "default"),  # key only last
        ([("ip", "10.*")], "wide"),  # the literal value matches its own wildcard
        ([("any", "")], "star"),  # "*" matches every value, the empty one too
        ([("any", "x")], "star"),
        ([("IP", "10.0.0.1")], None),  # keys and values are case-sensitive
        ([("tenant", "acme")], "acme"),
        ([("tenant", "acme"), ("user", "bob")], None),  # no backtracking to the key-only tenant
        ([("tenant", "other"), ("user", "bob")], "tenant_user"),
        ([("tenant", "other")], None),  # shorter than the config
        ([("tenant", "x"), ("path", "/api/v1"), ("method", "GET")], "deep"),  # wildcards at any level
        ([("tenant", "x"), ("path", "/web"), ("method", "GET")], None),
        ([("tenant", "x"), ("path", "/api/v1"), ("method", "GET"), ("more", "1")], None),  # longer
        ([("a_b", "c")], "underscored"),
        ([("a", "b_c")], None),  # the reference's "a_b_c" confusion does not happen here
    ],
)
def test_precedence(entries: list[tuple[str, str]], expected: str | None) -> None:
    assert name_of(entries) == expected


# --- keys ------------------------------------------------------------------------------------------

KEYED = """
domain: "k|d"
descriptors:
  - key: a
    rate_limit: {unit: second, requests_per_unit: 10}
    descriptors:
      - {key: b, rate_limit: {unit: second, requests_per_unit: 10}}
  - {key: files, value: "docs/*", share_threshold: true, rate_limit: {unit: second, requests_per_unit: 2}}
  - {key: pics, value: "img/*", rate_limit: {unit: second, requests_per_unit: 2}}
"""


def key_of(entries: list[tuple[str, str]]) -> str:
    (check,) = config.loads(KEYED).checks("k|d", [entries])
    assert check is not None
    return check.key


def test_keys_carry_the_request_values_escaped() -> None:
    assert key_of([("a", "1")]) == "k%7Cd|a=1"
    assert key_of([("a", "x|b=y")]) == "k%7Cd|a=x%7Cb%3Dy"  # would otherwise read as two entries
    assert key_of([("a", "1"), ("b", "2")]) == "k%7Cd|a=1|b=2"
    assert key_of([("a", "100%*")]) == "k%7Cd|a=100%25%2A"
    assert key_of([("pics", "img/a.png")]) == "k%7Cd|pics=img/a.png"  # each value its own counter


def test_share_threshold_puts_the_wildcard_in_the_key(clock: FakeClock) -> None:
    assert key_of([("files", "docs/a.pdf")]) == key_of([("files", "docs/b.csv")]) == "k%7Cd|files=docs/*"
    assert key_of([("files", "docs/*")]) != key_of([("files", "docs/a")])  # a literal * is escaped elsewhere
    rules = config.loads(KEYED)
    limiter = Limiter("memory://", clock=clock, registry=None)
    decisions = []
    for name in ("docs/a", "docs/b", "docs/c"):
        (check,) = rules.checks("k|d", [[("files", name)]])
        assert check is not None
        decisions.append(limiter.hit_all([check.item]).allowed)
    assert decisions == [True, True, False]  # one shared counter of 2


TEXT = st.text(alphabet="ab|=%*_.\\ é", max_size=4)
REQUEST = st.tuples(TEXT, st.lists(st.tuples(TEXT, TEXT), max_size=3))


@given(REQUEST, REQUEST, st.booleans(), st.booleans())
def test_different_requests_never_share_a_key(
    first: tuple[str, list[tuple[str, str]]], second: tuple[str, list[tuple[str, str]]], shared1: bool, shared2: bool
) -> None:
    def key(request: tuple[str, list[tuple[str, str]]], shared: bool) -> str:
        domain, entries = request
        patterns = {0: entries[0][1]} if shared and entries else None  # a share_threshold prefix
        return config._key(domain.translate(config._ESCAPES), entries, patterns)

    same_request = first == second and (shared1 == shared2 or not first[1])
    assert (key(first, shared1) == key(second, shared2)) == same_request


# --- policy names ----------------------------------------------------------------------------------

NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}")


def test_policy_names_are_unique_bounded_and_stable() -> None:
    long_value = "v" * 80
    text = f"""
domain: names
descriptors:
  - {{key: user, rate_limit: {{unit: second, requests_per_unit: 1, name: per_user}}}}
  - {{key: "ip addr", value: "10.0.0.*", rate_limit: {{unit: second, requests_per_unit: 1}}}}
  - {{key: x, value: "{long_value}", rate_limit: {{unit: second, requests_per_unit: 1}}}}
  - {{key: y, value: "{long_value}", rate_limit: {{unit: second, requests_per_unit: 1}}}}
  - {{key: same, value: a, rate_limit: {{unit: second, requests_per_unit: 1, name: twin}}}}
  - {{key: same, value: b, rate_limit: {{unit: second, requests_per_unit: 1, name: twin}}}}
"""
    rules = config.loads(text).rules
    names = [rule.metric_name for rule in rules]
    assert names[:2] == ["names.per_user", "names.ip_addr_10.0.0._"]
    assert all(NAME.fullmatch(name) for name in names)
    assert len(set(names)) == len(names)
    assert names[2].startswith("names.x_vvv")
    assert len(names[2]) == 64
    assert names[4].startswith("names.twin-")
    assert names[5].startswith("names.twin-")
    assert [rule.metric_name for rule in config.loads(text).rules] == names  # the same on every load
    for rule in rules:
        assert rule.policy is not None
        assert rule.policy.name == rule.metric_name


# --- requests -------------------------------------------------------------------------------------


def test_hits_addend_is_the_cost() -> None:
    rules = config.loads(KEYED)
    one = [("a", "1")]
    assert [c.cost for c in rules.checks("k|d", [one]) if c] == [1]
    assert [c.cost for c in rules.checks("k|d", [one], hits_addend=0) if c] == [1]  # rls.proto: 0 means 1
    assert [c.cost for c in rules.checks("k|d", [one], hits_addend=3) if c] == [3]
    both: list[config.DescriptorLike] = [Descriptor(tuple(one), hits_addend=5), one]
    assert [c.cost for c in rules.checks("k|d", both, hits_addend=2) if c] == [5, 2]  # its own wins


def test_a_descriptor_limit_overrides_the_config() -> None:
    rules = config.loads(KEYED)
    override = Descriptor((("nothing", "configured"),), limit=LimitOverride(42, "MINUTE"))
    (check,) = rules.checks("k|d", [override])
    assert check is not None
    assert check.key == "k%7Cd|nothing=configured"
    assert check.rule.policy == Policy(42, 60, algorithm="fixed-window", name="k_d.limit-override")
    zero = Descriptor((("a", "1"),), limit=LimitOverride(0, "second"))
    (blocked,) = rules.checks("k|d", [zero])
    assert blocked is not None
    assert blocked.rule.always_over


@pytest.mark.parametrize(
    ("descriptor", "message"),
    [
        ("a=1", r"descriptors\[0\]: expected a list of \(key, value\) entries; got 'a=1'"),
        ([("a", 1)], r"descriptors\[0\]\.entries\[0\]: expected \(key, value\) strings, the key not empty"),
        ([("", "x")], r"entries\[0\]: expected"),
        ([("a",)], r"entries\[0\]: expected"),
        (Descriptor((("a", "1"),), hits_addend=0), r"descriptors\[0\]\.hits_addend must be an int in 1\.\."),
        (Descriptor((("a", "1"),), limit=LimitOverride(1, "fortnight")), r"descriptors\[0\]\.limit: expected"),
        (Descriptor((("a", "1"),), limit=LimitOverride(-1, "second")), r"got -1 per 'second'"),
    ],
)
def test_malformed_descriptors_are_input_errors(descriptor: Any, message: str) -> None:
    with pytest.raises(DescriptorError, match=message):
        config.loads(KEYED).checks("k|d", [descriptor])


def test_unknown_domains_and_bad_hits_addend_are_input_errors() -> None:
    rules = config.loads(KEYED)
    with pytest.raises(UnknownDomainError, match=r"unknown domain 'nope'; loaded: k\|d") as raised:
        rules.checks("nope", [[("a", "1")]])
    assert isinstance(raised.value, InputError)
    with pytest.raises(UnknownDomainError):
        rules.match("nope", [("a", "1")])
    with pytest.raises(DescriptorError, match=r"hits_addend must be an int in 0\.\.1,000,000,000; got True"):
        rules.checks("k|d", [[("a", "1")]], hits_addend=True)


# --- sluicegate's extensions ---------------------------------------------------------------------

EXTENDED = """
domain: ext
sluicegate:
  algorithm: sliding-log
  fallback: allow
  shadow_mode: true
descriptors:
  - {key: a, rate_limit: {unit: second, requests_per_unit: 5}}
  - key: b
    rate_limit: {unit: second, requests_per_unit: 5, algorithm: gcra, burst: 9, fallback: deny}
"""


def test_extensions_set_algorithm_burst_fallback_and_domain_shadow_mode() -> None:
    rules = config.loads(EXTENDED)
    a, b = rules.checks("ext", [[("a", "1")], [("b", "1")]])
    assert a is not None
    assert b is not None
    assert a.rule.policy == Policy(5, 1, algorithm="sliding-log", name="ext.a")
    assert (a.rule.fallback, a.shadow, a.rule.shadow_mode) == ("allow", True, False)
    assert b.rule.policy == Policy(5, 1, burst=9, algorithm="gcra", name="ext.b")
    assert b.rule.fallback == "deny"


def test_envoy_configs_default_to_fixed_windows_and_the_service_fallback() -> None:
    rule = config.loads("domain: d\ndescriptors: [{key: a, rate_limit: {unit: minute, requests_per_unit: 3}}]").rules[0]
    assert (rule.algorithm, rule.fallback, rule.shadow_mode) == ("fixed-window", None, False)
    assert rule.policy == Policy(3, 60, algorithm="fixed-window", name="d.a")


def test_the_examples_load() -> None:
    rules = config.load(EXAMPLES)
    assert rules.domains == ("gateway", "messaging")
    example = config.load_example()
    assert example.domains == ("example",)
    assert example.source("example") == config.EXAMPLE_SOURCE
    (check,) = example.checks("example", [[("remote_address", "203.0.113.7")]])
    assert check is not None
    assert check.rule.policy == Policy(10, 1, burst=20, name="example.remote_address")
