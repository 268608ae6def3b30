"""BlockedKeys is used without a lock from every thread of a sync Limiter: it must not raise."""

from __future__ import annotations

import sys
import threading

from sluicegate._blocked import BlockedKeys
from sluicegate.algorithms import Verdict

DENIED = Verdict(False, 0, 1_000, 10)  # expires 10 µs after it is remembered


def test_concurrent_expiry_and_remembering_never_raise() -> None:
    blocked = BlockedKeys(max_keys=4)
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def hammer(offset: int) -> None:
        start.wait()
        try:
            for now in range(offset, 20_000, 4):
                keys = (f"k{now % 6}",)
                blocked.remember(keys, DENIED, now)
                blocked.verdict(keys, now + 10)  # expired: removes it while others touch it
                blocked.verdict((f"k{(now + 1) % 6}",), now + 5)
        except BaseException as exc:  # any exception at all is the failure
            errors.append(exc)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    try:
        threads = [threading.Thread(target=hammer, args=(offset,)) for offset in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    assert errors == []
    assert len(blocked) <= 4
