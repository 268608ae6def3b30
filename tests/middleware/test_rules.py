"""Rules: validation at construction, path and method matching, and whose bucket a request is in."""

from __future__ import annotations

import re

import pytest

from sluicegate import ConfigError, Policy, PolicyError
from sluicegate.middleware import Request, Rule, normalize_path
from sluicegate.middleware._engine import RuleSet


def request(headers: dict[str, str] | None = None, client: str | None = "198.51.100.7", path: str = "/") -> Request:
    return Request(method="GET", path=path, headers=headers or {}, client=client, raw={})


@pytest.mark.parametrize(
    ("path", "normal"),
    [
        ("/", "/"),
        ("", "/"),
        ("/api", "/api"),
        ("/api/", "/api/"),
        ("//api//users", "/api/users"),
        ("/health/../admin", "/admin"),
        ("/./api/./x", "/api/x"),
        ("/../../etc", "/etc"),
        ("/a/b/..", "/a/"),
        ("/a/.", "/a/"),
        ("/..", "/"),
    ],
)
def test_normalize_path(path: str, normal: str) -> None:
    assert normalize_path(path) == normal


@pytest.mark.parametrize(
    ("rule", "method", "path", "matches"),
    [
        (Rule("1/s"), "GET", "/anything", True),
        (Rule("1/s", path="/api"), "GET", "/api", True),
        (Rule("1/s", path="/api/"), "GET", "/api/users", True),
        (Rule("1/s", path="/api"), "GET", "/apiary", False),
        (Rule("1/s", path="/api"), "GET", "/", False),
        (Rule("1/s", methods=["post"]), "POST", "/", True),
        (Rule("1/s", methods={"POST", "PUT"}), "GET", "/", False),
        (Rule("1/s", pattern=r"/users/\d+"), "GET", "/users/42", True),
        (Rule("1/s", pattern=r"/users/\d+"), "GET", "/users/42/posts", False),  # fullmatch
        (Rule("1/s", pattern=re.compile(r"/u/.*"), path="/u"), "GET", "/u/x", True),
        (Rule("1/s", exempt=["/health"]), "GET", "/health", False),
        (Rule("1/s", exempt=["/health"]), "GET", "/health/live", False),
        (Rule("1/s", exempt=["/health"]), "GET", "/healthy", True),
    ],
)
def test_matching(rule: Rule, method: str, path: str, matches: bool) -> None:
    assert rule.matches(method, normalize_path(path)) is matches


def test_paths_are_matched_normalised() -> None:
    """An exemption cannot be borrowed with dot segments, nor a rule dodged with slashes."""
    rules = RuleSet([Rule("1/s", path="/admin", name="admin"), Rule("1/s", exempt=["/health"], name="all")])
    assert [r.id for r in rules.matching("GET", "/health/../admin")] == ["admin", "all"]
    assert [r.id for r in rules.matching("GET", "//admin")] == ["admin", "all"]
    assert [r.id for r in rules.matching("GET", "/health/./")] == []


def test_policies_are_resolved() -> None:
    rule = Rule(["10/second", Policy(100, 60, name="m")])
    assert rule.resolved_policies == (Policy.parse("10/second"), Policy(100, 60, name="m"))
    assert Rule("5/minute").resolved_policies == (Policy.parse("5/minute"),)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"policies": []}, "policies"),
        ({"policies": [42]}, "policies"),
        ({"policies": "1/s", "path": "api"}, "path must start with '/'"),
        ({"policies": "1/s", "exempt": "/health"}, "exempt"),
        ({"policies": "1/s", "exempt": ["health"]}, "exempt path"),
        ({"policies": "1/s", "methods": "GET"}, "methods"),
        ({"policies": "1/s", "methods": ["GE T"]}, "methods"),
        ({"policies": "1/s", "methods": []}, "methods"),
        ({"policies": "1/s", "pattern": "("}, "not a valid regular expression"),
        ({"policies": "1/s", "header": "X Api"}, "header"),
        ({"policies": "1/s", "header": "X-Api", "key": lambda r: "x"}, "key"),
        ({"policies": "1/s", "key": "X-Api"}, "key"),
        ({"policies": "1/s", "missing": "share"}, "missing"),
        ({"policies": "1/s", "on_shadow": 3}, "on_shadow"),
        ({"policies": "5/s", "cost": 6}, "cost 6 exceeds"),
        ({"policies": "5/s", "cost": 0}, "cost"),
        ({"policies": "5/s", "cost": True}, "cost"),
        ({"policies": "5/s", "ipv6_prefix": 0}, "ipv6_prefix"),
        ({"policies": "5/s", "name": ""}, "name"),
        ({"policies": "5/s", "name": "a\nb"}, "name"),
    ],
)
def test_bad_rules_are_refused_at_construction(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Rule(**kwargs)  # type: ignore[arg-type]


def test_bad_policy_text_is_a_policy_error() -> None:
    with pytest.raises(PolicyError):
        Rule("10 per fortnight")


def test_ruleset_validation() -> None:
    with pytest.raises(ConfigError, match="non-empty"):
        RuleSet([])
    with pytest.raises(ConfigError, match="non-empty"):
        RuleSet(["1/s"])  # type: ignore[list-item]
    with pytest.raises(ConfigError, match="distinct name"):
        RuleSet([Rule("1/s", key=lambda r: r.client), Rule("1/s", key=lambda r: r.path)])
    with pytest.raises(ConfigError, match="forwarded_header"):
        RuleSet([Rule("1/s")], forwarded_header="x-real-ip")  # type: ignore[arg-type]


def test_client_identity_is_the_bucketed_address() -> None:
    rule = Rule("1/s", name="r")
    assert rule.identity(request(client="198.51.100.7")) == "1:r|client:198.51.100.7"
    assert rule.identity(request(client="2001:db8:1:2::99")) == "1:r|client:2001:db8:1:2::/64"
    assert Rule("1/s", name="r", ipv6_prefix=48).identity(request(client="2001:db8:1:2::99")) == (
        "1:r|client:2001:db8:1::/48"
    )


def test_header_identities_are_hashed_and_scoped_by_rule() -> None:
    rule = Rule("1/s", header="X-Api-Key", name="keys")
    secret = "sk_live_0123456789"
    key = rule.identity(request({"x-api-key": secret}))
    assert key is not None
    assert key.startswith("4:keys|header:x-api-key:")
    assert secret not in key
    assert len(key) < 80
    assert key != Rule("1/s", header="X-Api-Key", name="other").identity(request({"x-api-key": secret}))


def test_a_missing_identity_falls_back_to_the_client_address_not_a_shared_bucket() -> None:
    rule = Rule("1/s", header="X-Api-Key", name="r")
    assert rule.identity(request({}, client="198.51.100.7")) == "1:r|client:198.51.100.7"
    assert rule.identity(request({"x-api-key": ""}, client="198.51.100.8")) == "1:r|client:198.51.100.8"


def test_a_missing_identity_can_skip_the_rule() -> None:
    rule = Rule("1/s", header="X-Api-Key", missing="skip")
    assert rule.identity(request({})) is None
    assert rule.identity(request({"x-api-key": "k"})) is not None


def test_no_client_address_is_not_limited() -> None:
    assert Rule("1/s").identity(request(client=None)) is None


def test_key_functions() -> None:
    rule = Rule("1/s", key=lambda r: r.headers.get("x-user"), name="u")
    assert rule.identity(request({"x-user": "alice"})) != rule.identity(request({"x-user": "bob"}))
    assert rule.identity(request({})) == "1:u|client:198.51.100.7"
    # Anything a str can hold is a fine identity, lone surrogates included.
    assert Rule("1/s", key=lambda r: "\ud800\r\n").identity(request()) is not None
    with pytest.raises(TypeError, match="expected str or None"):
        Rule("1/s", key=lambda r: 42).identity(request())  # type: ignore[arg-type,return-value]


def test_rule_names_keep_keys_apart() -> None:
    """The length prefix: no choice of names makes two rules' keys meet."""
    a = Rule("1/s", name="a|client:x", key=lambda r: None)
    b = Rule("1/s", name="a", key=lambda r: None)
    assert a.identity(request(client="1.2.3.4")) != b.identity(request(client="1.2.3.4"))


def test_default_names() -> None:
    assert Rule("1/s").id == "* /: 1/second"
    assert Rule(["1/s", "9/h"], header="X-Key").id == "* / by x-key: 1/second, 9/hour"
    rule = Rule("1/s", path="/api/", methods=["post", "GET"], pattern=r"/api/\w+")
    assert rule.id == r"GET,POST /api ~/api/\w+: 1/second"
