"""Streams the extraction reads: chunks handed over by another thread, a forward-only
buffered reader for the tar parser, and a stream with its first bytes put back."""

from __future__ import annotations

import io
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, BinaryIO

from ..formats.codecs import DETECT_BYTES, READ_SIZE
from ..fsutil import write_all


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

    def drain(self) -> None:
        """Consume (and release) everything up to the end of input."""
        while self._next():
            pass



class ForwardReader:
    """Buffered forward-only reader for ``tarfile.TarFile`` (``tell``/``seek`` forward only).

    With a ``sink``, every byte below the ``allowed`` offset is passed on (the ``tar``
    engine), bytes above it are held back until :meth:`allow` moves the limit.
    """

    def __init__(self, decoded: BinaryIO, sink: Callable[[memoryview], None] | None = None):
        self._src = decoded
        self._buf = memoryview(b"")
        self._i = 0
        self._base = 0  # stream offset of _buf[0]
        self._eof = False
        self.last_header = b""
        self.delivered = 0
        self._sink = sink
        self._allowed = 0
        self._sent = 0  # stream offset up to which bytes went to the sink
        self._held: list[bytes] = []  # bytes from _sent on, not yet sent

    # -- feeding -----------------------------------------------------------------------
    def _fill(self) -> bool:
        if self._eof:
            return False
        data = self._src.read(READ_SIZE)
        if not data:
            self._eof = True
            return False
        self._base += len(self._buf)
        self._buf = memoryview(data)
        self._i = 0
        self.delivered += len(data)
        if self._sink is not None:
            self._held.append(memoryview(data))
            self._flush()
        return True

    def _flush(self, force: bool = False) -> None:
        # Checked bytes go on in large writes: once a whole held block is allowed, or at
        # the end. Slices are views, never copies of the block.
        assert self._sink is not None
        while self._held and self._sent < self._allowed:
            head = self._held[0]
            n = min(len(head), self._allowed - self._sent)
            if n < len(head) and not force:
                return
            self._sink(head[:n])
            self._sent += n
            if n == len(head):
                self._held.pop(0)
            else:
                self._held[0] = head[n:]

    def allow(self, offset: int) -> None:
        """Bytes before ``offset`` were checked: pass them on."""
        if offset > self._allowed:
            self._allowed = offset
            if self._sink is not None and self._held and \
                    self._allowed - self._sent >= len(self._held[0]):
                self._flush()

    def finish_sink(self) -> None:
        """Pass on everything read so far and the rest of the stream."""
        self._allowed = 1 << 62
        while self._fill():
            pass
        self._flush(force=True)

    # -- file interface for tarfile ----------------------------------------------------
    def tell(self) -> int:
        return self._base + self._i

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = 1 << 62
        avail = len(self._buf) - self._i
        if n <= avail:
            out = bytes(self._buf[self._i:self._i + n])
            self._i += n
            return out
        parts = [bytes(self._buf[self._i:])]
        got = avail
        self._i = len(self._buf)
        while got < n and self._fill():
            take = min(n - got, len(self._buf))
            parts.append(bytes(self._buf[:take]))
            self._i = take
            got += take
        return b"".join(parts)

    def seek(self, pos: int, whence: int = 0) -> int:
        if whence != 0:
            raise io.UnsupportedOperation("forward-only stream")
        cur = self.tell()
        if pos < cur:
            back = cur - pos
            if back > self._i:
                raise io.UnsupportedOperation("cannot seek backwards in a stream")
            self._i -= back
            return pos
        skip = pos - cur
        while skip > 0:
            avail = len(self._buf) - self._i
            if skip <= avail:
                self._i += skip
                break
            skip -= avail
            self._i = len(self._buf)
            if not self._fill():
                break
        return self.tell()

    def copy_to(self, fd: int, n: int) -> int:
        """Write the next ``n`` bytes to ``fd`` without extra copies; returns bytes written."""
        done = 0
        while done < n:
            avail = len(self._buf) - self._i
            if avail == 0:
                if not self._fill():
                    break
                continue
            take = min(avail, n - done)
            write_all(fd, self._buf[self._i:self._i + take])
            self._i += take
            done += take
        return done


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
        return self._raw.readinto(b)  # type: ignore[attr-defined]
