"""Strict JSON in, envoyproxy/ratelimit's JSON out: the ``/json`` endpoint's request and response
in the protobuf JSON mapping of rls.proto (what ``protojson`` reads and writes).

Reading is stricter than Python's ``json``: UTF-8 only, no ``NaN``/``Infinity``/``1e999``, no
duplicate keys, no unknown fields (a typo must not silently mean "no limit"), nesting bounded.
Both the JSON names and the proto names of a field are accepted (``hitsAddend``/``hits_addend``),
as protojson does. Every error names the field: ``descriptors[1].entries[0].value: ...``.

Writing follows protojson: lowerCamelCase names in field-number order, enums as names, zero
values left out, a ``Duration`` as a string of seconds with 0, 3, 6 or 9 fractional digits.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Final

from .._errors import describe
from .._policy import MAX_LIMIT
from .config import Descriptor, DescriptorError, LimitOverride
from .service import MAX_DESCRIPTORS, MAX_ENTRIES, RateLimitResponse

__all__ = ["BadJson", "duration", "envoy_request", "envoy_response", "loads_strict"]

MAX_DEPTH: Final = 32
UNITS: Final = ("SECOND", "MINUTE", "HOUR", "DAY", "MONTH", "YEAR", "WEEK")
_UNIT_NUMBERS: Final = {1: "second", 2: "minute", 3: "hour", 4: "day", 5: "month", 6: "year", 7: "week"}


class BadJson(DescriptorError):
    """The body is not the JSON we accept (the message names the field, if any)."""


def _reject_constant(name: str) -> object:
    raise BadJson(f"body: {name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise BadJson(f"body: number {describe(text)} is out of range")
    return value


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    found: dict[str, object] = {}
    for key, value in pairs:
        if key in found:
            raise BadJson(f"body: duplicate key {describe(key)}")
        found[key] = value
    return found


def loads_strict(body: bytes) -> object:
    """Parse a request body (see the module docstring); raises ``BadJson``."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadJson(f"body: not UTF-8 (byte {exc.start})") from None
    if _depth(text) > MAX_DEPTH:
        raise BadJson(f"body: nested deeper than {MAX_DEPTH} levels")
    try:
        return json.loads(text, parse_constant=_reject_constant, parse_float=_finite, object_pairs_hook=_no_duplicates)
    except json.JSONDecodeError as exc:
        raise BadJson(f"body: malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except RecursionError:  # pragma: no cover - _depth stops it first
        raise BadJson("body: nested too deeply") from None


def _depth(text: str) -> int:
    """The deepest nesting of brackets outside strings, in one cheap pass (a body of 64 KiB of
    ``[`` must cost a 400, not a ``RecursionError``)."""
    if text.count("[") + text.count("{") <= MAX_DEPTH:
        return 0
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
            if deepest > MAX_DEPTH:
                break
        elif char in "]}":
            depth -= 1
    return deepest


# --- reading: rls.proto RateLimitRequest --------------------------------------------------------


def _fields(value: object, where: str, allowed: dict[str, str]) -> dict[str, object]:
    """A JSON object's fields by proto name; ``allowed`` maps JSON and proto names to it."""
    if not isinstance(value, dict):
        raise BadJson(f"{where or 'body'}: expected an object; got {_kind(value)}")
    found: dict[str, object] = {}
    for key, item in value.items():
        name = allowed.get(key)
        if name is None:
            shown = key if len(key) <= 64 and key.isprintable() else describe(key)
            raise BadJson(f"{_join(where, shown)}: unknown field")
        if name in found:
            raise BadJson(f"{_join(where, name)}: given twice (as {_camel(name)} and {name})")
        found[name] = item
    return found


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def _names(*names: str) -> dict[str, str]:
    return {**{name: name for name in names}, **{_camel(name): name for name in names}}


_REQUEST = _names("domain", "descriptors", "hits_addend")
_DESCRIPTOR = _names("entries", "limit", "hits_addend")
_ENTRY = _names("key", "value")
_LIMIT = _names("requests_per_unit", "unit")


def envoy_request(body: object) -> tuple[str, list[Descriptor], int]:
    """``(domain, descriptors, hits_addend)`` from a parsed ``/json`` body."""
    fields = _fields(body, "", _REQUEST)
    domain = fields.get("domain", "")
    if not isinstance(domain, str):
        raise BadJson(f"domain: expected a string; got {_kind(domain)}")
    hits = _uint(fields.get("hits_addend", 0), "hits_addend")
    raw = fields.get("descriptors", [])
    if not isinstance(raw, list):
        raise BadJson(f"descriptors: expected a list; got {_kind(raw)}")
    if len(raw) > MAX_DESCRIPTORS:
        raise BadJson(f"descriptors: {len(raw)} descriptors; at most {MAX_DESCRIPTORS}")
    descriptors = []
    for index, item in enumerate(raw):
        where = f"descriptors[{index}]"
        parts = _fields(item, where, _DESCRIPTOR)
        entries_raw = parts.get("entries", [])
        if not isinstance(entries_raw, list):
            raise BadJson(f"{where}.entries: expected a list; got {_kind(entries_raw)}")
        if len(entries_raw) > MAX_ENTRIES:
            raise BadJson(f"{where}.entries: {len(entries_raw)} entries; at most {MAX_ENTRIES}")
        entries: list[tuple[str, str]] = []
        for position, entry in enumerate(entries_raw):
            at = f"{where}.entries[{position}]"
            pair = _fields(entry, at, _ENTRY)
            key, value = pair.get("key", ""), pair.get("value", "")
            if not isinstance(key, str):
                raise BadJson(f"{at}.key: expected a string; got {_kind(key)}")
            if not isinstance(value, str):
                raise BadJson(f"{at}.value: expected a string; got {_kind(value)}")
            entries.append((key, value))
        limit = None
        if parts.get("limit") is not None:
            limit = _limit(parts["limit"], f"{where}.limit")
        own_hits = None
        if parts.get("hits_addend") is not None:
            own_hits = _uint(parts["hits_addend"], f"{where}.hits_addend") or None  # 0: the request's
        descriptors.append(Descriptor(tuple(entries), limit, own_hits))
    return domain, descriptors, hits


def _limit(value: object, where: str) -> LimitOverride:
    fields = _fields(value, where, _LIMIT)
    count = _uint(fields.get("requests_per_unit", 0), f"{where}.requests_per_unit")
    unit = fields.get("unit", "UNKNOWN")
    name = None
    if isinstance(unit, str) and unit.upper() in UNITS:
        name = unit.lower()
    elif isinstance(unit, int) and not isinstance(unit, bool):
        name = _UNIT_NUMBERS.get(unit)
    if name is None:
        raise BadJson(f"{where}.unit: expected one of {', '.join(UNITS)}; got {describe(unit)}")
    return LimitOverride(count, name)


def _uint(value: object, where: str) -> int:
    """A uint32/uint64 as protojson reads it: a JSON number or a decimal string."""
    if isinstance(value, str) and value.isascii() and value.isdigit():
        value = int(value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_LIMIT:
        raise BadJson(f"{where}: expected an integer in 0..{MAX_LIMIT:,}; got {describe(value)}")
    return value


def _join(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def _kind(value: object) -> str:
    kinds = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    return kinds.get(type(value), "a number")


# --- writing: rls.proto RateLimitResponse -------------------------------------------------------


def duration(seconds: float) -> str:
    """A ``google.protobuf.Duration`` in protojson: ``"12s"``, ``"0.500s"``, ``"1.000250s"``."""
    micros = max(round(seconds * 1_000_000), 0)
    whole, fraction = divmod(micros, 1_000_000)
    if fraction == 0:
        return f"{whole}s"
    if fraction % 1000 == 0:
        return f"{whole}.{fraction // 1000:03d}s"
    return f"{whole}.{fraction:06d}s"


def envoy_response(response: RateLimitResponse) -> dict[str, object]:
    """The protojson form of ``response`` (as envoyproxy/ratelimit's ``/json`` answers)."""
    statuses: list[dict[str, object]] = []
    for status in response.statuses:
        item: dict[str, object] = {"code": status.code}
        if status.limit is not None:
            count, unit, name = status.limit
            limit: dict[str, object] = {}
            if name:
                limit["name"] = name
            if count:
                limit["requestsPerUnit"] = count
            limit["unit"] = unit
            item["currentLimit"] = limit
            if status.limit_remaining:
                item["limitRemaining"] = status.limit_remaining
            item["durationUntilReset"] = duration(status.duration_until_reset)
        statuses.append(item)
    body: dict[str, object] = {"overallCode": response.overall_code, "statuses": statuses}
    if response.headers:
        body["responseHeadersToAdd"] = [{"key": key, "value": value} for key, value in response.headers]
    return body


def entries_of(value: object, where: str) -> Sequence[tuple[str, str]]:
    """A ``/v1/check`` descriptor: ``{"key": "value", ...}`` (in order) or ``[["key", "value"], ...]``."""
    if isinstance(value, dict):
        pairs = list(value.items())
    elif isinstance(value, list):
        pairs = []
        for index, pair in enumerate(value):
            if not (isinstance(pair, list) and len(pair) == 2):
                raise BadJson(f"{where}[{index}]: expected a [key, value] pair; got {_kind(pair)}")
            pairs.append((pair[0], pair[1]))
    else:
        raise BadJson(f"{where}: expected an object of key: value or a list of [key, value]; got {_kind(value)}")
    checked = []
    for index, (key, item) in enumerate(pairs):
        if not isinstance(key, str):  # a list's [5, "x"]; an object's keys are always strings
            raise BadJson(f"{where}[{index}]: a key must be a string; got {_kind(key)}")
        if not isinstance(item, str):
            raise BadJson(f"{where}[{index}]: the value of {describe(key)} must be a string; got {_kind(item)}")
        checked.append((key, item))
    return checked
