"""A small progress line on stderr while a run is in flight.

Redraws at most a few times a second on a terminal; when stderr is not a terminal (CI logs) it
writes a single line at the end instead of a stream of carriage returns.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from inferd.bench.records import RequestRecord


class ProgressBar:
    """Counts finished requests against a total (request count) or a time budget (duration)."""

    def __init__(
        self,
        label: str,
        total: int | None,
        duration: float | None,
        enabled: bool = True,
        stream: TextIO | None = None,
    ) -> None:
        self.label, self.total, self.duration = label, total, duration
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.live = enabled and self.stream.isatty()
        self.ok = self.failed = 0
        self.start = time.perf_counter()
        self._last_draw = 0.0

    def update(self, rec: RequestRecord) -> None:
        if rec.success:
            self.ok += 1
        else:
            self.failed += 1
        now = time.perf_counter()
        if self.live and now - self._last_draw >= 0.2:
            self._last_draw = now
            self._draw(end="\r")

    def close(self) -> None:
        if self.enabled:
            self._draw(end="\n")

    def _fraction(self) -> float:
        elapsed = time.perf_counter() - self.start
        parts = []
        if self.total:
            parts.append((self.ok + self.failed) / self.total)
        if self.duration:
            parts.append(elapsed / self.duration)
        return min(1.0, max(parts)) if parts else 0.0

    def _draw(self, end: str) -> None:
        width = 30
        filled = round(self._fraction() * width)
        done = self.ok + self.failed
        count = f"{done}/{self.total}" if self.total else f"{done}"
        elapsed = time.perf_counter() - self.start
        line = (
            f"{self.label:<18} [{'#' * filled}{'.' * (width - filled)}] {count} "
            f"ok={self.ok} failed={self.failed} {elapsed:6.1f}s"
        )
        self.stream.write(line + end)
        self.stream.flush()
