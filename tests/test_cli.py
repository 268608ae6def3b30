"""The ``sluicegate`` command line, run in-process through ``main(argv)``."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import time

import pytest

from sluicegate import cli
from sluicegate.cli import main

DEAD_REDIS = "redis://127.0.0.1:1/0"  # port 1: nothing listens, the connection is refused at once
POLICY_TEXTS = cli.DEMO_POLICIES


@pytest.fixture(autouse=True)
def no_store_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests start from the in-memory store whatever the shell running them has set."""
    monkeypatch.delenv(cli.REDIS_URL_ENV, raising=False)
    monkeypatch.delenv("NO_COLOR", raising=False)


def summary(output: str) -> dict[str, list[str]]:
    """The demo's final table (the lines after its ``policy admitted …`` heading): policy -> cells."""
    lines = output.splitlines()
    heading = next(i for i, line in enumerate(lines) if line.split()[:2] == ["policy", "admitted"])
    rows = {}
    for line in lines[heading + 1 :]:
        text = next(text for text in POLICY_TEXTS if line.strip().startswith(text))
        rows[text] = line.strip()[len(text) :].split()
    return rows


def timeline(output: str) -> list[str]:
    """The demo's timeline lines (those starting with a time such as ``0.3s``)."""
    return [line for line in output.splitlines() if re.match(r"\s+\d+\.\d+s\b", line)]


# --- demo ----------------------------------------------------------------------------------------


def test_demo_runs_in_real_time_and_stops_by_itself(capsys: pytest.CaptureFixture[str]) -> None:
    started = time.monotonic()
    code = main(["demo", "--duration", "0.5"])
    elapsed = time.monotonic() - started
    out = capsys.readouterr().out
    assert code == 0
    assert 0.45 <= elapsed < 1.5
    for text in POLICY_TEXTS:
        assert text in out
    assert "admitted" in out
    assert "denied" in out
    assert "last retry_after" in out
    assert len(timeline(out)) == 5  # one line per 100 ms tick
    assert set(summary(out)) == set(POLICY_TEXTS)


def test_demo_shows_how_the_algorithms_differ(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--fast"]) == 0
    out = capsys.readouterr().out
    rows = summary(out)
    # columns: admitted, denied, most in any 2 s, last retry_after
    assert rows["10/2s algorithm sliding-log"][2] == "10"  # exact: never more than the limit
    assert rows["10/2s algorithm fixed-window"][2] == "20"  # twice the limit across a window edge
    assert 10 < int(rows["10/2s algorithm sliding-window"][2]) < 20
    assert int(rows["5/second burst 10"][0]) > int(rows["10/2s algorithm sliding-log"][0])
    lines = timeline(out)
    assert len(lines) == 40
    assert lines[0].split()[1:5] == ["####"] * 4  # the first burst fills every policy
    assert "window edge: sliding-window, fixed-window" in lines[10]  # halfway into a 2 s window


def test_demo_is_the_same_picture_every_run(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--fast", "--duration", "2"]) == 0
    first = capsys.readouterr().out
    assert main(["demo", "--fast", "--duration", "2"]) == 0
    second = capsys.readouterr().out
    assert timeline(first) == timeline(second)


def test_demo_takes_its_own_policies_and_tick(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["demo", "--fast", "--duration", "1", "--tick", "0.25", "--policy", "3/s", "--policy", "3/s name b"])
    out = capsys.readouterr().out
    assert code == 0
    assert "3/second name b" in out
    assert [line.split()[0] for line in timeline(out)] == ["0.00s", "0.25s", "0.50s", "0.75s"]
    heading = next(line for line in out.splitlines() if line.strip().startswith("time"))
    assert heading.split() == ["time", "gcra", "b"]


def test_demo_is_plain_text_when_not_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--fast", "--duration", "0.5"]) == 0
    assert "\x1b[" not in capsys.readouterr().out


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(("no_color", "coloured"), [(None, True), ("1", False)])
def test_demo_colours_a_terminal_unless_no_color(
    monkeypatch: pytest.MonkeyPatch, no_color: str | None, coloured: bool
) -> None:
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    monkeypatch.setenv("TERM", "xterm")
    if no_color is not None:
        monkeypatch.setenv("NO_COLOR", no_color)
    assert main(["demo", "--fast", "--duration", "0.3"]) == 0
    assert ("\x1b[32m#" in terminal.getvalue()) is coloured


def test_demo_interrupted_still_prints_the_summary(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def interrupt(self: object, demo_us: int) -> None:
        if demo_us > 300_000:  # the first request after three ticks
            raise KeyboardInterrupt

    monkeypatch.setattr(cli._Pacer, "wait_until", interrupt)
    assert main(["demo"]) == cli.EXIT_INTERRUPTED
    out = capsys.readouterr().out
    assert len(timeline(out)) == 3
    assert set(summary(out)) == set(POLICY_TEXTS)


@pytest.mark.parametrize("duration", ["0", "-1", "nan", "inf", "61", "soon", ""])
def test_demo_rejects_a_bad_duration_as_usage(capsys: pytest.CaptureFixture[str], duration: str) -> None:
    assert main(["demo", "--duration", duration]) == 2
    err = capsys.readouterr().err
    assert "argument --duration: must be seconds in (0, 60]" in err
    assert "usage:" in err


@pytest.mark.parametrize(
    "argv",
    [
        ["demo", "--tick", "0.001"],
        ["demo", "--speed", "0.5"],
        ["demo", "--speed", "2", "--fast"],
        ["demo", "--timeout", "0"],
        ["demo", "--bogus"],
        ["check", "k"],
        ["check", "k", "1/s", "--cost", "0"],
        ["nonsense"],
        [],
    ],
)
def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    assert main(argv) == 2
    assert "usage:" in capsys.readouterr().err


def test_demo_bad_policy_exits_1_naming_it(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--policy", "ten per fortnight"]) == 1
    captured = capsys.readouterr()
    assert captured.err.startswith("sluicegate: error: ")
    assert "'ten per fortnight'" in captured.err
    assert "Traceback" not in captured.err
    assert captured.out == ""


# --- help, version -------------------------------------------------------------------------------


@pytest.mark.parametrize("argv", [["--help"], ["-h"], ["demo", "--help"], ["check", "--help"]])
def test_help_exits_0(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    assert main(argv) == 0
    assert "usage: sluicegate" in capsys.readouterr().out


def test_top_level_help_lists_commands_and_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "demo" in out
    assert "check" in out
    assert "inspect" in out
    assert "3    throttled (check; inspect: would be)" in out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    from sluicegate import __version__

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"sluicegate {__version__}"


# --- check ---------------------------------------------------------------------------------------


def test_check_allowed_prints_key_value_lines(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "user:42", "100/minute", "--cost", "5"]) == 0
    lines = capsys.readouterr().out.splitlines()
    fields = dict(line.split("=", 1) for line in lines)
    assert fields == {
        "allowed": "true",
        "key": "user:42",
        "policy": "100/minute",
        "limit": "100",
        "remaining": "95",
        "reset_after": "3.0",
        "retry_after": "0.0",
        "degraded": "false",
    }


def test_check_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "user:42", "10/s burst 20", "--json"]) == 0
    decision = json.loads(capsys.readouterr().out)
    assert decision["allowed"] is True
    assert decision["policy"] == "10/second burst 20"
    assert decision["limit"] == 20
    assert decision["remaining"] == 19
    assert decision["retry_after"] == 0.0


def test_check_on_memory_notes_that_nothing_is_shared(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "k", "1/s"]) == 0
    assert "memory:// keeps nothing between runs" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["check", "k", "banana"], "'banana'"),
        (["check", "k", "5/s algorithm leaky"], "'leaky'"),
        (["check", "k", "5/s", "--cost", "6"], "cost 6 exceeds the capacity 5"),
        (["check", "", "5/s"], "key must be a non-empty str"),
        (["check", "k", "5/s", "--prefix", "a b"], "prefix must match"),
        (["check", "k", "5/s", "--redis", "http://example.com"], "unsupported store URL 'http://example.com'"),
    ],
)
def test_check_bad_input_exits_1(capsys: pytest.CaptureFixture[str], argv: list[str], named: str) -> None:
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("sluicegate: error: ")
    assert named in err
    assert "Traceback" not in err


# --- the store: environment, unreachable Redis ---------------------------------------------------


@pytest.mark.parametrize("argv", [["demo"], ["check", "k", "1/s"]])
def test_env_redis_url_is_used_and_a_dead_redis_fails_fast(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    monkeypatch.setenv(cli.REDIS_URL_ENV, DEAD_REDIS)
    started = time.monotonic()
    code = main(argv)
    elapsed = time.monotonic() - started
    captured = capsys.readouterr()
    assert code == 1
    assert elapsed < 1.0
    assert captured.err.startswith(f"sluicegate: error: store {DEAD_REDIS}: redis connection error")
    assert "Traceback" not in captured.err
    assert captured.out == ""  # the demo checks the store before it prints anything


def test_redis_option_beats_the_environment(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(cli.REDIS_URL_ENV, DEAD_REDIS)
    assert main(["demo", "--fast", "--duration", "0.2", "--redis", "memory://"]) == 0
    assert "store memory://" in capsys.readouterr().out


def test_a_password_in_the_url_is_not_printed(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(cli.REDIS_URL_ENV, "redis://admin:hunter2@127.0.0.1:1/0")
    assert main(["demo"]) == 1
    err = capsys.readouterr().err
    assert "hunter2" not in err
    assert "redis://admin:***@127.0.0.1:1/0" in err


@pytest.mark.redis
def test_check_on_redis_allows_then_throttles(redis_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "user:7", "2/minute", "--redis", redis_url]) == 0
    assert main(["check", "user:7", "2/minute", "--redis", redis_url]) == 0
    capsys.readouterr()
    assert main(["check", "user:7", "2/minute", "--redis", redis_url, "--json"]) == cli.EXIT_THROTTLED
    decision = json.loads(capsys.readouterr().out)
    assert decision["allowed"] is False
    assert decision["remaining"] == 0
    assert 0 < decision["retry_after"] <= 30


@pytest.mark.redis
def test_demo_draws_the_same_picture_on_redis_as_in_memory(
    redis_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["demo", "--fast"]) == 0
    in_memory = capsys.readouterr().out
    monkeypatch.setenv(cli.REDIS_URL_ENV, redis_url)
    assert main(["demo", "--fast"]) == 0
    on_redis = capsys.readouterr().out
    assert f"store {redis_url}" in on_redis
    assert timeline(on_redis) == timeline(in_memory)
    assert summary(on_redis) == summary(in_memory)


@pytest.mark.redis
def test_demo_keys_are_prefixed_and_expire(redis_url: str) -> None:
    import redis

    assert main(["demo", "--fast", "--duration", "0.5", "--redis", redis_url]) == 0
    with redis.Redis.from_url(redis_url) as client:
        keys = [key.decode() for key in client.keys("*")]
        assert keys
        for key in keys:
            assert key.startswith(f"{cli.DEMO_PREFIX}:")
            assert 0 < client.pttl(key) <= 4000


# --- the real entry points -----------------------------------------------------------------------


def test_python_dash_m_runs_the_demo() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "sluicegate", "demo", "--duration", "0.5"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={"PATH": "/usr/bin:/bin", "NO_COLOR": "1"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert "sluicegate demo" in result.stdout
    assert "admitted" in result.stdout
    assert "\x1b[" not in result.stdout


def test_inspect_shows_the_state_without_consuming(redis_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    store = ["--redis", redis_url, "--prefix", "inspect-test"]
    assert main(["check", "user:1", "2/minute", *store]) == 0
    capsys.readouterr()
    for _ in range(3):  # looking twice changes nothing
        assert main(["inspect", "user:1", "2/minute", "--json", *store]) == 0
        assert json.loads(capsys.readouterr().out)["remaining"] == 0  # what a hit would leave
    assert main(["check", "user:1", "2/minute", *store]) == 0
    assert main(["inspect", "user:1", "2/minute", *store]) == 3
    out = capsys.readouterr().out
    assert "allowed=false" in out
    assert "remaining=0" in out
