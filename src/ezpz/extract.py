"""Streaming decompression and safe streaming extraction of tar archives.

The input is a stream of compressed chunks (a file, or chunks arriving over the network);
nothing is ever held whole in memory. The codec is chosen from the first bytes
(:func:`ezpz.codecs.detect`): zstd, gzip (ISA-L's decoder when ``isal`` is installed) or
plain tar.

Every member is checked before anything is written (both engines):

- absolute paths, ``..`` components, over-long paths or path components → refused;
- writes through a symlink created by the archive that points outside the destination
  (``link -> /etc`` then ``link/passwd``) → refused; the symlink itself is created as is,
  because absolute symlinks inside environments (``bin/python -> /usr/bin/python3.11``)
  are legitimate;
- hardlinks whose target is absolute, outside, or not a file extracted earlier → refused;
- device nodes, FIFOs, sparse and unknown member types → refused;
- setuid/setgid bits are dropped, ownership is never restored;
- a regular file whose declared size brings the archive past the destination's free space
  (a tar bomb) → refused before it is written.

The error (:class:`ArchiveError`) names the member. Two engines write the checked stream:
``python`` (files written here, GIL released during writes and decompression) and ``tar``
(the checked bytes piped into GNU tar, which writes). Header bytes reach GNU tar only after
the member they describe passed the checks.

In the ``python`` engine the plainest members (regular files and directories with a plain
ustar header, a clean ASCII name under a directory this extraction made, no special bits)
are written by the C helper ``ezpz._fastx`` when it was built; every other member, and any
member the helper does not finish, goes through the checks and writes below. Set
``EZPZ_EXTRACT_C=0`` to use the Python path alone.
"""

from __future__ import annotations

import errno
import io
import os
import queue
import stat
import struct
import subprocess
import tarfile
import tempfile
import threading
import time
import zlib
from dataclasses import dataclass
from typing import Any, BinaryIO, Callable, Iterator, Optional

from .codecs import DETECT_BYTES, detect
from .errors import ArchiveError
from .log import get_logger

log = get_logger(__name__)

ENGINES = ("python", "tar")
BLOCK = tarfile.BLOCKSIZE
#: Bytes requested from the decoder at a time.
READ_SIZE = 1 << 20
PATH_MAX = 4096
NAME_MAX = 255
_ZERO_BLOCK = bytes(BLOCK)
_DROP_BITS = stat.S_ISUID | stat.S_ISGID


def _load_fast() -> Any:
    """The C helper for plain members, or None (not built, or ``EZPZ_EXTRACT_C=0``)."""
    if os.environ.get("EZPZ_EXTRACT_C", "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    try:
        from . import _fastx
    except ImportError:
        return None
    return _fastx


# --------------------------------------------------------------------------------------
# compressed input: chunks from a queue, exposed as a raw binary stream
# --------------------------------------------------------------------------------------
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
        self._q: "queue.Queue[Any]" = queue.Queue(maxsize=max(1, depth))
        self._cur: Optional[memoryview] = None
        self._pos = 0
        self._release: Optional[Callable[[], None]] = None
        self._eof = False
        self._abort = threading.Event()
        self._lock = threading.Lock()  # guards _release (consumer and abort() both take it)

    # producer side -------------------------------------------------------------------
    def put(self, chunk: Any, release: Optional[Callable[[], None]] = None,
            timeout: Optional[float] = None) -> None:
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
                    raise TimeoutError("extraction did not keep up within the timeout")

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
        if self._cur is None or self._pos >= len(self._cur):
            if not self._next():
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


def open_decoder(raw: BinaryIO, codec: str) -> BinaryIO:
    """A readable stream of the decompressed bytes of ``raw`` (zstd, gzip or none)."""
    if codec == "zstd":
        import zstandard

        return zstandard.ZstdDecompressor().stream_reader(
            raw, read_size=READ_SIZE, read_across_frames=True, closefd=False)
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

    try:
        from isal import isal_zlib as zmod
    except ImportError:  # pragma: no cover - isal is optional
        import zlib as zmod  # type: ignore[no-redef]
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


# --------------------------------------------------------------------------------------
# decompressed tar stream: forward-only reader that tarfile can parse
# --------------------------------------------------------------------------------------
class _ForwardReader:
    """Buffered forward-only reader for ``tarfile.TarFile`` (``tell``/``seek`` forward only).

    With a ``sink``, every byte below the ``allowed`` offset is passed on (the ``tar``
    engine), bytes above it are held back until :meth:`allow` moves the limit.
    """

    def __init__(self, decoded: BinaryIO, sink: Optional[Callable[[memoryview], None]] = None):
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
            view = self._buf[self._i:self._i + take]
            while len(view):
                w = os.write(fd, view)
                view = view[w:]
            self._i += take
            done += take
        return done


_HEADER = struct.Struct("100s8s8s8s12s12s8s1s100s8s32s32s8s8s155s12s")


def _block_sum(buf: bytes) -> int:
    """``sum(buf)`` of a 512-byte block, from two Adler-32 sums (C speed, exact: the byte sum
    of 256 bytes, at most 65,280, is below Adler-32's modulus)."""
    return (zlib.adler32(buf[:256]) & 0xFFFF) + (zlib.adler32(buf[256:]) & 0xFFFF) - 2


def _octal(field: bytes) -> int:
    return int(field.split(b"\0", 1)[0].strip() or b"0", 8)


class _TarInfo(tarfile.TarInfo):
    """Remembers the raw header block so the end of the archive can be checked.

    ``frombuf`` parses the common header (octal numbers, unsigned checksum) in a few calls
    instead of one per field: tar parsing runs on the extraction thread and holds the GIL,
    and this is most of its cost per member. Anything else (base-256 numbers, signed
    checksums, sparse members, bad headers) goes to tarfile's own parser, which decides.
    """

    @classmethod
    def frombuf(cls, buf, encoding, errors):  # type: ignore[override]
        if len(buf) != BLOCK or buf[156:157] == tarfile.GNUTYPE_SPARSE:
            return super().frombuf(buf, encoding, errors)  # a zero block fails the checksum
        (name, mode, uid, gid, size, mtime, chksum, typ, linkname, _magic, _uname, _gname,
         devmajor, devminor, prefix, _pad) = _HEADER.unpack(buf)
        dev = typ in (tarfile.CHRTYPE, tarfile.BLKTYPE)  # device numbers: only for devices
        try:
            nums = [int(f.rstrip(b"\0 ") or b"0", 8)
                    for f in (chksum, mode, uid, gid, size, mtime)]
            nums += [_octal(devmajor), _octal(devminor)] if dev else [0, 0]
        except ValueError:  # base-256 numbers, a NUL inside a field: tarfile decides
            return super().frombuf(buf, encoding, errors)
        if nums[0] != 256 + _block_sum(buf) - sum(chksum):
            return super().frombuf(buf, encoding, errors)
        obj = cls()
        obj.name = name.split(b"\0", 1)[0].decode(encoding, errors)
        obj.chksum, obj.mode, obj.uid, obj.gid, obj.size, obj.mtime, obj.devmajor, \
            obj.devminor = nums
        obj.type = typ
        obj.linkname = linkname.split(b"\0", 1)[0].decode(encoding, errors)
        # uname/gname stay empty: ownership is never restored
        pre = prefix.split(b"\0", 1)[0].decode(encoding, errors)
        if typ == tarfile.AREGTYPE and obj.name.endswith("/"):
            obj.type = tarfile.DIRTYPE
        if obj.type == tarfile.DIRTYPE:
            obj.name = obj.name.rstrip("/")
        if pre and obj.type not in tarfile.GNU_TYPES:
            obj.name = pre + "/" + obj.name
        return obj

    @classmethod
    def fromtarfile(cls, tf):  # type: ignore[override]
        buf = tf.fileobj.read(BLOCK)
        tf.fileobj.last_header = buf
        obj = cls.frombuf(buf, tf.encoding, tf.errors)
        obj.offset = tf.fileobj.tell() - BLOCK
        return obj._proc_member(tf)


#: Header types the fast path reads itself: regular files, directories, symlinks, hardlinks.
_FAST_TYPES = frozenset(b"0\x00521")
_FAST_TYPE_BYTES = frozenset(bytes([t]) for t in _FAST_TYPES)


def _header_in_block(tf: tarfile.TarFile, reader: _ForwardReader) -> Optional[int]:
    """The index in the reader's current block of the next header, when the parser's state is
    plain (no global pax headers, no member read ahead) and a whole header block lies there;
    None otherwise (``tf.next()`` must read it)."""
    off = tf.offset
    if tf.firstmember is not None or tf.pax_headers or reader.seek(off) != off:
        return None
    if len(reader._buf) - reader._i < BLOCK:
        return None
    return reader._i


def _next_member(tf: tarfile.TarFile, reader: _ForwardReader) -> Optional[tarfile.TarInfo]:
    """The next member, like ``tf.next()``, with less work per plain ustar header.

    A header of a common type (optionally after a pax header holding only ``path`` and
    ``linkpath``, as long names are stored) that lies whole in the reader's current block is
    parsed by ``_TarInfo.frombuf`` and the parser's state moved on here, with the same fields
    as tarfile gives; anything else (other pax keywords, GNU extension headers, global pax
    headers seen earlier, a bad or zero block, headers across blocks, a short stream) goes to
    ``tf.next()``, which decides as before. Every member still goes through the checks.
    """
    i = _header_in_block(tf, reader)
    if i is None:
        return tf.next()
    off = tf.offset
    buf = reader._buf
    pax: Optional[dict[str, str]] = None
    start = i
    if buf[i + 156] == 0x78:  # a pax header ('x') with only path/linkpath, read here
        got = _simple_pax(buf, i, tf)
        if got is None:
            return tf.next()
        pax, start = got
    if len(buf) - start < BLOCK or buf[start + 156] not in _FAST_TYPES:
        return tf.next()
    hdr = bytes(buf[start:start + BLOCK])
    try:
        ti = _TarInfo.frombuf(hdr, tf.encoding, tf.errors)
    except tarfile.HeaderError:
        return tf.next()
    if ti.type not in _FAST_TYPE_BYTES:  # pragma: no cover - frombuf keeps the header's type
        return tf.next()
    if pax is not None:  # as tarfile's _apply_pax_info for these two keywords
        if "path" in pax:
            ti.name = pax["path"].rstrip("/")
        if "linkpath" in pax:
            ti.linkname = pax["linkpath"]
        ti.pax_headers = pax
    data = off + (start - i) + BLOCK
    reader._i = start + BLOCK
    reader.last_header = hdr
    ti.offset = off
    ti.offset_data = data
    tf.offset = data + (ti._block(ti.size) if ti.isreg() else 0)  # type: ignore[attr-defined]
    return ti


def _simple_pax(buf: memoryview, i: int, tf: tarfile.TarFile) -> Optional[tuple[dict[str, str], int]]:
    """The records of the pax header at ``buf[i]`` and the offset of the header after it, when
    both lie in ``buf``, the header is valid and holds nothing but ``path`` and ``linkpath``
    records in strict UTF-8; None otherwise (tarfile then reads it)."""
    hdr = bytes(buf[i:i + BLOCK])
    try:
        xh = _TarInfo.frombuf(hdr, tf.encoding, tf.errors)
    except tarfile.HeaderError:
        return None
    if xh.type != tarfile.XHDTYPE:
        return None
    size = xh.size
    nxt = i + BLOCK + xh._block(size)  # type: ignore[attr-defined]
    if size <= 0 or len(buf) - nxt < BLOCK:
        return None
    data = bytes(buf[i + BLOCK:i + BLOCK + size])
    out: dict[str, str] = {}
    pos = 0
    try:
        while pos < size:
            sp = data.index(b" ", pos)
            digits = data[pos:sp]
            if not digits.isdigit():
                return None
            length = int(digits)
            end = pos + length
            if length <= 0 or end > size or data[end - 1] != 0x0A:
                return None
            key, eq, value = data[sp + 1:end - 1].partition(b"=")
            name = key.decode("ascii")
            if not eq or name not in ("path", "linkpath") or name in out:
                return None
            out[name] = value.decode("utf-8")
            pos = end
    except (ValueError, UnicodeDecodeError):
        return None
    return (out, nxt) if out else None


# --------------------------------------------------------------------------------------
# member checks
# --------------------------------------------------------------------------------------
@dataclass
class ExtractReport:
    members: int = 0
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    hardlinks: int = 0
    #: File bytes written.
    bytes: int = 0
    #: Bytes of the decompressed tar stream.
    tar_bytes: int = 0
    #: The single top-level directory of the archive, or None when there is not exactly one.
    top: Optional[str] = None
    #: Members whose setuid/setgid bits were dropped.
    dropped_bits: int = 0
    seconds: float = 0.0
    engine: str = "python"
    #: Members written by the C helper (``ezpz._fastx``); the rest went through Python.
    fast_members: int = 0


def _show(member: str) -> str:
    """The member's name for an error line; very long names are shortened in the middle."""
    if len(member) <= 300:
        return repr(member)
    return f"{member[:160] + '...' + member[-80:]!r} ({len(member)} characters)"


def _err(member: str, why: str) -> ArchiveError:
    return ArchiveError(f"unsafe archive member {_show(member)}: {why}; refusing to extract "
                        "(only extract archives made by ezpz-tar-env or that you trust)")


#: Member types accepted without further type checks (sparse members aside).
_PLAIN_TYPES = frozenset((tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE, tarfile.DIRTYPE,
                          tarfile.SYMTYPE, tarfile.LNKTYPE))


class MemberChecker:
    """Validates members in archive order; keeps the symlinks and files seen so far."""

    def __init__(self, dest: str) -> None:
        self.dest = dest
        self.symlinks: dict[str, str] = {}
        self._resolved: dict[str, list[str]] = {}  # parent dir -> resolved; reset with symlinks
        self.files: set[str] = set()
        self.tops: dict[str, bool] = {}  # top-level name -> is a directory
        self.has_root = False  # a "./" member: the archive holds the contents of one directory
        self._dest_len = len(os.fsencode(os.path.abspath(dest)))

    def _components(self, name: str, member: str, root_ok: bool = False) -> list[str]:
        if not name:
            raise _err(member, "empty name")
        if "\x00" in name:
            raise _err(member, "NUL byte in the name")
        if name.startswith("/") or name.startswith("\\"):
            raise _err(member, "absolute path")
        parts = name.split("/")
        if "" in parts or "." in parts:
            parts = [p for p in parts if p not in ("", ".")]
        if ".." in parts:
            raise _err(member, "'..' component escapes the destination")
        if not parts:
            if root_ok:  # "./", as `tar -C env -cf env.tar .` stores the top directory
                return parts
            raise _err(member, "names the destination itself")
        # the parts' lengths are bounded by the whole name's (in bytes; ASCII: one per char)
        raw_len = len(name) if name.isascii() else len(os.fsencode(name))
        if raw_len > NAME_MAX and any(len(os.fsencode(p)) > NAME_MAX for p in parts):
            raise _err(member, f"a path component is longer than {NAME_MAX} bytes")
        if self._dest_len + 1 + raw_len >= PATH_MAX and \
                self._dest_len + 1 + len(os.fsencode("/".join(parts))) >= PATH_MAX:
            raise _err(member, f"path longer than PATH_MAX ({PATH_MAX}) under the destination")
        return parts

    def _resolve(self, parts: list[str], member: str) -> list[str]:
        """Resolve directory ``parts`` through the archive's symlinks, lexically."""
        if not self.symlinks:
            return parts
        key = "/".join(parts)
        hit = self._resolved.get(key)
        if hit is None:
            hit = self._resolved[key] = self._resolve_walk(parts, member)
        return hit

    def _resolve_walk(self, parts: list[str], member: str) -> list[str]:
        out: list[str] = []
        todo = list(parts)
        hops = 0
        via = None
        while todo:
            c = todo.pop(0)
            if c in ("", "."):
                continue
            if c == "..":
                if not out:
                    raise _err(member, f"written through symlink {via!r} which points outside "
                                       "the destination")
                out.pop()
                continue
            key = "/".join(out + [c])
            target = self.symlinks.get(key)
            if target is None:
                out.append(c)
                continue
            hops += 1
            via = key
            if hops > 40:
                raise _err(member, "too many levels of symbolic links")
            if target.startswith("/"):
                raise _err(member, f"written through symlink {key!r} -> {target!r} which points "
                                   "outside the destination")
            todo = target.split("/") + todo
        return out

    @staticmethod
    def _check_type(ti: tarfile.TarInfo, member: str) -> None:
        if ti.ischr() or ti.isblk():
            raise _err(member, "device node")
        if ti.isfifo():
            raise _err(member, "FIFO (named pipe)")
        if ti.issparse():
            raise _err(member, "sparse file (not supported)")
        if not (ti.isreg() or ti.isdir() or ti.issym() or ti.islnk()):
            raise _err(member, f"unsupported member type {ti.type!r}")
        if ti.isreg() and ti.type not in (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE):
            raise _err(member, f"unsupported member type {ti.type!r}")

    def check(self, ti: tarfile.TarInfo) -> tuple[str, int]:
        """(relative path, mode to apply) for a member, or ArchiveError naming it."""
        member = ti.name
        parts = self._components(ti.name, member, root_ok=ti.type == tarfile.DIRTYPE)
        if not parts:  # the destination directory itself: it takes the member's mode and mtime
            self.has_root = True  # and the archive's entries are its contents
            return "", ti.mode & 0o7777 & ~_DROP_BITS
        if ti.type not in _PLAIN_TYPES or ti.sparse is not None:  # type: ignore[attr-defined]
            self._check_type(ti, member)
        parent = self._resolve(parts[:-1], member)
        rel = "/".join(parent + [parts[-1]])
        if ti.islnk():
            link = ti.linkname
            if not link or link.startswith("/"):
                raise _err(member, f"hardlink to absolute path {link!r}")
            lparts = [p for p in link.split("/") if p not in ("", ".")]
            if ".." in lparts:
                raise _err(member, f"hardlink target {link!r} escapes the destination")
            lres = "/".join(self._resolve(lparts[:-1], member) + lparts[-1:])
            if lres not in self.files:
                raise _err(member, f"hardlink target {link!r} is not a file extracted earlier")
        if ti.issym():
            if not ti.linkname:
                raise _err(member, "symlink with an empty target")
            self.symlinks[rel] = ti.linkname
            self._resolved.clear()
        elif self.symlinks.pop(rel, None) is not None:
            self._resolved.clear()
        if ti.isreg() or ti.islnk():
            self.files.add(rel)
        else:
            self.files.discard(rel)
        top = parts[0]
        is_dir = len(parts) > 1 or ti.isdir()
        self.tops[top] = self.tops.get(top, True) and is_dir
        mode = ti.mode & 0o7777
        return rel, mode & ~_DROP_BITS

    def single_top(self) -> Optional[str]:
        if len(self.tops) == 1 and not self.has_root:
            (name, is_dir), = self.tops.items()
            if is_dir:
                return name
        return None


# --------------------------------------------------------------------------------------
# extraction
# --------------------------------------------------------------------------------------
def _check_end(reader: _ForwardReader, tf: tarfile.TarFile, label: str) -> None:
    last = reader.last_header
    if len(last) < BLOCK:
        raise ArchiveError(f"{label}: truncated archive (the tar stream ends at byte "
                           f"{reader.delivered} without an end-of-archive marker); re-create "
                           "or re-copy the archive")
    if last != _ZERO_BLOCK:
        raise ArchiveError(f"{label}: corrupt tar header at byte {tf.offset} of the tar "
                           "stream; re-create or re-copy the archive")


def _decode_error(exc: BaseException, label: str, codec: str) -> ArchiveError:
    what = {"zstd": "zstd", "gzip": "gzip", "none": "tar"}.get(codec, codec)
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return ArchiveError(f"{label}: corrupt or truncated {what} data ({msg}); re-create or "
                        "re-copy the archive")


class SafeExtractor:
    """Extract one tar stream into ``dest`` (an existing, empty directory), checking members.

    ``run(decoded)`` reads the decompressed stream to its end and returns an
    :class:`ExtractReport`. ``label`` (usually the archive path) prefixes errors.
    """

    def __init__(self, dest: str, *, engine: str = "python", label: str = "archive") -> None:
        if engine not in ENGINES:
            raise ArchiveError(f"transfer.extractor: {engine!r} is not an engine "
                               f"(choose {' or '.join(ENGINES)})")
        self.dest = os.path.abspath(dest)
        self._prefix = self.dest.rstrip("/") + "/"
        self.engine = engine
        self.label = label
        self.checker = MemberChecker(self.dest)
        self.report = ExtractReport(engine=engine)
        self._dirs: list[tuple[str, int, float]] = []
        self._made: set[str] = {self.dest, self._prefix[:-1]}
        self._member = ""
        self._declared = 0
        self._free = _free_bytes(self.dest)
        self._umask = _umask()
        self._fast = _load_fast() if engine == "python" else None
        self._prefix_b = os.fsencode(self._prefix)

    def _check_space(self, ti: tarfile.TarInfo) -> None:
        """Refuse, before writing it, the member whose declared size no longer fits."""
        self._declared += ti.size
        if self._free is not None and self._declared > self._free:
            from .config import format_size

            raise ArchiveError(
                f"{self.label}: member {ti.name!r} declares {format_size(ti.size)}, which brings "
                f"the archive to {format_size(self._declared)}, more than the "
                f"{format_size(self._free)} free in {self.dest}; refusing to extract (free space "
                "or choose another transfer.dst)")

    # python engine helpers -----------------------------------------------------------
    def _mkparents(self, path: str) -> None:
        parent = path.rpartition("/")[0]
        if parent in self._made:
            return
        os.makedirs(parent, mode=0o700, exist_ok=True)
        self._made.add(parent)

    def _clear(self, path: str, member: str, for_dir: bool = False) -> None:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            if for_dir:
                return
            raise _err(member, "replaces a directory extracted earlier")
        os.unlink(path)

    def _write(self, tf: tarfile.TarFile, reader: _ForwardReader, ti: tarfile.TarInfo,
               rel: str, mode: int) -> None:
        path = self._prefix + rel  # rel is relative, checked and without empty components
        self._mkparents(path)
        member = ti.name
        if ti.isdir():
            self._clear(path, member, for_dir=True)
            if not os.path.isdir(path):
                os.mkdir(path, 0o700)
            self._made.add(path)
            self._dirs.append((path, mode, ti.mtime))
            self.report.dirs += 1
        elif ti.isreg():
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            # created with its final mode when the umask keeps all of it (no fchmod then)
            direct = self._umask is not None and not mode & self._umask
            first = mode if direct else 0o600
            try:  # a fresh path is the rule: clear only when something is there
                fd = os.open(path, flags, first)
            except FileExistsError:
                self._clear(path, member)
                fd = os.open(path, flags, first)
            try:
                reader.seek(ti.offset_data)
                n = reader.copy_to(fd, ti.size)
                if n != ti.size:
                    raise ArchiveError(f"{self.label}: truncated archive (member {member!r} has "
                                       f"{n} of {ti.size} bytes); re-create or re-copy the archive")
                if not direct:
                    os.fchmod(fd, mode)
                os.utime(fd, (ti.mtime, ti.mtime))
            finally:
                os.close(fd)
            self.report.files += 1
            self.report.bytes += ti.size
        elif ti.issym():
            self._clear(path, member)
            os.symlink(ti.linkname, path)
            try:
                os.utime(path, (ti.mtime, ti.mtime), follow_symlinks=False)
            except OSError:  # pragma: no cover - filesystems without lutimes
                pass
            self.report.symlinks += 1
        elif ti.islnk():
            self._clear(path, member)
            os.link(os.path.join(self.dest, ti.linkname), path, follow_symlinks=False)
            self.report.hardlinks += 1

    def _fast_members(self, tf: tarfile.TarFile, reader: _ForwardReader) -> None:
        """Let the C helper write the plain members that follow in the reader's block."""
        i = _header_in_block(tf, reader)
        if i is None:
            return
        off = tf.offset
        budget = -1 if self._free is None else max(0, self._free - self._declared)
        c = self.checker
        pos, last, members, files, dirs, nbytes, declared = self._fast.run(
            reader._buf, i, self._prefix_b, self._made, self._dirs, c.files, c.symlinks,
            c.tops, -1 if self._umask is None else self._umask, budget)
        if not members:
            return
        reader._i = pos
        reader.last_header = bytes(reader._buf[last:last + BLOCK])
        tf.offset = off + (pos - i)
        r = self.report
        r.members += members
        r.fast_members += members
        r.files += files
        r.dirs += dirs
        r.bytes += nbytes
        self._declared += declared

    def _finish_dirs(self) -> None:
        for path, mode, mtime in sorted(self._dirs, key=lambda d: d[0], reverse=True):
            os.chmod(path, mode)
            os.utime(path, (mtime, mtime))

    # the loop --------------------------------------------------------------------------
    def run(self, decoded: BinaryIO, codec: str = "none") -> ExtractReport:
        t0 = time.perf_counter()
        proc = None
        errfile = None
        sink = None
        if self.engine == "tar":
            errfile = tempfile.TemporaryFile()
            proc = subprocess.Popen(
                ["tar", "-x", "-f", "-", "-C", self.dest, "--no-same-owner",
                 "--no-overwrite-dir"],
                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=errfile)
            assert proc.stdin is not None
            pipe_fd = proc.stdin.fileno()

            def sink(view: memoryview) -> None:
                while len(view):
                    w = os.write(pipe_fd, view)
                    view = view[w:]
        reader = _ForwardReader(decoded, sink)
        fixups: list[tuple[str, int]] = []
        try:
            try:
                tf = tarfile.TarFile(fileobj=reader, mode="r", tarinfo=_TarInfo,  # type: ignore[arg-type]
                                     errorlevel=2)
                fast = self._fast is not None and proc is None
                while True:
                    if fast:
                        self._fast_members(tf, reader)
                    ti = _next_member(tf, reader)
                    tf.members.clear()  # keep memory flat: members are not needed later
                    if ti is None:
                        break
                    rel, mode = self.checker.check(ti)
                    self._member = ti.name
                    if ti.isreg():
                        self._check_space(ti)
                    self.report.members += 1
                    if ti.mode & _DROP_BITS:
                        self.report.dropped_bits += 1
                    if proc is None:
                        self._write(tf, reader, ti, rel, mode)
                    else:
                        if ti.mode & _DROP_BITS and not ti.issym():
                            fixups.append((rel, mode))
                        reader.allow(tf.offset)
                        self._count(ti)
                _check_end(reader, tf, self.label)
                if proc is not None:
                    reader.finish_sink()
                else:
                    while reader.read(READ_SIZE):  # decode the rest (trailing zero blocks)
                        pass
            except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
                if isinstance(exc, BrokenPipeError) and proc is not None:
                    raise ArchiveError(f"{self.label}: tar failed: "
                                       f"{self._tar_stderr(proc, errfile)}") from exc
                if isinstance(exc, OSError) and not _is_decode_error(exc):
                    where = f"member {self._member!r} into " if self._member else ""
                    fix = ("; free space or choose another transfer.dst"
                           if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "")
                    raise ArchiveError(f"{self.label}: cannot write {where}{self.dest}: "
                                       f"{exc.strerror or exc}{fix}") from exc
                raise _decode_error(exc, self.label, codec) from exc
            except Exception as exc:  # zstandard.ZstdError, zlib.error
                if type(exc).__name__ in ("ZstdError", "error", "BadGzipFile"):
                    raise _decode_error(exc, self.label, codec) from exc
                raise
            if proc is not None:
                assert proc.stdin is not None
                proc.stdin.close()
                rc = proc.wait()
                if rc != 0:
                    raise ArchiveError(f"{self.label}: tar failed (exit {rc}): "
                                       f"{self._tar_stderr(proc, errfile)}")
                for rel, mode in fixups:
                    path = os.path.join(self.dest, rel)
                    if not os.path.islink(path):
                        os.chmod(path, mode)
            else:
                self._finish_dirs()
        finally:
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
            if errfile is not None:
                errfile.close()
        self.report.top = self.checker.single_top()
        self.report.tar_bytes = reader.delivered
        self.report.seconds = time.perf_counter() - t0
        return self.report

    def _count(self, ti: tarfile.TarInfo) -> None:
        r = self.report
        if ti.isdir():
            r.dirs += 1
        elif ti.issym():
            r.symlinks += 1
        elif ti.islnk():
            r.hardlinks += 1
        else:
            r.files += 1
            r.bytes += ti.size

    @staticmethod
    def _tar_stderr(proc: subprocess.Popen, errfile: Any) -> str:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover
            proc.kill()
        errfile.seek(0)
        lines = [ln for ln in errfile.read().decode(errors="replace").splitlines() if ln.strip()]
        return lines[0] if lines else f"exit code {proc.returncode}"


def _free_bytes(path: str) -> Optional[int]:
    """Bytes an unprivileged user may still write under ``path``; None when unknown."""
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    if not st.f_blocks:  # pseudo filesystems report no size
        return None
    return st.f_bavail * st.f_frsize


def _umask() -> Optional[int]:
    """The process's umask, read without changing it (Linux); None when unknown."""
    try:
        with open("/proc/self/status", "rb") as fh:
            for line in fh:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _is_decode_error(exc: OSError) -> bool:
    # igzip/gzip raise BadGzipFile (an OSError) for corrupt data
    return type(exc).__name__ in ("BadGzipFile",)


# --------------------------------------------------------------------------------------
# convenience
# --------------------------------------------------------------------------------------
def extract_stream(raw: BinaryIO, dest: str, *, codec: Optional[str] = None,
                   engine: str = "python", label: str = "archive") -> ExtractReport:
    """Decompress ``raw`` (codec detected from its first bytes unless given) into ``dest``."""
    if codec is None:
        head = _peek(raw)
        codec = detect(head)
        raw = _Prepend(head, raw)  # type: ignore[assignment]
    if codec not in ("zstd", "gzip", "none"):
        raise ArchiveError(f"{label}: not a tar, .tar.gz or .tar.zst archive (detected "
                           f"{codec}); pass transfer.decompress=false to copy it as a file")
    try:
        decoded = open_decoder(raw, codec)
    except Exception as exc:  # noqa: BLE001
        raise _decode_error(exc, label, codec) from exc
    return SafeExtractor(dest, engine=engine, label=label).run(decoded, codec)


def extract_file(path: str, dest: str, *, engine: str = "python") -> ExtractReport:
    """Extract the archive at ``path`` into the existing directory ``dest``."""
    try:
        fh = open(path, "rb", buffering=0)
    except OSError as exc:
        raise ArchiveError(f"cannot read archive {path}: {exc.strerror or exc}") from exc
    with fh:
        return extract_stream(fh, dest, engine=engine, label=path)


def _peek(raw: BinaryIO) -> bytes:
    head = b""
    while len(head) < DETECT_BYTES:
        more = raw.read(DETECT_BYTES - len(head))
        if not more:
            break
        head += more
    return head


class _Prepend(io.RawIOBase):
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
