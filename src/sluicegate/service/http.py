"""The decision service over HTTP/1.1: ``HttpApp`` answers, ``_http11.HttpServer`` transports.

Endpoints:

- ``POST /json``: envoyproxy/ratelimit's HTTP endpoint. The body is an rls.proto
  ``RateLimitRequest`` in protobuf JSON (``{"domain": "d", "descriptors": [{"entries": [{"key":
  "k", "value": "v"}]}], "hitsAddend": 1}``); the answer is the ``RateLimitResponse`` in protobuf
  JSON, status 200 (OK) or 429 (OVER_LIMIT), as the reference answers. Any content type is
  accepted, as the reference does (its README's curl example sends a form type).
- ``POST /v1/check``: sluicegate's own. ``{"key": "user:42", "policy": "10/minute", "cost": 1}``
  (when ad-hoc policies are on), or ``{"domain": "d", "descriptor": {"k": "v"}}`` /
  ``"descriptors": [...]`` against the config. 200 with the decision as JSON, or 429 with the
  RateLimit headers, ``Retry-After`` and a problem+json body. Content type JSON (or none).
- ``GET /v1/auth``: for nginx ``auth_request`` and Traefik ``ForwardAuth``; descriptors built
  from the forwarded request (``_auth``). 200 when allowed, with the RateLimit headers; when
  throttled, the ``auth_deny_status``: 403 by default (nginx's auth_request passes only 2xx,
  401 and 403; its config maps 403 to 429) or 429 (Traefik passes the answer through), with
  ``Retry-After`` and the RateLimit headers.
- ``GET /metrics`` (Prometheus text), ``GET /healthz`` (the process answers), ``GET /readyz``
  (a config is loaded and the store answers, or the default fallback is not ``raise``).

Caller mistakes are 4xx ``application/problem+json`` with the bad field in ``detail`` and as a
JSON pointer in ``errors``; an unknown domain is 400. A store that cannot answer is 503 (the
rule's fallback is ``raise``), never a 4xx. With a bearer token set, every endpoint but
``/healthz`` needs ``Authorization: Bearer <token>`` (compared in constant time), else 401.
"""

from __future__ import annotations

import dataclasses
import hmac
import json
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Final

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from .._errors import InputError, StoreError
from .._policy import Policy
from ..middleware.headers import Header, rate_limit_headers, throttled_response, unavailable_response
from ._auth import AuthDescriptors
from ._http11 import Request, Response
from ._json import BadJson, entries_of, envoy_request, envoy_response, loads_strict
from .config import UnknownDomainError
from .service import RateLimitResponse, RateLimitService

__all__ = ["HttpApp", "problem"]

log = logging.getLogger("sluicegate.http")

_JSON: Final = "application/json"
_MAX_DETAIL: Final = 512
#: Distinct ad-hoc policies /v1/check accepts per process: each is a metrics series.
MAX_ADHOC_POLICIES: Final = 256
#: Ad-hoc keys live apart from config keys (which start with an escaped domain, never a ``*``).
_ADHOC_NAMESPACE: Final = "*"
_FIELD = re.compile(r"^([A-Za-z_]\w*(?:\[\d+\])*(?:\.[A-Za-z_]\w*(?:\[\d+\])*)*): ")
_TITLES: Final = {
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
_CHECK_FIELDS: Final = ("key", "policy", "cost", "domain", "descriptor", "descriptors")


def problem(status: int, detail: str, *, headers: list[Header] | None = None) -> Response:
    """An RFC 9457 problem+json answer; a ``field: message`` detail also gets a JSON pointer."""
    detail = detail if len(detail) <= _MAX_DETAIL else detail[: _MAX_DETAIL - 3] + "..."
    body: dict[str, object] = {
        "type": "about:blank",
        "title": _TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
    }
    match = _FIELD.match(detail)
    if match and match.group(1) != "body":
        body["errors"] = [{"pointer": _pointer(match.group(1)), "detail": detail[match.end() :]}]
    data = json.dumps(body, ensure_ascii=True, separators=(",", ":")).encode("ascii")
    return status, [("content-type", "application/problem+json"), *(headers or [])], data


def _pointer(field: str) -> str:
    """``descriptors[1].entries[0].value`` -> ``/descriptors/1/entries/0/value`` (RFC 6901)."""
    return "/" + re.sub(r"\[(\d+)\]", r"/\1", field).replace(".", "/")


def _json(status: int, body: object, headers: list[Header] | None = None) -> Response:
    data = json.dumps(body, ensure_ascii=True, separators=(",", ":")).encode("ascii")
    return status, [("content-type", _JSON), *(headers or [])], data


class HttpApp:
    """Routes and answers; ``await app(request)`` is the server's handler.

    ``ready`` answers /readyz; ``token`` (None: no auth) guards every endpoint but /healthz.
    """

    def __init__(
        self,
        service: RateLimitService,
        *,
        registry: CollectorRegistry,
        auth: AuthDescriptors,
        auth_domain: str | None = None,
        auth_deny_status: int = 403,
        token: str | None = None,
        adhoc_policies: bool = True,
        ready: Callable[[], Awaitable[bool]] | None = None,
    ) -> None:
        self.service = service
        self.registry = registry
        self.auth = auth
        self.auth_domain = auth_domain
        self.auth_deny_status = auth_deny_status
        self.adhoc_policies = adhoc_policies
        self._token = None if token is None else token.encode("utf-8")
        self._ready = ready
        self._adhoc: dict[str, Policy] = {}
        self._routes: dict[str, tuple[str, Callable[[Request], Awaitable[Response]]]] = {
            "/json": ("POST", self.envoy_json),
            "/v1/check": ("POST", self.check),
            "/v1/auth": ("*", self.forward_auth),
            "/metrics": ("GET", self.metrics),
            "/healthz": ("GET", self.healthz),
            "/readyz": ("GET", self.readyz),
        }

    def __repr__(self) -> str:
        return f"<HttpApp {self.service!r}>"

    async def __call__(self, request: Request) -> Response:
        route = self._routes.get(request.path)
        if route is None:
            return problem(404, "no such endpoint; try POST /json, POST /v1/check, GET /v1/auth")
        method, handler = route
        if method != "*" and request.method != method and not (method == "GET" and request.method == "HEAD"):
            return problem(405, f"{request.path} takes {method}", headers=[("allow", method)])
        if self._token is not None and request.path != "/healthz" and not self._authorized(request):
            return problem(401, "missing or wrong bearer token", headers=[("www-authenticate", "Bearer")])
        try:
            return await handler(request)
        except StoreError as exc:
            log.warning("sluicegate: %s %s: the store cannot answer: %s", request.method, request.path, exc)
            return unavailable_response()
        except InputError as exc:
            return problem(400, str(exc))

    def _authorized(self, request: Request) -> bool:
        assert self._token is not None
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        # Header values arrive decoded as latin-1: encoding back gives the bytes the client sent.
        given = credentials.strip().encode("latin-1")
        return scheme.lower() == "bearer" and hmac.compare_digest(given, self._token)

    # --- the decision endpoints -------------------------------------------------------------------

    async def envoy_json(self, request: Request) -> Response:
        domain, descriptors, hits = envoy_request(loads_strict(request.body))
        response = await self.service.should_rate_limit(domain, descriptors, hits)
        return _json(200 if response.overall_code == "OK" else 429, envoy_response(response))

    async def check(self, request: Request) -> Response:
        kind = request.headers.get("content-type", _JSON).partition(";")[0].strip().lower()
        if kind != _JSON and not kind.endswith("+json"):
            return problem(415, "body: send application/json")
        body = loads_strict(request.body)
        if not isinstance(body, dict):
            raise BadJson("body: expected an object")
        for name in body:
            if name not in _CHECK_FIELDS:
                raise BadJson(f"{name[:64]}: unknown field; expected key and policy, or domain and descriptor(s)")
        cost = body.get("cost", 1)
        if isinstance(cost, bool) or not isinstance(cost, int) or cost < 1:
            raise BadJson(f"cost: must be a positive integer; got {json.dumps(cost)[:64]}")
        if "key" in body or "policy" in body:
            return await self._check_key(body, cost)
        if "domain" not in body:
            raise BadJson("domain: missing; send key and policy, or domain and descriptor(s)")
        if ("descriptor" in body) == ("descriptors" in body):
            raise BadJson("descriptor: send one of descriptor and descriptors")
        if "descriptor" in body:
            descriptors = [entries_of(body["descriptor"], "descriptor")]
        else:
            raw = body["descriptors"]
            if not isinstance(raw, list):
                raise BadJson("descriptors: expected a list of descriptors")
            descriptors = [entries_of(item, f"descriptors[{i}]") for i, item in enumerate(raw)]
        domain = body["domain"]
        if not isinstance(domain, str):
            raise BadJson("domain: expected a string")
        response = await self.service.should_rate_limit(domain, descriptors, cost)
        fields = _response_fields(response)
        if response.overall_code == "OK":
            return _json(200, fields, list(response.headers))
        return _throttled(response)

    async def _check_key(self, body: dict[str, object], cost: int) -> Response:
        if not self.adhoc_policies:
            return problem(400, "key: ad-hoc policies are off here; send domain and descriptor(s)")
        key, text = body.get("key"), body.get("policy")
        if not isinstance(key, str) or not key:
            raise BadJson("key: must be a non-empty string")
        if not isinstance(text, str):
            raise BadJson("policy: must be a policy string such as '10/minute'")
        extra = [name for name in ("domain", "descriptor", "descriptors") if name in body]
        if extra:
            raise BadJson(f"{extra[0]}: not with key and policy")
        policy = self._adhoc.get(text)
        if policy is None:
            try:
                policy = Policy.parse(text)
            except InputError as exc:
                raise BadJson(f"policy: {exc}") from None
            if len(self._adhoc) >= MAX_ADHOC_POLICIES:
                return problem(400, f"policy: more than {MAX_ADHOC_POLICIES} distinct policies; use a config")
            self._adhoc[text] = policy
        if cost > policy.capacity:
            raise BadJson(f"cost: {cost} exceeds the capacity {policy.capacity} of {text[:64]!r}")
        decision = await self.service.limiter.hit(_ADHOC_NAMESPACE + key, policy, cost=cost)
        decision = dataclasses.replace(decision, key=key)
        if decision.allowed:
            return _json(200, decision.as_dict(), rate_limit_headers(decision))
        return throttled_response(decision)

    async def forward_auth(self, request: Request) -> Response:
        domain = self.auth_domain or _only_domain(self.service)
        descriptors = self.auth.build(request.peer, request.headers)
        if not descriptors:
            return 200, [], b""
        try:
            if not domain:
                raise UnknownDomainError("no auth domain")
            response = await self.service.should_rate_limit(domain, descriptors, 1)
        except UnknownDomainError:
            log.debug("sluicegate: /v1/auth: domain %r is not in the config (set SLUICEGATE_AUTH_DOMAIN)", domain)
            return problem(500, "the auth domain is not configured")
        if response.overall_code == "OK":
            return 200, list(response.headers), b""
        if self.auth_deny_status == 429:
            return _throttled(response)
        return self.auth_deny_status, list(response.headers), b""

    # --- operations -------------------------------------------------------------------------------

    async def metrics(self, request: Request) -> Response:
        return 200, [("content-type", CONTENT_TYPE_LATEST)], generate_latest(self.registry)

    async def healthz(self, request: Request) -> Response:
        return _json(200, {"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        ready = True if self._ready is None else await self._ready()
        if ready:
            return _json(200, {"status": "ready"})
        return _json(503, {"status": "not ready"}, [("retry-after", "1")])


def _only_domain(service: RateLimitService) -> str:
    domains = service.config.domains
    return domains[0] if len(domains) == 1 else ""


def _throttled(response: RateLimitResponse) -> Response:
    """429 for an OVER_LIMIT response: the shared problem body when the store decided, else
    (a rule of 0 requests per unit) the same shape with the response's own headers."""
    if response.decision is not None and not response.decision.allowed:
        return throttled_response(response.decision)
    status, headers, body = problem(429, "Too many requests.", headers=list(response.headers))
    return status, headers, body


def _response_fields(response: RateLimitResponse) -> dict[str, object]:
    fields: dict[str, object] = {"allowed": response.overall_code == "OK", "overall_code": response.overall_code}
    if response.decision is not None:
        fields.update(response.decision.as_dict())
        fields["allowed"] = response.overall_code == "OK"
        del fields["key"]
    fields["statuses"] = [
        {
            "code": status.code,
            "limit": None
            if status.limit is None
            else {"requests_per_unit": status.limit[0], "unit": status.limit[1], "name": status.limit[2]},
            "limit_remaining": status.limit_remaining,
            "duration_until_reset": round(status.duration_until_reset, 6),
        }
        for status in response.statuses
    ]
    return fields
