"""Every bad config is refused at load time with ``file:line: field: message``: one fixture per case
in ``configs/``, the exact messages in one table."""

from __future__ import annotations

from pathlib import Path

import pytest

from sluicegate import ConfigError, InputError
from sluicegate.service import config
from sluicegate.service.config import ConfigIssue, RateLimitConfigError

CONFIGS = Path(__file__).parent / "configs"
DEEP = ".".join(["descriptors[0]"] * 16) + ".descriptors"
UNITS = "second, minute, hour, day, week, month, year"
ALGORITHMS = "gcra, sliding-log, sliding-window, fixed-window"

# fixture -> every issue, as "line: field: message" (the file's path goes in front)
BAD = {
    # YAML itself
    "bad_syntax.yaml": ["6: yaml: expected ',' or ']', but got ':' (while parsing a flow sequence)"],
    "multiple_documents.yaml": ["3: yaml: expected a single document in the stream; but found another document"],
    "control_character.yaml": ["2: yaml: unacceptable character #x0007: special characters are not allowed"],
    "not_utf8.yaml": ["2: file: not UTF-8 text (byte 0xe9)"],
    "too_deep_yaml.yaml": ["3: yaml: nested deeper than 64 levels"],
    "alias_bomb.yaml": ["3: yaml: more than 100,000 nodes (an alias counts each time it is used)"],
    # the document and its domain
    "empty_file.yaml": ["1: document: empty; expected a mapping with domain and descriptors"],
    "not_a_mapping.yaml": ["2: document: expected a mapping with domain and descriptors; got a list"],
    "missing_domain.yaml": ["2: domain: missing; every config file names its domain"],
    "empty_domain.yaml": ["2: domain: must not be empty"],
    "bad_extension.yaml": [f"4: sluicegate.algorithm: unknown algorithm 'token-bucket'; expected {ALGORITHMS}"],
    # descriptors
    "descriptors_not_list.yaml": ["4: descriptors: expected a list of descriptors; got a mapping"],
    "non_map_list.yaml": [
        "4: descriptors[0]: expected a descriptor mapping (key, value, rate_limit, ...); got a string"
    ],
    "missing_key.yaml": ["4: descriptors[0].key: missing; every descriptor needs a key"],
    "empty_key.yaml": ["4: descriptors[0].key: must not be empty"],
    "wildcard_key.yaml": ["4: descriptors[0].key: a trailing * makes a wildcard of values only, not keys"],
    "non_string_key.yaml": ["5: descriptors[0]: field names must be strings; got 0.25"],
    "non_scalar_value.yaml": ["5: descriptors[0].value: expected a string; got a list"],
    "duplicate_field.yaml": ["5: descriptors[0].key: duplicate field; first at line 4"],
    "duplicate_descriptor.yaml": [
        "7: descriptors[1]: duplicate descriptor (key 'key1', value 'value1'); the first is at line 4"
    ],
    "duplicate_nested_default.yaml": [
        "8: descriptors[0].descriptors[1]: duplicate descriptor (key 'user'); the first is at line 6"
    ],
    "unknown_field.yaml": [
        "5: descriptors[0].ratelimit: unknown field; expected one of key, value, rate_limit, descriptors, "
        "shadow_mode, detailed_metric, value_to_metric, share_threshold"
    ],
    "misplaced_field.yaml": ["5: descriptors[0].unit: unknown field here; unit belongs in rate_limit"],
    "quota_mode.yaml": [
        "5: descriptors[0].quota_mode: envoyproxy/ratelimit's quota mode is not supported by sluicegate"
    ],
    "shadow_mode_not_bool.yaml": ["5: descriptors[0].shadow_mode: expected true or false; got 'sometimes'"],
    "share_threshold_without_wildcard.yaml": [
        "6: descriptors[0].share_threshold: only for wildcard values (ending in *); the value is '/files'"
    ],
    "too_deep_descriptors.yaml": [f"36: {DEEP}: descriptors nested deeper than 16 levels"],
    "recursive_alias.yaml": [f"3: {DEEP}: descriptors nested deeper than 16 levels"],
    "merge_cycle.yaml": ["4: descriptors[0]: << merges nested more than 8 deep"],
    # rate_limit
    "rate_limit_null.yaml": [
        "5: descriptors[0].rate_limit: empty; give unit and requests_per_unit, or unlimited: true (or remove it)"
    ],
    "unknown_rate_limit_field.yaml": [
        "7: descriptors[0].rate_limit.requestsperunit: unknown field; expected one of unit, requests_per_unit, "
        "unit_multiplier, unlimited, name, replaces, algorithm, burst, fallback",
        "6: descriptors[0].rate_limit.requests_per_unit: missing (0 denies every request)",
    ],
    "bad_unit.yaml": [f"7: descriptors[0].rate_limit.unit: unknown unit 'fortnight'; expected {UNITS}"],
    "missing_unit.yaml": [f"6: descriptors[0].rate_limit.unit: missing; expected {UNITS}"],
    "missing_requests_per_unit.yaml": [
        "6: descriptors[0].rate_limit.requests_per_unit: missing (0 denies every request)"
    ],
    "negative_requests_per_unit.yaml": [
        "7: descriptors[0].rate_limit.requests_per_unit: must be a whole number in 0..1,000,000,000; got -1"
    ],
    "float_requests_per_unit.yaml": [
        "7: descriptors[0].rate_limit.requests_per_unit: must be a whole number in 0..1,000,000,000; got 2.5"
    ],
    "string_requests_per_unit.yaml": [
        "7: descriptors[0].rate_limit.requests_per_unit: must be a whole number in 0..1,000,000,000; got '10'"
    ],
    "huge_requests_per_unit.yaml": [
        "7: descriptors[0].rate_limit.requests_per_unit: must be a whole number in 0..1,000,000,000; got 4294967295"
    ],
    "zero_unit_multiplier.yaml": [
        "8: descriptors[0].rate_limit.unit_multiplier: must be a whole number in 1..1,000,000,000; got 0"
    ],
    "period_too_long.yaml": [
        "8: descriptors[0].rate_limit.unit_multiplier: 2 years is longer than the 366 days sluicegate supports"
    ],
    "unlimited_with_unit.yaml": ["7: descriptors[0].rate_limit.unit: must not be set when unlimited is true"],
    "unlimited_with_requests_per_unit.yaml": [
        "7: descriptors[0].rate_limit.requests_per_unit: must not be set when unlimited is true"
    ],
    "unlimited_not_bool.yaml": ["6: descriptors[0].rate_limit.unlimited: expected true or false; got 'always'"],
    "replaces_unknown.yaml": [
        "14: descriptors[1].rate_limit.replaces[0].name: no rule named 'rule_c' in domain 'test'"
    ],
    "replaces_without_name.yaml": [
        "9: descriptors[0].rate_limit.replaces[0].name: missing; name the rule this one replaces"
    ],
    "replaces_empty.yaml": [
        "9: descriptors[0].rate_limit.replaces[0].name: must not be empty; name the rule this one replaces"
    ],
    "replaces_self.yaml": ["10: descriptors[0].rate_limit.replaces[0].name: a rule cannot replace itself ('rule_a')"],
    "burst_without_gcra.yaml": [
        "8: descriptors[0].rate_limit.burst: belongs to algorithm gcra; this rule uses fixed-window"
    ],
    "unknown_algorithm.yaml": [
        f"8: descriptors[0].rate_limit.algorithm: unknown algorithm 'leaky-bucket'; expected {ALGORITHMS}"
    ],
    "invalid_fallback.yaml": [
        "8: descriptors[0].rate_limit.fallback: unknown fallback 'maybe'; expected local, allow, deny, raise"
    ],
}


def issues_of(path: Path | str) -> list[str]:
    with pytest.raises(RateLimitConfigError) as raised:
        config.load(path)
    assert str(raised.value) == "\n".join(str(issue) for issue in raised.value.issues)
    return [str(issue) for issue in raised.value.issues]


@pytest.mark.parametrize("name", sorted(BAD))
def test_a_bad_config_is_refused_with_file_line_field_and_message(name: str) -> None:
    path = CONFIGS / name
    assert issues_of(path) == [f"{path}:{issue}" for issue in BAD[name]]


def test_every_fixture_is_in_the_table() -> None:
    assert {path.name for path in CONFIGS.glob("*.yaml")} == set(BAD)


def test_the_error_is_a_config_error_and_input_error() -> None:
    with pytest.raises(ConfigError):
        config.load(CONFIGS / "bad_unit.yaml")
    assert issubclass(RateLimitConfigError, InputError)


def test_a_domain_in_two_files_names_both() -> None:
    folder = CONFIGS / "duplicate_domain"
    assert issues_of(folder) == [
        f"{folder / 'b.yaml'}:2: domain: duplicate domain 'shared'; also defined in {folder / 'a.yaml'}:1"
    ]


def test_a_directory_reports_every_file_and_every_problem(tmp_path: Path) -> None:
    for name in ("bad_unit.yaml", "missing_key.yaml", "empty_domain.yaml"):
        (tmp_path / name).write_bytes((CONFIGS / name).read_bytes())
    (tmp_path / "notes.txt").write_text("not a config")  # only .yaml and .yml files are configs
    (tmp_path / ".hidden.yaml").write_text("garbage: [")  # nor hidden files (editors' swap files)
    assert issues_of(tmp_path) == [
        f"{tmp_path / 'bad_unit.yaml'}:{BAD['bad_unit.yaml'][0]}",
        f"{tmp_path / 'empty_domain.yaml'}:{BAD['empty_domain.yaml'][0]}",
        f"{tmp_path / 'missing_key.yaml'}:{BAD['missing_key.yaml'][0]}",
        f"{tmp_path / 'missing_key.yaml'}:2: domain: duplicate domain 'test'; also defined in "
        f"{tmp_path / 'bad_unit.yaml'}:2",
    ]


def test_a_file_over_a_mebibyte_is_not_read(tmp_path: Path) -> None:
    path = tmp_path / "huge.yaml"
    path.write_text("domain: test\ndescriptors:\n" + "  # padding\n" * 100_000)
    assert issues_of(path) == [f"{path}: file: larger than 1,048,576 bytes"]
    with pytest.raises(RateLimitConfigError, match="larger than 1,048,576 bytes"):
        config.loads(path.read_text())


def test_missing_paths_and_empty_directories(tmp_path: Path) -> None:
    assert issues_of(tmp_path / "nope.yaml") == [f"{tmp_path / 'nope.yaml'}: file: no such file or directory"]
    assert issues_of(tmp_path) == [f"{tmp_path}: directory: no .yaml or .yml files"]


def test_many_problems_stop_at_a_hundred(tmp_path: Path) -> None:
    lines = ["domain: test", "descriptors:"]
    lines += [f"  - {{key: k{i}, rate_limit: {{unit: fortnight, requests_per_unit: 1}}}}" for i in range(150)]
    path = tmp_path / "many.yaml"
    path.write_text("\n".join(lines))
    found = issues_of(path)
    assert len(found) == 101
    assert found[-1] == f"{path}:102: descriptors[99].rate_limit.unit: 100 problems; stopped reading"


def test_issues_read_like_compiler_errors() -> None:
    assert str(ConfigIssue("a.yaml", 7, "descriptors[0].key", "missing")) == "a.yaml:7: descriptors[0].key: missing"
    assert str(ConfigIssue("a.yaml", None, "file", "no such file")) == "a.yaml: file: no such file"


def test_loads_names_its_source() -> None:
    with pytest.raises(RateLimitConfigError) as raised:
        config.loads("domain: x\ndescriptors:\n  - key: ''\n", source="inline")
    assert [str(issue) for issue in raised.value.issues] == ["inline:3: descriptors[0].key: must not be empty"]
