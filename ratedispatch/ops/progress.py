"""A progress bar on a terminal for the commands that walk a whole stream."""

from __future__ import annotations

import time
from typing import TextIO


class Progress:
    """A bar on a terminal while a walk runs, as pip draws one: redrawn in place on one line at
    most ten times a second, and erased at the end so that the summary line stands alone.

    `stream` None draws nothing: output that is not a terminal (a log, a pipe, CI) gets no
    carriage returns. `total` None: the count is not known beforehand; no bar, no ETA."""

    REDRAW_SECONDS = 0.1

    def __init__(self, stream: TextIO | None, label: str, total: int | None) -> None:
        self._stream = stream
        self._label = label
        self._total = total
        self.done = 0
        self._started = time.monotonic()
        self._drawn_at: float | None = None  # None: no bar on the line now
        utf8 = stream is not None and (getattr(stream, "encoding", "") or "").lower() == "utf-8"
        self._full, self._empty = ("━", "─") if utf8 else ("#", "-")

    @staticmethod
    def on_terminal(stream: TextIO) -> TextIO | None:
        return stream if stream.isatty() else None

    def advance(self, n: int) -> None:
        self.done += n
        if self._stream is None:
            return
        now = time.monotonic()
        if self._drawn_at is None or now - self._drawn_at >= self.REDRAW_SECONDS:
            self._stream.write("\r" + self._render(now) + "\x1b[K")
            self._stream.flush()
            self._drawn_at = now

    def line(self, text: str, stream: TextIO) -> None:
        """Print a line of output without tearing the bar (it is redrawn at the next step)."""
        self._erase()
        print(text, file=stream)

    def close(self) -> None:
        self._erase()

    def _erase(self) -> None:
        if self._stream is not None and self._drawn_at is not None:
            self._stream.write("\r\x1b[K")
            self._stream.flush()
            self._drawn_at = None

    def _render(self, now: float) -> str:
        elapsed = max(now - self._started, 1e-6)
        rate = self.done / elapsed
        if self._total is None:
            return f"{self._label} {self.done:,}  {rate:,.0f}/s"
        total = max(self._total, self.done, 1)
        width = 40
        filled = width * self.done // total
        bar = self._full * filled + self._empty * (width - filled)
        left = (total - self.done) / rate if rate > 0 else 0.0
        eta = time.strftime("%H:%M:%S", time.gmtime(left))
        return (
            f"{self._label} {bar} {self.done:,}/{total:,} {100 * self.done // total}% "
            f"{rate:,.0f}/s eta {eta}"
        )
