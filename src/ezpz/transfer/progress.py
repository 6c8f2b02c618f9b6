"""Progress of a transfer, shown by rank 0: the slowest node's bytes received and extracted.

Every node leader mails rank 0 what it has received and extracted (:class:`Reporter`, at
most every :data:`EVERY` seconds: a few bytes, never waited for). Rank 0 keeps the latest
figures of each node and shows the slowest (:class:`Display`): a bar redrawn in place when
its output is a terminal, else a log line every :data:`LOG_EVERY` seconds. Nothing here
blocks or waits: it is updated from the loops that run anyway.

``EZPZ_PROGRESS``: ``bar`` (a terminal; ``ezpz-yeet-env`` sets it when its own stderr is
one, since a rank's output is a pipe to the launcher), ``log``, or ``off``. Unset: ``bar``
when stderr is a terminal, else ``log``.
"""

from __future__ import annotations

import os
import sys
import time
from typing import TextIO

from ..config import format_size
from ..log import get_logger

log = get_logger(__name__)

#: Seconds between a leader's progress messages.
EVERY = 2.0
#: Seconds between log lines (no terminal).
LOG_EVERY = 10.0
#: Seconds between redraws of the bar.
BAR_EVERY = 0.5


def mode() -> str:
    env = os.environ.get("EZPZ_PROGRESS", "").strip().lower()
    if env in ("bar", "log", "off"):
        return env
    try:
        return "bar" if sys.stderr.isatty() else "log"
    except (AttributeError, ValueError):
        return "log"


class Reporter:
    """A leader's side: ``due()`` says when to send the next progress message."""

    def __init__(self, every: float = EVERY) -> None:
        self.every = every
        self._last = 0.0

    def due(self) -> bool:
        now = time.monotonic()
        if now - self._last >= self.every:
            self._last = now
            return True
        return False


class Display:
    """Rank 0's view of every node's progress (see the module's docstring)."""

    def __init__(self, total: int, nodes: list[int], *, how: str | None = None,
                 out: TextIO | None = None) -> None:
        self.total = max(total, 0)
        self.how = how or mode()
        self.out = out or sys.stderr
        self.recv = {n: 0 for n in nodes}
        self.done = {n: 0 for n in nodes}
        self.gone: set[int] = set()
        self.t0 = time.monotonic()
        self._drawn = 0.0
        self._logged = time.monotonic()
        self._width = 0

    def update(self, node: int, recv: int | None = None, done: int | None = None) -> None:
        if node not in self.recv:
            return
        if recv is not None:
            self.recv[node] = max(self.recv[node], int(recv))
        if done is not None:
            self.done[node] = max(self.done[node], int(done))

    def finished(self, node: int) -> None:
        """``node`` has all of it (or is out: failed or lost): it no longer paces the run."""
        self.gone.add(node)

    def slowest(self) -> tuple[int, int]:
        """(received, extracted) bytes of the slowest node still at work."""
        live = [n for n in self.recv if n not in self.gone]
        if not live:
            return self.total, self.total
        return min(self.recv[n] for n in live), min(self.done[n] for n in live)

    def line(self) -> str:
        recv, done = self.slowest()
        elapsed = max(time.monotonic() - self.t0, 1e-9)
        rate = done / elapsed / 1e6
        eta = (self.total - done) / (done / elapsed) if done else None
        pct = 100.0 * done / self.total if self.total else 100.0
        eta_s = f"ETA {eta:.0f}s" if eta is not None else "ETA -"
        return (f"slowest node: received {format_size(recv)}, extracted {format_size(done)} "
                f"of {format_size(self.total)} ({pct:.0f}%), {rate:.1f} MB/s, {eta_s}")

    def show(self, force: bool = False) -> None:
        if self.how == "off":
            return
        now = time.monotonic()
        if self.how == "bar":
            if force or now - self._drawn >= BAR_EVERY:
                self._drawn = now
                recv, done = self.slowest()
                frac = done / self.total if self.total else 1.0
                bar = "#" * int(24 * frac)
                text = f"[{bar:<24}] {self.line()}"
                pad = max(0, self._width - len(text))
                self._width = len(text)
                self._write(text + " " * pad + "\r")
        elif force or now - self._logged >= LOG_EVERY:
            self._logged = now
            log.info("progress: %s", self.line())

    def close(self) -> None:
        if self.how == "bar" and self._width:
            self._write(" " * self._width + "\r")

    def _write(self, text: str) -> None:
        try:
            self.out.write(text)
            self.out.flush()
        except (OSError, ValueError):
            self.how = "off"
