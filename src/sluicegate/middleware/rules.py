"""Which requests are limited, by which policies, and whose bucket they count against.

A ``Rule`` matches a request by path and method and names the identity it is counted by. The
choices, and why:

- **Paths** are matched after normalisation (``//a/./b/../c`` is ``/a/c``), so a request cannot
  slip past a rule, or into an exemption, by spelling its path differently from how the app's
  router will read it. ``path`` is a prefix that respects segments (``/api`` matches ``/api`` and
  ``/api/users``, never ``/apiary``); ``pattern`` is a regular expression that must match the
  whole normalised path. Regexes rather than globs: a glob's ``*`` either crosses ``/`` or not,
  and both surprise someone.
- **Every matching rule applies**, not only the first: a global per-client limit and a tighter
  one on ``/login`` both hold for a login request without repeating one in the other. All the
  enforced policies of a request are decided in one ``hit_all``, all or nothing: denied by one,
  nothing is consumed on the others.
- **Identity** is the client's address (through trusted proxies, IPv6 per /64 by default), a
  request header, or a function of the request. Header and function identities are hashed
  (SHA-256) before they become store keys: keys stay short, and API keys never sit readable in
  Redis. Each rule's keys carry the rule's name, so two rules never share a counter.
- **A missing identity** (the header absent or empty, the function returning None) must not put
  every such request in one shared bucket, which anyone could drain for everyone. With
  ``missing="client"`` (the default) the request is counted by its client address instead, in a
  bucket of its own; with ``missing="skip"`` the rule does not apply to it (for rules meant only
  for identified callers, next to a per-address rule for the rest). A request whose client
  address is unknown too (no socket peer, as on some Unix-socket setups) is not limited by
  that rule, and a warning is logged once.
- **Shadow rules** are decided and counted like enforced ones but never deny: the response
  passes, still carries the rule's headers, and each would-be denial is logged and handed to
  ``on_shadow``. A shadow rule is decided on its own (after the enforced ones allowed), so trying
  a rule out never changes what the enforced rules consume.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from .._decision import Decision
from .._errors import ConfigError, describe
from .._forwarded import address_key
from .._policy import Policy

__all__ = ["KeyFunc", "Request", "Rule", "normalize_path"]

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+", re.ASCII)  # RFC 9110 field names and methods
_MAX_NAME_CHARS = 128


@dataclass(frozen=True, slots=True)
class Request:
    """What a key function or ``on_shadow`` hook sees of a request, whichever server it came in on.

    ``path`` is as received (rules match its normalised form). ``headers`` maps lower-case
    field names to values (several lines joined by ``", "``).
    ``client`` is the resolved client address (trusted proxies applied), None if unknown.
    ``raw`` is the ASGI scope or WSGI environ, for anything else (``raw.get("user")``).
    """

    method: str
    path: str
    headers: Mapping[str, str]
    client: str | None
    raw: Mapping[str, Any] = field(repr=False)


#: Gives a request's identity, or None when it has none.
KeyFunc = Callable[[Request], str | None]


@dataclass(frozen=True, slots=True, eq=False)
class Rule:
    """Limit requests under ``path`` (and matching ``pattern``, and with one of ``methods``) by
    ``policies``, counted per identity. See the module docstring for the reasoning.

    - ``policies``: one policy or several (``Policy`` or text like ``"100/minute"``); all must
      admit the request.
    - ``path``: a segment-wise prefix of the normalised path; ``"/"`` matches every path.
    - ``pattern``: a regex (text or compiled) that must match the whole normalised path.
    - ``methods``: e.g. ``{"POST", "PUT"}``; None matches every method, ``OPTIONS`` included.
    - ``header``: count per value of this request header instead of per client address.
    - ``key``: count per ``key(request)`` instead (not together with ``header``).
    - ``missing``: ``"client"`` or ``"skip"``, what a request without that identity gets.
    - ``exempt``: paths (segment-wise prefixes) this rule leaves alone, e.g. ``("/health",)``.
    - ``shadow``: decide and count, never deny; ``on_shadow(decision, request)`` hears denials.
    - ``cost``: units one request spends, at most every policy's capacity.
    - ``ipv6_prefix``: client addresses are counted per IPv6 network of this size.
    - ``name``: names the rule in its keys and logs; the default is built from methods, path,
      pattern, header and policies (``"POST /login: 5/minute"``). Changing it (or what it
      defaults from) starts the rule's counters afresh.
    """

    policies: Policy | str | Sequence[Policy | str]
    path: str = "/"
    pattern: str | re.Pattern[str] | None = None
    methods: Iterable[str] | None = None
    header: str | None = None
    key: KeyFunc | None = None
    missing: Literal["client", "skip"] = "client"
    exempt: Iterable[str] = ()
    shadow: bool = False
    on_shadow: Callable[[Decision, Request], object] | None = None
    cost: int = 1
    ipv6_prefix: int = 64
    name: str | None = None
    # Resolved once in __post_init__; the request path reads only these.
    _policies: tuple[Policy, ...] = field(init=False, repr=False)
    _path: str = field(init=False, repr=False)
    _pattern: re.Pattern[str] | None = field(init=False, repr=False)
    _methods: frozenset[str] | None = field(init=False, repr=False)
    _header: str | None = field(init=False, repr=False)
    _exempt: tuple[str, ...] = field(init=False, repr=False)
    _id: str = field(init=False, repr=False)

    def __post_init__(self) -> None:
        resolve = object.__setattr__  # the dataclass is frozen
        resolve(self, "_policies", _policies(self.policies))
        resolve(self, "_path", _prefix("path", self.path))
        resolve(self, "_pattern", _pattern(self.pattern))
        resolve(self, "_methods", _methods(self.methods))
        resolve(self, "_exempt", tuple(_prefix("exempt path", p) for p in _strings("exempt", self.exempt)))
        if self.header is not None and not (isinstance(self.header, str) and _TOKEN.fullmatch(self.header)):
            raise ConfigError(f"header must be an HTTP field name like 'X-Api-Key'; got {describe(self.header)}")
        resolve(self, "_header", None if self.header is None else self.header.lower())
        if self.key is not None and (self.header is not None or not callable(self.key)):
            raise ConfigError(f"key must be a function of the request, without header=; got {describe(self.key)}")
        if self.missing not in ("client", "skip"):
            raise ConfigError(f"missing must be 'client' or 'skip'; got {describe(self.missing)}")
        if self.on_shadow is not None and not callable(self.on_shadow):
            raise ConfigError(f"on_shadow must be callable; got {describe(self.on_shadow)}")
        _check_cost(self.cost, self._policies)
        address_key("::", ipv6_prefix=self.ipv6_prefix)  # validates the prefix with one message
        resolve(self, "_id", self.name if self.name is not None else self._default_name())
        if not (isinstance(self._id, str) and 0 < len(self._id) <= _MAX_NAME_CHARS and self._id.isprintable()):
            raise ConfigError(
                f"name must be printable text of 1..{_MAX_NAME_CHARS} characters; got {describe(self.name)}"
            )

    @property
    def id(self) -> str:
        """The rule's name as used in keys and logs (``name``, or the default built from the rule)."""
        return self._id

    def matches(self, method: str, path: str) -> bool:
        """Whether this rule applies to ``method`` on the (already normalised) ``path``."""
        if self._methods is not None and method not in self._methods:
            return False
        if not _under(path, self._path) or any(_under(path, prefix) for prefix in self._exempt):
            return False
        return self._pattern is None or self._pattern.fullmatch(path) is not None

    def identity(self, request: Request) -> str | None:
        """The key this rule counts ``request`` under, or None when it does not apply to it."""
        if self.key is not None or self._header is not None:
            value = self.key(request) if self.key is not None else request.headers.get(self._header or "")
            if value is not None and not isinstance(value, str):
                raise TypeError(f"rule {self._id!r}: key function returned {describe(value)}; expected str or None")
            if value:
                kind = "key" if self.key is not None else f"header:{self._header}"
                return self._scoped(f"{kind}:{_digest(value)}")
            if self.missing == "skip":
                return None
        if request.client is None:
            return None
        return self._scoped(f"client:{address_key(request.client, ipv6_prefix=self.ipv6_prefix)}")

    @property
    def resolved_policies(self) -> tuple[Policy, ...]:
        """``policies`` as a tuple of ``Policy``."""
        return self._policies

    def _scoped(self, identity: str) -> str:
        # The length prefix keeps the encoding injective whatever the rule's name contains.
        return f"{len(self._id)}:{self._id}|{identity}"

    def _default_name(self) -> str:
        methods = ",".join(sorted(self._methods)) if self._methods is not None else "*"
        pattern = "" if self._pattern is None else f" ~{self._pattern.pattern}"
        by = "" if self._header is None else f" by {self._header}"
        policies = ", ".join(str(policy) for policy in self._policies)
        return f"{methods} {self._path}{pattern}{by}: {policies}"[:_MAX_NAME_CHARS]


def normalize_path(path: str) -> str:
    """``path`` with empty and dot segments resolved (RFC 3986 §5.2.4) and repeated slashes
    collapsed; a trailing slash is kept. ``"//a/./b/../c/"`` is ``"/a/c/"``."""
    segments: list[str] = []
    raw = path.split("/")
    for segment in raw:
        if segment in ("", "."):
            continue
        if segment == "..":
            if segments:
                segments.pop()
            continue
        segments.append(segment)
    normal = "/" + "/".join(segments)
    if segments and raw[-1] in ("", ".", ".."):
        normal += "/"
    return normal


# --- validation -------------------------------------------------------------------------------


def _policies(given: object) -> tuple[Policy, ...]:
    entries = (given,) if isinstance(given, Policy | str) else given
    if not isinstance(entries, Sequence) or not entries:
        raise ConfigError(f"policies must be a policy or a non-empty sequence of them; got {describe(given)}")
    resolved = []
    for entry in entries:
        if isinstance(entry, str):
            entry = Policy.parse(entry)
        if not isinstance(entry, Policy):
            raise ConfigError(f"policies must be Policy objects or policy text; got {describe(entry)}")
        resolved.append(entry)
    return tuple(resolved)


def _strings(what: str, given: object) -> tuple[str, ...]:
    if isinstance(given, str) or not isinstance(given, Iterable):
        raise ConfigError(f"{what} must be a collection of str (not one str); got {describe(given)}")
    values = tuple(given)
    if not all(isinstance(value, str) for value in values):
        raise ConfigError(f"{what} must be a collection of str; got {describe(values)}")
    return values


def _prefix(what: str, path: object) -> str:
    if not isinstance(path, str) or not path.startswith("/"):
        raise ConfigError(f"{what} must start with '/'; got {describe(path)}")
    return normalize_path(path).rstrip("/") or "/"


def _pattern(pattern: object) -> re.Pattern[str] | None:
    if pattern is None or isinstance(pattern, re.Pattern):
        return pattern
    if not isinstance(pattern, str):
        raise ConfigError(f"pattern must be a regular expression; got {describe(pattern)}")
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ConfigError(f"pattern {describe(pattern)} is not a valid regular expression: {exc}") from None


def _methods(methods: object) -> frozenset[str] | None:
    if methods is None:
        return None
    values = _strings("methods", methods)
    if not values or not all(_TOKEN.fullmatch(method) for method in values):
        raise ConfigError(f"methods must be HTTP method names like 'GET'; got {describe(values)}")
    return frozenset(method.upper() for method in values)


def _check_cost(cost: object, policies: Sequence[Policy]) -> None:
    if isinstance(cost, bool) or not isinstance(cost, int) or cost < 1:
        raise ConfigError(f"cost must be a positive int; got {describe(cost)}")
    for policy in policies:
        if cost > policy.capacity:
            raise ConfigError(f"cost {cost} exceeds the capacity of policy '{policy}': it could never be allowed")


def _under(path: str, prefix: str) -> bool:
    return prefix == "/" or path == prefix or path.startswith(prefix + "/")


def _digest(value: str) -> str:
    # surrogatepass: a key function may return any str; hashing must not be where it fails.
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:32]
