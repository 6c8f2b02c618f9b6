"""Reading tar archives: the one header parser of ezpz.

:class:`TarReader` reads a forward-only stream of tar bytes and parses every header exactly
once into a :class:`Member` (ustar, pax with global headers, GNU long names and long links,
octal and base-256 numbers). Extraction (both engines), the manifest reader and the tools
all read archives through it; the checks (``ezpz.extract.checks``) see what it returns and
the writers write what the checks accepted, so no two parsers can read one header two ways.

Every length read from the input is checked before memory is allocated for it:

- a pax extended header (one member's, or a global one) holds at most ``PAX_MAX`` (64 KiB):
  room for a path and a link target of ``PATH_MAX`` each plus the usual times, ids and
  extended attributes, orders of magnitude below what could strain a node;
- a GNU long name or long link holds at most ``GNU_LONG_MAX`` (16 KiB): four times
  ``PATH_MAX``, so that a name too long to create still reaches the checks, which refuse it
  with the member named, while nothing near a node's memory is ever allocated for one;
- sizes are octal or positive base-256; negative sizes are refused; a member's data is never
  read into memory by the reader (it is handed over as a view of the decoded block, or
  streamed).

Semantics that differ between tar implementations are decided here once: the ustar prefix
field is read only under the POSIX magic (``ustar\\0`` ``00``), as GNU tar does (under GNU
magic those bytes hold times); pax ``path``/``linkpath``/``size``/``mtime`` override the
header; a pax header wins over a GNU long name, which wins over the header's name; a global
pax header may set ``mtime`` (other keywords that would change what is written are refused);
sparse members (``S``, or pax ``GNU.sparse.*``) are marked and refused by the checks.
"""

from __future__ import annotations

import re
import struct
import zlib
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO, NamedTuple

from ..errors import ArchiveError
from ..fsutil import write_all

BLOCK = 512
ZERO_BLOCK = bytes(BLOCK)
#: Longest path (bytes) Linux accepts; names and link targets are checked against it.
PATH_MAX = 4096
#: Largest pax extended header accepted (see the module docstring).
PAX_MAX = 64 * 1024
#: Largest GNU long name / long link member (see the module docstring).
GNU_LONG_MAX = 16 * 1024
#: Bytes read from the source at a time.
READ_SIZE = 1 << 20

REGTYPE, AREGTYPE, LNKTYPE, SYMTYPE = b"0", b"\0", b"1", b"2"
CHRTYPE, BLKTYPE, DIRTYPE, FIFOTYPE, CONTTYPE = b"3", b"4", b"5", b"6", b"7"
PAXTYPE, GLOBALTYPE, LONGNAME, LONGLINK, SPARSE = b"x", b"g", b"L", b"K", b"S"
#: Types whose data follows the header (regular files and any type this reader does not
#: know, as GNU tar treats them); the others carry no data.
_NO_DATA = frozenset((LNKTYPE, SYMTYPE, CHRTYPE, BLKTYPE, DIRTYPE, FIFOTYPE))
_REGULAR = frozenset((REGTYPE, AREGTYPE, CONTTYPE))

_HEADER = struct.Struct("100s8s8s8s12s12s8sc100s8s32s32s8s8s155s12x")
#: The common header, read in one call: name, mode, the byte after it, size, the byte after
#: it, mtime, the byte after it, checksum digits, the two bytes after them, type, link name,
#: magic.
_PLAIN = struct.Struct("100s7sB16x11sB11sB6sBBc100s8s")
_PLAIN_TYPES = frozenset((REGTYPE, DIRTYPE, SYMTYPE, LNKTYPE, PAXTYPE))
_POSIX_MAGIC = b"ustar\x0000"
_PAX_MTIME = re.compile(rb"-?[0-9]{1,20}(?:\.[0-9]*)?\Z")
#: Largest value a size may take (a signed 64-bit off_t).
SIZE_MAX = (1 << 63) - 1
OCTAL11_MAX = 8**11 - 1


class Member(NamedTuple):
    """One archive member as the header(s) describe it (nothing checked yet)."""

    name: str  # as stored (after pax path / GNU long name / ustar prefix)
    type: bytes  # the typeflag; regular files are REGTYPE, AREGTYPE or CONTTYPE
    mode: int  # permission bits as stored (& 0o7777)
    size: int  # data bytes after the header
    mtime: int
    linkname: str
    offset: int  # of the (first extended) header in the tar stream
    offset_data: int
    sparse: bool = False

    def isreg(self) -> bool:
        return self.type in _REGULAR

    def isdir(self) -> bool:
        return self.type == DIRTYPE

    def issym(self) -> bool:
        return self.type == SYMTYPE

    def islnk(self) -> bool:
        return self.type == LNKTYPE


_new = tuple.__new__
#: (name, type, mode (None when not a number), size, mtime, link name) of one header.
_Fields = tuple[bytes, bytes, Any, int, int, bytes]


def _block_sum(buf: Any, i: int) -> int:
    """The unsigned byte sum of the header block at ``buf[i]`` (two Adler-32 sums, exact:
    the byte sum of 256 bytes, at most 65,280, is below Adler-32's modulus)."""
    return ((zlib.adler32(buf[i:i + 256]) & 0xFFFF)
            + (zlib.adler32(buf[i + 256:i + BLOCK]) & 0xFFFF) - 2)


def _octal(field: bytes) -> int | None:
    """An octal field: optional leading spaces, digits, then only NULs and spaces. None for
    anything else."""
    s = field.rstrip(b"\0 ").lstrip(b" ")
    if not s:
        return 0
    if not s.isdigit() or b"8" in s or b"9" in s:
        return None
    return int(s, 8)


def _number(field: bytes) -> int | None:
    """An octal or positive base-256 field; None when neither (negative base-256 included)."""
    if field[0] == 0x80:
        return int.from_bytes(field[1:], "big")
    if field[0] & 0x80:
        return None
    return _octal(field)


class TarReader:
    """Headers and data of a tar stream, read forward once. ``label`` names the archive in
    errors."""

    def __init__(self, src: BinaryIO, label: str = "archive", read_size: int = READ_SIZE) -> None:
        self._src = src
        self.label = label
        self._read_size = read_size
        self._buf = memoryview(b"")
        self._i = 0
        self._base = 0  # stream offset of _buf[0]
        self._eof = False
        self.delivered = 0  # bytes read from src
        self._data = 0  # data bytes of the current member not consumed yet
        self._pad = 0  # padding after them
        self._global_mtime: int | None = None
        self.ended = False  # the end-of-archive block was read
        self._plain_ok = True  # the common header may be read the short way (no global
        # pax header seen, the end not reached)
        #: called with (stream offset, block) for every block read from src, in order
        self.on_block: Callable[[int, bytes], None] | None = None
        self.blocks = 0  # blocks read from src so far (a new one invalidates nothing: views
        # keep their block alive, but a writer holding views may want to let go)

    # -- the buffer ---------------------------------------------------------------------
    def _fill(self) -> bool:
        if self._eof:
            return False
        data = self._src.read(self._read_size)
        if not data:
            self._eof = True
            return False
        if not isinstance(data, bytes):  # views of a writer's buffer must not be kept
            data = bytes(data)
        self._base += len(self._buf)
        self.blocks += 1
        self._buf = memoryview(data)
        self._i = 0
        self.delivered += len(data)
        if self.on_block is not None:
            self.on_block(self._base, data)
        return True

    def tell(self) -> int:
        return self._base + self._i

    def _read(self, n: int) -> bytes:
        """Exactly ``n`` bytes (fewer only at the end of the stream)."""
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

    def _spans(self, n: int, size: int | None = None) -> Iterator[memoryview]:
        """The next ``n`` bytes (fewer at the end of the stream) as views of the decoded
        blocks of at most ``size`` bytes, each consumed as it is handed out."""
        done = 0
        while done < n:
            avail = len(self._buf) - self._i
            if avail == 0:
                if not self._fill():
                    return
                continue
            take = min(avail, n - done) if size is None else min(avail, n - done, size)
            start = self._i
            self._i += take
            done += take
            yield self._buf[start:start + take]

    def _skip(self, n: int) -> int:
        """Skip ``n`` bytes; returns how many were there."""
        return sum(len(span) for span in self._spans(n))

    def _truncated(self, what: str) -> ArchiveError:
        return ArchiveError(f"{self.label}: truncated archive ({what}; the tar stream ends at "
                            f"byte {self.delivered}); re-create or re-copy the archive")

    def _corrupt(self, offset: int, why: str) -> ArchiveError:
        return ArchiveError(f"{self.label}: corrupt tar header at byte {offset} of the tar "
                            f"stream ({why}); re-create or re-copy the archive")

    # -- data of the current member ----------------------------------------------------
    def data_view(self) -> memoryview | None:
        """The current member's whole data as a view of the decoded block (no copy) when it
        lies there, and the member is consumed; None otherwise."""
        n = self._data
        i = self._i
        avail = len(self._buf) - i
        if avail < n:
            return None
        pad = self._pad
        if avail >= n + pad:
            self._i = i + n + pad
            self._pad = 0
        else:
            self._i = i + n
        self._data = 0
        return self._buf[i:i + n]

    def read_data(self, limit: int) -> bytes:
        """The current member's data in memory; ArchiveError when it is larger than
        ``limit`` (nothing read then)."""
        if self._data > limit:
            raise ArchiveError(f"{self.label}: a member of {self._data} bytes is larger than "
                               f"the {limit} bytes ezpz reads into memory here")
        n = self._data
        out = self._read(n)
        self._data = 0
        if len(out) != n:
            raise self._truncated(f"a member has {len(out)} of its {n} bytes")
        return out

    def copy_data(self, fd: int, name: str) -> int:
        """Write the current member's data to ``fd`` without extra copies."""
        n = self._data
        done = 0
        for span in self._spans(n):
            write_all(fd, span)
            done += len(span)
        self._data = 0
        if done != n:
            raise self._truncated(f"member {name!r} has {done} of its {n} bytes")
        return done

    def iter_data(self, name: str, size: int = READ_SIZE) -> Any:
        """The current member's data as views of at most ``size`` bytes."""
        n = self._data
        done = 0
        for view in self._spans(n, size):
            done += len(view)
            self._data = n - done
            yield view
        if done != n:
            self._data = 0
            raise self._truncated(f"member {name!r} has {done} of its {n} bytes")

    def _finish_member(self) -> None:
        left = self._data + self._pad
        if left:
            self._data = self._pad = 0
            if self._skip(left) != left:
                raise self._truncated("a member's data is cut short")

    # -- headers -------------------------------------------------------------------------
    def _header(self) -> tuple[Any, int, int]:
        """(buffer, index of a whole header block in it, stream offset)."""
        off = self.tell()
        if len(self._buf) - self._i >= BLOCK:
            i = self._i
            self._i = i + BLOCK
            return self._buf, i, off
        blk = self._read(BLOCK)
        if len(blk) < BLOCK:
            raise self._truncated("no end-of-archive marker" if not blk else
                                  "a header is cut short")
        return blk, 0, off

    def next(self) -> Member | None:
        """The next member, or None at the end of the archive."""
        if self._data or self._pad:
            self._finish_member()
        buf = self._buf
        i = self._i
        if len(buf) - i >= BLOCK and self._plain_ok:
            f = _plain(buf, i)  # the common header, whole in the block
            if f is None:
                return self._next_general()
            off = self._base + i
            name, typ, mode, size, mtime, link = f
            if typ == PAXTYPE:
                # a pax header holding only a long path or link target (as ezpz-tar-env,
                # tarfile and GNU tar store long names), then a common header
                if size > PAX_MAX:
                    return self._next_general()
                end = i + BLOCK + size
                nxt = end + (-size % BLOCK)
                if len(buf) - nxt < BLOCK:
                    return self._next_general()
                rec = _pax_simple(buf[i + BLOCK:end].tobytes())
                g = _plain(buf, nxt) if rec is not None else None
                if rec is None or g is None or g[1] == PAXTYPE:
                    return self._next_general()
                i = nxt
                name, typ, mode, size, mtime, link = g
                name = rec.get(b"path", name)
                link = rec.get(b"linkpath", link)
            self._i = i + BLOCK
            if typ == REGTYPE:
                self._data = size
                self._pad = -size % BLOCK
            return _new(Member, (
                name.split(b"\0", 1)[0].decode("utf-8", "surrogateescape"), typ,
                mode & 0o7777, size, mtime,
                link.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
                if link and link[0] else "",
                off, self._base + i + BLOCK, False))
        return self._next_general()

    def _fields(self, buf: Any, i: int, off: int) -> _Fields | None:
        """The header at ``buf[i]`` read in full: (name, type, mode or None, size, mtime,
        link name), prefix applied; None for the end-of-archive block."""
        (name, mode, _uid, _gid, size_f, mtime_f, chksum, typ, linkname, magic, _un, _gn,
         _dmaj, _dmin, prefix) = _HEADER.unpack_from(buf, i)
        total = _block_sum(buf, i)
        if total == 0:  # an all-zero block ends the archive
            return None
        stored = _octal(chksum)
        if stored is None or (stored != total - sum(chksum) + 256
                              and stored != _signed_sum(buf, i)):
            raise self._corrupt(off, "checksum mismatch")
        size = _number(size_f)
        if size is None:
            raise self._corrupt(off, "the size field is negative or not a number")
        mtime = _number(mtime_f)
        if mtime is None:
            mtime = 0  # a negative base-256 time: the epoch
        if prefix[0] and magic == _POSIX_MAGIC:
            name = prefix.split(b"\0", 1)[0] + b"/" + name.split(b"\0", 1)[0]
        return name, typ, _octal(mode), size, mtime, linkname

    def _next_general(self) -> Member | None:
        """Any header: extended headers (pax, global pax, GNU long name and link) first."""
        if self.ended:
            return None
        pax: dict[bytes, bytes] | None = None
        longname: bytes | None = None
        longlink: bytes | None = None
        first = off = -1
        name = typ = linkname = b""
        mode: int | None = None
        size = mtime = 0
        while True:
            buf, i, off = self._header()
            if first < 0:
                first = off
            f = _plain(buf, i) or self._fields(buf, i, off)
            if f is None:
                if pax is not None or longname is not None or longlink is not None:
                    raise self._corrupt(off, "an extended header without a member")
                self.ended = True
                self._plain_ok = False
                return None
            name, typ, mode, size, mtime, linkname = f
            if typ in (PAXTYPE, GLOBALTYPE):
                if size > PAX_MAX:
                    raise self._corrupt(off, f"a pax header of {size} bytes, more than the "
                                             f"{PAX_MAX // 1024} KiB ezpz accepts")
                records = _pax_records(self._ext_data(size, off), off, self)
                if typ == GLOBALTYPE:
                    self._apply_global(records, off)
                    continue
                if pax is not None:
                    raise self._corrupt(off, "two pax headers for one member")
                pax = records
                continue
            if typ in (LONGNAME, LONGLINK):
                if size > GNU_LONG_MAX:
                    raise self._corrupt(off, f"a GNU long {'name' if typ == LONGNAME else 'link'}"
                                             f" of {size} bytes, more than the "
                                             f"{GNU_LONG_MAX // 1024} KiB ezpz accepts")
                value = self._ext_data(size, off).split(b"\0", 1)[0]
                if typ == LONGNAME:
                    if longname is not None:
                        raise self._corrupt(off, "two GNU long names for one member")
                    longname = value
                else:
                    if longlink is not None:
                        raise self._corrupt(off, "two GNU long links for one member")
                    longlink = value
                continue
            break
        # the member itself
        if mode is None:
            raise self._corrupt(off, "the mode field is not an octal number")
        raw_name = name.split(b"\0", 1)[0]
        link = linkname.split(b"\0", 1)[0]
        if longname is not None:
            raw_name = longname
        if longlink is not None:
            link = longlink
        sparse = typ == SPARSE
        if self._global_mtime is not None:
            mtime = self._global_mtime
        if pax is not None:
            if b"path" in pax:
                raw_name = pax[b"path"]
            if b"linkpath" in pax:
                link = pax[b"linkpath"]
            if b"size" in pax:
                size = _pax_int(pax[b"size"], off, self)
            if b"mtime" in pax:
                mtime = _pax_mtime(pax[b"mtime"])
            if any(k.startswith(b"GNU.sparse.") for k in pax):
                sparse = True
        if typ == AREGTYPE and raw_name.endswith(b"/"):
            typ = DIRTYPE  # the old convention for directories
        data = self.tell()
        if typ in _NO_DATA:
            self._data = self._pad = 0
        else:
            self._data = size
            self._pad = -size % BLOCK
        return Member(raw_name.decode("utf-8", "surrogateescape"), typ, mode & 0o7777, size,
                      min(max(mtime, 0), OCTAL11_MAX),
                      link.decode("utf-8", "surrogateescape"), first, data, sparse)

    def _ext_data(self, size: int, off: int) -> bytes:
        data = self._read(size)
        if len(data) != size:
            raise self._truncated("an extended header is cut short")
        pad = -size % BLOCK
        if self._skip(pad) != pad:
            raise self._truncated("an extended header is cut short")
        return data

    def _apply_global(self, records: dict[bytes, bytes], off: int) -> None:
        for key in records:
            if key in (b"path", b"linkpath", b"size") or key.startswith(b"GNU.sparse."):
                raise self._corrupt(off, f"a global pax header sets {key.decode(errors='replace')!r}"
                                         " for every member")
        if b"mtime" in records:
            self._global_mtime = _pax_mtime(records[b"mtime"])
            self._plain_ok = False

    def drain(self) -> None:
        """Read (and decode) the rest of the stream: trailing blocks, the decoder's checks."""
        self._finish_member()
        self._i = len(self._buf)
        while self._fill():
            self._i = len(self._buf)


def _plain(buf: Any, i: int) -> _Fields | None:
    """The header at ``buf[i]`` when it has the common form (a regular file, directory,
    symlink, hardlink or pax header; octal numbers of full width ending in NUL; no ustar
    prefix; a valid unsigned checksum): (name, type, mode, size, mtime, link name), the same
    values :meth:`TarReader._fields` gives; None for anything else."""
    (name, mode, mode_end, size_f, size_end, mtime_f, mtime_end, chksum, chk_end, chk_last, typ,
     link, magic) = _PLAIN.unpack_from(buf, i)
    if (typ in _PLAIN_TYPES and not (mode_end | size_end | mtime_end | chk_end)
            and mode.isdigit() and size_f.isdigit() and mtime_f.isdigit() and chksum.isdigit()
            and (magic != _POSIX_MAGIC or not buf[i + 345])):
        try:  # int() refuses the digits 8 and 9
            total = ((zlib.adler32(buf[i:i + 256]) & 0xFFFF)
                     + (zlib.adler32(buf[i + 256:i + BLOCK]) & 0xFFFF) - 2)
            if int(chksum, 8) == total - sum(chksum) - chk_last + 256:
                return name, typ, int(mode, 8), int(size_f, 8), int(mtime_f, 8), link
        except ValueError:
            pass
    return None


_SIMPLE_KEYS = frozenset((b"path", b"linkpath"))


def _pax_simple(data: bytes) -> dict[bytes, bytes] | None:
    """The records of a pax header holding nothing but ``path`` and/or ``linkpath`` (each
    once, no NUL byte in the value), or None (the general path then reads it)."""
    out: dict[bytes, bytes] = {}
    pos = 0
    n = len(data)
    while pos < n:
        sp = data.find(b" ", pos, pos + 21)
        if sp < 0:
            return None
        digits = data[pos:sp]
        if not digits.isdigit():
            return None
        end = pos + int(digits)
        if end > n or end <= sp or data[end - 1] != 0x0A:
            return None
        key, eq, value = data[sp + 1:end - 1].partition(b"=")
        if key not in _SIMPLE_KEYS or key in out or b"\0" in value:
            return None
        out[key] = value
        pos = end
    return out or None


def _signed_sum(buf: Any, i: int) -> int:
    """The header checksum with bytes read as signed (old tars), as tarfile and GNU tar accept."""
    blk = bytes(buf[i:i + BLOCK])
    head: tuple[int, ...] = struct.unpack_from("148b", blk)
    tail: tuple[int, ...] = struct.unpack_from("356b", blk, 156)
    return sum(head) + 256 + sum(tail)


def _pax_records(data: bytes, off: int, reader: TarReader) -> dict[bytes, bytes]:
    """The records of a pax extended header: ``"%d %s=%s\\n"``, each length checked."""
    out: dict[bytes, bytes] = {}
    pos = 0
    n = len(data)
    while pos < n:
        if data[pos] == 0:  # NUL padding after the last record
            if data[pos:].strip(b"\0"):
                raise reader._corrupt(off, "bytes after a pax header's NUL padding")
            break
        sp = data.find(b" ", pos, pos + 21)
        digits = data[pos:sp] if sp > 0 else b""
        if not digits.isdigit():
            raise reader._corrupt(off, "a malformed pax record")
        length = int(digits)
        end = pos + length
        if length <= len(digits) + 1 or end > n or data[end - 1] != 0x0A:
            raise reader._corrupt(off, "a pax record's length does not match")
        key, eq, value = data[sp + 1:end - 1].partition(b"=")
        if not eq or not key:
            raise reader._corrupt(off, "a pax record without a keyword")
        out[key] = value
        pos = end
    return out


def _pax_int(value: bytes, off: int, reader: TarReader) -> int:
    if not value.isdigit() or len(value) > 19 or int(value) > SIZE_MAX:
        raise reader._corrupt(off, "a pax size that is not a non-negative number")
    return int(value)


def _pax_mtime(value: bytes) -> int:
    if not _PAX_MTIME.match(value):
        return 0
    return int(value.split(b".", 1)[0])


def iter_archive(src: BinaryIO, label: str = "archive", data_limit: int = 64 << 20) -> Any:
    """(Member, data or None) for every member (tests and tools; data of regular files up to
    ``data_limit`` bytes, larger ones refused)."""
    reader = TarReader(src, label)
    while True:
        m = reader.next()
        if m is None:
            return
        data = reader.read_data(data_limit) if m.isreg() else None
        yield m, data
