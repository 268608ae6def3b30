"""Fixtures of the service tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.service.serve_process import Serve


@pytest.fixture
def processes() -> Iterator[list[Serve]]:
    started: list[Serve] = []
    yield started
    for process in started:
        process.close()
