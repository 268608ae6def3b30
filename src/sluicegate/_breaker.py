"""The circuit breaker between the limiter and its store: a small state machine, no I/O.

- Closed: decisions go to the store. A refused connection opens the breaker at once; other
  store failures (timeouts, dropped connections, READONLY, OOM, …) open it after
  ``failure_threshold`` in a row, so one stale pooled connection does not switch a node over.
- Open: decisions go straight to the fallback, with no connection attempt on the decision path.
  The limiter probes the store in the background every ``probe_interval`` seconds (with jitter,
  so a fleet of gateways does not probe in step) and closes the breaker when a probe succeeds.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

__all__ = ["Breaker"]


class Breaker:
    __slots__ = ("_clock", "_failures", "_jitter", "_next_probe_at", "failure_threshold", "is_open", "probe_interval")

    def __init__(
        self,
        *,
        failure_threshold: int = 3,
        probe_interval: float = 1.0,
        jitter: Callable[[], float] = random.random,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.failure_threshold = failure_threshold
        self.probe_interval = probe_interval
        self._jitter = jitter
        self._clock = clock
        self._failures = 0
        self._next_probe_at = 0.0
        self.is_open = False

    def __repr__(self) -> str:
        state = "open" if self.is_open else "closed"
        return f"<Breaker {state} failures={self._failures}/{self.failure_threshold}>"

    @property
    def failures(self) -> int:
        """Store failures in a row since the last success."""
        return self._failures

    def succeeded(self) -> bool:
        """The store answered. Returns True if that closed the breaker."""
        self._failures = 0
        if not self.is_open:
            return False
        self.is_open = False
        return True

    def failed(self, *, refused: bool = False) -> bool:
        """The store failed (``refused``: no connection could be made). Returns True if that
        opened the breaker."""
        self._failures += 1
        if self.is_open or (not refused and self._failures < self.failure_threshold):
            return False
        self.is_open = True
        self.next_probe_delay()
        return True

    def next_probe_delay(self) -> float:
        """Schedule the next probe; returns the seconds to wait for it (interval ± 20 %)."""
        delay = self.probe_interval * (0.8 + 0.4 * self._jitter())
        self._next_probe_at = self._clock() + delay
        return delay

    def seconds_to_probe(self) -> float:
        """Seconds until the next probe (0 when closed): how long a fail-closed denial should wait."""
        if not self.is_open:
            return 0.0
        return max(self._next_probe_at - self._clock(), 0.0)
