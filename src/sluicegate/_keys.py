"""The one place store keys are built.

Layout: ``<prefix>:<policy key id>:{<encoded user key>}`` (and ``…}:n`` for a second key).

- The user key is the Redis Cluster hash tag, so all state of one user key (every policy, and
  both keys of a sliding log) lives in one slot and a script may touch it atomically.
- The encoding percent-escapes ``%``, ``{``, ``}``, whitespace and control characters. A user
  key therefore never contains a brace (it cannot steer the hash tag or end it early), and the
  encoding is injective: two different user keys never share state.
- Nothing in sluicegate builds a key from user input anywhere else, and no key is used as a
  pattern (``KEYS``/``SCAN``), so ``*?[]`` need no escaping.
"""

from __future__ import annotations

import re
from functools import lru_cache

from ._errors import ConfigError, InvalidKeyError, describe
from ._policy import Policy

__all__ = ["MAX_KEY_BYTES", "check_prefix", "encode_key", "state_keys"]

#: A user key longer than this (UTF-8 bytes) is refused: Redis memory and log lines stay bounded.
MAX_KEY_BYTES = 4096
_ESCAPED = re.compile(r"[%{}\x00-\x20\x7f]")
_PREFIX = re.compile(r"[A-Za-z0-9_.:\-]{1,128}", re.ASCII)


def _escape(match: re.Match[str]) -> str:
    return f"%{ord(match.group()):02X}"


def encode_key(key: object) -> str:
    """Validate a user key and return its escaped form (raises ``InvalidKeyError``)."""
    if not isinstance(key, str):
        raise InvalidKeyError(f"key must be a non-empty str; got {type(key).__name__} {describe(key)}")
    if not key:
        raise InvalidKeyError("key must be a non-empty str; got ''")
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise InvalidKeyError(f"key is not valid UTF-8 ({exc.reason} at index {exc.start}): {describe(key)}") from None
    if size > MAX_KEY_BYTES:
        raise InvalidKeyError(f"key is {size} UTF-8 bytes, more than the {MAX_KEY_BYTES} allowed: {describe(key)}")
    return _ESCAPED.sub(_escape, key)


def check_prefix(prefix: object) -> str:
    """Validate the namespace every key starts with."""
    if not isinstance(prefix, str) or not _PREFIX.fullmatch(prefix):
        raise ConfigError(f"prefix must match [A-Za-z0-9_.:-]{{1,128}}; got {describe(prefix)}")
    return prefix


def state_keys(prefix: str, policy: Policy, key: object) -> tuple[str, ...]:
    """The store keys holding ``policy``'s state for user ``key`` (validated here)."""
    if not isinstance(key, str):
        encode_key(key)  # raises the InvalidKeyError that names the bad key
    return _state_keys(prefix, policy, key)


# Small on purpose: it saves hot keys 0.2 µs each, and every entry is objects the garbage
# collector walks in each full collection (65,536 entries cost a serving process 35 ms pauses).
@lru_cache(maxsize=1024)
def _state_keys(prefix: str, policy: Policy, key: str) -> tuple[str, ...]:
    base = f"{prefix}:{policy.key_id}:{{{encode_key(key)}}}"
    if policy.algorithm == "sliding-log":
        return (base, base + ":n")
    return (base,)
