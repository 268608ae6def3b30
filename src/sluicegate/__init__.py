"""sluicegate: exact, atomic, one-round-trip rate limiting on Redis and in memory."""

from __future__ import annotations

from ._decision import Decision
from ._errors import (
    ConfigError,
    CostError,
    InputError,
    InvalidKeyError,
    PolicyError,
    SluicegateError,
    StoreError,
)
from ._policy import Policy
from .limiter import AsyncLimiter, Limiter

__version__ = "0.1.0"

__all__ = [
    "AsyncLimiter",
    "ConfigError",
    "CostError",
    "Decision",
    "InputError",
    "InvalidKeyError",
    "Limiter",
    "Policy",
    "PolicyError",
    "SluicegateError",
    "StoreError",
]
