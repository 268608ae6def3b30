"""One ``sluicegate serve`` child process for the tests, with its log lines as they come."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time

DEADLINE_S = 15.0


class Serve:
    """One ``sluicegate serve`` child; its stderr lines are collected as they come."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        clean = {key: value for key, value in os.environ.items() if not key.startswith("SLUICEGATE_")}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "sluicegate", "serve", "--port", "0", *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env={**clean, **(env or {})},
            text=True,
        )
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.port = 0

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_for(self, pattern: str, *, after: int = 0) -> re.Match[str]:
        """The first log line from index ``after`` on matching ``pattern``, waiting for it."""
        compiled = re.compile(pattern)
        deadline = time.monotonic() + DEADLINE_S
        with self._changed:
            while True:
                for line in self.lines[after:]:
                    found = compiled.search(line)
                    if found:
                        return found
                left = deadline - time.monotonic()
                if left <= 0 or (self.process.poll() is not None and not self._reader.is_alive()):
                    log = "\n".join(self.lines)
                    raise AssertionError(f"no log line matching {pattern!r}; the log:\n{log}")
                self._changed.wait(min(left, 0.5))

    def started(self) -> Serve:
        self.port = int(self.wait_for(r"serving HTTP on http://127\.0\.0\.1:(\d+)").group(1))
        self.wait_for(r"ready \(pid")
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def signal(self, signum: int) -> int:
        """Send ``signum``; the index of the next log line (for ``wait_for(after=...)``)."""
        with self._changed:
            mark = len(self.lines)
        self.process.send_signal(signum)
        return mark

    def close(self) -> None:
        """Stop the process if it still runs (SIGTERM, so a supervisor stops its workers and
        removes its files; SIGKILL if that takes too long), and release its pipe."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(DEADLINE_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.process.wait()
        self._reader.join(DEADLINE_S)
        if self.process.stderr is not None:
            self.process.stderr.close()

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(DEADLINE_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise
