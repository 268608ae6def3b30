"""``RateLimitService``: one ``should_rate_limit`` behind every transport (HTTP, gRPC).

Transport-agnostic: no protobuf, no HTTP. A transport turns its request into a domain, a list
of descriptors (each a list of ``(key, value)`` entries) and a ``hits_addend``, and renders the
``RateLimitResponse`` back. Errors: ``InputError`` subclasses are the caller's fault (400 /
INVALID_ARGUMENT, message pointing at the bad field); ``StoreError`` escapes only when a rule's
fallback is ``"raise"`` and means 503 / UNAVAILABLE, never a 4xx.

How a request is decided, and where that differs from envoyproxy/ratelimit:

- Every descriptor is resolved with ``RateLimitConfig.checks``. The enforced checks go into ONE
  ``AsyncLimiter.hit_all``: all-or-nothing, so a request denied by one descriptor consumes no
  quota from the others (the reference increments every counter, so a client hammering one
  limit also drains its other limits).
- A rule with ``requests_per_unit: 0``, or a cost larger than a rule could ever admit, is
  OVER_LIMIT without asking the store; the other enforced checks are then not hit at all.
- Shadow checks (the rule's or the domain's ``shadow_mode``, or the service's ``shadow_mode`` for
  every domain) are each hit on their own, consume quota as if enforced, and never deny: a rule
  or domain in shadow mode answers OK (as the reference does); the service-wide shadow mode keeps
  each status's real code and only forces ``overall_code`` to OK (as the reference does). Their
  outcome is counted in ``sluicegate_shadow_decisions_total{policy,outcome}`` (outcome:
  allowed, throttled, error) besides the limiter's own ``sluicegate_decisions_total``.
  A store failure on a shadow check is logged and counted, never raised.
- Unlimited rules answer OK with no limit and never touch the store.
- ``hits_addend`` 0 means 1 (rls.proto); it is each descriptor's cost.

Per-rule ``fallback``: the service holds one ``AsyncLimiter`` per fallback mode, all sharing one
store (``fallback_limiters`` builds them). A request is decided by the limiter of the strictest
fallback its enforced rules name (raise > deny > local > allow; a rule without one uses the
service default, the main limiter's), so the all-or-nothing hit stays one atomic call. While the
store answers, every mode decides identically; the fallback only matters during an outage.
Given only one limiter, rules naming another mode are decided with it, and a warning says so once.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Literal

from prometheus_client import REGISTRY, CollectorRegistry, Counter

from .._decision import Decision
from .._errors import StoreError, describe
from .._policy import MAX_LIMIT
from ..limiter import FALLBACKS, AsyncLimiter, Fallback
from ..middleware.headers import Header, rate_limit_headers, retry_after_seconds
from ..stores import AsyncStore
from .config import Check, Descriptor, DescriptorError, DescriptorLike, RateLimitConfig, is_sequence

__all__ = [
    "MAX_DESCRIPTORS",
    "MAX_DOMAIN_CHARS",
    "MAX_ENTRIES",
    "MAX_KEY_CHARS",
    "MAX_VALUE_CHARS",
    "Code",
    "DescriptorStatus",
    "RateLimitResponse",
    "RateLimitService",
    "fallback_limiters",
    "validate_request",
]

Code = Literal["OK", "OVER_LIMIT"]

#: Request bounds: a descriptor list, its entries, and each string, checked before any lookup.
MAX_DESCRIPTORS: Final = 64
MAX_ENTRIES: Final = 16  # config descriptors nest at most 16 levels; a longer request matches nothing
MAX_DOMAIN_CHARS: Final = 256
MAX_KEY_CHARS: Final = 256
MAX_VALUE_CHARS: Final = 1024
#: All entries of one descriptor together: the rate-limit key stays under the store's 4 KiB limit.
MAX_DESCRIPTOR_CHARS: Final = 3072

_STRICTNESS: Final[dict[Fallback, int]] = {"allow": 0, "local": 1, "deny": 2, "raise": 3}

log = logging.getLogger("sluicegate.service")


@dataclass(frozen=True, slots=True)
class DescriptorStatus:
    """One request descriptor's answer (rls.proto ``DescriptorStatus``)."""

    code: Code
    #: ``(requests_per_unit, unit name upper-case like "MINUTE", rule name)``; None when no rule
    #: matched or the rule is unlimited.
    limit: tuple[int, str, str | None] | None
    limit_remaining: int
    #: Seconds: until the limit is full again (OK) or until the request would fit (OVER_LIMIT).
    duration_until_reset: float


@dataclass(frozen=True, slots=True)
class RateLimitResponse:
    """The answer to one request (rls.proto ``RateLimitResponse``, without protobuf)."""

    overall_code: Code
    #: One per request descriptor, in order.
    statuses: tuple[DescriptorStatus, ...]
    #: RateLimit / RateLimit-Policy / Retry-After for the client's response.
    headers: tuple[Header, ...]
    #: The combined decision of the enforced rules, when the store was asked (for 429 bodies).
    decision: Decision | None


_NO_RULE = DescriptorStatus("OK", None, 0, 0.0)


def fallback_limiters(
    store: AsyncStore,
    *,
    default: Fallback = "local",
    prefix: str = "sluicegate",
    timeout: float = 0.05,
    fallback_share: float = 1.0,
    registry: CollectorRegistry | None = REGISTRY,
) -> tuple[AsyncLimiter, dict[Fallback, AsyncLimiter]]:
    """The main limiter (fallback ``default``) and one limiter per fallback mode, all over one
    ``store``, for ``RateLimitService(config, main, limiters=...)``.

    Close the store once (``main.aclose()``); the others only own their circuit breakers.
    """
    limiters = {
        mode: AsyncLimiter(
            store, fallback=mode, prefix=prefix, timeout=timeout, fallback_share=fallback_share, registry=registry
        )
        for mode in FALLBACKS
    }
    return limiters[default], limiters


_shadow_counters: weakref.WeakKeyDictionary[CollectorRegistry, Counter] = weakref.WeakKeyDictionary()
_shadow_lock = threading.Lock()


def _shadow_counter(registry: CollectorRegistry) -> Counter:
    """``sluicegate_shadow_decisions_total`` on ``registry``, registered the first time."""
    with _shadow_lock:
        found = _shadow_counters.get(registry)
        if found is None:
            found = _shadow_counters[registry] = Counter(
                "sluicegate_shadow_decisions_total",
                "Decisions of rules in shadow mode (reported, never enforced), by policy and outcome "
                "(allowed; throttled: would have been denied; error: the store failed).",
                ["policy", "outcome"],
                registry=registry,
            )
        return found


class RateLimitService:
    """Decides Envoy-style rate-limit requests against ``config`` (see the module docstring).

    ``config`` may be replaced at any time (a reload assigns a new one; a request in flight keeps
    the one it started with). ``limiters`` maps fallback modes to limiters sharing ``limiter``'s
    store, for rules that name their own fallback (see ``fallback_limiters``).
    """

    __slots__ = ("_limiters", "_shadow_counter", "_warned", "config", "limiter", "shadow_mode")

    def __init__(
        self,
        config: RateLimitConfig,
        limiter: AsyncLimiter,
        *,
        shadow_mode: bool = False,
        limiters: Mapping[Fallback, AsyncLimiter] | None = None,
        registry: CollectorRegistry | None = REGISTRY,
    ) -> None:
        self.config = config
        self.limiter = limiter
        self.shadow_mode = shadow_mode
        self._limiters: dict[Fallback, AsyncLimiter] = dict(limiters or {})
        self._limiters.setdefault(limiter.fallback, limiter)
        self._shadow_counter = None if registry is None else _shadow_counter(registry)
        self._warned: set[str] = set()

    def __repr__(self) -> str:
        return f"<RateLimitService {self.config!r} limiter={self.limiter!r} shadow_mode={self.shadow_mode}>"

    async def should_rate_limit(
        self,
        domain: str,
        descriptors: Sequence[DescriptorLike],
        hits_addend: int = 1,
    ) -> RateLimitResponse:
        """Decide one request. Raises ``InputError`` (a subclass naming the bad field) for a
        malformed request or an unknown domain; ``StoreError`` only for a ``"raise"`` fallback."""
        validate_request(domain, descriptors, hits_addend)
        config = self.config  # one config for the whole request, whatever a reload does meanwhile
        checks = config.checks(domain, descriptors, hits_addend=hits_addend)
        statuses: list[DescriptorStatus] = [_NO_RULE] * len(checks)
        enforced: list[Check] = []
        shadows: list[Check] = []
        blocked: list[Check] = []  # denied without the store
        for check in checks:
            if check is None:
                continue
            if check.unlimited:
                continue  # OK, no limit
            if check.shadow or self.shadow_mode:
                shadows.append(check)
            elif check.policy is None or check.cost > check.policy.capacity:
                blocked.append(check)
            else:
                enforced.append(check)
        if shadows:
            (over, decision, headers), shadow_statuses = await asyncio.gather(
                self._enforce(enforced, blocked, statuses), self._shadows(shadows)
            )
            for check, status in zip(shadows, shadow_statuses, strict=True):
                statuses[check.descriptor] = status
        else:
            over, decision, headers = await self._enforce(enforced, blocked, statuses)
        return RateLimitResponse("OVER_LIMIT" if over else "OK", tuple(statuses), tuple(headers), decision)

    async def aclose(self) -> None:
        """Close every limiter the service was given (their shared store included)."""
        for limiter in {id(each): each for each in self._limiters.values()}.values():
            await limiter.aclose()

    # --- internals ----------------------------------------------------------------------------

    async def _enforce(
        self, enforced: list[Check], blocked: list[Check], statuses: list[DescriptorStatus]
    ) -> tuple[bool, Decision | None, list[Header]]:
        """Decide the enforced checks (filling ``statuses``): over?, the decision, the headers."""
        if blocked:
            now = time.time()
            for check in blocked:
                statuses[check.descriptor] = _blocked_status(check, now)
            for check in enforced:  # not decided: nothing was asked of the store
                statuses[check.descriptor] = DescriptorStatus("OK", _limit(check), 0, 0.0)
            wait = max(statuses[check.descriptor].duration_until_reset for check in blocked)
            return True, None, [("Retry-After", str(retry_after_seconds(wait)))]
        if not enforced:
            return False, None, []
        decision = await self._limiter_for(enforced).hit_all([check.item for check in enforced])
        for check, result in zip(enforced, decision.results, strict=True):
            statuses[check.descriptor] = _status(check, result)
        return not decision.allowed, decision, rate_limit_headers(decision)

    def _limiter_for(self, checks: Iterable[Check]) -> AsyncLimiter:
        """The limiter of the strictest fallback the checks' rules name (see the module docstring)."""
        mode = max((check.rule.fallback or self.limiter.fallback for check in checks), key=_STRICTNESS.__getitem__)
        found = self._limiters.get(mode)
        if found is not None:
            return found
        if mode not in self._warned:
            self._warned.add(mode)
            log.warning(
                "sluicegate: a rule asks for fallback=%s but the service has no limiter for it; "
                "deciding with fallback=%s (build the service with fallback_limiters)",
                mode,
                self.limiter.fallback,
            )
        return self.limiter

    async def _shadows(self, checks: Sequence[Check]) -> list[DescriptorStatus]:
        """Each shadow check hit on its own; never denies, never raises."""
        return list(await asyncio.gather(*(self._shadow(check) for check in checks)))

    async def _shadow(self, check: Check) -> DescriptorStatus:
        policy = check.policy
        if policy is None or check.cost > policy.capacity:
            self._count_shadow(check, "throttled")
            real = _blocked_status(check, time.time())
        else:
            try:
                decision = await self._limiter_for((check,)).hit(check.key, policy, cost=check.cost)
            except StoreError as exc:
                self._count_shadow(check, "error")
                log.warning("sluicegate: shadow rule %s not decided: %s", check.rule.metric_name, exc)
                return DescriptorStatus("OK", _limit(check), 0, 0.0)
            self._count_shadow(check, "allowed" if decision.allowed else "throttled")
            real = _status(check, decision)
        if check.shadow:  # the rule's or the domain's shadow mode: OK, as the reference answers
            return DescriptorStatus("OK", real.limit, real.limit_remaining, real.duration_until_reset)
        return real  # the service-wide shadow mode keeps the real code; only overall_code is OK

    def _count_shadow(self, check: Check, outcome: str) -> None:
        if self._shadow_counter is not None:
            # Config rules' policies are named after their metric names: one label either way.
            self._shadow_counter.labels(check.rule.metric_name, outcome).inc()


def _limit(check: Check) -> tuple[int, str, str | None] | None:
    rule = check.rule
    if rule.unlimited or rule.unit is None:
        return None
    return (rule.requests_per_unit, rule.unit.upper(), rule.name)


def _status(check: Check, decision: Decision) -> DescriptorStatus:
    if decision.allowed:
        return DescriptorStatus("OK", _limit(check), decision.remaining, decision.reset_after)
    return DescriptorStatus("OVER_LIMIT", _limit(check), decision.remaining, decision.retry_after)


def _blocked_status(check: Check, now: float) -> DescriptorStatus:
    """OVER_LIMIT without the store: 0 requests per unit, or a cost the rule can never admit.
    The wait is to the end of the rule's aligned window, as the reference reports it."""
    period = check.rule.period or 1
    return DescriptorStatus("OVER_LIMIT", _limit(check), 0, period - (now % period))


def validate_request(domain: object, descriptors: object, hits_addend: object) -> None:
    """Check a request's shape and bounds before any lookup; raises ``DescriptorError`` (an
    ``InputError``) whose message starts with the bad field, e.g.
    ``descriptors[1].entries[0].value: must be a non-empty string``."""
    if not isinstance(domain, str) or not domain:
        raise DescriptorError(f"domain: must be a non-empty string; got {describe(domain)}")
    if len(domain) > MAX_DOMAIN_CHARS:
        raise DescriptorError(f"domain: longer than {MAX_DOMAIN_CHARS} characters")
    if isinstance(hits_addend, bool) or not isinstance(hits_addend, int) or not 0 <= hits_addend <= MAX_LIMIT:
        raise DescriptorError(f"hits_addend: must be an integer in 0..{MAX_LIMIT:,}; got {describe(hits_addend)}")
    if not is_sequence(descriptors):
        raise DescriptorError(f"descriptors: must be a list of descriptors; got {describe(descriptors)}")
    if not descriptors:
        raise DescriptorError("descriptors: must not be empty")
    if len(descriptors) > MAX_DESCRIPTORS:
        raise DescriptorError(f"descriptors: {len(descriptors)} descriptors; at most {MAX_DESCRIPTORS}")
    for index, raw in enumerate(descriptors):
        entries = raw.entries if isinstance(raw, Descriptor) else raw
        where = f"descriptors[{index}]"
        if not is_sequence(entries):
            raise DescriptorError(f"{where}.entries: must be a list of (key, value) entries; got {describe(entries)}")
        if not entries:
            raise DescriptorError(f"{where}.entries: must not be empty")
        if len(entries) > MAX_ENTRIES:
            raise DescriptorError(f"{where}.entries: {len(entries)} entries; at most {MAX_ENTRIES}")
        total = 0
        for position, entry in enumerate(entries):
            problem = _entry_problem(entry)
            if problem is not None:  # the entry's location is only formatted for an error
                raise DescriptorError(f"{where}.entries[{position}]{problem}")
            key, value = entry
            total += len(key) + len(value)
        if total > MAX_DESCRIPTOR_CHARS:
            raise DescriptorError(f"{where}.entries: {total} characters in all; at most {MAX_DESCRIPTOR_CHARS}")


def _entry_problem(entry: object) -> str | None:
    """What is wrong with one descriptor entry, worded to follow its location; None if nothing."""
    if not is_sequence(entry) or len(entry) != 2:
        return f": must be a (key, value) pair; got {describe(entry)}"
    key, value = entry
    if not isinstance(key, str) or not key:
        return f".key: must be a non-empty string; got {describe(key)}"
    if len(key) > MAX_KEY_CHARS:
        return f".key: longer than {MAX_KEY_CHARS} characters"
    # An empty value is allowed, as envoyproxy/ratelimit allows it (its README's example).
    if not isinstance(value, str):
        return f".value: must be a string; got {describe(value)}"
    if len(value) > MAX_VALUE_CHARS:
        return f".value: longer than {MAX_VALUE_CHARS} characters"
    return None
