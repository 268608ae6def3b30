"""The example apps run and limit as their docstrings say (on the real clock, well inside a window)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import httpx

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"sluicegate_example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_fastapi_example() -> None:
    app = load("fastapi_app").app
    transport = httpx.ASGITransport(app=app, client=("198.51.100.7", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        item = await http.get("/items/1")
        health = await http.get("/health")
        logins = [(await http.post("/login")).status_code for _ in range(6)]
        denied = await http.post("/login")
    assert item.json() == {"item_id": 1}
    assert item.headers["ratelimit-policy"].startswith('"per-client";q=100;w=60, "items-trial";q=2;w=1')
    assert "ratelimit" not in health.headers
    assert logins == [200] * 5 + [429]
    assert denied.headers["content-type"] == "application/problem+json"
    assert denied.json()["violated-policies"] == ["login"]


def test_flask_example() -> None:
    client = load("flask_app").app.test_client()
    item = client.get("/items/1", environ_base={"REMOTE_ADDR": "198.51.100.7"})
    logins = [client.post("/login", environ_base={"REMOTE_ADDR": "198.51.100.7"}).status_code for _ in range(6)]
    assert item.json == {"item_id": 1}
    assert item.headers["X-RateLimit-Limit"] == "100"
    assert logins == [200] * 5 + [429]
