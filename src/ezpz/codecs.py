"""Archive codecs: names, file suffixes and detection by content (magic bytes), never by name."""

from __future__ import annotations

import os

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
