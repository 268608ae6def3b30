"""The ``sluicegate`` command: ``demo`` shows the four algorithms side by side, ``check`` asks
for one decision.

Exit codes (for scripts): 0 ok, 1 a sluicegate error (bad policy, store down), 2 a usage error,
3 ``check`` was throttled (``inspect``: would be), 130 interrupted.

Adding a subcommand: write ``_add_<name>(commands, store_options)`` that registers its parser
with ``run=<function taking the parsed Namespace and returning an exit code>``, and call it from
``build_parser``.
"""

from __future__ import annotations

import argparse
import bisect
import json
import math
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TextIO

from . import Decision, Limiter, Policy, SluicegateError, StoreError, __version__
from ._errors import redact_url

__all__ = ["build_parser", "main"]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_THROTTLED = 3
EXIT_INTERRUPTED = 130
_EXIT_CODES_HELP = """\
exit codes:
  0    ok (check: allowed; inspect: would be allowed)
  1    error: bad input, store unreachable
  2    usage error
  3    throttled (check; inspect: would be)
  130  interrupted
"""

REDIS_URL_ENV = "SLUICEGATE_REDIS_URL"
DEMO_PREFIX = "sluicegate-demo"
DEMO_POLICIES = (
    "5/second burst 10",
    "10/2s algorithm sliding-log",
    "10/2s algorithm sliding-window",
    "10/2s algorithm fixed-window",
)
_MEMORY_CHECK_NOTE = "sluicegate: note: memory:// keeps nothing between runs; pass --redis URL for shared state"
_WINDOWED = ("sliding-window", "fixed-window")
_US = 1_000_000

Command = Callable[[argparse.Namespace], int]
if TYPE_CHECKING:  # argparse's class is generic only to type checkers
    SubParsers = argparse._SubParsersAction[argparse.ArgumentParser]


# --- entry point ---------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``) and return its exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, --version and usage errors: return the code, not raise
        return exit_.code if isinstance(exit_.code, int) else EXIT_USAGE
    command: Command = args.run
    try:
        return command(args)
    except StoreError as exc:
        return _fail(f"store {redact_url(_store_url(args))}: {exc}")
    except SluicegateError as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # e.g. `sluicegate demo | head`: the reader left; that is not an error
        _silence_stdout()
        return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sluicegate",
        description="Exact, atomic rate limiting on Redis and in memory.",
        epilog=_EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,  # keeps the exit code table as written
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    store_options = _store_options()
    _add_demo(commands, store_options)
    _add_check(commands, store_options)
    _add_inspect(commands, store_options)
    _add_config(commands, store_options)
    _add_serve(commands, store_options)
    return parser


def _store_options() -> argparse.ArgumentParser:
    """Options every command that talks to a store shares (an argparse parent parser)."""
    options = argparse.ArgumentParser(add_help=False)
    group = options.add_argument_group("store")
    group.add_argument(
        "--redis",
        metavar="URL",
        help=f"Redis URL (redis://, rediss://, unix://); default: ${REDIS_URL_ENV}, else the in-memory store",
    )
    group.add_argument(
        "--timeout",
        type=_number_in(0, 60, "seconds", low_inclusive=False),
        default=0.5,
        metavar="SECONDS",
        help="give up on the store after this long (default: %(default)s)",
    )
    return options


def _store_url(args: argparse.Namespace) -> str:
    """--redis, else $SLUICEGATE_REDIS_URL, else memory://. An explicit --redis '' stays an error."""
    if args.redis is not None:
        return str(args.redis)
    return os.environ.get(REDIS_URL_ENV) or "memory://"


def _fail(message: str) -> int:
    print(f"sluicegate: error: {message}", file=sys.stderr)
    return EXIT_ERROR


def _silence_stdout() -> None:
    # Python flushes stdout at exit; with the pipe closed that flush would raise again.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout has no real file descriptor (tests, embedding)
        pass


def _number_in(low: float, high: float, unit: str, *, low_inclusive: bool = True) -> Callable[[str], float]:
    """An argparse ``type`` accepting a finite number in [low, high] (or (low, high])."""
    bounds = f"{'[' if low_inclusive else '('}{low:g}, {high:g}]"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        in_range = low <= value <= high if low_inclusive else low < value <= high
        if not in_range:  # NaN fails both comparisons, so it lands here too
            raise argparse.ArgumentTypeError(f"must be {unit} in {bounds}; got {text!r}")
        return value

    return parse


def _positive_int(text: str) -> int:
    if not text.isascii() or not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a positive whole number; got {text!r}")
    return int(text)


def _open_limiter(args: argparse.Namespace, *, prefix: str, clock: Callable[[], float] | None = None) -> Limiter:
    url = _store_url(args)
    # A shell user asked this store: a store failure is an error here, not a local guess.
    return Limiter(
        url,
        prefix=prefix,
        timeout=args.timeout,
        clock="server" if clock is None else clock,
        fallback="raise",
        registry=None,
    )


# --- check ---------------------------------------------------------------------------------------


def _add_check(commands: SubParsers, store_options: argparse.ArgumentParser) -> None:
    _add_decision_command(
        commands,
        store_options,
        "check",
        help="decide once: may KEY spend COST under POLICY now? (consumes it if so)",
        description="Decide once whether KEY may spend COST under POLICY now, and consume it if so. "
        "Exits 0 when allowed, 3 when throttled, 1 on error.",
        run=run_check,
    )


def _add_inspect(commands: SubParsers, store_options: argparse.ArgumentParser) -> None:
    _add_decision_command(
        commands,
        store_options,
        "inspect",
        help="show KEY's state under POLICY without consuming anything",
        description="Show what a hit of COST on KEY under POLICY would get now (remaining, reset_after, "
        "retry_after), without consuming anything. Exits 0 when it would be allowed, 3 when it would be "
        "throttled, 1 on error.",
        run=run_inspect,
    )


def _add_decision_command(
    commands: SubParsers,
    store_options: argparse.ArgumentParser,
    name: str,
    *,
    help: str,
    description: str,
    run: Callable[[argparse.Namespace], int],
) -> None:
    command = commands.add_parser(name, parents=[store_options], help=help, description=description)
    command.add_argument("key", metavar="KEY", help="the rate-limited key, e.g. user:42")
    command.add_argument("policy", metavar="POLICY", help="e.g. '100/minute' or '10/second burst 50'")
    command.add_argument("--cost", type=_positive_int, default=1, metavar="N", help="units to spend (default: 1)")
    command.add_argument("--prefix", default="sluicegate", help="store key prefix (default: %(default)s)")
    command.add_argument("--json", action="store_true", help="print one JSON object instead of key=value lines")
    command.set_defaults(run=run)


def run_check(args: argparse.Namespace) -> int:
    return _decide_once(args, consume=True)


def run_inspect(args: argparse.Namespace) -> int:
    return _decide_once(args, consume=False)


def _decide_once(args: argparse.Namespace, *, consume: bool) -> int:
    policy = Policy.parse(args.policy)
    with _open_limiter(args, prefix=args.prefix) as limiter:
        decide = limiter.hit if consume else limiter.peek
        decision = decide(args.key, policy, cost=args.cost)
    if _store_url(args).startswith("memory:"):
        print(_MEMORY_CHECK_NOTE, file=sys.stderr)
    fields = decision.as_dict()
    if args.json:
        print(json.dumps(fields))
    else:
        for field_name, value in fields.items():
            print(f"{field_name}={_plain(value)}")
    return EXIT_OK if decision.allowed else EXIT_THROTTLED


def _plain(value: object) -> str:
    """A value as a shell script reads it: booleans as true/false, like the JSON form."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# --- config check --------------------------------------------------------------------------------


def _add_config(commands: SubParsers, store_options: argparse.ArgumentParser) -> None:
    config = commands.add_parser(
        "config",
        help="work with rate-limit rule configs (the envoyproxy/ratelimit YAML format)",
        description="Work with rate-limit rule configs in the envoyproxy/ratelimit YAML format.",
    )
    actions = config.add_subparsers(title="actions", metavar="ACTION", required=True)
    check = actions.add_parser(
        "check",
        help="validate a config file or a directory of them",
        description="Load a config file, or every .yaml/.yml file of a directory (one domain each), as the "
        "service would. Prints 'ok: N domains, M rules' and exits 0, or prints every problem as "
        "FILE:LINE: FIELD: MESSAGE on stderr and exits 1.",
    )
    check.add_argument("path", metavar="FILE_OR_DIR", help="a config file or a directory of config files")
    check.set_defaults(run=run_config_check)


def run_config_check(args: argparse.Namespace) -> int:
    from .service.config import RateLimitConfigError, load  # PyYAML only for the commands that need it

    try:
        config = load(args.path)
    except RateLimitConfigError as exc:
        for issue in exc.issues:
            print(issue, file=sys.stderr)
        count = len(exc.issues)
        print(f"sluicegate: {args.path}: {count} problem{'s' * (count != 1)}", file=sys.stderr)
        return EXIT_ERROR
    domains, rules = len(config.domains), len(config.rules)
    print(f"ok: {domains} domain{'s' * (domains != 1)}, {rules} rule{'s' * (rules != 1)}")
    return EXIT_OK


# --- serve ---------------------------------------------------------------------------------------

#: serve's flags: (flag, Settings field, help). Each overrides its SLUICEGATE_* variable.
_SERVE_FLAGS = (
    ("--host", "host", "bind address (default: 127.0.0.1)"),
    ("--port", "port", "HTTP port (default: 8080; 0: any free port)"),
    ("--metrics-port", "metrics_port", "also serve /metrics alone on this port"),
    ("--grpc-port", "grpc_port", "serve Envoy's rate-limit gRPC API on this port"),
    ("--grpc-tls-cert", "grpc_tls_cert", "gRPC over TLS: the server certificate chain (PEM)"),
    ("--grpc-tls-key", "grpc_tls_key", "... and its private key (PEM)"),
    ("--grpc-tls-client-ca", "grpc_tls_client_ca", "mutual TLS: the CA that must sign client certificates"),
    ("--config", "config", "rule config file or directory (default: the built-in example)"),
    ("--redis", "redis_url", "store URL (default: memory://)"),
    ("--timeout", "timeout", "seconds a store call may take (default: 0.05)"),
    ("--fallback", "fallback", "when the store fails: local, allow, deny or raise (default: local)"),
    ("--prefix", "prefix", "store key prefix (default: sluicegate)"),
    ("--workers", "workers", "serving processes sharing the ports; more than 1 needs --redis (default: 1)"),
    ("--auth-token-file", "auth_token_file", "file holding the bearer token HTTP callers must send"),
    ("--trusted-proxies", "trusted_proxies", "comma-separated CIDRs whose X-Forwarded-For is believed"),
    ("--auth-domain", "auth_domain", "domain of /v1/auth requests (default: the config's only domain)"),
    ("--auth-descriptors", "auth_descriptors", "descriptors /v1/auth builds (default: remote_address)"),
    ("--auth-deny-status", "auth_deny_status", "/v1/auth status when throttled: 403 (nginx) or 429"),
    ("--log-format", "log_format", "text or json (default: text)"),
    ("--log-level", "log_level", "debug, info, warning or error (default: info)"),
)


def _add_serve(commands: SubParsers, store_options: argparse.ArgumentParser) -> None:
    # Not the shared store options: their defaults would override SLUICEGATE_* variables.
    serve = commands.add_parser(
        "serve",
        help="run the decision service (HTTP: /json, /v1/check, /v1/auth; gRPC: Envoy RLS)",
        description="Run the decision service. Settings come from SLUICEGATE_* environment variables; "
        "each flag overrides its variable. SIGHUP reloads the config; SIGTERM drains and stops.",
    )
    for flag, setting, help_text in _SERVE_FLAGS:
        serve.add_argument(flag, dest=setting, metavar=flag[2:].upper().replace("-", "_"), help=help_text)
    serve.add_argument(
        "--shadow-mode",
        action="store_const",
        const=True,
        help="report every rule's denials but enforce none",
    )
    serve.set_defaults(run=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    from .service.server import run  # the service's imports only for the command that needs them
    from .service.settings import Settings

    overrides = {setting: getattr(args, setting) for _, setting, _ in _SERVE_FLAGS}
    settings = Settings.from_env(**overrides, shadow_mode=args.shadow_mode)
    return run(settings)


# --- demo: arguments -----------------------------------------------------------------------------


def _add_demo(commands: SubParsers, store_options: argparse.ArgumentParser) -> None:
    demo = commands.add_parser(
        "demo",
        parents=[store_options],
        help="watch the four algorithms handle the same burst of traffic, side by side",
        description="Send one traffic pattern (a burst, a steady stream, a second burst, a slower stream) "
        "through several policies at once and print, every tick, what each admitted (#) and denied (.). "
        "Requests are stamped with their scheduled time (the Limiter's clock option), so every policy "
        "sees the same arrivals and every run draws the same picture. Keys are unique per run, under the "
        f"prefix {DEMO_PREFIX!r}, and expire by themselves.",
    )
    demo.add_argument(
        "--duration",
        type=_number_in(0, 60, "seconds", low_inclusive=False),
        default=4.0,
        metavar="SECONDS",
        help="how much traffic to send (default: %(default)s; the pattern repeats every 4 s)",
    )
    demo.add_argument(
        "--tick",
        type=_number_in(0.01, 1, "seconds"),
        default=0.1,
        metavar="SECONDS",
        help="time covered by one line of output (default: %(default)s)",
    )
    pace = demo.add_mutually_exclusive_group()
    # No slow motion: Redis expires state in real time, so the demo's clock may not run slower.
    pace.add_argument(
        "--speed",
        type=_number_in(1, 100, "a factor"),
        default=1.0,
        metavar="FACTOR",
        help="play the traffic this many times faster than real time (default: %(default)s)",
    )
    pace.add_argument("--fast", action="store_true", help="do not wait between ticks; print everything at once")
    demo.add_argument(
        "--policy",
        action="append",
        metavar="POLICY",
        help="a policy to show (repeat for several); default: " + "; ".join(DEMO_POLICIES),
    )
    demo.set_defaults(run=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    policies = [Policy.parse(text) for text in args.policy or DEMO_POLICIES]
    lanes = [_Lane(policy, label) for policy, label in zip(policies, _labels(policies), strict=True)]
    duration_us, tick_us = _to_us(args.duration), _to_us(args.tick)
    schedule = _arrivals(duration_us)
    clock = _ScheduledClock(_demo_epoch_us(policies))
    key = f"demo:{os.getpid()}:{time.time_ns() // 1_000_000}"
    out = sys.stdout
    with _open_limiter(args, prefix=DEMO_PREFIX, clock=clock) as limiter:
        # One look before any output: a bad URL or an unreachable store fails here, cleanly.
        limiter.peek(key, policies[0])
        layout = _Layout.fit(lanes, schedule, duration_us, tick_us)
        demo = _Demo(limiter, key, clock, lanes, layout, _Style.for_stream(out), out)
        demo.print_intro(_store_url(args), args.duration, tick_us)
        interrupted = demo.play(schedule, duration_us, tick_us, _Pacer(None if args.fast else args.speed))
    demo.print_summary()
    return EXIT_INTERRUPTED if interrupted else EXIT_OK


def _to_us(seconds: float) -> int:
    return round(seconds * _US)


def _labels(policies: Sequence[Policy]) -> list[str]:
    """Column titles: the policy's name, else its algorithm; repeats get -2, -3, … to stay apart."""
    bases = [policy.name or policy.algorithm for policy in policies]
    return [f"{base}-{bases[:i].count(base) + 1}" if base in bases[:i] else base for i, base in enumerate(bases)]


# --- demo: time ----------------------------------------------------------------------------------


class _ScheduledClock:
    """The demo's clock: the scheduled time of the request being decided, not the wall clock.

    Every policy is asked at the same instant for a request, and timer jitter cannot move a
    request across a refill or a window edge, so the picture is the same on every run.
    """

    def __init__(self, epoch_us: int) -> None:
        self.epoch_us = epoch_us
        self.offset_us = 0

    def __call__(self) -> float:
        return (self.epoch_us + self.offset_us) / _US  # the Limiter rounds back to the exact µs


def _demo_epoch_us(policies: Sequence[Policy]) -> int:
    """Where demo time 0 sits on the store's clock: halfway into the longest window, so a window
    edge falls mid-demo, where fixed-window admitting up to twice its limit across an edge shows."""
    windows = [policy.period_ms * 1000 for policy in policies if policy.algorithm in _WINDOWED]
    now_us = time.time_ns() // 1000
    if not windows:
        return now_us
    window = max(windows)
    return (now_us - window // 2) // window * window + window // 2


class _Pacer:
    """Waits until a moment of demo time comes round in wall time (never, with --fast)."""

    def __init__(self, speed: float | None) -> None:
        self._speed = speed
        self._start = time.monotonic()

    def wait_until(self, demo_us: int) -> None:
        if self._speed is None:
            return
        delay = self._start + demo_us / _US / self._speed - time.monotonic()
        if delay > 0:
            time.sleep(delay)


# --- demo: traffic -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Phase:
    start_us: int
    end_us: int
    per_second: int
    label: str


#: One 4 s cycle of traffic, repeated for longer runs. Against the default policies (5/s on
#: average, 10 at once) the bursts overflow every one of them, the first stream runs at twice
#: their rate and the second at exactly their rate: where the algorithms disagree most.
_CYCLE_US = 4 * _US
_PHASES = (
    _Phase(0, 400_000, 40, "burst: 40 requests/s"),
    _Phase(400_000, 2_000_000, 10, "steady: 10 requests/s"),
    _Phase(2_000_000, 2_400_000, 40, "second burst: 40 requests/s"),
    _Phase(2_400_000, 4_000_000, 5, "steady: 5 requests/s"),
)


def _arrivals(duration_us: int) -> list[int]:
    """Demo times (µs) at which requests arrive, evenly spaced within each phase, sorted."""
    times: list[int] = []
    for cycle_start in range(0, duration_us, _CYCLE_US):
        for phase in _PHASES:
            step = _US // phase.per_second
            start, end = cycle_start + phase.start_us, min(cycle_start + phase.end_us, duration_us)
            times.extend(range(start, end, step))
    return times


def _phase_starts(start_us: int, end_us: int) -> list[str]:
    """Labels of the phases that begin within [start_us, end_us)."""
    return [
        phase.label
        for cycle_start in range(start_us - start_us % _CYCLE_US, end_us, _CYCLE_US)
        for phase in _PHASES
        if start_us <= cycle_start + phase.start_us < end_us
    ]


def _window_edges(lanes: Sequence[_Lane], epoch_us: int, start_us: int, end_us: int) -> list[str]:
    """Labels of the windowed lanes whose window begins within [start_us, end_us) of demo time."""
    edged = []
    for lane in lanes:
        if lane.policy.algorithm not in _WINDOWED:
            continue
        period_us = lane.policy.period_ms * 1000
        first_edge = -(-(epoch_us + start_us) // period_us) * period_us  # ceiling to a multiple
        if first_edge < epoch_us + end_us:
            edged.append(lane.label)
    return edged


# --- demo: running and printing ------------------------------------------------------------------


@dataclass
class _Lane:
    """One policy's column: what it admitted and denied."""

    policy: Policy
    label: str
    admitted_at: list[int] = field(default_factory=list)
    denied: int = 0
    last_retry_after: float | None = None

    def record(self, at_us: int, decision: Decision) -> str:
        """Count ``decision`` and return its mark."""
        if decision.allowed:
            self.admitted_at.append(at_us)
            return "#"
        self.denied += 1
        self.last_retry_after = decision.retry_after
        return "."


@dataclass(frozen=True)
class _Demo:
    """One run of the demo: the traffic, the policies' columns and what is printed."""

    limiter: Limiter
    key: str
    clock: _ScheduledClock
    lanes: Sequence[_Lane]
    layout: _Layout
    style: _Style
    out: TextIO

    def print_intro(self, url: str, duration: float, tick_us: int) -> None:
        self._print(f"sluicegate demo: the same traffic through {len(self.lanes)} policies for {duration:g} s")
        self._print(f"store {redact_url(url)}, key {self.key!r} under prefix {DEMO_PREFIX!r} (expires by itself)")
        self._print()
        label_width = max(len(lane.label) for lane in self.lanes)
        policy_width = max(len(str(lane.policy)) for lane in self.lanes)
        for lane in self.lanes:
            self._print(f"  {lane.label:<{label_width}}  {lane.policy!s:<{policy_width}}  {_explain(lane.policy)}")
        self._print()
        self._print(f"One line per {_duration_text(tick_us)} of traffic: # admitted, . denied.")
        self._print()
        self._print(self.layout.heading())

    def play(self, schedule: Sequence[int], duration_us: int, tick_us: int, pacer: _Pacer) -> bool:
        """Send the traffic, printing one line per tick; return True if interrupted (Ctrl-C)."""
        try:
            for tick_start in range(0, duration_us, tick_us):
                marks = [self._send(at_us, pacer) for at_us in _in_tick(schedule, tick_start, tick_us)]
                tick_end = min(tick_start + tick_us, duration_us)
                pacer.wait_until(tick_end)
                columns = ["".join(request[i] for request in marks) for i in range(len(self.lanes))]
                self._print(self.layout.row(tick_start, columns, self._notes(tick_start, tick_end), self.style))
        except KeyboardInterrupt:
            self._print()
            return True
        return False

    def print_summary(self) -> None:
        window_us = max(lane.policy.period_ms for lane in self.lanes) * 1000
        titles = (
            "policy",
            "admitted",
            "denied",
            f"most in any {_duration_text(window_us)}",
            "last retry_after",
        )
        rows = [
            (
                str(lane.policy),
                str(len(lane.admitted_at)),
                str(lane.denied),
                str(_busiest(lane.admitted_at, window_us)),
                "-" if lane.last_retry_after is None else f"{lane.last_retry_after:.3f} s",
            )
            for lane in self.lanes
        ]
        widths = [max(len(title), *(len(row[i]) for row in rows)) for i, title in enumerate(titles)]
        self._print()
        for cells in (titles, *rows):
            first = f"{cells[0]:<{widths[0]}}"
            rest = [f"{cell:>{width}}" for cell, width in zip(cells[1:], widths[1:], strict=True)]
            self._print("  " + "  ".join([first, *rest]))

    def _send(self, at_us: int, pacer: _Pacer) -> list[str]:
        """One request, at its time, to every policy; its mark in each column."""
        pacer.wait_until(at_us)
        self.clock.offset_us = at_us
        return [lane.record(at_us, self.limiter.hit(self.key, lane.policy)) for lane in self.lanes]

    def _notes(self, start_us: int, end_us: int) -> list[str]:
        notes = _phase_starts(start_us, end_us)
        edged = _window_edges(self.lanes, self.clock.epoch_us, start_us, end_us)
        if edged:
            notes.append(f"window edge: {', '.join(edged)}")
        return notes

    def _print(self, line: str = "") -> None:
        # Flushed line by line: the point is to watch it happen, also through a pipe.
        print(line, file=self.out, flush=True)


_MARK_RUNS = re.compile(r"#+|\.+")
_GREEN, _RED, _DIM, _RESET = "\x1b[32m", "\x1b[31m", "\x1b[2m", "\x1b[0m"


@dataclass(frozen=True)
class _Style:
    """ANSI colours for marks, only for a terminal and only without NO_COLOR (no-color.org)."""

    colour: bool

    @classmethod
    def for_stream(cls, stream: TextIO) -> _Style:
        return cls(stream.isatty() and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb")

    def marks(self, text: str) -> str:
        """Admitted runs green, denied runs red."""
        if not self.colour:
            return text
        return _MARK_RUNS.sub(lambda run: f"{_GREEN if run[0][0] == '#' else _RED}{run[0]}{_RESET}", text)

    def dim(self, text: str) -> str:
        return f"{_DIM}{text}{_RESET}" if self.colour and text else text


@dataclass(frozen=True)
class _Layout:
    """Column widths of the timeline, fixed before it starts so lines print as they happen."""

    time_width: int
    time_decimals: int
    widths: tuple[int, ...]
    labels: tuple[str, ...]

    @classmethod
    def fit(cls, lanes: Sequence[_Lane], schedule: Sequence[int], duration_us: int, tick_us: int) -> _Layout:
        ticks = range(0, duration_us, tick_us)
        busiest_tick = max(len(_in_tick(schedule, start, tick_us)) for start in ticks)
        decimals = 1 if tick_us % 100_000 == 0 else 2 if tick_us % 10_000 == 0 else 3
        time_width = len(f"{ticks[-1] / _US:.{decimals}f}s")
        widths = tuple(max(len(lane.label), busiest_tick) for lane in lanes)
        return cls(time_width, decimals, widths, tuple(lane.label for lane in lanes))

    def heading(self) -> str:
        cells = [f"{label:<{width}}" for label, width in zip(self.labels, self.widths, strict=True)]
        return f"  {'time':>{self.time_width}}  {'  '.join(cells)}".rstrip()

    def row(self, start_us: int, columns: Sequence[str], notes: Sequence[str], style: _Style) -> str:
        # Pad by the marks' own length: colour codes take no room on screen.
        cells = [style.marks(c) + " " * (width - len(c)) for c, width in zip(columns, self.widths, strict=True)]
        when = f"{start_us / _US:.{self.time_decimals}f}s"
        line = f"  {when:>{self.time_width}}  {'  '.join(cells)}"
        if notes:
            line += "  " + style.dim("; ".join(notes))
        return line.rstrip()


def _in_tick(schedule: Sequence[int], start_us: int, tick_us: int) -> Sequence[int]:
    """The arrivals (sorted µs) within [start_us, start_us + tick_us)."""
    return schedule[bisect.bisect_left(schedule, start_us) : bisect.bisect_left(schedule, start_us + tick_us)]


def _explain(policy: Policy) -> str:
    """One line on how ``policy``'s algorithm decides, in its own numbers."""
    period = _duration_text(policy.period_ms * 1000)
    if policy.algorithm == "gcra":
        per = "second" if policy.period_ms == 1000 else period
        return f"a bucket of {policy.capacity}, refilled at {policy.limit} per {per}: smooth"
    if policy.algorithm == "sliding-log":
        return f"exact: at most {policy.limit} in any {period}"
    if policy.algorithm == "sliding-window":
        return f"this {period} window + the last one, weighted: near-exact"
    return f"{policy.limit} per aligned {period} window: up to {2 * policy.limit} across an edge"


def _duration_text(us: int) -> str:
    return f"{us // _US} s" if us % _US == 0 else f"{us / 1000:g} ms"


def _busiest(times: Sequence[int], window_us: int) -> int:
    """The most of ``times`` (sorted) inside any half-open span of ``window_us``."""
    most, first = 0, 0
    for last, at in enumerate(times):
        while times[first] <= at - window_us:
            first += 1
        most = max(most, last - first + 1)
    return most
