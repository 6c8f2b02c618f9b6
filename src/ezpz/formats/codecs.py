"""Archive codecs: names, suffixes, detection by content (never by name), and the one
factory of streaming decoders every reader uses (transfer, extraction, the manifest)."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from typing import Any, BinaryIO, cast

from ..config import Codec
from ..errors import ArchiveError

#: Bytes requested from a decoder at a time.
READ_SIZE = 1 << 20

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
GZIP_MAGIC = b"\x1f\x8b"
BZIP2_MAGIC = b"BZh"
XZ_MAGIC = b"\xfd7zXZ\x00"
TAR_MAGIC_OFFSET = 257  # "ustar" in a POSIX/GNU tar header
#: Bytes needed by :func:`detect`.
DETECT_BYTES = 512

SUFFIXES = {"zstd": ".tar.zst", "gzip": ".tar.gz", "none": ".tar"}
_STRIP = (".tar.zst", ".tar.zstd", ".tzst", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar",
          ".zst", ".gz")


def detect(head: bytes) -> str:
    """``zstd``, ``gzip``, ``none`` (plain tar), ``bzip2``, ``xz`` or ``unknown`` from the first bytes."""
    if head.startswith(ZSTD_MAGIC):
        return "zstd"
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    if head.startswith(BZIP2_MAGIC):
        return "bzip2"
    if head.startswith(XZ_MAGIC):
        return "xz"
    if len(head) >= TAR_MAGIC_OFFSET + 5 and head[TAR_MAGIC_OFFSET:TAR_MAGIC_OFFSET + 5] == b"ustar":
        return "none"
    # Old V7 tar has no magic: a 512-byte header whose checksum matches.
    if len(head) >= 512 and _v7_checksum_ok(head[:512]):
        return "none"
    return "unknown"


def detect_file(path: str | os.PathLike[str]) -> str:
    with open(path, "rb") as fh:
        return detect(fh.read(DETECT_BYTES))


def _v7_checksum_ok(block: bytes) -> bool:
    try:
        stored = int(block[148:156].split(b"\x00", 1)[0].strip() or b"-1", 8)
    except ValueError:
        return False
    if stored < 0 or not block[0]:
        return False
    computed = sum(block[:148]) + 8 * 32 + sum(block[156:])
    return stored == computed


def suffix(codec: str) -> str:
    """File suffix for a codec name (``zstd`` → ``.tar.zst``)."""
    return SUFFIXES[codec]


def strip_suffix(name: str) -> str:
    """``myenv.tar.zst`` → ``myenv``; names without a known suffix are returned unchanged."""
    lower = name.lower()
    for suf in _STRIP:
        if lower.endswith(suf) and len(name) > len(suf):
            return name[: -len(suf)]
    return name


# --------------------------------------------------------------------------------------
# decoding
# --------------------------------------------------------------------------------------
def open_decoder(raw: BinaryIO, codec: str) -> BinaryIO:
    """A readable stream of the decompressed bytes of ``raw`` (zstd, gzip or none)."""
    if codec == "zstd":
        import zstandard

        return zstandard.ZstdDecompressor().stream_reader(
            cast(BinaryIO, ZstdFrames(raw)), read_size=READ_SIZE, read_across_frames=True,
            closefd=False)
    if codec == "gzip":
        # Not igzip.GzipFile: it refuses gzip headers longer than its input buffer (the
        # padding member tar-env writes carries a long comment); the streaming decoder
        # takes any member the format allows.
        return io.BufferedReader(_BlockStream(gzip_blocks(raw, READ_SIZE)), READ_SIZE)
    if codec == "none":
        return raw
    raise ArchiveError(f"unsupported archive format {codec!r} (expected zstd, gzip or plain tar)")


def gzip_blocks(raw: Any, size: int) -> Iterator[bytes]:
    """Decompressed blocks (<= ``size`` bytes) of a gzip stream of one or more members."""
    import gzip

    zmod: Any
    try:
        from isal import isal_zlib

        zmod = isal_zlib
    except ImportError:  # pragma: no cover - isal is optional
        import zlib

        zmod = zlib
    buf = bytearray(size)
    view = memoryview(buf)
    d = zmod.decompressobj(31)
    started = False  # the current member has consumed input
    try:
        while True:
            n = raw.readinto(buf)
            if not n:
                break
            data: Any = view[:n]
            while len(data):
                if not started and data[0] == 0:  # zero padding after a member, as gzip allows
                    data = bytes(data).lstrip(b"\0")
                    continue
                started = True
                out = d.decompress(data, size)
                if out:
                    yield out
                if d.eof:
                    data = d.unused_data
                    d = zmod.decompressobj(31)
                    started = False
                else:
                    data = d.unconsumed_tail
        if started:
            while not d.eof:
                out = d.decompress(b"", size)
                if not out:
                    break
                yield out
            if not d.eof:
                raise EOFError("compressed file ended before the end-of-stream marker was "
                               "reached")
    except zmod.error as exc:
        raise gzip.BadGzipFile(str(exc)) from exc


_ZSTD_FRAME = 0xFD2FB528
_SKIPPABLE = range(0x184D2A50, 0x184D2A60)


class ZstdFrames:
    """The compressed stream, passed through unchanged while its frame structure is
    followed (frame headers, block headers, checksums, skippable frames): at the end of the
    input it must end between two frames. The zstd decoder accepts a stream whose trailing
    skippable frame is cut short; this makes that a truncated archive (EOFError)."""

    def __init__(self, raw: Any) -> None:
        self.raw = raw
        self._state = "magic"
        self._need = 4
        self._hdr = b""
        self._skip = 0
        self._checksum = 0
        self.frames = 0

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        if data:
            self._feed(memoryview(data).cast("B"))
        else:
            self._end()
        return data  # type: ignore[no-any-return]

    def readinto(self, b: Any) -> int:
        n: int = self.raw.readinto(b)
        if n:
            self._feed(memoryview(b).cast("B")[:n])
        else:
            self._end()
        return n

    def _feed(self, data: memoryview) -> None:
        pos, end = 0, len(data)
        while pos < end and self._state != "unknown":
            if self._skip:
                take = min(self._skip, end - pos)
                self._skip -= take
                pos += take
                continue
            take = min(self._need - len(self._hdr), end - pos)
            self._hdr += bytes(data[pos:pos + take])
            pos += take
            if len(self._hdr) == self._need:
                hdr, self._hdr = self._hdr, b""
                self._next(hdr)

    def _next(self, hdr: bytes) -> None:
        state = self._state
        if state == "magic":
            magic = int.from_bytes(hdr, "little")
            if magic == _ZSTD_FRAME:
                self._state, self._need = "descriptor", 1
            elif magic in _SKIPPABLE:
                self._state, self._need = "skip-size", 4
            else:
                self._state = "unknown"  # not zstd: the decoder says so
        elif state == "skip-size":
            self._skip = int.from_bytes(hdr, "little")
            self._state, self._need = "magic", 4
            self.frames += 1
        elif state == "descriptor":
            d = hdr[0]
            single = d >> 5 & 1
            self._checksum = d >> 2 & 1
            rest = (0 if single else 1) + (0, 1, 2, 4)[d & 3] + (single, 2, 4, 8)[d >> 6]
            self._state, self._need = ("header", rest) if rest else ("block", 3)
        elif state == "header":
            self._state, self._need = "block", 3
        elif state == "block":
            h = int.from_bytes(hdr, "little")
            kind = h >> 1 & 3
            if kind == 3:
                self._state = "unknown"  # reserved: the decoder refuses it
                return
            self._skip = 1 if kind == 1 else h >> 3
            if h & 1:  # the last block of the frame
                if self._checksum:
                    self._state, self._need = "checksum", 4
                else:
                    self._state, self._need = "magic", 4
                    self.frames += 1
        elif state == "checksum":
            self._state, self._need = "magic", 4
            self.frames += 1

    def _end(self) -> None:
        if self._state == "unknown":
            return
        if self._skip or self._hdr or self._state != "magic" or not self.frames:
            raise EOFError("compressed data ends inside a zstd frame")


class _BlockStream(io.RawIOBase):
    """A readable raw stream over an iterator of byte blocks."""

    def __init__(self, blocks: Iterator[bytes]) -> None:
        self._blocks = blocks
        self._buf = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while not len(self._buf):
            block = next(self._blocks, None)
            if block is None:
                return 0
            self._buf = memoryview(block)
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n




def open_file(path: str | os.PathLike[str]) -> tuple[BinaryIO, str, BinaryIO]:
    """A binary stream of the archive's decompressed tar data (codec detected by content).

    Returns (stream, codec, underlying file); the caller closes both.
    """
    codec = detect_file(path)
    if codec not in (Codec.zstd, Codec.gzip, Codec.none):
        raise ArchiveError(f"{path}: not a tar archive ezpz can read (detected {codec}); "
                           "use zstd, gzip or plain tar")
    fh = open(path, "rb", buffering=0)
    return open_decoder(fh, codec), codec, fh


def decode_error(exc: BaseException, label: str, codec: str) -> ArchiveError:
    """A decoder's failure as one line naming the archive."""
    what = {"zstd": "zstd", "gzip": "gzip", "none": "tar"}.get(str(codec), str(codec))
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return ArchiveError(f"{label}: corrupt or truncated {what} data ({msg}); re-create or "
                        "re-copy the archive")
