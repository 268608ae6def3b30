"""A ``Decision`` rendered for HTTP: header fields and the 429 body. Pure functions, no I/O.

The ASGI and WSGI middleware and the decision service all answer through these functions, so a
client sees the same fields whichever edge it talks to (the shape of prometheus_client's
``_bake_output``, which its WSGI and ASGI exposition share).

The fields follow draft-ietf-httpapi-ratelimit-headers-11 (May 2026), which replaced the
``RateLimit-Limit/Remaining/Reset`` trio of drafts 03-06 with two Structured Field lists, one
item per policy, named by an sf-string::

    RateLimit-Policy: "search";q=100;w=60, "1000/hour";q=1000;w=3600
    RateLimit: "search";r=97;t=2, "1000/hour";r=990;t=36

- ``q`` is the policy's limit per window ``w`` (seconds; left out when the period is not a whole
  number of seconds, since the draft has no sub-second windows). A gcra policy with an explicit
  burst adds the vendor parameter ``sluicegate-burst``.
- ``r`` is what remains. ``t`` is the effective window: for an admitting policy the seconds until
  it is back to full capacity; for a denying one the seconds until the request would fit, so that
  ``Retry-After`` never points before the end of a window (draft §6). Both are rounded up.
- No ``pk`` (partition key): the key is the client's address or credential, which the draft asks
  servers not to disclose (§6.1).

The identifier is the policy's ``name``, else its text (``"100/minute"``). Policy names are
validated already, but identifiers are still reduced to printable ASCII, escaped and bounded here,
so nothing can end a header line or a structured field early.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import lru_cache

from .._decision import Decision
from .._errors import InputError
from .._policy import Policy

__all__ = [
    "MAX_IDENTIFIER_CHARS",
    "MAX_VIOLATED_POLICIES",
    "PROBLEM_TYPE",
    "Header",
    "policy_identifier",
    "rate_limit_headers",
    "retry_after_seconds",
    "throttled_response",
    "unavailable_response",
]

Header = tuple[str, str]

#: The draft's problem type for a request over quota, with ``violated-policies`` (§5.1).
PROBLEM_TYPE = "https://iana.org/assignments/http-problem-types#quota-exceeded"
_PROBLEM_TITLE = "Request cannot be satisfied as assigned quota has been exceeded"
#: Longest policy identifier sent; a longer one is cut (header and body stay small).
MAX_IDENTIFIER_CHARS = 128
#: At most this many policies are named in a 429 body.
MAX_VIOLATED_POLICIES = 16
_MAX_INSTANCE_CHARS = 512
_PROBLEM_JSON = "application/problem+json"


def policy_identifier(policy: Policy) -> str:
    """The name a policy goes by in headers and 429 bodies: printable ASCII, at most
    ``MAX_IDENTIFIER_CHARS`` characters (anything else becomes ``?``)."""
    text = policy.name if policy.name is not None else str(policy)
    return "".join(char if " " <= char <= "~" else "?" for char in text[:MAX_IDENTIFIER_CHARS])


def rate_limit_headers(decision: Decision, *, legacy: bool = False) -> list[Header]:
    """``RateLimit-Policy`` and ``RateLimit`` for ``decision`` (one item per ``hit_all`` item),
    ``Retry-After`` when it denies, and with ``legacy`` the ``X-RateLimit-Limit/Remaining/Reset``
    trio many clients still read (``Reset`` in seconds from now, like draft 03)."""
    items = decision.results or (decision,)
    names, policy_field = _policy_field(tuple(item.policy for item in items))
    usage = ", ".join(f"{name};r={d.remaining};t={_window(d)}" for name, d in zip(names, items, strict=True))
    headers = [("RateLimit-Policy", policy_field), ("RateLimit", usage)]
    if not decision.allowed:
        headers.append(("Retry-After", str(_retry_after(decision))))
    if legacy:
        headers += [
            ("X-RateLimit-Limit", str(decision.limit)),
            ("X-RateLimit-Remaining", str(decision.remaining)),
            ("X-RateLimit-Reset", str(_ceil_seconds(decision.reset_after))),
        ]
    return headers


def throttled_response(
    decision: Decision, *, instance: str | None = None, legacy: bool = False
) -> tuple[int, list[Header], bytes]:
    """The 429 answer to a denied ``decision``: status, headers, and an RFC 9457
    ``application/problem+json`` body of the draft's ``quota-exceeded`` type that names the
    violated policies. ``instance`` (a URI reference for this occurrence) is cut to 512 characters.
    """
    if decision.allowed:
        raise InputError("throttled_response needs a denied decision; this one is allowed")
    items = decision.results or (decision,)
    names = _unique_identifiers([d.policy for d in items])
    violated = [name for name, d in zip(names, items, strict=True) if not d.allowed]
    seconds = _retry_after(decision)
    problem: dict[str, object] = {
        "type": PROBLEM_TYPE,
        "title": _PROBLEM_TITLE,
        "status": 429,
        "detail": f"Too many requests; retry after {seconds} second{'s' if seconds != 1 else ''}.",
        "violated-policies": violated[:MAX_VIOLATED_POLICIES],
    }
    if instance is not None:
        problem["instance"] = instance[:_MAX_INSTANCE_CHARS]
    return 429, *_problem(problem, rate_limit_headers(decision, legacy=legacy))


def unavailable_response(*, retry_after: int = 1) -> tuple[int, list[Header], bytes]:
    """The 503 answer when no decision could be made (the store failed and the limiter's
    ``fallback`` is ``"raise"``). A store outage is not the client's fault, so not a 4xx."""
    problem: dict[str, object] = {
        "type": "about:blank",
        "title": "Service Unavailable",
        "status": 503,
        "detail": "The rate limiter cannot decide right now.",
    }
    return 503, *_problem(problem, [("Retry-After", str(max(int(retry_after), 1)))])


# --- rendering --------------------------------------------------------------------------------


def _problem(problem: dict[str, object], headers: list[Header]) -> tuple[list[Header], bytes]:
    # ensure_ascii: the body is 7-bit whatever a policy name held.
    body = json.dumps(problem, ensure_ascii=True, separators=(",", ":")).encode("ascii")
    return [("Content-Type", _PROBLEM_JSON), ("Content-Length", str(len(body))), *headers], body


@lru_cache(maxsize=1024)
def _policy_field(policies: tuple[Policy, ...]) -> tuple[tuple[str, ...], str]:
    """The sf-string identifiers of ``policies`` and the ``RateLimit-Policy`` value listing them.
    Both depend on the policies alone, which come from a bounded config: cached, not rebuilt for
    every request."""
    names = tuple(_sf_string(name) for name in _unique_identifiers(policies))
    return names, ", ".join(name + _policy_params(policy) for name, policy in zip(names, policies, strict=True))


def _unique_identifiers(policies: Sequence[Policy]) -> list[str]:
    """Identifiers for ``policies``; a repeated one (the same policy under two rules) gets ``#2``,
    ``#3``… so each ``RateLimit`` item still points at exactly one ``RateLimit-Policy`` item."""
    seen: dict[str, int] = {}
    names = []
    for policy in policies:
        name = policy_identifier(policy)
        seen[name] = count = seen.get(name, 0) + 1
        names.append(name if count == 1 else f"{name}#{count}")
    return names


def _sf_string(text: str) -> str:
    """``text`` (printable ASCII) as an RFC 9651 sf-string: quoted, ``\\`` and ``"`` escaped."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _policy_params(policy: Policy) -> str:
    params = f";q={policy.limit}"
    if policy.period_ms % 1000 == 0:
        params += f";w={policy.period_ms // 1000}"
    if policy.burst is not None:
        params += f";sluicegate-burst={policy.burst}"
    return params


def _ceil_seconds(seconds: float) -> int:
    # Through integer µs: 12.000000000001 s from float arithmetic is 12, not 13.
    return max(-(-round(seconds * 1_000_000) // 1_000_000), 0)


def retry_after_seconds(seconds: float) -> int:
    """A ``Retry-After`` value: whole seconds, rounded up (float noise aside), at least 1."""
    return max(_ceil_seconds(seconds), 1)


def _retry_after(decision: Decision) -> int:
    return retry_after_seconds(decision.retry_after)


def _window(decision: Decision) -> int:
    return _ceil_seconds(decision.reset_after) if decision.allowed else _retry_after(decision)
