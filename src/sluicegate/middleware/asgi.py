"""``RateLimitMiddleware`` for ASGI apps (Starlette, FastAPI, Quart…), as plain ASGI.

Pure ASGI rather than Starlette's ``BaseHTTPMiddleware``, which breaks ``contextvars``
propagation and buffers responses (Starlette's docs, "Pure ASGI Middleware"): nothing here
imports a framework, and the app's response streams through untouched but for the added headers.

Only ``http`` scopes are limited. ``lifespan`` and ``websocket`` scopes pass through untouched:
a websocket handshake can be refused only through the optional ``websocket.http.response``
extension, a long-lived connection is one request however much it sends, and connection floods
are better stopped by the proxy or server (``--limit-concurrency``) in front of the app.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from .._errors import ConfigError, StoreError, describe
from .._forwarded import ForwardedHeader, IPNetwork
from ..limiter import AsyncLimiter
from ._engine import Flow, Reply, RuleSet
from .headers import Header
from .rules import Rule

__all__ = ["RateLimitMiddleware"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class RateLimitMiddleware:
    """Limit an ASGI app's HTTP requests by ``rules`` (see ``sluicegate.middleware.rules``).

    A request over a limit gets a 429 ``application/problem+json`` answer and never reaches the
    app; every limited response carries ``RateLimit-Policy`` and ``RateLimit`` (and, with
    ``legacy_headers``, ``X-RateLimit-*``). ``trusted_proxies`` are the networks (CIDRs) whose
    ``forwarded_header`` is believed; with none, the client is the socket peer.
    """

    __slots__ = ("app", "limiter", "rules")

    def __init__(
        self,
        app: ASGIApp,
        *,
        limiter: AsyncLimiter,
        rules: Iterable[Rule],
        trusted_proxies: Iterable[str | IPNetwork] = (),
        forwarded_header: ForwardedHeader = "x-forwarded-for",
        legacy_headers: bool = False,
    ) -> None:
        if not isinstance(limiter, AsyncLimiter):  # a sync Limiter would block the event loop
            raise ConfigError(f"limiter must be an AsyncLimiter for ASGI; got {describe(limiter)}")
        self.app = app
        self.limiter = limiter
        self.rules = RuleSet(
            rules, trusted_proxies=trusted_proxies, forwarded_header=forwarded_header, legacy_headers=legacy_headers
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        rules = self.rules.matching(method, path)
        if not rules:
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        headers = _headers(scope.get("headers", ()))
        request = self.rules.request(method, path, headers, client[0] if client else None, scope)
        outcome = await self._drive(self.rules.flow(rules, request))
        if isinstance(outcome, Reply):
            await send({"type": "http.response.start", "status": outcome.status, "headers": _encode(outcome.headers)})
            await send({"type": "http.response.body", "body": outcome.body})
            return
        await self.app(scope, receive, _adding(send, _encode(outcome)) if outcome else send)

    async def _drive(self, flow: Flow) -> Reply | list[Header]:
        try:
            batch = next(flow)
            while True:
                try:
                    decision = await self.limiter.hit_all(batch)
                except StoreError as exc:
                    batch = flow.throw(exc)
                else:
                    batch = flow.send(decision)
        except StopIteration as stop:
            outcome: Reply | list[Header] = stop.value
            return outcome


def _headers(raw: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    """ASGI header pairs as lower-case name -> value, repeated fields joined in order."""
    headers: dict[str, str] = {}
    for name, value in raw:
        key, text = name.decode("latin-1").lower(), value.decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    return headers


def _encode(headers: list[Header]) -> list[tuple[bytes, bytes]]:
    # ASGI wants lower-case names. Values are ASCII by construction (headers.py).
    return [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers]


def _adding(send: Send, extra: list[tuple[bytes, bytes]]) -> Send:
    """``send`` with ``extra`` headers added to the response start."""

    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", ()), *extra]}
        await send(message)

    return wrapped
