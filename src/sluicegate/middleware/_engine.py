"""Everything the ASGI and WSGI middleware do per request, except the I/O.

``RuleSet.flow`` is a generator, the shape of httpx's ``Auth.auth_flow``: it yields the
``hit_all`` batches to decide and receives each ``Decision`` (or the ``StoreError`` deciding it
raised), and returns what to do with the request. Each middleware only drives it with its own
limiter, so the order of decisions, shadow mode, failure handling and headers exist once.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Generator, Iterable, Mapping, Sequence
from typing import Any

from .._decision import Decision
from .._errors import ConfigError, StoreError, describe
from .._forwarded import ForwardedHeader, IPNetwork, TrustedProxies, client_address
from .._policy import Policy
from .headers import Header, policy_identifier, rate_limit_headers, throttled_response, unavailable_response
from .rules import Request, Rule, normalize_path

__all__ = ["Batch", "Flow", "Reply", "RuleSet"]

log = logging.getLogger("sluicegate.middleware")

#: One ``hit_all`` call's items: (key, policy, cost).
Batch = tuple[tuple[str, Policy, int], ...]


@dataclasses.dataclass(frozen=True, slots=True)
class Reply:
    """Answer the request with this instead of calling the app (429, or 503)."""

    status: int
    headers: list[Header]
    body: bytes


#: Yields batches, is sent their decisions, returns a Reply or the headers to add to the app's response.
Flow = Generator[Batch, Decision, Reply | list[Header]]


class RuleSet:
    """A middleware's rules and client-address settings; see ``rules`` for the semantics."""

    __slots__ = ("_warned", "forwarded_header", "legacy_headers", "rules", "trusted_proxies")

    def __init__(
        self,
        rules: Iterable[Rule],
        *,
        trusted_proxies: Iterable[str | IPNetwork] = (),
        forwarded_header: ForwardedHeader = "x-forwarded-for",
        legacy_headers: bool = False,
    ) -> None:
        self.rules = tuple(rules) if isinstance(rules, Iterable) else ()
        if not self.rules or not all(isinstance(rule, Rule) for rule in self.rules):
            raise ConfigError(f"rules must be a non-empty sequence of Rule; got {describe(rules)}")
        ids = [rule.id for rule in self.rules]
        for rule_id in ids:
            if ids.count(rule_id) > 1:
                raise ConfigError(f"two rules are named {rule_id!r}; give each a distinct name= (keys are per name)")
        if forwarded_header not in ("x-forwarded-for", "forwarded"):
            raise ConfigError(
                f"forwarded_header must be 'x-forwarded-for' or 'forwarded'; got {describe(forwarded_header)}"
            )
        self.trusted_proxies = TrustedProxies(trusted_proxies)
        self.forwarded_header: ForwardedHeader = forwarded_header
        self.legacy_headers = bool(legacy_headers)
        self._warned = False

    def __repr__(self) -> str:
        return f"<RuleSet rules={[rule.id for rule in self.rules]!r} trusted_proxies={self.trusted_proxies!r}>"

    def matching(self, method: str, path: str) -> tuple[Rule, ...]:
        """The rules that apply to ``method`` on ``path`` (cheap: call before reading headers)."""
        normal = normalize_path(path)
        return tuple(rule for rule in self.rules if rule.matches(method, normal))

    def request(
        self, method: str, path: str, headers: Mapping[str, str], peer: str | None, raw: Mapping[str, Any]
    ) -> Request:
        """The ``Request`` key functions see, with its client address resolved."""
        client = client_address(peer, headers, self.trusted_proxies, header=self.forwarded_header)
        return Request(method=method, path=path, headers=headers, client=client, raw=raw)

    def flow(self, rules: Sequence[Rule], request: Request) -> Flow:
        """Decide ``request`` under ``rules``: the enforced rules' policies in one batch (all or
        nothing), then, if that allowed, each shadow rule in a batch of its own."""
        enforced: list[tuple[str, Policy, int]] = []
        shadows: list[tuple[Rule, Batch]] = []
        for rule in rules:
            key = rule.identity(request)
            if key is None:
                self._unidentified(rule)
                continue
            batch = tuple((key, policy, rule.cost) for policy in rule.resolved_policies)
            if rule.shadow:
                shadows.append((rule, batch))
            else:
                enforced.extend(batch)
        decisions: list[Decision] = []
        if enforced:
            try:
                decision = yield tuple(enforced)
            except StoreError as exc:
                # Only with fallback="raise": the store failed and nobody may decide. Not a 4xx.
                log.warning("sluicegate: no rate-limit decision for %s %s: %s", request.method, _quote(request), exc)
                return Reply(*unavailable_response())
            if not decision.allowed:
                return Reply(*throttled_response(decision, legacy=self.legacy_headers))
            decisions.append(decision)
        for rule, batch in shadows:
            try:
                decision = yield batch
            except StoreError as exc:  # a shadow rule never changes the response, failing or not
                log.warning("sluicegate: shadow rule %r not decided: %s", rule.id, exc)
                continue
            if not decision.allowed:
                _report_shadow(rule, decision, request)
            decisions.append(decision)
        if not decisions:
            return []
        return rate_limit_headers(_passed(decisions), legacy=self.legacy_headers)

    def _unidentified(self, rule: Rule) -> None:
        if not self._warned:  # once: it is a property of the deployment, not of one request
            self._warned = True
            log.warning(
                "sluicegate: rule %r skipped a request with no identity and no client address "
                "(the server gave no peer address); such requests are not limited by it",
                rule.id,
            )


def _passed(decisions: Sequence[Decision]) -> Decision:
    """One Decision listing every item of ``decisions``, for the headers of a response that goes
    through: a shadow rule's denial shows as ``r=0`` but adds no ``Retry-After``."""
    items = tuple(item for decision in decisions for item in (decision.results or (decision,)))
    tightest = min(items, key=lambda item: item.remaining)
    return dataclasses.replace(tightest, allowed=True, retry_after=0.0, results=items)


def _report_shadow(rule: Rule, decision: Decision, request: Request) -> None:
    violated = [policy_identifier(d.policy) for d in (decision.results or (decision,)) if not d.allowed]
    log.info(
        "sluicegate: shadow rule %r would deny %s %s (policies: %s)",
        rule.id,
        request.method,
        _quote(request),
        ", ".join(violated),
    )
    if rule.on_shadow is not None:
        try:
            rule.on_shadow(decision, request)
        except Exception:
            log.exception("sluicegate: on_shadow hook of rule %r failed", rule.id)


def _quote(request: Request) -> str:
    # repr, cut short: a path is client input and must not forge or flood log lines.
    return describe(request.path)
