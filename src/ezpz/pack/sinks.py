"""Compressing writers for the archive (zstd, pigz/ISA-L/zlib gzip, none), whole frames
and padding frames that decoders skip."""

from __future__ import annotations

import gzip as _gzip
import shutil
import struct
import subprocess
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import IO, Any

from ..config import Codec, format_size
from ..errors import ArchiveError
from ..fsutil import cpu_count

#: What the tar writer hands a sink.
Data = bytes | bytearray | memoryview

ZSTD_SKIPPABLE_MAGIC = 0x184D2A50
DEFAULT_LEVELS = {Codec.zstd: 3, Codec.gzip: 6, Codec.none: 0}
#: Input bytes of one zstd frame: each frame is decoded on its own (in parallel on the
#: nodes), costing about 0.5% in size against one frame for a large environment.
FRAME_BYTES = 16 << 20
#: Most frames compressed at once (memory: about 1.3 x FRAME_BYTES per frame in flight).
FRAME_THREADS_MAX = 32


def default_level(codec: str) -> int:
    return DEFAULT_LEVELS[Codec(codec)]


class Sink:
    """Where the uncompressed tar stream goes. ``close()`` ends the frame, never the file."""

    description = "plain tar"

    def __init__(self, fh: IO[bytes]) -> None:
        self._fh = fh
        #: Offsets of independently decodable frames, counted from the first (zstd only).
        self.frames: list[int] = []

    def write(self, data: Data) -> None:
        self._fh.write(data)

    def close(self) -> None:
        self._fh.flush()

    def abort(self) -> None:
        pass


class _ZstdSink(Sink):
    """zstd in independent frames of ``frame_bytes`` input bytes each, compressed side by
    side on ``threads`` cores and written in order.

    Each frame is a complete zstd frame with its content size and checksum: a decoder can
    start at any of them (``frames``: their offsets, counted from the first). One stream
    decoder reads them all as one (zstd concatenates frames). In flight: ``threads + 1``
    frames, so memory stays at a few times ``frame_bytes`` per thread.
    """

    def __init__(self, fh: Any, level: int, threads: int, frame_bytes: int) -> None:
        import zstandard

        super().__init__(fh)
        n = min(threads or cpu_count(), FRAME_THREADS_MAX)
        self.description = (f"zstd level {level}, {n} thread{'s' if n > 1 else ''}, "
                            f"frames of {format_size(frame_bytes)}")
        self._level = level
        self._frame_bytes = frame_bytes
        self._local = threading.local()
        self._zstd = zstandard
        self._pool = ThreadPoolExecutor(n, thread_name_prefix="ezpz-zstd") if n > 1 else None
        self._inflight: deque[Future[bytes] | bytes] = deque()
        self._max_inflight = n + 1
        self._pending = bytearray()
        self._start = fh.tell()
        self._pos = self._start

    def _compress(self, data: bytes) -> bytes:
        # compressobj releases the GIL while it works (compress() does not): frames are
        # compressed side by side. Its size argument puts the content size in the header.
        cctx = getattr(self._local, "cctx", None)
        if cctx is None:
            cctx = self._local.cctx = self._zstd.ZstdCompressor(
                level=self._level, write_checksum=True, write_content_size=True)
        obj = cctx.compressobj(size=len(data))
        out: bytes = obj.compress(data) + obj.flush()
        return out

    def _submit(self, data: bytes) -> None:
        if self._pool is None:
            self._inflight.append(self._compress(data))
        else:
            self._inflight.append(self._pool.submit(self._compress, data))
        while len(self._inflight) > self._max_inflight:
            self._emit()

    def _emit(self) -> None:
        item = self._inflight.popleft()
        frame = item if isinstance(item, bytes) else item.result()
        self.frames.append(self._pos - self._start)
        self._fh.write(frame)
        self._pos += len(frame)

    def write(self, data: Any) -> None:
        pending = self._pending
        pending += data
        size = self._frame_bytes
        if len(pending) < size:
            return
        view = memoryview(pending)
        full = len(pending) - len(pending) % size
        try:
            for i in range(0, full, size):
                self._submit(bytes(view[i:i + size]))
        finally:
            view.release()
        del pending[:full]

    def close(self) -> None:
        if self._pending or not self.frames and not self._inflight:
            self._submit(bytes(self._pending))
            self._pending = bytearray()
        while self._inflight:
            self._emit()
        if self._pool is not None:
            self._pool.shutdown()
        self._fh.flush()

    def abort(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        self._inflight.clear()


class _PigzSink(Sink):
    def __init__(self, fh: IO[bytes], pigz: str, level: int, threads: int) -> None:
        super().__init__(fh)
        n = threads or cpu_count()
        self.description = f"gzip level {level} via pigz, {n} thread{'s' if n > 1 else ''}"
        fh.flush()
        self._proc = subprocess.Popen([pigz, "-c", "-n", f"-{level}", "-p", str(n)],
                                      stdin=subprocess.PIPE, stdout=fh, stderr=subprocess.PIPE)
        assert self._proc.stdin is not None and self._proc.stderr is not None
        self._stdin, self._stderr = self._proc.stdin, self._proc.stderr

    def write(self, data: Data) -> None:
        try:
            self._stdin.write(data)
        except BrokenPipeError:
            self.close()  # raises with pigz's message
            raise ArchiveError("pigz stopped reading its input") from None

    def close(self) -> None:
        try:
            self._stdin.close()
        except BrokenPipeError:
            pass
        err = self._stderr.read().decode(errors="replace").strip()
        rc = self._proc.wait()
        if rc != 0:
            raise OSError(f"pigz failed (exit {rc}): {err.splitlines()[-1] if err else ''}")

    def abort(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()


class _GzipModuleSink(Sink):
    def __init__(self, fh: IO[bytes], level: int, threads: int) -> None:
        super().__init__(fh)
        try:
            from isal import igzip_threaded

            n = threads or cpu_count()
            # ISA-L has levels 0..3; map gzip's 1..9 onto 1..3.
            isal_level = 1 if level <= 3 else 2 if level <= 6 else 3
            opener: Any = igzip_threaded.open  # untyped in some versions of python-isal
            self._gz = opener(fh, "wb", compresslevel=isal_level, threads=n)
            self.description = f"gzip via isal level {isal_level}, {n} thread{'s' if n > 1 else ''}"
        except ImportError:
            self._gz = _gzip.GzipFile(fileobj=fh, mode="wb", compresslevel=level, mtime=0)
            self.description = f"gzip level {level} (standard library, 1 thread)"

    def write(self, data: Data) -> None:
        self._gz.write(data)

    def close(self) -> None:
        self._gz.close()
        self._fh.flush()


def open_sink(codec: str, fh: IO[bytes], level: int | None = None, threads: int = 0,
              frame_bytes: int | None = None) -> Sink:
    """A writer that compresses into ``fh`` at its current offset.

    zstd: python-zstandard on ``threads`` cores (0 = all), in independent frames of
    ``frame_bytes`` input bytes (default :data:`FRAME_BYTES`). gzip: ``pigz`` when it is on
    PATH, else python-isal's threaded writer when importable, else the standard library.
    """
    level = default_level(codec) if level is None else level
    if codec == "zstd":
        return _ZstdSink(fh, level, threads, frame_bytes or FRAME_BYTES)
    if codec == "gzip":
        pigz = shutil.which("pigz")
        if pigz:
            return _PigzSink(fh, pigz, level, threads)
        return _GzipModuleSink(fh, level, threads)
    if codec == "none":
        return Sink(fh)
    raise ArchiveError(f"unknown codec {codec!r} (choose zstd, gzip or none)")


def compress_frame(codec: str, data: bytes, level: int | None = None) -> bytes:
    """``data`` as one complete, independent frame (zstd) or member (gzip)."""
    level = default_level(codec) if level is None else level
    if codec == "zstd":
        import zstandard

        return zstandard.ZstdCompressor(level=level, write_checksum=True).compress(data)
    if codec == "gzip":
        return _gzip.compress(data, compresslevel=level, mtime=0)
    return data


def padding(codec: str, n: int) -> bytes | None:
    """Exactly ``n`` bytes that a decoder skips, or None when the codec cannot pad ``n``."""
    if n == 0:
        return b""
    if codec == "zstd" and n >= 8:
        return struct.pack("<II", ZSTD_SKIPPABLE_MAGIC, n - 8) + bytes(n - 8)
    if codec == "gzip" and n >= 21:
        # An empty member whose header carries a comment of spaces (FLG.FCOMMENT).
        return (b"\x1f\x8b\x08\x10\0\0\0\0\0\xff" + b" " * (n - 21) + b"\0"
                + b"\x03\x00" + struct.pack("<II", 0, 0))
    return None

