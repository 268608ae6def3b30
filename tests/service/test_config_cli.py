"""``sluicegate config check FILE_OR_DIR``, run in-process through ``main(argv)``."""

from __future__ import annotations

from pathlib import Path

import pytest

from sluicegate.cli import main

HERE = Path(__file__).parent
EXAMPLES = HERE.parents[1] / "examples" / "config"
CONFIGS = HERE / "configs"


def test_a_valid_directory(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "check", str(EXAMPLES)]) == 0
    captured = capsys.readouterr()
    assert captured.out == "ok: 2 domains, 9 rules\n"
    assert captured.err == ""


def test_a_valid_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "check", str(EXAMPLES / "messaging.yaml")]) == 0
    assert capsys.readouterr().out == "ok: 1 domain, 2 rules\n"


def test_an_invalid_file_prints_every_problem(capsys: pytest.CaptureFixture[str]) -> None:
    path = CONFIGS / "unknown_rate_limit_field.yaml"
    assert main(["config", "check", str(path)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == [
        f"{path}:7: descriptors[0].rate_limit.requestsperunit: unknown field; expected one of unit, "
        "requests_per_unit, unit_multiplier, unlimited, name, replaces, algorithm, burst, fallback",
        f"{path}:6: descriptors[0].rate_limit.requests_per_unit: missing (0 denies every request)",
        f"sluicegate: {path}: 2 problems",
    ]


def test_a_directory_with_a_duplicate_domain(capsys: pytest.CaptureFixture[str]) -> None:
    folder = CONFIGS / "duplicate_domain"
    assert main(["config", "check", str(folder)]) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"{folder / 'b.yaml'}:2: domain: duplicate domain 'shared'; also defined in {folder / 'a.yaml'}:1",
        f"sluicegate: {folder}: 1 problem",
    ]


def test_a_missing_path_is_an_invalid_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope.yaml"
    assert main(["config", "check", str(missing)]) == 1
    assert capsys.readouterr().err.splitlines()[0] == f"{missing}: file: no such file or directory"


@pytest.mark.parametrize("argv", [["config"], ["config", "check"], ["config", "lint", "x.yaml"]])
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert "usage: sluicegate config" in capsys.readouterr().err


def test_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "check", "--help"]) == 0
    assert "FILE_OR_DIR" in capsys.readouterr().out
