"""A tiny progress line on stderr: count, rate and ETA; redraws in place on a terminal,
prints a line every few seconds otherwise (CI logs stay readable)."""

from __future__ import annotations

import sys
import time

LOG_INTERVAL_S = 5.0


class Progress:
    def __init__(self, label: str, total: int | None = None, *, unit: str = "items", stream=None, enabled: bool = True):
        self.label, self.total, self.unit = label, total, unit
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.done = 0
        self.start = time.monotonic()
        self._last = 0.0

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if self.enabled and now - self._last >= (0.2 if self.tty else LOG_INTERVAL_S):
            self._last = now
            self._draw(final=False)

    @property
    def rate(self) -> float:
        return self.done / max(time.monotonic() - self.start, 1e-9)

    def close(self) -> None:
        if self.enabled:
            self._draw(final=True)

    def _draw(self, final: bool) -> None:
        rate = self.rate
        if self.total:
            left = (self.total - self.done) / rate if rate > 0 else 0
            text = (
                f"{self.label}: {self.done}/{self.total} {self.unit} "
                f"({100 * self.done / self.total:.0f}%, {rate:.0f} {self.unit}/s, ETA {left:.0f}s)"
            )
        else:
            text = f"{self.label}: {self.done} {self.unit} ({rate:.0f} {self.unit}/s)"
        if final:
            text += f" in {time.monotonic() - self.start:.1f}s"
        end = "\n" if final or not self.tty else ""
        self.stream.write(("\r\033[K" if self.tty else "") + text + end)
        self.stream.flush()
