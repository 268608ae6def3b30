from __future__ import annotations

import sluicegate


def test_all_is_sorted_and_complete() -> None:
    public = {name for name in dir(sluicegate) if not name.startswith("_")}
    modules = {"algorithms", "cli", "limiter", "metrics", "middleware", "service", "stores"}
    modules.add("annotations")  # the __future__ import, not an export
    assert sluicegate.__all__ == sorted(sluicegate.__all__)
    assert set(sluicegate.__all__) == public - modules


def test_exported_members_say_they_belong_to_sluicegate() -> None:
    for name in sluicegate.__all__:
        assert getattr(sluicegate, name).__module__.startswith("sluicegate")
