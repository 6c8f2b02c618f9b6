"""The launcher side of a job's output: whole lines to the console, filtered lines kept.

:class:`OutputPump` reads the launcher's merged stdout/stderr line by line (in a thread of its
own) and, for each line:

- hides it from the console when a filter (a regular expression searched in the line) matches,
  writing it whole to the filtered-lines file instead (created at the first hidden line);
  a progress bar's redraw, ending in ``\r``, is a line of its own;
- scans it for the machine's bad-node patterns that name a host (``(?P<host>...)``);
- notes the time, for the idle watchdog.

With ``launcher.label=true`` each line starts with ``<rank>: ``; filters see the line without
that label, so a preset's anchored pattern still matches.
"""

from __future__ import annotations

import os
import re
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import IO

from ..config import check_regexes
from ..log import get_logger

log = get_logger(__name__)

#: A line longer than this reaches the console in pieces (memory stays bounded).
MAX_LINE = 1 << 20
_LABEL = re.compile(r"^\d+: ")


def compile_patterns(patterns: Iterable[str | re.Pattern[str]], key: str = "launcher.filters"
                     ) -> list[re.Pattern[str]]:
    """Compile regular expressions, refusing (one line, naming ``key[i]``) a bad one or one that
    matches an empty line (it would match every line)."""
    items = list(patterns)
    check_regexes(key, [p.pattern if isinstance(p, re.Pattern) else p for p in items])
    return [p if isinstance(p, re.Pattern) else re.compile(p) for p in items]


@dataclass
class HostHit:
    """A line of the launcher's output that matched a bad-node pattern naming a host."""

    host: str
    pattern: str
    line: str


class OutputPump:
    """Copy a job's output to ``out`` in whole lines, minus the filtered ones (see module doc)."""

    def __init__(self, out: IO[str], filters: Sequence[re.Pattern[str]], *,
                 filtered_log: str | None = None, labels: bool = False,
                 host_patterns: Sequence[re.Pattern[str]] = ()) -> None:
        self.out = out
        self.filters = list(filters)
        self.filtered_path = filtered_log
        self.labels = labels
        self.host_patterns = [p for p in host_patterns if "host" in p.groupindex]
        self.hidden = 0
        self.lines = 0
        self.host_hits: list[HostHit] = []
        self.last_activity = time.monotonic()
        self._filtered: IO[bytes] | None = None
        self._console_ok = True
        self._thread: threading.Thread | None = None
        self._header: bytes | None = None

    # ------------------------------------------------------------------ set-up per attempt
    def start(self, stream: IO[bytes], header: str | None = None) -> None:
        """Read ``stream`` until EOF in a daemon thread. ``header`` is written to the filtered
        file before the first line hidden from this stream (e.g. ``attempt 2``)."""
        self._header = f"==== {header} ====\n".encode() if header else None
        self.last_activity = time.monotonic()
        self.host_hits = []
        self._thread = threading.Thread(target=self._run, args=(stream,), daemon=True,
                                        name="ezpz-output")
        self._thread.start()

    def join(self, timeout: float = 10.0) -> None:
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def close(self) -> None:
        if self._filtered is not None:
            self._filtered.close()
            self._filtered = None

    # ------------------------------------------------------------------ per line
    def _run(self, stream: IO[bytes]) -> None:
        """Read what arrives (every byte counts as activity for the idle watchdog) and handle
        it line by line; a line ends with \n, or with \r (a progress bar's redraw)."""
        pending = b""
        read = getattr(stream, "read1", stream.read)
        try:
            while True:
                chunk = read(65536)
                if not chunk:
                    break
                self.last_activity = time.monotonic()
                pending += chunk
                cut = max(pending.rfind(b"\n"), pending.rfind(b"\r"))
                if cut >= 0:
                    for raw in pending[:cut + 1].splitlines(keepends=True):
                        self.handle(raw)
                    pending = pending[cut + 1:]
                if len(pending) > MAX_LINE:
                    self.handle(pending)
                    pending = b""
        except (OSError, ValueError) as exc:  # the pipe closed under us
            log.debug("output reader stopped: %s", exc)
        if pending:
            self.handle(pending)

    def handle(self, raw: bytes) -> None:
        self.lines += 1
        line = raw.decode(errors="replace")
        text = line.rstrip("\r\n")
        if self.labels:
            text = _LABEL.sub("", text, count=1)
        for pattern in self.host_patterns:
            if len(self.host_hits) >= 100:
                break
            m = pattern.search(text)
            if m and m.group("host"):
                self.host_hits.append(HostHit(m.group("host"), pattern.pattern, text[:500]))
        if self.filters and any(f.search(text) for f in self.filters):
            self.hidden += 1
            self._keep(raw if raw.endswith(b"\n") else raw.rstrip(b"\r") + b"\n")
            return
        self._show(line)

    def _show(self, line: str) -> None:
        if not self._console_ok:
            return
        try:
            self.out.write(line)
            self.out.flush()
        except (OSError, ValueError):
            # the console went away (a closed pipe): keep draining the job, stop writing
            self._console_ok = False

    def _keep(self, raw: bytes) -> None:
        try:
            if self._filtered is None:
                self._filtered = self._open_filtered()
            if self._header is not None:
                self._filtered.write(self._header)
                self._header = None
            self._filtered.write(raw)
            self._filtered.flush()
        except OSError as exc:
            # never lose a line: a filtered file that cannot be written shows it instead
            if self._filtered is not None:
                self._filtered.close()
            log.warning("cannot write the filtered lines to %s (%s): showing them instead",
                        self.filtered_path, exc)
            self.filters = []
            self._filtered = None
            self._show(raw.decode(errors="replace"))

    def _open_filtered(self) -> IO[bytes]:
        if self.filtered_path is None:
            fd, self.filtered_path = tempfile.mkstemp(
                prefix="ezpz-filtered-", suffix=".log", dir=os.environ.get("TMPDIR") or None)
            return os.fdopen(fd, "ab")
        return open(self.filtered_path, "ab")

    def summary(self) -> str | None:
        """``hid N lines ...: see <file>`` (None when nothing was hidden)."""
        if not self.hidden:
            return None
        return (f"hid {self.hidden} output line{'s' if self.hidden != 1 else ''} matching the "
                f"output filters; they are in {self.filtered_path} (launcher.filters=[] or "
                "EZPZ_LOG_LEVEL=DEBUG shows everything)")
