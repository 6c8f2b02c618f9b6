"""Compressing writers for the archive (zstd, pigz/ISA-L/zlib gzip, none), whole frames
and padding frames that decoders skip."""

from __future__ import annotations

import gzip as _gzip
import shutil
import struct
import subprocess

from ..config import Codec
from ..errors import ArchiveError
from ..fsutil import cpu_count

ZSTD_SKIPPABLE_MAGIC = 0x184D2A50
DEFAULT_LEVELS = {Codec.zstd: 3, Codec.gzip: 6, Codec.none: 0}


def default_level(codec: str) -> int:
    return DEFAULT_LEVELS[Codec(codec)]


class Sink:
    """Where the uncompressed tar stream goes. ``close()`` ends the frame, never the file."""

    description = "plain tar"

    def __init__(self, fh) -> None:
        self._fh = fh

    def write(self, data) -> None:
        self._fh.write(data)

    def close(self) -> None:
        self._fh.flush()

    def abort(self) -> None:
        pass


class _ZstdSink(Sink):
    def __init__(self, fh, level: int, threads: int) -> None:
        import zstandard

        self._zstd = zstandard
        super().__init__(fh)
        n = threads or cpu_count()
        self.description = f"zstd level {level}, {n} thread{'s' if n > 1 else ''}"
        cctx = zstandard.ZstdCompressor(level=level, threads=n if n > 1 else 0,
                                          write_checksum=True)
        self._writer = cctx.stream_writer(fh, closefd=False)

    def write(self, data) -> None:
        self._writer.write(data)

    def close(self) -> None:
        self._writer.flush(self._zstd.FLUSH_FRAME)
        self._writer.close()
        self._fh.flush()


class _PigzSink(Sink):
    def __init__(self, fh, pigz: str, level: int, threads: int) -> None:
        super().__init__(fh)
        n = threads or cpu_count()
        self.description = f"gzip level {level} via pigz, {n} thread{'s' if n > 1 else ''}"
        fh.flush()
        self._proc = subprocess.Popen([pigz, "-c", "-n", f"-{level}", "-p", str(n)],
                                      stdin=subprocess.PIPE, stdout=fh, stderr=subprocess.PIPE)

    def write(self, data) -> None:
        try:
            self._proc.stdin.write(data)
        except BrokenPipeError:
            self.close()  # raises with pigz's message
            raise ArchiveError("pigz stopped reading its input") from None

    def close(self) -> None:
        try:
            self._proc.stdin.close()
        except BrokenPipeError:
            pass
        err = self._proc.stderr.read().decode(errors="replace").strip()
        rc = self._proc.wait()
        if rc != 0:
            raise OSError(f"pigz failed (exit {rc}): {err.splitlines()[-1] if err else ''}")

    def abort(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()


class _GzipModuleSink(Sink):
    def __init__(self, fh, level: int, threads: int) -> None:
        super().__init__(fh)
        try:
            from isal import igzip_threaded

            n = threads or cpu_count()
            # ISA-L has levels 0..3; map gzip's 1..9 onto 1..3.
            isal_level = 1 if level <= 3 else 2 if level <= 6 else 3
            self._gz = igzip_threaded.open(fh, "wb", compresslevel=isal_level, threads=n)
            self.description = f"gzip via isal level {isal_level}, {n} thread{'s' if n > 1 else ''}"
        except ImportError:
            self._gz = _gzip.GzipFile(fileobj=fh, mode="wb", compresslevel=level, mtime=0)
            self.description = f"gzip level {level} (standard library, 1 thread)"

    def write(self, data) -> None:
        self._gz.write(data)

    def close(self) -> None:
        self._gz.close()
        self._fh.flush()


def open_sink(codec: str, fh, level: int | None = None, threads: int = 0) -> Sink:
    """A writer that compresses into ``fh`` at its current offset.

    zstd: python-zstandard on ``threads`` cores (0 = all). gzip: ``pigz`` when it is on PATH,
    else python-isal's threaded writer when importable, else the standard library.
    """
    level = default_level(codec) if level is None else level
    if codec == "zstd":
        return _ZstdSink(fh, level, threads)
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

