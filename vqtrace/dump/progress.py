"""A progress bar on stderr, shown only when stderr is a terminal.

Long jobs (decompressing a snapshot, scanning all of guest memory) report bytes
done; the bar redraws at most ten times a second and erases itself at the end,
so pipes, logs and tests never see it.
"""

from __future__ import annotations

import os
import sys
import time
from typing import TextIO

_REDRAW_S = 0.1


def _human(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} GiB"  # pragma: no cover


class Progress:
    """``with Progress("scan", total) as bar: bar.update(done)``; silent unless stderr is a tty."""

    def __init__(self, label: str, total: int | None, *, stream: TextIO | None = None,
                 enabled: bool | None = None) -> None:
        self.label = label
        self.total = total
        self.stream = stream or sys.stderr
        if enabled is None:
            enabled = _isatty(self.stream) and os.environ.get("VQTRACE_NO_PROGRESS", "") == ""
        self.enabled = enabled
        self.done = 0
        self._start = time.monotonic()
        self._drawn = 0.0

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, done: int) -> None:
        """Record ``done`` bytes of ``total``; redraw when due."""
        self.done = done
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._drawn >= _REDRAW_S:
            self._drawn = now
            self._draw(now)

    def advance(self, count: int) -> None:
        self.update(self.done + count)

    def _draw(self, now: float) -> None:
        elapsed = max(now - self._start, 1e-6)
        rate = f"{_human(self.done / elapsed)}/s"
        if self.total:
            fraction = min(self.done / self.total, 1.0)
            width = 30
            filled = int(fraction * width)
            bar = "#" * filled + "-" * (width - filled)
            text = f"{self.label} [{bar}] {fraction * 100:5.1f}% {_human(self.done)} of {_human(self.total)} {rate}"
        else:
            text = f"{self.label} {_human(self.done)} {rate}"
        self.stream.write("\r" + text[:119] + "\x1b[K")
        self.stream.flush()

    def close(self) -> None:
        """Erase the bar."""
        if self.enabled and self._drawn:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
        self.enabled = False


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
