"""``RateLimitMiddleware`` for WSGI apps (Flask, Django, Pyramid…), the twin of ``asgi.py``.

Only the I/O differs: the sync ``Limiter`` drives the same ``RuleSet.flow``, and the headers are
added by wrapping ``start_response``. Wrap the WSGI callable itself, e.g. for Flask
``app.wsgi_app = RateLimitMiddleware(app.wsgi_app, limiter=..., rules=...)``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import TYPE_CHECKING

from .._errors import ConfigError, StoreError, describe
from .._forwarded import ForwardedHeader, IPNetwork
from ..limiter import Limiter
from ._engine import Flow, Reply, RuleSet
from .headers import Header
from .rules import Rule

if TYPE_CHECKING:
    from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

    from _typeshed import OptExcInfo

__all__ = ["RateLimitMiddleware"]

# WSGI header names arrive as HTTP_<NAME>; these two come without the prefix (PEP 3333).
_UNPREFIXED = {"CONTENT_TYPE": "content-type", "CONTENT_LENGTH": "content-length"}


class RateLimitMiddleware:
    """Limit a WSGI app's requests by ``rules``; the arguments are those of the ASGI
    ``RateLimitMiddleware``, with a sync ``Limiter``."""

    __slots__ = ("app", "limiter", "rules")

    def __init__(
        self,
        app: WSGIApplication,
        *,
        limiter: Limiter,
        rules: Iterable[Rule],
        trusted_proxies: Iterable[str | IPNetwork] = (),
        forwarded_header: ForwardedHeader = "x-forwarded-for",
        legacy_headers: bool = False,
    ) -> None:
        if not isinstance(limiter, Limiter):
            raise ConfigError(f"limiter must be a Limiter for WSGI; got {describe(limiter)}")
        self.app = app
        self.limiter = limiter
        self.rules = RuleSet(
            rules, trusted_proxies=trusted_proxies, forwarded_header=forwarded_header, legacy_headers=legacy_headers
        )

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        path = _path(environ)
        rules = self.rules.matching(method, path)
        if not rules:
            return self.app(environ, start_response)
        request = self.rules.request(method, path, _headers(environ), environ.get("REMOTE_ADDR"), environ)
        outcome = self._drive(self.rules.flow(rules, request))
        if isinstance(outcome, Reply):
            start_response(f"{outcome.status} {HTTPStatus(outcome.status).phrase}", outcome.headers)
            return [outcome.body]
        if not outcome:
            return self.app(environ, start_response)

        def adding(
            status: str, headers: list[tuple[str, str]], exc_info: OptExcInfo | None = None, /
        ) -> Callable[[bytes], object]:
            return start_response(status, [*headers, *outcome], exc_info)

        return self.app(environ, adding)

    def _drive(self, flow: Flow) -> Reply | list[Header]:
        try:
            batch = next(flow)
            while True:
                try:
                    decision = self.limiter.hit_all(batch)
                except StoreError as exc:
                    batch = flow.throw(exc)
                else:
                    batch = flow.send(decision)
        except StopIteration as stop:
            outcome: Reply | list[Header] = stop.value
            return outcome


def _path(environ: WSGIEnvironment) -> str:
    """The full request path as text. WSGI hands it over as latin-1-decoded bytes (PEP 3333);
    re-decoding as UTF-8 makes it the same string an ASGI server would give."""
    raw = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
    try:
        return str(raw.encode("latin-1").decode("utf-8"))
    except UnicodeError:
        return str(raw)


def _headers(environ: WSGIEnvironment) -> dict[str, str]:
    headers: dict[str, str] = {}
    for name, value in environ.items():
        if name.startswith("HTTP_"):
            headers[name[5:].replace("_", "-").lower()] = value
        elif name in _UNPREFIXED:
            headers[_UNPREFIXED[name]] = value
    return headers
