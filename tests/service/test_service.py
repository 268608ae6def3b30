"""``RateLimitService.should_rate_limit``: the transport-agnostic core behind /json, /v1/check,
/v1/auth and gRPC."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from sluicegate import AsyncLimiter, StoreError
from sluicegate.service.config import Descriptor, DescriptorError, LimitOverride, UnknownDomainError, loads
from sluicegate.service.service import (
    MAX_DESCRIPTORS,
    DescriptorStatus,
    RateLimitService,
    fallback_limiters,
)
from sluicegate.stores import open_async_store
from tests.conftest import FakeClock
from tests.redis_server import free_port

CONFIG = """
domain: shop
descriptors:
  - key: user
    rate_limit: {unit: minute, requests_per_unit: 2, name: per_user}
  - key: path
    rate_limit: {unit: minute, requests_per_unit: 100, name: per_path}
  - key: path
    value: /health
    rate_limit: {unlimited: true}
  - key: path
    value: /blocked
    rate_limit: {unit: second, requests_per_unit: 0}
  - key: plan
    value: free
    shadow_mode: true
    rate_limit: {unit: minute, requests_per_unit: 1, name: free_plan}
  - key: tenant
    rate_limit: {unit: minute, requests_per_unit: 5, name: per_tenant}
  - key: tenant
    value: vip
    rate_limit: {unit: minute, requests_per_unit: 50, name: vip, replaces: [{name: per_tenant}]}
  - key: login
    rate_limit: {unit: minute, requests_per_unit: 3, name: login, fallback: deny}
  - key: feed
    rate_limit: {unit: minute, requests_per_unit: 3, name: feed, fallback: allow}
"""

SHADOW_DOMAIN = """
domain: trial
sluicegate: {shadow_mode: true}
descriptors:
  - key: user
    rate_limit: {unit: minute, requests_per_unit: 1, name: trial_user}
"""

USER = [("user", "alice")]
PATH = [("path", "/search")]


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def service(clock: FakeClock, registry: CollectorRegistry) -> RateLimitService:
    config = loads(CONFIG)
    limiter = AsyncLimiter("memory://", clock=clock, registry=registry)
    return RateLimitService(config, limiter, registry=registry)


def _shadow(registry: CollectorRegistry, policy: str, outcome: str) -> float:
    value = registry.get_sample_value("sluicegate_shadow_decisions_total", {"policy": policy, "outcome": outcome})
    return value or 0.0


async def test_allowed_request_answers_every_descriptor_in_order(service: RateLimitService) -> None:
    response = await service.should_rate_limit("shop", [USER, [("unknown", "x")], PATH])
    assert response.overall_code == "OK"
    assert [status.code for status in response.statuses] == ["OK", "OK", "OK"]
    assert response.statuses[0] == DescriptorStatus("OK", (2, "MINUTE", "per_user"), 1, 40.0)  # fixed window: 20 s in
    assert response.statuses[1] == DescriptorStatus("OK", None, 0, 0.0)  # no rule matched
    assert response.statuses[2].limit == (100, "MINUTE", "per_path")
    assert response.statuses[2].limit_remaining == 99
    names = dict(response.headers)
    assert names["RateLimit-Policy"] == '"shop.per_user";q=2;w=60, "shop.per_path";q=100;w=60'
    assert "Retry-After" not in names
    assert response.decision is not None
    assert response.decision.allowed


async def test_a_denied_request_consumes_nothing_from_its_other_descriptors(service: RateLimitService) -> None:
    # envoyproxy/ratelimit increments every descriptor's counter, so a client hammering one
    # limit drains the others too. Here the denied requests leave per_path untouched.
    for _ in range(2):
        assert (await service.should_rate_limit("shop", [USER, PATH])).overall_code == "OK"
    for _ in range(5):
        denied = await service.should_rate_limit("shop", [USER, PATH])
        assert denied.overall_code == "OVER_LIMIT"
        assert [s.code for s in denied.statuses] == ["OVER_LIMIT", "OK"]
        assert denied.statuses[1].limit_remaining == 98  # what is left; nothing was taken
        assert dict(denied.headers)["Retry-After"] == "40"
    alone = await service.should_rate_limit("shop", [PATH])
    assert alone.statuses[0].limit_remaining == 97  # 2 allowed requests + this one


async def test_hits_addend_is_the_cost_and_zero_means_one(service: RateLimitService) -> None:
    first = await service.should_rate_limit("shop", [PATH], hits_addend=0)
    assert first.statuses[0].limit_remaining == 99
    second = await service.should_rate_limit("shop", [PATH], hits_addend=10)
    assert second.statuses[0].limit_remaining == 89
    own = await service.should_rate_limit("shop", [Descriptor((("path", "/search"),), hits_addend=4)], hits_addend=10)
    assert own.statuses[0].limit_remaining == 85  # a descriptor's own hits_addend wins


async def test_a_cost_over_the_capacity_is_over_limit_without_the_store(registry: CollectorRegistry) -> None:
    service = RateLimitService(loads(CONFIG), _dead_limiter(registry), registry=registry)
    response = await service.should_rate_limit("shop", [USER], hits_addend=3)  # per_user holds 2
    assert response.overall_code == "OVER_LIMIT"
    assert response.statuses[0].code == "OVER_LIMIT"
    assert response.decision is None
    assert int(dict(response.headers)["Retry-After"]) >= 1


async def test_unlimited_and_zero_rules_never_ask_the_store(registry: CollectorRegistry) -> None:
    service = RateLimitService(loads(CONFIG), _dead_limiter(registry), registry=registry)
    health = await service.should_rate_limit("shop", [[("path", "/health")]])
    assert health.overall_code == "OK"
    assert health.statuses == (DescriptorStatus("OK", None, 0, 0.0),)
    blocked = await service.should_rate_limit("shop", [[("path", "/blocked")], USER])
    assert blocked.overall_code == "OVER_LIMIT"
    assert blocked.statuses[0].code == "OVER_LIMIT"
    assert blocked.statuses[0].limit == (0, "SECOND", None)
    assert 0 < blocked.statuses[0].duration_until_reset <= 1
    assert blocked.statuses[1].code == "OK"  # not decided: the request was over already
    assert dict(blocked.headers)["Retry-After"] == "1"


async def test_a_shadow_rule_reports_but_never_denies(service: RateLimitService, registry: CollectorRegistry) -> None:
    free = [("plan", "free")]
    for _ in range(3):
        response = await service.should_rate_limit("shop", [free, PATH])
        assert response.overall_code == "OK"
        assert response.statuses[0].code == "OK"  # the rule's shadow mode: OK, as the reference
        assert response.statuses[0].limit == (1, "MINUTE", "free_plan")
    assert _shadow(registry, "shop.free_plan", "allowed") == 1
    assert _shadow(registry, "shop.free_plan", "throttled") == 2
    # Shadow checks are decided apart: per_path took all three requests.
    assert response.statuses[1].limit_remaining == 97
    assert "Retry-After" not in dict(response.headers)


async def test_a_shadow_domain_and_the_global_shadow_mode(clock: FakeClock, registry: CollectorRegistry) -> None:
    config = loads(SHADOW_DOMAIN)
    domain = RateLimitService(config, AsyncLimiter("memory://", clock=clock, registry=registry), registry=registry)
    for _ in range(2):
        response = await domain.should_rate_limit("trial", [USER])
    assert (response.overall_code, response.statuses[0].code) == ("OK", "OK")
    assert _shadow(registry, "trial.trial_user", "throttled") == 1

    limiter = AsyncLimiter("memory://", clock=clock, registry=registry)
    everything = RateLimitService(loads(CONFIG), limiter, shadow_mode=True, registry=registry)
    for _ in range(3):
        response = await everything.should_rate_limit("shop", [USER])
    # The service-wide shadow mode keeps each status's real code; only overall_code is OK.
    assert response.overall_code == "OK"
    assert response.statuses[0].code == "OVER_LIMIT"
    assert response.decision is None
    assert response.headers == ()
    assert _shadow(registry, "shop.per_user", "throttled") == 1


async def test_replaces_applies_the_replacing_rule_only(service: RateLimitService) -> None:
    vip = [("tenant", "vip")]
    response = await service.should_rate_limit("shop", [vip, [("tenant", "other")]])
    assert response.statuses[0].limit == (50, "MINUTE", "vip")
    assert response.statuses[1] == DescriptorStatus("OK", None, 0, 0.0)  # per_tenant is replaced


async def test_a_descriptor_limit_override_applies(service: RateLimitService) -> None:
    own = Descriptor((("anything", "x"),), limit=LimitOverride(1, "hour"))
    assert (await service.should_rate_limit("shop", [own])).overall_code == "OK"
    response = await service.should_rate_limit("shop", [own])
    assert response.overall_code == "OVER_LIMIT"
    assert response.statuses[0].limit == (1, "HOUR", None)


async def test_a_reload_swaps_the_config(service: RateLimitService) -> None:
    assert (await service.should_rate_limit("shop", [USER])).overall_code == "OK"
    service.config = loads(CONFIG.replace("requests_per_unit: 2, name: per_user", "requests_per_unit: 1, name: u1"))
    response = await service.should_rate_limit("shop", [USER])
    assert response.statuses[0].limit == (1, "MINUTE", "u1")
    with pytest.raises(UnknownDomainError):
        await service.should_rate_limit("trial", [USER])


@pytest.mark.parametrize(
    ("domain", "descriptors", "hits", "message"),
    [
        ("", [USER], 1, "domain: must be a non-empty string"),
        ("shop", [], 1, "descriptors: must not be empty"),
        ("shop", [USER] * (MAX_DESCRIPTORS + 1), 1, f"descriptors: {MAX_DESCRIPTORS + 1} descriptors; at most"),
        ("shop", [USER, []], 1, "descriptors[1].entries: must not be empty"),
        ("shop", [USER, [("user", "a"), ("", "b")]], 1, "descriptors[1].entries[1].key: must be a non-empty string"),
        ("shop", [[("user", 5)]], 1, "descriptors[0].entries[0].value: must be a string"),
        ("shop", [[("user", "v" * 2000)]], 1, "descriptors[0].entries[0].value: longer than 1024 characters"),
        ("shop", [[("user",)]], 1, "descriptors[0].entries[0]: must be a (key, value) pair"),
        ("shop", ["user=a"], 1, "descriptors[0].entries: must be a list"),
        ("shop", [USER], -1, "hits_addend: must be an integer in 0.."),
        ("shop", [USER], True, "hits_addend: must be an integer"),
    ],
)
async def test_bad_requests_name_the_field(
    service: RateLimitService, domain: str, descriptors: list[object], hits: int, message: str
) -> None:
    with pytest.raises(DescriptorError) as caught:
        await service.should_rate_limit(domain, descriptors, hits)  # type: ignore[arg-type]
    assert str(caught.value).startswith(message)
    assert len(str(caught.value)) < 200  # never the whole input


async def test_an_empty_value_is_allowed_as_in_the_reference(service: RateLimitService) -> None:
    response = await service.should_rate_limit("shop", [[("user", "")]])
    assert response.statuses[0].limit == (2, "MINUTE", "per_user")


async def test_unknown_domain(service: RateLimitService) -> None:
    with pytest.raises(UnknownDomainError, match="unknown domain 'nope'"):
        await service.should_rate_limit("nope", [USER])


# --- the store fails -------------------------------------------------------------------------------


def _dead_limiter(registry: CollectorRegistry, fallback: str = "raise") -> AsyncLimiter:
    """A limiter whose Redis refuses every connection."""
    return AsyncLimiter(f"redis://127.0.0.1:{free_port()}/0", fallback=fallback, registry=registry)  # type: ignore[arg-type]


async def test_store_error_escapes_only_with_fallback_raise(registry: CollectorRegistry) -> None:
    service = RateLimitService(loads(CONFIG), _dead_limiter(registry), registry=registry)
    with pytest.raises(StoreError):
        await service.should_rate_limit("shop", [USER])
    local = RateLimitService(loads(CONFIG), _dead_limiter(registry, "local"), registry=registry)
    response = await local.should_rate_limit("shop", [USER])
    assert response.overall_code == "OK"
    assert response.decision is not None
    assert response.decision.degraded
    await service.aclose()
    await local.aclose()


async def test_a_shadow_rule_never_raises(registry: CollectorRegistry) -> None:
    service = RateLimitService(loads(CONFIG), _dead_limiter(registry), registry=registry)
    response = await service.should_rate_limit("shop", [[("plan", "free")]])
    assert response.overall_code == "OK"
    assert _shadow(registry, "shop.free_plan", "error") == 1
    await service.aclose()


async def test_each_rule_falls_back_its_own_way(registry: CollectorRegistry) -> None:
    store = open_async_store(f"redis://127.0.0.1:{free_port()}/0", timeout=0.05)
    main, limiters = fallback_limiters(store, default="raise", registry=registry)
    service = RateLimitService(loads(CONFIG), main, limiters=limiters, registry=registry)
    feed = await service.should_rate_limit("shop", [[("feed", "f")]])
    assert feed.overall_code == "OK"
    assert feed.decision is not None
    assert feed.decision.degraded  # fallback: allow
    login = await service.should_rate_limit("shop", [[("login", "l")]])
    assert login.overall_code == "OVER_LIMIT"  # fallback: deny
    # Mixed: the strictest fallback decides the one all-or-nothing call (raise, the default).
    with pytest.raises(StoreError):
        await service.should_rate_limit("shop", [[("feed", "f")], USER])
    await service.aclose()
