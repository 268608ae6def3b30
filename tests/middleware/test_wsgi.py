"""The WSGI middleware on a Flask app, through Flask's test client: the ASGI behaviour, in sync."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import pytest
from flask import Flask, Response
from werkzeug.test import TestResponse

from sluicegate import AsyncLimiter, ConfigError, Decision, Limiter
from sluicegate.middleware import Request, Rule
from sluicegate.middleware.headers import PROBLEM_TYPE
from sluicegate.middleware.wsgi import RateLimitMiddleware
from tests.conftest import FakeClock
from tests.middleware.conftest import DownStore

LIMIT_HEADERS = ("RateLimit", "RateLimit-Policy", "Retry-After", "X-RateLimit-Limit")


class Calls:
    def __init__(self) -> None:
        self.count = 0


def flask_app(limiter: Limiter, rules: Sequence[Rule], calls: Calls | None = None, **options: Any) -> Flask:
    app = Flask(__name__)
    seen = calls or Calls()

    @app.route("/", defaults={"path": ""}, methods=["GET", "POST"])
    @app.route("/<path:path>", methods=["GET", "POST"])
    def anything(path: str) -> dict[str, str]:
        seen.count += 1
        return {"path": path}

    @app.route("/stream")
    def stream() -> Response:
        def chunks() -> Iterator[str]:
            yield from ("a", "b", "c")

        return Response(chunks(), mimetype="text/plain")

    app.wsgi_app = RateLimitMiddleware(app.wsgi_app, limiter=limiter, rules=rules, **options)  # type: ignore[method-assign]
    return app


def get(app: Flask, path: str = "/", *, peer: str = "198.51.100.7", method: str = "GET", **kw: Any) -> TestResponse:
    return app.test_client().open(path, method=method, environ_base={"REMOTE_ADDR": peer}, **kw)


def limit_headers(response: TestResponse) -> dict[str, str]:
    return {name: value for name, value in response.headers.items() if name in LIMIT_HEADERS}


def test_allowed_responses_carry_exact_headers(limiter: Limiter) -> None:
    app = flask_app(limiter, [Rule("5/minute name api")])
    first, second = get(app, "/a"), get(app, "/b")
    assert first.status_code == 200
    assert first.json == {"path": "a"}
    assert limit_headers(first) == {"RateLimit-Policy": '"api";q=5;w=60', "RateLimit": '"api";r=4;t=12'}
    assert limit_headers(second) == {"RateLimit-Policy": '"api";q=5;w=60', "RateLimit": '"api";r=3;t=24'}


def test_throttled_requests_get_problem_json_and_never_reach_the_app(limiter: Limiter, clock: FakeClock) -> None:
    calls = Calls()
    app = flask_app(limiter, [Rule("5/minute name api")], calls)
    for _ in range(5):
        assert get(app).status_code == 200
    denied = get(app, "/orders")
    clock.advance(5)
    later = get(app, "/orders")
    clock.advance(7)
    again = get(app, "/orders")
    assert calls.count == 6
    assert denied.status == "429 Too Many Requests"
    assert denied.headers["Content-Type"] == "application/problem+json"
    assert limit_headers(denied) == {
        "RateLimit-Policy": '"api";q=5;w=60',
        "RateLimit": '"api";r=0;t=12',
        "Retry-After": "12",
    }
    assert json.loads(denied.data) == {
        "type": PROBLEM_TYPE,
        "title": "Request cannot be satisfied as assigned quota has been exceeded",
        "status": 429,
        "detail": "Too many requests; retry after 12 seconds.",
        "violated-policies": ["api"],
    }
    assert later.headers["Retry-After"] == "7"
    assert again.status_code == 200


def test_legacy_headers_and_streamed_responses(limiter: Limiter) -> None:
    app = flask_app(limiter, [Rule("5/minute")], legacy_headers=True)
    response = get(app, "/stream")
    assert response.data == b"abc"
    assert response.headers["X-RateLimit-Limit"] == "5"
    assert response.headers["X-RateLimit-Remaining"] == "4"
    assert response.headers["X-RateLimit-Reset"] == "12"


def test_exempt_paths_and_methods(limiter: Limiter) -> None:
    app = flask_app(limiter, [Rule("1/minute", exempt=["/health"], methods={"POST"})])
    assert all(limit_headers(get(app, "/health", method="POST")) == {} for _ in range(3))
    assert all(limit_headers(get(app, "/x")) == {} for _ in range(3))
    assert [get(app, "/x", method="POST").status_code for _ in range(2)] == [200, 429]


def test_several_policies_per_rule_are_all_or_nothing(limiter: Limiter) -> None:
    app = flask_app(limiter, [Rule(["2/minute name short", "3/hour name long"])])
    get(app), get(app)
    denied = get(app)
    assert denied.status_code == 429
    assert denied.headers["RateLimit"] == '"short";r=0;t=30, "long";r=1;t=2400'


def test_trusted_proxies(limiter: Limiter) -> None:
    app = flask_app(limiter, [Rule("1/minute")], trusted_proxies=["10.0.0.0/8"])
    spoofs = [get(app, peer="203.0.113.9", headers={"X-Forwarded-For": f"1.1.1.{n}"}) for n in range(2)]
    assert [r.status_code for r in spoofs] == [200, 429]
    chain = "6.6.6.6, 198.51.100.7, 10.0.0.2"
    assert get(app, peer="10.0.0.1", headers={"X-Forwarded-For": chain}).status_code == 200
    respoofed = "7.7.7.7, 198.51.100.7, 10.0.0.2"
    assert get(app, peer="10.0.0.1", headers={"X-Forwarded-For": respoofed}).status_code == 429


def test_ipv6_clients_are_counted_per_64(limiter: Limiter) -> None:
    app = flask_app(limiter, [Rule("1/minute")])
    peers = ["2001:db8:1:2::1", "2001:db8:1:2::2", "2001:db8:1:3::1", "::ffff:198.51.100.7", "198.51.100.7"]
    assert [get(app, peer=peer).status_code for peer in peers] == [200, 429, 200, 200, 429]


def test_shadow_rules_never_deny_but_count(limiter: Limiter, caplog: pytest.LogCaptureFixture) -> None:
    seen: list[tuple[Decision, Request]] = []
    rule = Rule("1/minute name trial", shadow=True, on_shadow=lambda d, r: seen.append((d, r)), name="trial")
    app = flask_app(limiter, [rule])
    caplog.set_level(logging.INFO, logger="sluicegate.middleware")
    responses = [get(app, f"/p{i}") for i in range(3)]
    assert [r.status_code for r in responses] == [200, 200, 200]
    assert all(r.headers["RateLimit"] == '"trial";r=0;t=60' for r in responses)
    assert all("Retry-After" not in r.headers for r in responses)
    assert [(d.allowed, r.path) for d, r in seen] == [(False, "/p1"), (False, "/p2")]
    assert len([r for r in caplog.records if "would deny" in r.getMessage()]) == 2


def test_a_store_failure_with_fallback_raise_is_a_503() -> None:
    calls = Calls()
    app = flask_app(Limiter(DownStore(), fallback="raise", registry=None), [Rule("5/minute")], calls)
    response = get(app)
    assert response.status == "503 Service Unavailable"
    assert response.headers["Content-Type"] == "application/problem+json"
    assert calls.count == 0


def test_paths_are_read_as_utf_8_like_asgi(limiter: Limiter) -> None:
    app = flask_app(limiter, [Rule("1/minute", path="/café")])
    assert [get(app, "/café/menu").status_code for _ in range(2)] == [200, 429]
    assert limit_headers(get(app, "/cafe")) == {}


def _call(app: Any, environ: dict[str, Any]) -> tuple[str, list[tuple[str, str]], bytes]:
    started: list[tuple[str, list[tuple[str, str]]]] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        started.append((status, headers))
        return lambda data: None

    body: Iterable[bytes] = app(environ, start_response)
    return started[0][0], started[0][1], b"".join(body)


def test_hostile_identities_never_reach_a_header(limiter: Limiter) -> None:
    def ok(environ: Any, start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    rules = [Rule("1/minute", header="X-Api-Key", name="k")]
    middleware = RateLimitMiddleware(ok, limiter=limiter, rules=rules)
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/\r\nX-Injected: 1",
        "REMOTE_ADDR": "198.51.100.7",
        "HTTP_X_API_KEY": "evil\r\nSet-Cookie: a=b",
    }
    results = [_call(middleware, environ) for _ in range(2)]
    assert [status for status, _, _ in results] == ["200 OK", "429 Too Many Requests"]
    for _, headers, body in results:
        for name, value in headers:
            assert name.lower() not in ("set-cookie", "x-injected")
            assert all(" " <= char <= "~" for char in value), (name, value)
        assert b"evil" not in body


def test_an_async_limiter_is_refused(clock: FakeClock) -> None:
    with pytest.raises(ConfigError, match="a Limiter for WSGI"):
        RateLimitMiddleware(Flask(__name__).wsgi_app, limiter=AsyncLimiter(registry=None), rules=[Rule("1/s")])  # type: ignore[arg-type]
