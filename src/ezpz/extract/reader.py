"""Reading tar headers: tarfile's parser with a fast path for the common headers.

``HeaderInfo.frombuf`` parses the common header in a few calls; :func:`next_member` reads a
plain ustar header (optionally after a pax header holding only ``path``/``linkpath``) that
lies whole in the reader's block without tarfile's per-member machinery; anything else goes
to tarfile, which decides.
"""

from __future__ import annotations

import struct
import tarfile
import zlib

from ..errors import ArchiveError
from .streams import ForwardReader

BLOCK = tarfile.BLOCKSIZE
ZERO_BLOCK = bytes(BLOCK)


_HEADER = struct.Struct("100s8s8s8s12s12s8s1s100s8s32s32s8s8s155s12s")


def _block_sum(buf: bytes) -> int:
    """``sum(buf)`` of a 512-byte block, from two Adler-32 sums (C speed, exact: the byte sum
    of 256 bytes, at most 65,280, is below Adler-32's modulus)."""
    return (zlib.adler32(buf[:256]) & 0xFFFF) + (zlib.adler32(buf[256:]) & 0xFFFF) - 2


def _octal(field: bytes) -> int:
    return int(field.split(b"\0", 1)[0].strip() or b"0", 8)


class HeaderInfo(tarfile.TarInfo):
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


def header_in_block(tf: tarfile.TarFile, reader: ForwardReader) -> int | None:
    """The index in the reader's current block of the next header, when the parser's state is
    plain (no global pax headers, no member read ahead) and a whole header block lies there;
    None otherwise (``tf.next()`` must read it)."""
    off = tf.offset
    if tf.firstmember is not None or tf.pax_headers or reader.seek(off) != off:
        return None
    if len(reader._buf) - reader._i < BLOCK:
        return None
    return reader._i


def next_member(tf: tarfile.TarFile, reader: ForwardReader) -> tarfile.TarInfo | None:
    """The next member, like ``tf.next()``, with less work per plain ustar header.

    A header of a common type (optionally after a pax header holding only ``path`` and
    ``linkpath``, as long names are stored) that lies whole in the reader's current block is
    parsed by ``HeaderInfo.frombuf`` and the parser's state moved on here, with the same fields
    as tarfile gives; anything else (other pax keywords, GNU extension headers, global pax
    headers seen earlier, a bad or zero block, headers across blocks, a short stream) goes to
    ``tf.next()``, which decides as before. Every member still goes through the checks.
    """
    i = header_in_block(tf, reader)
    if i is None:
        return tf.next()
    off = tf.offset
    buf = reader._buf
    pax: dict[str, str] | None = None
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
        ti = HeaderInfo.frombuf(hdr, tf.encoding, tf.errors)
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


def _simple_pax(buf: memoryview, i: int, tf: tarfile.TarFile) -> tuple[dict[str, str], int] | None:
    """The records of the pax header at ``buf[i]`` and the offset of the header after it, when
    both lie in ``buf``, the header is valid and holds nothing but ``path`` and ``linkpath``
    records in strict UTF-8; None otherwise (tarfile then reads it)."""
    hdr = bytes(buf[i:i + BLOCK])
    try:
        xh = HeaderInfo.frombuf(hdr, tf.encoding, tf.errors)
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




def check_end(reader: ForwardReader, tf: tarfile.TarFile, label: str) -> None:
    last = reader.last_header
    if len(last) < BLOCK:
        raise ArchiveError(f"{label}: truncated archive (the tar stream ends at byte "
                           f"{reader.delivered} without an end-of-archive marker); re-create "
                           "or re-copy the archive")
    if last != ZERO_BLOCK:
        raise ArchiveError(f"{label}: corrupt tar header at byte {tf.offset} of the tar "
                           "stream; re-create or re-copy the archive")

