"""Streaming decompression and safe streaming extraction of tar archives.

The input is a stream of compressed chunks (a file, or chunks arriving over the network);
nothing is ever held whole in memory. The codec is chosen from the first bytes
(:func:`ezpz.formats.codecs.detect`): zstd, gzip (ISA-L's decoder when ``isal`` is installed) or
plain tar.

Every member is read once by the one tar reader (:mod:`ezpz.formats.tarread`), checked by
the one checker (:mod:`ezpz.extract.checks`), and only then written (both engines):

- absolute paths, ``..`` components, over-long paths or path components → refused;
- writes through a symlink created by the archive that points outside the destination
  (``link -> /etc`` then ``link/passwd``) → refused; a member below an internal symlink lands
  where the link points (resolved lexically, never by following the link on disk); the
  symlink itself is created as is, because absolute symlinks inside environments
  (``bin/python -> /usr/bin/python3.11``) are legitimate;
- hardlinks whose target is absolute, outside, or not a regular file extracted earlier
  (a symlink, a directory) → refused;
- device nodes, FIFOs, sparse and unknown member types → refused;
- ``.ezpz/`` is ezpz's own: only the manifest and a bundled interpreter may come from an
  archive;
- setuid/setgid bits are dropped, ownership is never restored;
- a regular file whose declared size brings the archive past the destination's free space
  (a tar bomb) → refused before it is written; headers and the bookkeeping of paths are
  bounded in memory.

The error (:class:`ArchiveError`) names the member. Writes go through the anchored API
(:mod:`ezpz.anchored`): nothing is created through a symlink or outside the destination,
whatever is on disk. Two engines write the accepted members: ``python`` (ezpz's own writer,
plain files batched to the C writer ``ezpz.extract._fastx`` when it was built, GIL released;
``EZPZ_EXTRACT_C=0`` turns it off) and ``tar`` (GNU tar fed a canonical stream re-encoded from
the accepted members, never the archive's own bytes). Duplicates end as with GNU tar: the
last member wins, and an earlier entry is removed first, never written through.
"""

from __future__ import annotations

import os
from typing import BinaryIO

from ..errors import ArchiveError
from ..formats.codecs import decode_error, detect, open_decoder
from .checks import ExtractReport, MemberChecker
from .extractor import SafeExtractor
from .streams import Aborted, ChunkStream, Prepend, peek


def extract_stream(raw: BinaryIO, dest: str, *, codec: str | None = None,
                   engine: str = "python", label: str = "archive") -> ExtractReport:
    """Decompress ``raw`` (codec detected from its first bytes unless given) into ``dest``."""
    if codec is None:
        head = peek(raw)
        codec = detect(head)
        raw = Prepend(head, raw)  # type: ignore[assignment]
    if codec not in ("zstd", "gzip", "none"):
        raise ArchiveError(f"{label}: not a tar, .tar.gz or .tar.zst archive (detected "
                           f"{codec}); pass transfer.decompress=false to copy it as a file")
    try:
        decoded = open_decoder(raw, codec)
    except Exception as exc:
        raise decode_error(exc, label, codec) from exc
    return SafeExtractor(dest, engine=engine, label=label).run(decoded, codec)


def extract_file(path: str, dest: str, *, engine: str = "python") -> ExtractReport:
    """Extract the archive at ``path`` into the directory ``dest`` (made if missing)."""
    try:
        fh = open(path, "rb", buffering=0)
    except OSError as exc:
        raise ArchiveError(f"cannot read archive {path}: {exc.strerror or exc}") from exc
    with fh:
        os.makedirs(dest, exist_ok=True)
        return extract_stream(fh, dest, engine=engine, label=path)

__all__ = ["extract_stream", "extract_file", "SafeExtractor", "ExtractReport", "MemberChecker",
           "ChunkStream", "Aborted"]
