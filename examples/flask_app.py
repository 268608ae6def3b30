"""A Flask app behind sluicegate's WSGI middleware.

    pip install sluicegate flask
    flask --app examples/flask_app.py run     # or: python examples/flask_app.py

    curl -i localhost:5000/items/1            # RateLimit-Policy, RateLimit and X-RateLimit-*
    for i in 1 2 3 4 5 6; do curl -s -o /dev/null -w '%{http_code} ' -X POST localhost:5000/login; done
    # 200 200 200 200 200 429, and the 429 is application/problem+json with Retry-After

Environment: SLUICEGATE_URL (default memory://; e.g. redis://localhost:6379/0 to share limits
between workers) and TRUSTED_PROXIES (comma-separated CIDRs of your reverse proxies; without
them X-Forwarded-For is ignored and the client is the socket peer).
"""

from __future__ import annotations

import os

from flask import Flask

from sluicegate import Limiter
from sluicegate.middleware import Rule
from sluicegate.middleware.wsgi import RateLimitMiddleware

app = Flask(__name__)


@app.get("/items/<int:item_id>")
def read_item(item_id: int) -> dict[str, int]:
    return {"item_id": item_id}


@app.post("/login")
def login() -> dict[str, str]:
    return {"status": "welcome"}


@app.get("/health")
def health() -> dict[str, str]:
    return {"status": "ok"}


# Wrap the WSGI callable, not the Flask object, so Flask's own machinery stays in front.
app.wsgi_app = RateLimitMiddleware(  # type: ignore[method-assign]
    app.wsgi_app,
    limiter=Limiter(os.environ.get("SLUICEGATE_URL", "memory://")),
    rules=[
        Rule("100/minute name per-client", exempt=["/health"]),
        Rule("5/minute name login", path="/login", methods={"POST"}),
        Rule("1000/hour name per-key", header="X-Api-Key", missing="skip"),
    ],
    trusted_proxies=[cidr for cidr in os.environ.get("TRUSTED_PROXIES", "").split(",") if cidr],
    legacy_headers=True,  # X-RateLimit-Limit/Remaining/Reset for clients that predate the draft
)


if __name__ == "__main__":
    app.run()
