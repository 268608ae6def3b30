"""Limiters on a fake clock for the middleware tests, and a store that is down."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

import sluicegate
from sluicegate.stores import Item
from tests.conftest import FakeClock


@pytest.fixture
def limiter(clock: FakeClock) -> sluicegate.Limiter:
    return sluicegate.Limiter("memory://", clock=clock, registry=None)


@pytest.fixture
def async_limiter(clock: FakeClock) -> sluicegate.AsyncLimiter:
    return sluicegate.AsyncLimiter("memory://", clock=clock, registry=None)


class DownStore:
    """A store whose every decision fails, as a Redis that refuses connections does."""

    def decide(self, items: Sequence[Item], now: int | None, *, commit: bool) -> list[Any]:
        raise sluicegate.StoreError("connection refused", kind="connection")

    def reset(self, keys: Sequence[str]) -> None:
        pass

    def close(self) -> None:
        pass


class AsyncDownStore:
    """``DownStore`` for ``AsyncLimiter``."""

    async def decide(self, items: Sequence[Item], now: int | None, *, commit: bool) -> list[Any]:
        raise sluicegate.StoreError("connection refused", kind="connection")

    async def reset(self, keys: Sequence[str]) -> None:
        pass

    async def aclose(self) -> None:
        pass
