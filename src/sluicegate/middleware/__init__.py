"""Rate limiting at the HTTP edge: ASGI and WSGI middleware, rules, and the shared rendering.

    from sluicegate import AsyncLimiter
    from sluicegate.middleware import Rule
    from sluicegate.middleware.asgi import RateLimitMiddleware

    app.add_middleware(
        RateLimitMiddleware,
        limiter=AsyncLimiter("redis://localhost:6379/0"),
        rules=[Rule("100/minute"), Rule("5/minute", path="/login", methods={"POST"})],
        trusted_proxies=["10.0.0.0/8"],
    )

The ASGI and WSGI middleware share the name ``RateLimitMiddleware``, so each is imported from
its module (``asgi``, ``wsgi``). ``rules`` says how requests are matched and keyed; ``headers``
renders a ``Decision`` as ``RateLimit-Policy``, ``RateLimit``, ``Retry-After`` and a 429
problem+json body, for these middleware and for any other HTTP edge.
"""

from __future__ import annotations

from .headers import rate_limit_headers, throttled_response
from .rules import Request, Rule, normalize_path

__all__ = ["Request", "Rule", "normalize_path", "rate_limit_headers", "throttled_response"]
