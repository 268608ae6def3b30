"""Rate-limit rules in the envoyproxy/ratelimit YAML format, validated and compiled for lookups.

A config is one YAML file per domain (a directory holds several domains; a domain defined in two
files is an error naming both). An envoyproxy/ratelimit config loads unchanged and decides the same::

    domain: messaging
    descriptors:
      - key: message_type
        value: marketing
        descriptors:
          - key: to_number
            rate_limit: {unit: day, requests_per_unit: 5}
      - key: to_number
        rate_limit: {unit: day, requests_per_unit: 100, name: per_number}

Per descriptor: ``key`` (required), ``value`` (optional; a trailing ``*`` matches by prefix),
``rate_limit``, nested ``descriptors``, ``shadow_mode`` (the rule's denials are reported but not
enforced), ``detailed_metric``, ``value_to_metric`` and ``share_threshold`` (wildcards only: every
value the wildcard matches shares one counter). ``rate_limit`` holds ``unit`` (second, minute,
hour, day, week, month = 30 days, year = 365 days; any case), ``requests_per_unit`` (0 denies
every request, as the reference's README uses it to block an address), ``unit_multiplier``
(the window is that many units), ``unlimited: true`` (matched, never limited), ``name`` and
``replaces: [{name: ...}]`` (when a request matches both, the replacing rule applies and the
replaced one is not checked at all). Unquoted numbers and booleans in ``domain``, ``key`` and
``value`` are strings as written (``value: 500`` matches "500"), as the reference reads them.

sluicegate's extensions (a config using them no longer loads in envoyproxy/ratelimit):

- in ``rate_limit``: ``algorithm`` (gcra, sliding-log, sliding-window, fixed-window), ``burst``
  (gcra only) and ``fallback`` (local, allow, deny, raise: what the service decides with when
  the store fails; absent means the service's default);
- a top-level ``sluicegate`` mapping: ``algorithm`` and ``fallback`` (defaults for the file's
  rules) and ``shadow_mode: true`` (every rule of the domain reports without enforcing). Shadow
  mode for every domain at once is a setting of the service, as the reference's ``SHADOW_MODE``.

The default algorithm is ``fixed-window``, windows aligned to multiples of the period since the
epoch: what the reference does, so an Envoy config keeps its behaviour. Pick ``gcra`` or
``sliding-log`` per rule (or per file) for limits that hold across window edges too.

Matching, as the reference does it: a request descriptor is a list of ``(key, value)`` entries,
walked down the tree one entry per level. At each level the entry matches the descriptor with
that key and exactly that value first, else the first wildcard of that key (in file order) whose
prefix the value starts with, else the descriptor with that key and no value. A descriptor's rule
applies only if the request ends at it: a longer request goes on to the nested descriptors, a
shorter one matches nothing; the walk never backtracks (an exact match without the nested level
the request needs does not fall back to the key-only sibling). Unlike the reference, which joins
key and value with ``_`` before comparing, keys and values are compared as a pair, so key
``a_b`` with value ``c`` never matches key ``a`` with value ``b_c``.

Each matched rule becomes a ``Check``: the rule, its ``Policy`` and a rate-limit key built from
the domain and the request's own entries (so every value a key-only or wildcard rule matches
counts on its own, as in the reference). The key is ``domain|key=value|key=value`` with ``%``,
``|``, ``=`` and ``*`` percent-escaped: different requests never share a key. A
``share_threshold`` wildcard puts its prefix and a bare ``*`` in place of the value. A request
descriptor carrying its own limit (rls.proto ``RateLimitDescriptor.limit``) gets that limit,
whatever the config says, as in the reference.

Policy names (metric labels, one per rule, never carrying request values): ``<domain>.<name>``
for a named rule, else ``<domain>.<key>_<value>.<key>...`` (the reference's stats path), with
characters outside ``[A-Za-z0-9_.-]`` turned into ``_``; a name over 64 characters or shared by
two rules is cut and given a digest of the rule's path, so names are unique and stable.

Input is bounded: files of at most 1 MiB, 1,000 files, YAML nested at most 64 levels and
descriptors 16 levels deep, 100,000 YAML nodes per file (aliases count each time used).
Stricter than the reference, on purpose: unknown fields are reported where they are (``unit``
beside ``key`` is an error, not ignored), ``requests_per_unit`` must be given (the reference
reads a missing one as 0: every request denied) and not together with ``unlimited``, an empty
``rate_limit:`` is refused (the reference leaves the descriptor unlimited), a replaced name must
exist in the domain, ``quota_mode`` and ``metadata`` are refused (not implemented),
a YAML file holds one document, domains are never merged (no ``MERGE_DOMAIN_CONFIG``), and
a request for an unknown domain raises ``UnknownDomainError`` (the reference answers OK).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Final, TypeGuard, cast

import yaml
from yaml.events import Event
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from .._errors import ConfigError, InputError, describe
from .._policy import ALGORITHMS, MAX_LIMIT, Policy
from ..limiter import FALLBACKS, Fallback

__all__ = [
    "DEFAULT_ALGORITHM",
    "EXAMPLE_SOURCE",
    "UNITS",
    "Check",
    "ConfigIssue",
    "Descriptor",
    "DescriptorError",
    "DescriptorLike",
    "LimitOverride",
    "RateLimitConfig",
    "RateLimitConfigError",
    "Rule",
    "UnknownDomainError",
    "load",
    "load_example",
    "loads",
]

#: Unit -> seconds, as envoyproxy/ratelimit counts them (a month is 30 days, a year 365).
UNITS: Final = {
    "second": 1,
    "minute": 60,
    "hour": 3_600,
    "day": 86_400,
    "week": 604_800,
    "month": 2_592_000,
    "year": 31_536_000,
}
DEFAULT_ALGORITHM: Final = "fixed-window"
MAX_FILE_BYTES: Final = 1 << 20
MAX_FILES: Final = 1_000
MAX_YAML_DEPTH: Final = 64
MAX_DESCRIPTOR_DEPTH: Final = 16
MAX_NODES: Final = 100_000
MAX_ISSUES: Final = 100  # per file; a broken file says enough long before this
_MAX_PERIOD_S: Final = 366 * 86_400  # Policy's bound
_NAME_LENGTH: Final = 64
EXAMPLE_SOURCE: Final = "<built-in example>"

_TOP_FIELDS = ("domain", "descriptors", "sluicegate")
_EXTENSION_FIELDS = ("shadow_mode", "algorithm", "fallback")
_DESCRIPTOR_FIELDS = (
    "key",
    "value",
    "rate_limit",
    "descriptors",
    "shadow_mode",
    "detailed_metric",
    "value_to_metric",
    "share_threshold",
)
_RATE_LIMIT_FIELDS = (
    "unit",
    "requests_per_unit",
    "unit_multiplier",
    "unlimited",
    "name",
    "replaces",
    "algorithm",
    "burst",
    "fallback",
)
_UNSUPPORTED = {
    "quota_mode": "envoyproxy/ratelimit's quota mode is not supported by sluicegate",
    "metadata": "envoyproxy/ratelimit's response metadata is not supported by sluicegate",
}
_STR, _NULL, _BOOL, _INT = (f"tag:yaml.org,2002:{t}" for t in ("str", "null", "bool", "int"))
_MERGE = "tag:yaml.org,2002:merge"
_KIND = {"str": "a string", "int": "an int", "float": "a float", "bool": "a bool", "null": "null"}
_UNIT_LIST = ", ".join(UNITS)
_ESCAPES = str.maketrans({"%": "%25", "|": "%7C", "=": "%3D", "*": "%2A"})
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9_.\-]", re.ASCII)


# --- errors --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    """One problem in a config: ``file:line: field: message`` (no line for a file-level one)."""

    file: str
    line: int | None
    field: str
    message: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{where}: {self.field}: {self.message}"


class RateLimitConfigError(ConfigError):
    """The config is invalid; ``issues`` lists every problem found, one per line in the message."""

    def __init__(self, issues: Sequence[ConfigIssue]) -> None:
        self.issues = tuple(issues)
        super().__init__("\n".join(str(issue) for issue in self.issues))


class UnknownDomainError(InputError):
    """A request names a domain no loaded file defines (the service answers 400)."""


class DescriptorError(InputError):
    """A request descriptor is malformed: entries that are not (str, str) pairs, an empty key, a
    bad limit override or hits_addend (the service answers 400)."""


# --- the compiled config -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, eq=False)
class Rule:
    """One ``rate_limit``, compiled.

    ``policy`` is None for an unlimited rule and for ``requests_per_unit: 0`` (``always_over``);
    both are decided without the store. ``path`` is the config's ``(key, value)`` path, the value
    None for a key-only descriptor (a wildcard keeps its ``*``). ``metric_name`` is the policy's
    name: unique, stable, ``[A-Za-z0-9_.-]{1,64}``.
    """

    domain: str
    path: tuple[tuple[str, str | None], ...]
    metric_name: str
    policy: Policy | None
    requests_per_unit: int
    unit: str | None
    unit_multiplier: int
    unlimited: bool
    shadow_mode: bool
    name: str | None
    replaces: frozenset[str]
    detailed_metric: bool
    algorithm: str
    fallback: Fallback | None
    source: str

    @property
    def always_over(self) -> bool:
        """``requests_per_unit: 0``: every request is over the limit."""
        return self.policy is None and not self.unlimited

    @property
    def period(self) -> int | None:
        """The window in seconds (None when unlimited)."""
        return None if self.unit is None else UNITS[self.unit] * self.unit_multiplier

    def __repr__(self) -> str:
        limit = "unlimited" if self.unlimited else f"{self.requests_per_unit}/{self.period}s"
        return f"<Rule {self.metric_name} {limit} {self.algorithm} at {self.source}>"


@dataclass(frozen=True, slots=True)
class LimitOverride:
    """A request descriptor's own limit (rls.proto ``RateLimitDescriptor.limit``)."""

    requests_per_unit: int
    unit: str


@dataclass(frozen=True, slots=True)
class Descriptor:
    """One request descriptor: ``entries`` and, optionally, its own limit and hits_addend (which
    overrides the request's). A plain sequence of ``(key, value)`` pairs works as well."""

    entries: tuple[tuple[str, str], ...]
    limit: LimitOverride | None = None
    hits_addend: int | None = None


DescriptorLike = Descriptor | Sequence[tuple[str, str]]
Entries = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class Check:
    """What one request descriptor asks of the limiter.

    ``descriptor`` is its index in the request, ``key`` the rate-limit key, ``cost`` the hits it
    adds, ``shadow`` whether a denial is only reported (the rule's or the domain's shadow mode).
    """

    descriptor: int
    rule: Rule
    key: str
    cost: int
    shadow: bool

    @property
    def unlimited(self) -> bool:
        return self.rule.unlimited

    @property
    def policy(self) -> Policy | None:
        return self.rule.policy

    @property
    def item(self) -> tuple[str, Policy, int]:
        """``(key, policy, cost)`` for ``Limiter.hit_all``; only when ``policy`` is not None."""
        if self.rule.policy is None:
            raise ValueError(f"rule {self.rule.metric_name} needs no store (unlimited or 0 requests per unit)")
        return (self.key, self.rule.policy, self.cost)


class _Node:
    """One level of a domain's descriptor tree."""

    __slots__ = ("default", "exact", "rule", "share_prefix", "wildcards")

    def __init__(self, rule: Rule | None = None, share_prefix: str | None = None) -> None:
        self.rule = rule
        self.share_prefix = share_prefix
        self.exact: dict[tuple[str, str], _Node] = {}
        self.wildcards: dict[str, tuple[tuple[str, _Node], ...]] = {}
        self.default: dict[str, _Node] = {}


@dataclass(frozen=True, slots=True, eq=False)
class _Domain:
    name: str
    escaped: str
    root: _Node
    shadow_mode: bool
    algorithm: str
    fallback: Fallback | None
    source: str


class RateLimitConfig:
    """Every loaded domain, immutable. ``match`` finds one descriptor's rule; ``checks`` turns a
    request's descriptors into what the limiter must check."""

    __slots__ = ("_domains", "_rules")

    def __init__(self, domains: Iterable[_Domain], rules: Iterable[Rule]) -> None:
        self._domains = {domain.name: domain for domain in domains}
        self._rules = tuple(rules)

    def __repr__(self) -> str:
        return f"<RateLimitConfig domains={list(self.domains)} rules={len(self.rules)}>"

    @property
    def domains(self) -> tuple[str, ...]:
        """The domains' names, sorted."""
        return tuple(sorted(self._domains))

    @property
    def rules(self) -> tuple[Rule, ...]:
        """Every rule of every domain, in file order."""
        return self._rules

    def source(self, domain: str) -> str:
        """The file that defines ``domain``."""
        return self._get(domain).source

    def match(self, domain: str, entries: Sequence[tuple[str, str]]) -> Rule | None:
        """The rule for one request descriptor, or None when no rule matches it."""
        found = _walk(self._get(domain).root, _entries(entries, 0))
        return None if found is None else found[0]

    def checks(
        self, domain: str, descriptors: Sequence[DescriptorLike], *, hits_addend: int = 1
    ) -> tuple[Check | None, ...]:
        """One entry per descriptor, in order: its ``Check``, or None when no rule matches it or
        its rule is replaced by another matched rule's ``replaces``.

        ``hits_addend`` is the request's (0 means 1, as in rls.proto); a ``Descriptor``'s own
        ``hits_addend`` wins. An unknown domain raises ``UnknownDomainError``; a malformed
        descriptor ``DescriptorError``.
        """
        zone = self._get(domain)
        default_cost = _cost(hits_addend, "hits_addend", allow_zero=True)
        found: list[tuple[Rule, str, int] | None] = []
        replaced: set[str] = set()
        for index, raw in enumerate(descriptors):
            entries, override, cost = _descriptor(raw, index, default_cost)
            if override is not None:
                rule: Rule | None = _override_rule(zone.name, zone.algorithm, zone.fallback, override)
                shared: dict[int, str] | None = None
            else:
                walked = _walk(zone.root, entries)
                rule, shared = (None, None) if walked is None else walked
            if rule is None:
                found.append(None)
                continue
            replaced.update(rule.replaces)
            found.append((rule, _key(zone.escaped, entries, shared), cost))
        checks: list[Check | None] = []
        for index, hit in enumerate(found):
            # As the reference: an unlimited rule stays unlimited even when replaced.
            if hit is None or (hit[0].name in replaced and not hit[0].unlimited):
                checks.append(None)
            else:
                rule, key, cost = hit
                checks.append(Check(index, rule, key, cost, rule.shadow_mode or zone.shadow_mode))
        return tuple(checks)

    def _get(self, domain: str) -> _Domain:
        zone = self._domains.get(domain) if isinstance(domain, str) else None
        if zone is None:
            known = ", ".join(self.domains) or "none"
            raise UnknownDomainError(f"unknown domain {describe(domain)}; loaded: {known}")
        return zone


# --- matching and keys ---------------------------------------------------------------------------


def _walk(node: _Node, entries: Sequence[tuple[str, str]]) -> tuple[Rule, dict[int, str] | None] | None:
    """Walk ``entries`` down the tree (see the module docstring): the rule and the share_threshold
    prefixes by entry index, or None when no rule matches."""
    rule: Rule | None = None
    shared: dict[int, str] | None = None
    last = len(entries) - 1
    for index, (key, value) in enumerate(entries):
        found = node.exact.get((key, value))
        if found is None:
            for prefix, candidate in node.wildcards.get(key, ()):
                if value.startswith(prefix):
                    found = candidate
                    if candidate.share_prefix is not None:
                        shared = shared or {}
                        shared[index] = candidate.share_prefix
                    break
        if found is None:
            found = node.default.get(key)
        if found is None:
            break
        if index == last:
            rule = found.rule
        if not (found.exact or found.wildcards or found.default):
            break
        node = found
    return None if rule is None else (rule, shared)


def _key(domain: str, entries: Sequence[tuple[str, str]], shared: dict[int, str] | None) -> str:
    parts = [domain]
    for index, (key, value) in enumerate(entries):
        if shared is not None and index in shared:
            parts.append(f"{key.translate(_ESCAPES)}={shared[index].translate(_ESCAPES)}*")
        else:
            parts.append(f"{key.translate(_ESCAPES)}={value.translate(_ESCAPES)}")
    return "|".join(parts)


def is_sequence(value: object) -> TypeGuard[Sequence[Any]]:
    """A list, a tuple or any other ``Sequence`` but a string: what a request's descriptors and
    entries must be. Lists and tuples, what every transport passes, are recognized first: the
    ``Sequence`` ABC check is several times slower."""
    return isinstance(value, (list, tuple)) or (not isinstance(value, (str, bytes)) and isinstance(value, Sequence))


def _entries(raw: object, index: int) -> Entries:
    if not is_sequence(raw):
        raise DescriptorError(f"descriptors[{index}]: expected a list of (key, value) entries; got {describe(raw)}")
    entries = []
    for position, entry in enumerate(raw):
        ok = isinstance(entry, (list, tuple)) and len(entry) == 2
        if not ok or not isinstance(entry[0], str) or not isinstance(entry[1], str) or not entry[0]:
            raise DescriptorError(
                f"descriptors[{index}].entries[{position}]: expected (key, value) strings, the key not empty; "
                f"got {describe(entry)}"
            )
        entries.append((entry[0], entry[1]))
    return tuple(entries)


def _descriptor(raw: object, index: int, default_cost: int) -> tuple[Entries, LimitOverride | None, int]:
    if not isinstance(raw, Descriptor):
        return _entries(raw, index), None, default_cost
    entries = _entries(raw.entries, index)
    cost = default_cost if raw.hits_addend is None else _cost(raw.hits_addend, f"descriptors[{index}].hits_addend")
    limit = raw.limit
    if limit is not None:
        unit = limit.unit.lower() if isinstance(limit.unit, str) else None
        count = limit.requests_per_unit
        if unit not in UNITS or isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= MAX_LIMIT:
            raise DescriptorError(
                f"descriptors[{index}].limit: expected requests_per_unit in 0..{MAX_LIMIT:,} and a unit "
                f"({_UNIT_LIST}); got {describe(count)} per {describe(limit.unit)}"
            )
        limit = LimitOverride(count, unit)
    return entries, limit, cost


def _cost(value: object, what: str, *, allow_zero: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not (0 if allow_zero else 1) <= value <= MAX_LIMIT:
        low = 0 if allow_zero else 1
        raise DescriptorError(f"{what} must be an int in {low}..{MAX_LIMIT:,}; got {describe(value)}")
    return max(value, 1)


@lru_cache(maxsize=1024)
def _override_rule(domain: str, algorithm: str, fallback: Fallback | None, limit: LimitOverride) -> Rule:
    """The rule for a descriptor carrying its own limit: applied whatever the config says, never
    in shadow mode of its own and never replaced (as in the reference)."""
    name = _UNSAFE_NAME.sub("_", f"{domain}.limit-override")
    if len(name) > _NAME_LENGTH:
        name = _fit(name, f"{domain}\0override")
    count, period = limit.requests_per_unit, UNITS[limit.unit]
    policy = None if count == 0 else Policy(count, period, algorithm=algorithm, name=name)
    return Rule(
        domain=domain,
        path=(),
        metric_name=name,
        policy=policy,
        requests_per_unit=limit.requests_per_unit,
        unit=limit.unit,
        unit_multiplier=1,
        unlimited=False,
        shadow_mode=False,
        name=None,
        replaces=frozenset(),
        detailed_metric=False,
        algorithm=algorithm,
        fallback=fallback,
        source="request descriptor limit",
    )


def _fit(name: str, identity: str) -> str:
    """``name`` cut to the policy-name length with a digest of ``identity`` to stay unique."""
    digest = hashlib.sha256(identity.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"{name[: _NAME_LENGTH - 9]}-{digest}"


# --- loading -------------------------------------------------------------------------------------


def load(path: str | os.PathLike[str]) -> RateLimitConfig:
    """Load a config file, or every ``*.yaml``/``*.yml`` file of a directory (one domain each).

    Raises ``RateLimitConfigError`` listing every problem found.
    """
    root = Path(path)
    shown = os.fspath(path)
    issues: list[ConfigIssue] = []
    if root.is_dir():
        try:
            files = sorted(
                entry
                for entry in root.iterdir()
                if entry.suffix.lower() in (".yaml", ".yml") and not entry.name.startswith(".") and entry.is_file()
            )
        except OSError as exc:
            issues.append(ConfigIssue(shown, None, "directory", exc.strerror or str(exc)))
            files = []
        if not files and not issues:
            issues.append(ConfigIssue(shown, None, "directory", "no .yaml or .yml files"))
        elif len(files) > MAX_FILES:
            issues.append(ConfigIssue(shown, None, "directory", f"{len(files):,} config files; at most {MAX_FILES:,}"))
            files = []
    elif root.exists():
        files = [root]
    else:
        issues.append(ConfigIssue(shown, None, "file", "no such file or directory"))
        files = []
    texts = []
    for file in files:
        source = str(file) if file is not root else shown
        text = _read(file, source, issues)
        if text is not None:
            texts.append((source, text))
    return _load(texts, issues)


def loads(text: str, *, source: str = "<config>") -> RateLimitConfig:
    """Load one domain from YAML ``text``; ``source`` names it in error messages."""
    issues: list[ConfigIssue] = []
    if len(text.encode("utf-8", "surrogatepass")) > MAX_FILE_BYTES:
        issues.append(ConfigIssue(source, None, "file", f"larger than {MAX_FILE_BYTES:,} bytes"))
        return _load([], issues)
    return _load([(source, text)], issues)


def load_example() -> RateLimitConfig:
    """The built-in example config (``sluicegate/service/example.yaml``), for ``serve`` without one."""
    text = resources.files("sluicegate.service").joinpath("example.yaml").read_text("utf-8")
    return loads(text, source=EXAMPLE_SOURCE)


def _read(file: Path, source: str, issues: list[ConfigIssue]) -> str | None:
    try:
        with file.open("rb") as stream:
            data = stream.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        issues.append(ConfigIssue(source, None, "file", exc.strerror or str(exc)))
        return None
    if len(data) > MAX_FILE_BYTES:
        issues.append(ConfigIssue(source, None, "file", f"larger than {MAX_FILE_BYTES:,} bytes"))
        return None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        issues.append(ConfigIssue(source, line, "file", f"not UTF-8 text (byte 0x{data[exc.start]:02x})"))
        return None


def _load(texts: Iterable[tuple[str, str]], issues: list[ConfigIssue]) -> RateLimitConfig:
    files: list[_File] = []
    owners: dict[str, _File] = {}
    for source, text in texts:
        parsed = _File(source)
        parsed.parse(text)
        issues.extend(parsed.issues)
        if parsed.domain is None:
            continue
        first = owners.setdefault(parsed.domain, parsed)
        if first is not parsed:
            issues.append(
                ConfigIssue(
                    source,
                    parsed.domain_line,
                    "domain",
                    f"duplicate domain {describe(parsed.domain)}; also defined in {first.source}:{first.domain_line}",
                )
            )
        files.append(parsed)
    if issues:
        raise RateLimitConfigError(issues)
    return _compile(files)


# --- compiling -----------------------------------------------------------------------------------


@dataclass(slots=True)
class _RuleSpec:
    path: tuple[tuple[str, str | None], ...]
    line: int
    requests_per_unit: int
    unit: str | None
    unit_multiplier: int
    unlimited: bool
    shadow_mode: bool
    detailed_metric: bool
    name: str | None
    replaces: list[tuple[str, int, str]]  # name, line, field
    algorithm: str
    burst: int | None
    fallback: Fallback | None


@dataclass(slots=True)
class _Spec:
    key: str
    value: str | None
    share_threshold: bool
    rule: _RuleSpec | None
    children: list[_Spec]


def _compile(files: Sequence[_File]) -> RateLimitConfig:
    specs = [(file, spec) for file in files for spec in file.rules]
    names = _metric_names([(file.domain or "", spec) for file, spec in specs])
    rules: dict[int, Rule] = {}
    for (file, spec), name in zip(specs, names, strict=True):
        rules[id(spec)] = _rule(file, spec, name)
    domains = []
    for file in files:
        root = _Node()
        _plant(root, file.descriptors, rules)
        domain = file.domain or ""
        escaped = domain.translate(_ESCAPES)
        domains.append(_Domain(domain, escaped, root, file.shadow_mode, file.algorithm, file.fallback, file.source))
    return RateLimitConfig(domains, rules.values())


def _rule(file: _File, spec: _RuleSpec, name: str) -> Rule:
    policy = None
    if not spec.unlimited and spec.requests_per_unit > 0 and spec.unit is not None:
        period = UNITS[spec.unit] * spec.unit_multiplier
        policy = Policy(spec.requests_per_unit, period, burst=spec.burst, algorithm=spec.algorithm, name=name)
    return Rule(
        domain=file.domain or "",
        path=spec.path,
        metric_name=name,
        policy=policy,
        requests_per_unit=spec.requests_per_unit,
        unit=spec.unit,
        unit_multiplier=spec.unit_multiplier,
        unlimited=spec.unlimited,
        shadow_mode=spec.shadow_mode,
        name=spec.name,
        replaces=frozenset(replaced for replaced, _, _ in spec.replaces),
        detailed_metric=spec.detailed_metric,
        algorithm=spec.algorithm,
        fallback=spec.fallback,
        source=f"{file.source}:{spec.line}",
    )


def _plant(node: _Node, specs: Sequence[_Spec], rules: dict[int, Rule]) -> None:
    wildcards: dict[str, list[tuple[str, _Node]]] = {}
    for spec in specs:
        value = spec.value
        wildcard = value is not None and value.endswith("*")
        rule = None if spec.rule is None else rules[id(spec.rule)]
        share = value[:-1] if value is not None and wildcard and spec.share_threshold else None
        child = _Node(rule, share)
        if value is None:
            node.default[spec.key] = child
        else:
            node.exact[(spec.key, value)] = child  # a request may carry the literal "foo*" too
            if wildcard:
                wildcards.setdefault(spec.key, []).append((value[:-1], child))
        _plant(child, spec.children, rules)
    node.wildcards = {key: tuple(found) for key, found in wildcards.items()}


def _metric_names(rules: Sequence[tuple[str, _RuleSpec]]) -> list[str]:
    """A unique, stable policy name per rule (see the module docstring)."""
    identities, bases = [], []
    for domain, spec in rules:
        path = ".".join(key if value is None else f"{key}_{value}" for key, value in spec.path)
        identities.append(json.dumps([domain, spec.path]))
        bases.append(_UNSAFE_NAME.sub("_", f"{domain}.{spec.name}" if spec.name else f"{domain}.{path}"))
    counts = Counter(bases)
    names = [
        base if len(base) <= _NAME_LENGTH and counts[base] == 1 else _fit(base, identity)
        for base, identity in zip(bases, identities, strict=True)
    ]
    if len(set(names)) != len(names):  # a plain name that happens to look like a digested one
        names = [_fit(base, identity) for base, identity in zip(bases, identities, strict=True)]
    return names


# --- parsing and validation ----------------------------------------------------------------------


class _TooDeep(Exception):
    def __init__(self, line: int | None) -> None:
        self.line = line


class _Stop(Exception):
    """Enough issues or nodes: stop reading this file."""


class _Loader(yaml.SafeLoader):
    """A SafeLoader whose composer (which recurses) refuses to nest deeper than MAX_YAML_DEPTH."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.depth = 0

    def compose_node(self, parent: Node | None, index: int) -> Node | None:
        self.depth += 1
        try:
            if self.depth > MAX_YAML_DEPTH:
                peek = cast("Callable[[], Event]", self.peek_event)
                mark = peek().start_mark
                raise _TooDeep(None if mark is None else mark.line + 1)
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def _line(node: Node) -> int:
    return int(node.start_mark.line) + 1


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _kind(node: Node) -> str:
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    return _KIND.get(node.tag.rpartition(":")[2], "a tagged value")


def _shown(node: Node) -> str:
    """A node as an error message quotes it: strings quoted, other scalars as written."""
    if not isinstance(node, ScalarNode):
        return _kind(node)
    if node.tag == _STR:
        return describe(node.value)
    text = str(node.value)
    return text if len(text) <= 64 else text[:61] + "..."


class _File:
    """One file's parse: its domain, rules and descriptor specs, and every issue found."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.issues: list[ConfigIssue] = []
        self.domain: str | None = None
        self.domain_line = 1
        self.shadow_mode = False
        self.algorithm = DEFAULT_ALGORITHM
        self.fallback: Fallback | None = None
        self.descriptors: list[_Spec] = []
        self.rules: list[_RuleSpec] = []
        self._nodes = 0
        self._loader: _Loader | None = None

    def parse(self, text: str) -> None:
        loader: _Loader | None = None
        try:
            try:
                loader = self._loader = _Loader(text)  # the reader checks every character here
                root = loader.get_single_node()
            except _TooDeep as deep:
                self.issue(deep.line, "yaml", f"nested deeper than {MAX_YAML_DEPTH} levels")
                return
            except yaml.MarkedYAMLError as exc:
                mark = exc.problem_mark or exc.context_mark
                problem = exc.problem or exc.context or "invalid YAML"
                if exc.problem and exc.context:  # "while parsing ...": after; "expected ...": before
                    whilst = exc.context.startswith("while")
                    problem = f"{problem} ({exc.context})" if whilst else f"{exc.context}; {problem}"
                self.issue(None if mark is None else mark.line + 1, "yaml", problem)
                return
            except yaml.YAMLError as exc:  # the reader: a character YAML does not allow
                position = getattr(exc, "position", None)
                line = text[:position].count("\n") + 1 if isinstance(position, int) else None
                self.issue(line, "yaml", str(exc).splitlines()[0] if str(exc) else "invalid YAML")
                return
            finally:
                if loader is not None:
                    loader.dispose()
            self.document(root)
        except _Stop:
            pass

    # --- issues and budgets ----------------------------------------------------------------------

    def issue(self, where: Node | int | None, field: str, message: str) -> None:
        line = _line(where) if isinstance(where, Node) else where
        self.issues.append(ConfigIssue(self.source, line, field, message))
        if len(self.issues) >= MAX_ISSUES:
            self.issues.append(ConfigIssue(self.source, line, field, f"{MAX_ISSUES} problems; stopped reading"))
            raise _Stop

    def spend(self, node: Node) -> None:
        self._nodes += 1
        if self._nodes > MAX_NODES:
            self.issue(node, "yaml", f"more than {MAX_NODES:,} nodes (an alias counts each time it is used)")
            raise _Stop

    # --- generic shapes --------------------------------------------------------------------------

    def fields(self, node: Node, path: str, allowed: Sequence[str], what: str) -> dict[str, Node] | None:
        """A mapping's fields by name, after reporting non-string, duplicate and unknown ones."""
        if not isinstance(node, MappingNode):
            self.issue(node, path or "document", f"expected {what}; got {_kind(node)}")
            return None
        found: dict[str, Node] = {}
        lines: dict[str, int] = {}
        for key, value in self.pairs(node, path, 0):
            if not isinstance(key, ScalarNode) or key.tag != _STR:
                self.issue(key, path or "document", f"field names must be strings; got {_shown(key)}")
                continue
            name = str(key.value)
            field = _join(path, name)
            if name in lines:
                self.issue(key, field, f"duplicate field; first at line {lines[name]}")
            elif name in _UNSUPPORTED:
                self.issue(key, field, _UNSUPPORTED[name])
            elif name not in allowed:
                self.issue(key, field, self.unknown(name, path, allowed))
            else:
                found[name] = value
            lines.setdefault(name, _line(key))
        return found

    def pairs(self, node: MappingNode, path: str, depth: int) -> list[tuple[Node, Node]]:
        """The mapping's own pairs, then those it merges (``<<``) that it does not set itself."""
        own: list[tuple[Node, Node]] = []
        merged: list[tuple[Node, Node]] = []
        for key, value in node.value:
            self.spend(value)
            if key.tag != _MERGE:
                own.append((key, value))
                continue
            sources = value.value if isinstance(value, SequenceNode) else [value]
            for source in sources:
                if not isinstance(source, MappingNode):
                    self.issue(source, path or "document", f"<< merges a mapping; got {_kind(source)}")
                elif depth >= 8:
                    self.issue(source, path or "document", "<< merges nested more than 8 deep")
                else:
                    merged.extend(self.pairs(source, path, depth + 1))
        names = {key.value for key, _ in own if isinstance(key, ScalarNode)}
        for key, value in merged:
            if not (isinstance(key, ScalarNode) and key.value in names):
                own.append((key, value))
                if isinstance(key, ScalarNode):
                    names.add(key.value)
        return own

    @staticmethod
    def unknown(name: str, path: str, allowed: Sequence[str]) -> str:
        if not path and name in _EXTENSION_FIELDS:
            return f"unknown field here; {name} for the whole domain goes in the sluicegate block"
        if name in _RATE_LIMIT_FIELDS and "rate_limit" in allowed:
            return f"unknown field here; {name} belongs in rate_limit"
        if name in _DESCRIPTOR_FIELDS and "unit" in allowed:
            return f"unknown field here; {name} belongs beside key, not in rate_limit"
        return f"unknown field; expected one of {', '.join(allowed)}"

    def text(self, node: Node, field: str) -> str | None:
        """A scalar as written (``value: 500`` is "500", as the reference reads it); null is "".
        None (reported) for a list or mapping."""
        if isinstance(node, ScalarNode):
            return "" if node.tag == _NULL else str(node.value)
        self.issue(node, field, f"expected a string; got {_kind(node)}")
        return None

    def flag(self, node: Node | None, field: str) -> bool | None:
        """A bool; null or absent is False (as the reference reads it); None (reported) if neither."""
        if node is None or (isinstance(node, ScalarNode) and node.tag == _NULL):
            return False
        if isinstance(node, ScalarNode) and node.tag == _BOOL:
            return bool(self.loader.construct_yaml_bool(node))
        self.issue(node, field, f"expected true or false; got {_shown(node)}")
        return None

    def number(self, node: Node, field: str, low: int, high: int) -> int | None:
        if isinstance(node, ScalarNode) and node.tag == _INT:
            value = int(self.loader.construct_yaml_int(node))
            if low <= value <= high:
                return value
        self.issue(node, field, f"must be a whole number in {low}..{high:,}; got {_shown(node)}")
        return None

    def choice(self, node: Node, field: str, what: str, options: Iterable[str]) -> str | None:
        text = self.text(node, field)
        if text is None:
            return None
        options = tuple(options)
        if text not in options:
            self.issue(node, field, f"unknown {what} {describe(text)}; expected {', '.join(options)}")
            return None
        return text

    @property
    def loader(self) -> _Loader:
        assert self._loader is not None
        return self._loader

    # --- the document ----------------------------------------------------------------------------

    def document(self, root: Node | None) -> None:
        if root is None:
            self.issue(1, "document", "empty; expected a mapping with domain and descriptors")
            return
        fields = self.fields(root, "", _TOP_FIELDS, "a mapping with domain and descriptors")
        if fields is None:
            return
        domain = fields.get("domain")
        if domain is None:
            self.issue(root, "domain", "missing; every config file names its domain")
        else:
            self.domain_line = _line(domain)
            name = self.text(domain, "domain")
            if name == "":
                self.issue(domain, "domain", "must not be empty")
            elif name is not None:
                self.domain = name
        extension = fields.get("sluicegate")
        if extension is not None:
            self.extension(extension)
        descriptors = fields.get("descriptors")
        if descriptors is not None:
            self.descriptors = self.level(descriptors, "descriptors", (), 1)
        if self.domain is not None:
            self.check_replaces()

    def extension(self, node: Node) -> None:
        fields = self.fields(node, "sluicegate", _EXTENSION_FIELDS, "a mapping of shadow_mode, algorithm, fallback")
        if not fields:
            return
        self.shadow_mode = bool(self.flag(fields.get("shadow_mode"), "sluicegate.shadow_mode"))
        if "algorithm" in fields:
            self.algorithm = self.choice(fields["algorithm"], "sluicegate.algorithm", "algorithm", ALGORITHMS) or (
                DEFAULT_ALGORITHM
            )
        if "fallback" in fields:
            fallback = self.choice(fields["fallback"], "sluicegate.fallback", "fallback", FALLBACKS)
            self.fallback = cast("Fallback | None", fallback)

    def level(self, node: Node, path: str, parents: tuple[tuple[str, str | None], ...], depth: int) -> list[_Spec]:
        if isinstance(node, ScalarNode) and node.tag == _NULL:
            return []
        if not isinstance(node, SequenceNode):
            self.issue(node, path, f"expected a list of descriptors; got {_kind(node)}")
            return []
        if depth > MAX_DESCRIPTOR_DEPTH:
            self.issue(node, path, f"descriptors nested deeper than {MAX_DESCRIPTOR_DEPTH} levels")
            return []
        specs: list[_Spec] = []
        seen: dict[tuple[str, str | None], int] = {}
        for index, item in enumerate(node.value):
            self.spend(item)
            field = f"{path}[{index}]"
            spec = self.descriptor(item, field, parents, depth)
            if spec is None:
                continue
            first = seen.get((spec.key, spec.value))
            if first is not None:
                what = f"key {describe(spec.key)}" + ("" if spec.value is None else f", value {describe(spec.value)}")
                self.issue(item, field, f"duplicate descriptor ({what}); the first is at line {first}")
                continue
            seen[(spec.key, spec.value)] = _line(item)
            specs.append(spec)
        return specs

    def descriptor(
        self, node: Node, field: str, parents: tuple[tuple[str, str | None], ...], depth: int
    ) -> _Spec | None:
        fields = self.fields(node, field, _DESCRIPTOR_FIELDS, "a descriptor mapping (key, value, rate_limit, ...)")
        if fields is None:
            return None
        key = None
        if "key" not in fields:
            self.issue(node, _join(field, "key"), "missing; every descriptor needs a key")
        else:
            key = self.text(fields["key"], _join(field, "key"))
            if key == "":
                self.issue(fields["key"], _join(field, "key"), "must not be empty")
                key = None
            elif key is not None and key.endswith("*"):
                self.issue(fields["key"], _join(field, "key"), "a trailing * makes a wildcard of values only, not keys")
                key = None
        value = None
        if "value" in fields:
            value = self.text(fields["value"], _join(field, "value")) or None
        share = bool(self.flag(fields.get("share_threshold"), _join(field, "share_threshold")))
        if share and not (value or "").endswith("*"):
            self.issue(
                fields["share_threshold"],
                _join(field, "share_threshold"),
                f"only for wildcard values (ending in *); the value is {describe(value)}",
            )
        shadow = bool(self.flag(fields.get("shadow_mode"), _join(field, "shadow_mode")))
        detailed = bool(self.flag(fields.get("detailed_metric"), _join(field, "detailed_metric")))
        self.flag(fields.get("value_to_metric"), _join(field, "value_to_metric"))  # metrics only
        path = (*parents, ("" if key is None else key, value))
        rule = None
        if "rate_limit" in fields:
            rule = self.rate_limit(fields["rate_limit"], _join(field, "rate_limit"), path, shadow, detailed)
            if rule is not None and key is not None:
                rule.line = _line(node)  # the descriptor's line: where a reader looks for the rule
                self.rules.append(rule)  # before the nested ones: rules stay in file order
        children: list[_Spec] = []
        if "descriptors" in fields:
            children = self.level(fields["descriptors"], _join(field, "descriptors"), path, depth + 1)
        return None if key is None else _Spec(key, value, share, rule, children)

    def rate_limit(
        self, node: Node, field: str, path: tuple[tuple[str, str | None], ...], shadow: bool, detailed: bool
    ) -> _RuleSpec | None:
        if isinstance(node, ScalarNode) and node.tag == _NULL:
            self.issue(node, field, "empty; give unit and requests_per_unit, or unlimited: true (or remove it)")
            return None
        fields = self.fields(node, field, _RATE_LIMIT_FIELDS, "a mapping (unit, requests_per_unit, ...)")
        if fields is None:
            return None
        broken = len(self.issues)
        unlimited = self.flag(fields.get("unlimited"), _join(field, "unlimited"))
        unit: str | None = None
        count = 0
        multiplier = 1
        if unlimited is None:
            pass  # reported; whether unit and requests_per_unit belong here is anyone's guess
        elif unlimited:
            for extra in ("unit", "requests_per_unit", "unit_multiplier", "burst"):
                if extra in fields:
                    self.issue(fields[extra], _join(field, extra), "must not be set when unlimited is true")
        else:
            if "unit" not in fields:
                self.issue(node, _join(field, "unit"), f"missing; expected {_UNIT_LIST}")
            else:
                text = self.text(fields["unit"], _join(field, "unit"))
                if text is not None and text.lower() not in UNITS:
                    message = f"unknown unit {describe(text)}; expected {_UNIT_LIST}"
                    self.issue(fields["unit"], _join(field, "unit"), message)
                elif text is not None:
                    unit = text.lower()
            if "requests_per_unit" not in fields:
                self.issue(node, _join(field, "requests_per_unit"), "missing (0 denies every request)")
            else:
                count = self.number(fields["requests_per_unit"], _join(field, "requests_per_unit"), 0, MAX_LIMIT) or 0
            if "unit_multiplier" in fields:
                found = self.number(fields["unit_multiplier"], _join(field, "unit_multiplier"), 1, MAX_LIMIT)
                multiplier = found or 1
                if found is not None and unit is not None and UNITS[unit] * found > _MAX_PERIOD_S:
                    self.issue(
                        fields["unit_multiplier"],
                        _join(field, "unit_multiplier"),
                        f"{found} {unit}s is longer than the 366 days sluicegate supports",
                    )
        name = None
        if "name" in fields:
            name = self.text(fields["name"], _join(field, "name")) or None
        replaces = self.replaces(fields.get("replaces"), _join(field, "replaces"), name)
        algorithm = self.algorithm
        if "algorithm" in fields:
            chosen = self.choice(fields["algorithm"], _join(field, "algorithm"), "algorithm", ALGORITHMS)
            algorithm = chosen or algorithm
        burst = None
        if "burst" in fields and not unlimited:
            burst = self.number(fields["burst"], _join(field, "burst"), 1, MAX_LIMIT)
            if burst is not None and algorithm != "gcra":
                message = f"belongs to algorithm gcra; this rule uses {algorithm}"
                self.issue(fields["burst"], _join(field, "burst"), message)
                burst = None
        fallback = self.fallback
        if "fallback" in fields:
            chosen = self.choice(fields["fallback"], _join(field, "fallback"), "fallback", FALLBACKS)
            fallback = cast("Fallback | None", chosen)
        if len(self.issues) > broken:
            return None
        return _RuleSpec(
            path=path,
            line=_line(node),
            requests_per_unit=count,
            unit=unit,
            unit_multiplier=multiplier,
            unlimited=bool(unlimited),
            shadow_mode=shadow,
            detailed_metric=detailed,
            name=name,
            replaces=replaces,
            algorithm=algorithm,
            burst=burst,
            fallback=fallback,
        )

    def replaces(self, node: Node | None, field: str, own: str | None) -> list[tuple[str, int, str]]:
        if node is None or (isinstance(node, ScalarNode) and node.tag == _NULL):
            return []
        if not isinstance(node, SequenceNode):
            self.issue(node, field, f"expected a list of {{name: ...}}; got {_kind(node)}")
            return []
        found = []
        for index, item in enumerate(node.value):
            self.spend(item)
            entry = f"{field}[{index}]"
            fields = self.fields(item, entry, ("name",), "a mapping with a name")
            if fields is None:
                continue
            if "name" not in fields:
                self.issue(item, _join(entry, "name"), "missing; name the rule this one replaces")
                continue
            name = self.text(fields["name"], _join(entry, "name"))
            if name == "":
                self.issue(fields["name"], _join(entry, "name"), "must not be empty; name the rule this one replaces")
            elif name is not None and name == own:
                self.issue(fields["name"], _join(entry, "name"), f"a rule cannot replace itself ({describe(name)})")
            elif name is not None:
                found.append((name, _line(fields["name"]), _join(entry, "name")))
        return found

    def check_replaces(self) -> None:
        names = {rule.name for rule in self.rules if rule.name is not None}
        for rule in self.rules:
            for name, line, field in rule.replaces:
                if name not in names:
                    self.issue(line, field, f"no rule named {describe(name)} in domain {describe(self.domain)}")
