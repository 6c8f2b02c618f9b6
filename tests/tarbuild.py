"""Tar archives byte by byte, for tests: any header field, including the ones tarfile will not
write (the ustar prefix under GNU magic, base-256 and negative numbers, sizes that lie, pax
headers that declare gigabytes)."""

from __future__ import annotations

import io
import tarfile

BLOCK = 512
GNU_MAGIC = b"ustar  \0"
POSIX_MAGIC = b"ustar\x0000"


def octal(value: int, width: int) -> bytes:
    return b"%0*o\0" % (width - 1, value)


def base256(value: int, width: int) -> bytes:
    """GNU's base-256 form (first byte 0x80 for positive, 0xff for negative numbers)."""
    if value >= 0:
        return b"\x80" + value.to_bytes(width - 1, "big")
    return (value % (1 << (8 * width))).to_bytes(width, "big")


def header(name: bytes, *, mode: int = 0o644, size: int = 0, mtime: int = 1_700_000_000,
           typ: bytes = b"0", link: bytes = b"", magic: bytes = POSIX_MAGIC,
           prefix: bytes = b"", size_field: bytes | None = None,
           mode_field: bytes | None = None, mtime_field: bytes | None = None,
           checksum: str = "unsigned") -> bytes:
    h = bytearray(BLOCK)
    h[0:len(name[:100])] = name[:100]
    h[100:108] = mode_field if mode_field is not None else octal(mode, 8)
    h[108:116] = octal(0, 8)
    h[116:124] = octal(0, 8)
    h[124:136] = size_field if size_field is not None else octal(size, 12)
    h[136:148] = mtime_field if mtime_field is not None else octal(mtime, 12)
    h[148:156] = b" " * 8
    h[156:157] = typ
    h[157:157 + len(link[:100])] = link[:100]
    h[257:265] = magic
    h[345:345 + len(prefix[:155])] = prefix[:155]
    if checksum == "signed":
        total = sum(b - 256 if b > 127 else b for b in h)
    else:
        total = sum(h)
    if checksum == "bad":
        total += 1
    h[148:156] = b"%06o\0 " % (total % (8 ** 6))
    return bytes(h)


def pad(data: bytes) -> bytes:
    return data + bytes(-len(data) % BLOCK)


def member(name: bytes | str, data: bytes = b"", **kw: object) -> bytes:
    if isinstance(name, str):
        name = name.encode()
    kw.setdefault("size", len(data))
    return header(name, **kw) + pad(data)  # type: ignore[arg-type]


def pax_record(key: bytes, value: bytes) -> bytes:
    body = b" " + key + b"=" + value + b"\n"
    n = len(body) + 1
    while len(str(n).encode()) + len(body) != n:
        n = len(str(n).encode()) + len(body)
    return str(n).encode() + body


def pax(records: dict[bytes, bytes], *, typ: bytes = b"x", declared: int | None = None,
        data: bytes | None = None) -> bytes:
    """A pax header (``typ`` b"g" for a global one); ``declared`` makes the size field lie."""
    body = data if data is not None else b"".join(pax_record(k, v) for k, v in records.items())
    size = len(body) if declared is None else declared
    return header(b"././@PaxHeader", size=size, typ=typ) + pad(body)


def gnu_long(value: bytes, *, typ: bytes = b"L", declared: int | None = None) -> bytes:
    body = value + b"\0"
    size = len(body) if declared is None else declared
    return header(b"././@LongLink", size=size, typ=typ, magic=GNU_MAGIC) + pad(body)


def end() -> bytes:
    return bytes(2 * BLOCK)


def with_tarfile(members: list[dict], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    """An archive written by tarfile: dicts with name, type, data, linkname, mode."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for m in members:
            ti = tarfile.TarInfo(m["name"])
            ti.type = m.get("type", tarfile.REGTYPE)
            ti.mode = m.get("mode", 0o644)
            ti.linkname = m.get("linkname", "")
            ti.mtime = m.get("mtime", 1_700_000_000)
            data = m.get("data")
            if data is not None:
                ti.size = len(data)
                tf.addfile(ti, io.BytesIO(data))
            else:
                tf.addfile(ti)
    return buf.getvalue()
