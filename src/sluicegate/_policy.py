"""``Policy``: how much a key may do per period, and by which algorithm.

A policy is an immutable value. Its text form is a small ASCII grammar::

    <limit> ("/" | " per ") [<count>]<unit> [burst <n>] [algorithm <name>] [name <name>]

    100/minute    100/min    100/m    100 per minute    5/10s    1500/250ms
    10/second burst 50       100/hour algorithm sliding-log name search

``str(policy)`` produces that grammar again, so ``Policy.parse(str(p)) == p``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from functools import lru_cache

from ._errors import PolicyError, describe

__all__ = ["ALGORITHMS", "MAX_LIMIT", "Policy"]

#: Algorithm name -> one-letter code used inside store keys (keys stay short).
ALGORITHMS = {"gcra": "g", "sliding-log": "l", "sliding-window": "w", "fixed-window": "f"}
#: Lua numbers are doubles; staying far below 2**53 keeps every count exact in Redis.
MAX_LIMIT = 1_000_000_000
_MIN_PERIOD_MS = 1
_MAX_PERIOD_MS = 366 * 86_400_000

_UNITS_MS = {"ms": 1, "second": 1_000, "minute": 60_000, "hour": 3_600_000, "day": 86_400_000}
_UNIT_ALIASES = {
    "ms": "ms", "millisecond": "ms", "milliseconds": "ms",
    "s": "second", "sec": "second", "secs": "second", "second": "second", "seconds": "second",
    "m": "minute", "min": "minute", "mins": "minute", "minute": "minute", "minutes": "minute",
    "h": "hour", "hr": "hour", "hrs": "hour", "hour": "hour", "hours": "hour",
    "d": "day", "day": "day", "days": "day",
}  # fmt: skip
_SHORT_UNIT = {"ms": "ms", "second": "s", "minute": "m", "hour": "h", "day": "d"}
_RATE = re.compile(r"([0-9]+)\s*(?:/|\s+per\s+)\s*([0-9]*)\s*([a-z]+)", re.ASCII | re.IGNORECASE)
_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}", re.ASCII)


@dataclass(frozen=True, slots=True)
class Policy:
    """``limit`` units per ``period`` seconds for one key, decided by ``algorithm``.

    - ``limit``: units admitted per period, an int in 1..1,000,000,000.
    - ``period``: seconds, a whole number of milliseconds between 1 ms and 366 days.
    - ``burst``: ``gcra`` only, the bucket size (how much may be spent at once); default ``limit``.
    - ``algorithm``: ``gcra`` (default), ``sliding-log``, ``sliding-window`` or ``fixed-window``.
    - ``name``: optional label for metrics and headers (``[A-Za-z0-9_.-]{1,64}``). Policies that
      differ only by name keep separate state.
    """

    limit: int
    period: float
    burst: int | None = None
    algorithm: str = "gcra"
    name: str | None = None
    period_ms: int = field(init=False, repr=False, compare=False)
    capacity: int = field(init=False, repr=False, compare=False)
    key_id: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_count("limit", self.limit)
        period_ms = _check_period(self.period)
        if self.algorithm not in ALGORITHMS:
            raise PolicyError(f"unknown algorithm {describe(self.algorithm)}; expected one of {', '.join(ALGORITHMS)}")
        if self.burst is not None:
            if self.algorithm != "gcra":
                raise PolicyError(
                    f"burst belongs to the gcra algorithm; {self.algorithm} admits at most limit per period"
                )
            _check_count("burst", self.burst)
        if self.name is not None and not (isinstance(self.name, str) and _NAME.fullmatch(self.name)):
            raise PolicyError(f"name must match [A-Za-z0-9_.-]{{1,64}}; got {describe(self.name)}")
        capacity = self.burst if self.burst is not None else self.limit
        key_id = f"{ALGORITHMS[self.algorithm]}{self.limit}/{period_ms}"
        if self.algorithm == "gcra":
            key_id += f"b{capacity}"
        if self.name is not None:
            key_id += f"@{self.name}"
        object.__setattr__(self, "period", period_ms / 1000)
        object.__setattr__(self, "period_ms", period_ms)
        object.__setattr__(self, "capacity", capacity)
        object.__setattr__(self, "key_id", key_id)

    @classmethod
    def parse(
        cls,
        text: str,
        *,
        algorithm: str | None = None,
        burst: int | None = None,
        name: str | None = None,
    ) -> Policy:
        """Parse ``text`` (see the module docstring); keyword arguments fill what it leaves out."""
        if not isinstance(text, str):
            raise PolicyError(f"policy text must be a str; got {describe(text)}")
        try:
            return _parse(text, algorithm, burst, name)
        except TypeError:  # an unhashable keyword argument reached the cache
            raise PolicyError(
                f"invalid arguments for policy {describe(text)}: algorithm={describe(algorithm)}, "
                f"burst={describe(burst)}, name={describe(name)}"
            ) from None

    def __str__(self) -> str:
        text = f"{self.limit}/{_period_text(self.period_ms)}"
        if self.burst is not None:
            text += f" burst {self.burst}"
        if self.algorithm != "gcra":
            text += f" algorithm {self.algorithm}"
        if self.name is not None:
            text += f" name {self.name}"
        return text


def _check_count(what: str, value: object) -> None:
    # bool is an int in Python; True/False as a limit is always a mistake.
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_LIMIT:
        raise PolicyError(f"{what} must be an int in 1..{MAX_LIMIT:,}; got {describe(value)}")


def _check_period(period: object) -> int:
    if isinstance(period, bool) or not isinstance(period, int | float) or not math.isfinite(period):
        raise PolicyError(f"period must be a finite number of seconds; got {describe(period)}")
    period_ms = round(period * 1000)
    if not _MIN_PERIOD_MS <= period_ms <= _MAX_PERIOD_MS or period <= 0:
        raise PolicyError(f"period must be between 1 ms and 366 days; got {describe(period)} s")
    # Relative as well as absolute: past ~1.7e10 ms a whole-ms period's float round trip drifts by
    # more than 1e-6 and was wrongly refused.
    if not math.isclose(period * 1000, period_ms, rel_tol=1e-15, abs_tol=1e-6):
        raise PolicyError(f"period must be a whole number of milliseconds; got {describe(period)} s")
    return period_ms


def _period_text(period_ms: int) -> str:
    for unit in ("day", "hour", "minute", "second"):
        count, rest = divmod(period_ms, _UNITS_MS[unit])
        if rest == 0:
            return unit if count == 1 else f"{count}{_SHORT_UNIT[unit]}"
    return f"{period_ms}ms"


@lru_cache(maxsize=1024)
def _parse(text: str, algorithm: str | None, burst: int | None, name: str | None) -> Policy:
    stripped = text.strip()
    match = _RATE.match(stripped)
    if match is None:
        raise PolicyError(
            f"cannot parse policy {describe(text)}; expected e.g. '100/minute', '5/10s' or '10 per second burst 20'"
        )
    limit_text, count_text, unit_text = match.groups()
    unit = _UNIT_ALIASES.get(unit_text.lower())
    if unit is None:
        raise PolicyError(
            f"unknown unit {describe(unit_text)} in policy {describe(text)}; "
            "expected one of ms, second, minute, hour, day"
        )
    count = int(count_text) if count_text else 1
    if count == 0:
        raise PolicyError(f"period must be positive in policy {describe(text)}")
    options: dict[str, object] = {"burst": burst, "algorithm": algorithm, "name": name}
    words = stripped[match.end() :].split()
    if len(words) % 2:
        raise PolicyError(f"option {describe(words[-1])} in policy {describe(text)} has no value")
    for option, value in zip(words[::2], words[1::2], strict=True):
        option = option.lower()
        if option not in options:
            raise PolicyError(
                f"unknown option {describe(option)} in policy {describe(text)}; expected burst, algorithm or name"
            )
        parsed: int | str = value
        if option == "burst":
            if not value.isascii() or not value.isdigit():
                raise PolicyError(f"burst must be a whole number in policy {describe(text)}; got {describe(value)}")
            parsed = int(value)
        given = options[option]
        if given is not None and given != parsed:
            raise PolicyError(
                f"policy {describe(text)} says {option} {describe(parsed)} but the argument says {describe(given)}"
            )
        options[option] = parsed
    # Build the period in ms with integers so "7/3s" is exact; Policy validates the range.
    period = count * _UNITS_MS[unit] / 1000
    return Policy(
        int(limit_text),
        period,
        burst=options["burst"],  # type: ignore[arg-type]  # Policy validates the types
        algorithm="gcra" if options["algorithm"] is None else options["algorithm"],  # type: ignore[arg-type]
        name=options["name"],  # type: ignore[arg-type]
    )
