"""The exceptions sluicegate raises.

Over the limit is a result (``Decision.allowed is False``), never an exception.
Everything sluicegate raises on purpose is a ``SluicegateError``::

    SluicegateError
    ├── InputError (also ValueError)        the caller passed something unusable
    │   ├── PolicyError                     a limit, period, burst, algorithm or policy text
    │   ├── InvalidKeyError                 a key: empty, not a str, too long, not UTF-8
    │   ├── CostError                       a cost: not a positive int, or above the capacity
    │   └── ConfigError                     a store URL or limiter option
    └── StoreError                          the store failed (never the caller's fault)

Messages quote the offending input through :func:`describe`, so a hostile or huge value is
never echoed unbounded.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

__all__ = [
    "ConfigError",
    "CostError",
    "InputError",
    "InvalidKeyError",
    "PolicyError",
    "SluicegateError",
    "StoreError",
    "describe",
    "redact_url",
]

_MAX_ECHO = 64


def describe(value: object) -> str:
    """``repr(value)``, cut to a bounded length so error messages stay small and printable."""
    text = repr(value)
    if len(text) > _MAX_ECHO:
        text = text[: _MAX_ECHO - 3] + "..."
    return text


def redact_url(url: str) -> str:
    """``url`` with its password replaced by ``***``, fit for logs and error messages."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
    except ValueError:  # a malformed netloc: show nothing of it rather than a secret
        return "<unparsable URL>"
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


class SluicegateError(Exception):
    """Base class of every error sluicegate raises on purpose."""


class InputError(SluicegateError, ValueError):
    """The caller passed a value sluicegate cannot use."""


class PolicyError(InputError):
    """A policy's limit, period, burst, algorithm, name or text is invalid."""


class InvalidKeyError(InputError):
    """A rate-limit key is empty, not a str, too long, or not encodable as UTF-8."""


class CostError(InputError):
    """A cost is not a positive int, or exceeds what the policy can ever admit at once."""


class ConfigError(InputError):
    """A store URL or a limiter option is invalid."""


class StoreError(SluicegateError):
    """The store (Redis) failed or did not answer in time.

    ``kind`` is one of a small fixed set, safe to use as a metric label:
    ``timeout``, ``connection``, ``readonly``, ``oom``, ``busy``, ``noscript``, ``cluster``,
    ``pool`` (this process had no free connection: the store is not at fault), ``other``.
    ``refused`` is True when no connection could be made at all (the store is down, not slow).
    """

    KINDS = ("timeout", "connection", "readonly", "oom", "busy", "noscript", "cluster", "pool", "other")

    def __init__(self, message: str, *, kind: str = "other", refused: bool = False) -> None:
        super().__init__(message)
        self.kind = kind if kind in self.KINDS else "other"
        self.refused = refused
