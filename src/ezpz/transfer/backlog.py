"""What a node received and has not extracted yet: in memory up to a bound, then spilled.

The broadcast hands every chunk to :meth:`Backlog.put` and goes on with the next one at once;
the extraction reads the same bytes in order with :meth:`Backlog.readinto`, at its own pace.
While at most ``cap`` received chunks wait, they stay in their receive buffers (released
once extracted); beyond that, the chunk is appended to a *spill file* next to ``dst`` and its
buffer is released at once, so the receiver never waits for the extraction and memory stays
at the receive buffers. The spill file is created ``O_EXCL|O_NOFOLLOW`` under a unique name
and unlinked at once: nothing is left behind whatever happens to the process (a SIGKILL
included); its space is given back when the extraction has caught up (truncated) and when the
process ends. When it cannot be written (a full disk), or when writing it would leave less
free space than the extraction still needs (``reserve``), the receiver falls back to waiting
for the extraction, as without a spill file, and says so once.

``EZPZ_SPILL=0`` turns spilling off (the receiver then waits for the extraction: the lockstep
the benchmark compares against).
"""

from __future__ import annotations

import io
import os
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from ..config import format_size
from ..extract import Aborted
from ..fsutil import free_bytes
from ..log import get_logger

log = get_logger(__name__)

SPILL_ENABLED = os.environ.get("EZPZ_SPILL", "1") != "0"


class Backlog(io.RawIOBase):
    """A readable stream of the received chunks (see the module's docstring).

    ``spill_dir``/``spill_name``: where the spill file goes (None: never spill).
    """

    def __init__(self, cap: int, spill_dir: str | None, spill_name: str = "ezpz",
                 reserve: Callable[[Backlog], int] | None = None) -> None:
        super().__init__()
        self.cap = max(1, cap)
        self.spill_dir = spill_dir if SPILL_ENABLED else None
        self.spill_name = spill_name
        #: bytes that must stay free next to the spill file (what the extraction still needs)
        self.reserve = reserve
        self._cond = threading.Condition()
        #: segments in order: ("mem", view, release) or ("file", offset, length)
        self._q: deque[tuple[Any, ...]] = deque()
        self._held = 0  # receive buffers held (queued in memory, or being read)
        self._cur: tuple[Any, ...] | None = None
        self._pos = 0  # read position inside the current segment
        self._fd: int | None = None
        self._wpos = 0  # where the next spilled chunk goes in the spill file
        self._writing = 0
        self._eof = False
        self._aborted = False
        self._spill_failed = False
        #: bytes handed in / read out / spilled, and the largest backlog seen (bytes)
        self.received = 0
        self.consumed = 0
        self.spilled = 0
        self.peak = 0

    # producer side (the broadcast) ----------------------------------------------------
    def put(self, view: Any, release: Callable[[], None] | None = None,
            timeout: float | None = None) -> None:
        """Queue ``view``; ``release()`` is called once its buffer may be reused (at once
        when it was spilled). Waits (up to ``timeout``) only when spilling is impossible."""
        view = memoryview(view).cast("B")
        n = len(view)
        with self._cond:
            if self._aborted:
                if release:
                    release()
                return
            if self._held < self.cap or release is None:
                self._q.append(("mem", view, release))
                self._held += release is not None
                self._added(n)
                return
        if self._spill(view):
            release()  # not None here: a chunk without one was queued above
            return
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:  # no spill: wait until the extraction frees a buffer
            while self._held >= self.cap and not self._aborted:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise TimeoutError("extraction did not keep up within the timeout")
                self._cond.wait(0.1 if left is None else min(left, 0.1))
            if self._aborted:
                if release:
                    release()
                return
            self._q.append(("mem", view, release))
            self._held += 1
            self._added(n)

    def _added(self, n: int) -> None:
        self.received += n
        self.peak = max(self.peak, self.received - self.consumed)
        self._cond.notify_all()

    def _spill(self, view: memoryview) -> bool:
        """Append ``view`` to the spill file and queue it; False when that is impossible."""
        if self.spill_dir is None or self._spill_failed:
            return False
        if self.reserve is not None:
            free = free_bytes(self.spill_dir)
            need = self.reserve(self)
            if free is not None and free - len(view) < need:
                self._spill_failed = True
                log.warning("not spilling received data to %s: %s free, the extraction still "
                            "needs about %s; receiving at the pace of the extraction from now "
                            "on", self.spill_dir, format_size(free), format_size(need))
                return False
        try:
            with self._cond:
                if self._fd is None:
                    self._fd = self._open_spill()
                off = self._wpos
                self._wpos += len(view)
                self._writing += 1
            ok = False
            try:
                done = 0
                while done < len(view):
                    done += os.pwrite(self._fd, view[done:], off + done)
                ok = True
            finally:
                with self._cond:  # queued in the same step: the file is never truncated
                    self._writing -= 1  # between the write and the queueing
                    if ok:
                        self._q.append(("file", off, len(view)))
                        self.spilled += len(view)
                        self._added(len(view))
        except OSError as exc:
            self._spill_failed = True
            log.warning("cannot spill received data to %s (%s); receiving at the pace of the "
                        "extraction from now on", self.spill_dir, exc.strerror or exc)
            return False
        return True

    def _open_spill(self) -> int:
        path = os.path.join(self.spill_dir or ".", f".{self.spill_name}.ezpz-spill-"
                            f"{os.getpid()}-{secrets.token_hex(4)}")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)
        try:
            os.unlink(path)  # nothing to remove later, whatever happens
        except OSError:
            os.close(fd)
            raise
        log.info("the extraction is behind the broadcast: spilling received data next to "
                 "dst (an unlinked file in %s)", self.spill_dir)
        return fd

    def close_input(self) -> None:
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def abort(self) -> None:
        """Make the reader raise :class:`~ezpz.extract.Aborted`; release every buffer."""
        with self._cond:
            self._aborted = True
            items = list(self._q)
            self._q.clear()
            cur, self._cur = self._cur, None
            self._held = 0
            self._cond.notify_all()
        for seg in ([cur] if cur else []) + items:
            if seg[0] == "mem" and seg[2] is not None:
                seg[2]()
        # the spill file stays open: the extraction may be reading it right now; close()
        # (the extraction's last step) or the end of the process closes it

    # consumer side (the extraction) ---------------------------------------------------
    def readable(self) -> bool:
        return True

    def _finish_current(self) -> None:
        with self._cond:
            cur, self._cur = self._cur, None
            if cur is not None and cur[0] == "mem" and cur[2] is not None:
                self._held = max(0, self._held - 1)
                self._cond.notify_all()
            else:
                cur = None
        if cur is not None:
            cur[2]()

    def _next(self) -> bool:
        self._finish_current()
        with self._cond:
            while True:
                if self._aborted:
                    raise Aborted("transfer aborted")
                if self._q:
                    self._cur = self._q.popleft()
                    self._pos = 0
                    if not any(s[0] == "file" for s in self._q) and self._cur[0] == "mem" \
                            and not self._writing and self._wpos and self._fd is not None:
                        os.ftruncate(self._fd, 0)  # caught up: give the space back
                        self._wpos = 0
                    return True
                if self._eof:
                    return False
                self._cond.wait(0.1)

    def readinto(self, b: Any) -> int:
        out = memoryview(b).cast("B")
        while True:
            if self._aborted:
                raise Aborted("transfer aborted")
            cur = self._cur
            if cur is not None:
                size = len(cur[1]) if cur[0] == "mem" else cur[2]
                left = size - self._pos
                if left > 0:
                    n = min(len(out), left)
                    if cur[0] == "mem":
                        out[:n] = cur[1][self._pos:self._pos + n]
                    else:
                        assert self._fd is not None
                        n = os.preadv(self._fd, [out[:n]], cur[1] + self._pos)
                        if n <= 0:
                            raise OSError("the spill file ended early")
                    self._pos += n
                    self.consumed += n
                    if self._pos >= size:  # read through: its buffer is free at once
                        self._finish_current()
                    return n
            if not self._next():
                return 0

    def drain(self) -> None:
        """Consume (and release) everything up to the end of input."""
        scratch = bytearray(1 << 20)
        while self.readinto(scratch):
            pass

    def _close_spill(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass

    def close(self) -> None:
        self._finish_current()
        self._close_spill()
        super().close()


def slow_extract_rate(host: str) -> float | None:
    """Bytes per second the extraction on ``host`` may read, from the test-only setting
    ``EZPZ_TEST_SLOW_EXTRACT=HOST:MB_PER_S`` (a slow node in the decoupling tests); None
    when it is unset, malformed or names another host."""
    raw = os.environ.get("EZPZ_TEST_SLOW_EXTRACT", "")
    name, _, rate = raw.rpartition(":")
    try:
        value = float(rate)
    except ValueError:
        return None
    if name != host or not 0 < value < float("inf"):
        return None
    return value * 1e6


class Paced(io.RawIOBase):
    """``raw`` read at most ``rate`` bytes per second (see :func:`slow_extract_rate`)."""

    def __init__(self, raw: Any, rate: float) -> None:
        super().__init__()
        self.raw, self.rate = raw, rate
        self._t0 = time.monotonic()
        self._read = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        view = memoryview(b)[:1 << 16]
        n = int(self.raw.readinto(view))
        self._read += n
        ahead = self._read / self.rate - (time.monotonic() - self._t0)
        if ahead > 0:
            time.sleep(ahead)
        return n
