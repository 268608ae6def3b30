"""A FastAPI app behind sluicegate's ASGI middleware.

    pip install sluicegate fastapi uvicorn
    uvicorn examples.fastapi_app:app          # or: python examples/fastapi_app.py

    curl -i localhost:8000/items/1            # RateLimit-Policy and RateLimit on every response
    for i in 1 2 3 4 5 6; do curl -s -o /dev/null -w '%{http_code} ' -X POST localhost:8000/login; done
    # 200 200 200 200 200 429, and the 429 is application/problem+json with Retry-After

Environment: SLUICEGATE_URL (default memory://; e.g. redis://localhost:6379/0 to share limits
between workers) and TRUSTED_PROXIES (comma-separated CIDRs of your reverse proxies; without
them X-Forwarded-For is ignored and the client is the socket peer).
"""

from __future__ import annotations

import os

from fastapi import FastAPI

from sluicegate import AsyncLimiter
from sluicegate.middleware import Rule
from sluicegate.middleware.asgi import RateLimitMiddleware

app = FastAPI()


@app.get("/items/{item_id}")
async def read_item(item_id: int) -> dict[str, int]:
    return {"item_id": item_id}


@app.post("/login")
async def login() -> dict[str, str]:
    return {"status": "welcome"}


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


app.add_middleware(
    RateLimitMiddleware,
    limiter=AsyncLimiter(os.environ.get("SLUICEGATE_URL", "memory://")),
    rules=[
        # Every rule that matches applies, all or nothing: a login counts against both of these.
        Rule("100/minute name per-client", exempt=["/health"]),
        Rule("5/minute name login", path="/login", methods={"POST"}),
        # Callers with an API key get a budget per key too; keyless callers skip this rule.
        Rule("1000/hour name per-key", header="X-Api-Key", missing="skip"),
        # Trying out a tighter limit: counted, logged, in the headers, never enforced.
        Rule("2/second burst 5 name items-trial", path="/items", shadow=True),
    ],
    trusted_proxies=[cidr for cidr in os.environ.get("TRUSTED_PROXIES", "").split(",") if cidr],
)


if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app)
