"""Writing tar headers: ustar, with a pax header for what does not fit.

Ownership is stored as 0/0 without names: whoever extracts the environment owns it.
"""

from __future__ import annotations

import struct
import time

BLOCK = 512
#: The largest size (and mtime) an 11-digit octal ustar field holds.
OCTAL11_MAX = 8**11 - 1
END_OF_ARCHIVE = bytes(2 * BLOCK)

_USTAR = struct.Struct("100s8s8s8s12s12s8sc100s6s2s32s32s8s8s155s12x")


def _pax_record(key: bytes, value: bytes) -> bytes:
    body = b" " + key + b"=" + value + b"\n"
    n = len(body) + 1
    while len(str(n).encode()) + len(body) != n:
        n = len(str(n).encode()) + len(body)
    return str(n).encode() + body


def tar_header(name: bytes, mode: int, size: int, mtime: float, typeflag: bytes,
               linkname: bytes = b"") -> bytes:
    """One tar member header (ustar; preceded by a pax header when a field does not fit).

    Ownership is stored as 0/0 without names: whoever extracts the environment owns it.
    """
    pax: list[bytes] = []
    if len(name) > 100:
        pax.append(_pax_record(b"path", name))
        name = name[:100]
    if len(linkname) > 100:
        pax.append(_pax_record(b"linkpath", linkname))
        linkname = linkname[:100]
    if size > OCTAL11_MAX:
        pax.append(_pax_record(b"size", str(size).encode()))
    mtime = min(max(int(mtime), 0), OCTAL11_MAX)
    out = b""
    if pax:
        data = b"".join(pax)
        out = _one_header(b"././@PaxHeader", 0o644, len(data), mtime, b"x", b"")
        out += data + bytes(-len(data) % BLOCK)
    return out + _one_header(name, mode, size if size <= OCTAL11_MAX else 0, mtime, typeflag,
                             linkname)


def _one_header(name: bytes, mode: int, size: int, mtime: int, typeflag: bytes,
                linkname: bytes) -> bytes:
    h = _USTAR.pack(name, b"%07o\0" % (mode & 0o7777), b"0000000\0", b"0000000\0",
                    b"%011o\0" % size, b"%011o\0" % mtime, b"        ", typeflag, linkname,
                    b"ustar\0", b"00", b"", b"", b"0000000\0", b"0000000\0", b"")
    return h[:148] + b"%06o\0 " % sum(h) + h[156:]


def member(name: bytes, data: bytes, mode: int = 0o644, mtime: int | None = None) -> bytes:
    """A complete regular-file member (header, data, padding)."""
    mtime = int(time.time()) if mtime is None else mtime
    return tar_header(name, mode, len(data), mtime, b"0") + data + bytes(-len(data) % BLOCK)


