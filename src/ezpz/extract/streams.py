"""Streams the extraction reads: chunks handed over by another thread, and a stream with
its first bytes put back."""

from __future__ import annotations

import io
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, BinaryIO

from ..formats.codecs import DETECT_BYTES


class Aborted(Exception):
    """Raised inside the extraction pipeline when another stage gave up."""


class ChunkStream(io.RawIOBase):
    """A readable raw stream over chunks handed over by another thread.

    ``put(view, release)`` queues a bytes-like chunk; ``release()`` (optional) is called once
    the chunk has been consumed, so the producer can reuse its buffer. ``close_input()`` marks
    the end; ``abort()`` makes the reader raise :class:`Aborted`. The queue is bounded: a
    producer blocks while ``depth`` chunks are waiting.
    """

    def __init__(self, depth: int = 4) -> None:
        super().__init__()
        self._q: queue.Queue[Any] = queue.Queue(maxsize=max(1, depth))
        self._cur: memoryview | None = None
        self._pos = 0
        self._release: Callable[[], None] | None = None
        self._eof = False
        self._abort = threading.Event()
        self._lock = threading.Lock()  # guards _release (consumer and abort() both take it)

    # producer side -------------------------------------------------------------------
    def put(self, chunk: Any, release: Callable[[], None] | None = None,
            timeout: float | None = None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self._abort.is_set():
                if release:
                    release()
                return
            try:
                self._q.put((memoryview(chunk).cast("B"), release), timeout=0.1)
                return
            except queue.Full:
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError("extraction did not keep up within the timeout") from None

    def close_input(self) -> None:
        while not self._abort.is_set():
            try:
                self._q.put(None, timeout=0.1)
                return
            except queue.Full:
                continue

    def abort(self) -> None:
        self._abort.set()
        # release whatever waits so producers can reuse their buffers
        while True:
            try:
                item = self._q.get_nowait()
            except queue.Empty:
                break
            if item is not None and item[1] is not None:
                item[1]()
        # and the chunk the consumer holds: a stalled or failed reader must not keep a buffer
        # the producer waits for
        self._release_current()

    def _release_current(self) -> None:
        with self._lock:
            release, self._release = self._release, None
        if release is not None:
            release()

    # consumer side -------------------------------------------------------------------
    def readable(self) -> bool:
        return True

    def _next(self) -> bool:
        self._release_current()
        self._cur = None
        if self._eof:
            return False
        while True:
            if self._abort.is_set():
                raise Aborted("transfer aborted")
            try:
                item = self._q.get(timeout=0.1)
            except queue.Empty:
                continue
            if item is None:
                self._eof = True
                return False
            with self._lock:
                self._cur, self._release = item
            self._pos = 0
            if self._abort.is_set():  # aborted while this chunk was handed over
                self._release_current()
                raise Aborted("transfer aborted")
            if len(self._cur):
                return True
            self._release_current()

    def readinto(self, b: Any) -> int:
        if self._eof:
            return 0
        if (self._cur is None or self._pos >= len(self._cur)) and not self._next():
            return 0
        assert self._cur is not None
        n = min(len(b), len(self._cur) - self._pos)
        memoryview(b).cast("B")[:n] = self._cur[self._pos:self._pos + n]
        self._pos += n
        return n

    def read(self, n: int = -1) -> bytes:
        """At most ``n`` bytes (the rest of the current chunk for ``n < 0``), copied once;
        ``b""`` at the end of the input."""
        if self._eof:
            return b""
        if (self._cur is None or self._pos >= len(self._cur)) and not self._next():
            return b""
        cur = self._cur
        assert cur is not None
        end = len(cur) if n is None or n < 0 else min(len(cur), self._pos + n)
        out = bytes(cur[self._pos:end])
        self._pos = end
        return out

    def drain(self) -> None:
        """Consume (and release) everything up to the end of input."""
        while self._next():
            pass



def peek(raw: BinaryIO) -> bytes:
    head = b""
    while len(head) < DETECT_BYTES:
        more = raw.read(DETECT_BYTES - len(head))
        if not more:
            break
        head += more
    return head


class Prepend(io.RawIOBase):
    """``head`` followed by the rest of ``raw``."""

    def __init__(self, head: bytes, raw: BinaryIO) -> None:
        super().__init__()
        self._head = memoryview(head)
        self._raw = raw

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        if len(self._head):
            n = min(len(b), len(self._head))
            memoryview(b).cast("B")[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        got: int = self._raw.readinto(b)  # type: ignore[attr-defined]
        return got
