"""Streaming decompression and safe streaming extraction of tar archives.

The input is a stream of compressed chunks (a file, or chunks arriving over the network);
nothing is ever held whole in memory. The codec is chosen from the first bytes
(:func:`ezpz.formats.codecs.detect`): zstd, gzip (ISA-L's decoder when ``isal`` is installed) or
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

from typing import BinaryIO

from ..errors import ArchiveError
from ..formats.codecs import decode_error, detect, open_decoder
from .checks import ExtractReport, MemberChecker
from .streams import Aborted, ChunkStream, Prepend, peek
from .writers import SafeExtractor


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
    """Extract the archive at ``path`` into the existing directory ``dest``."""
    try:
        fh = open(path, "rb", buffering=0)
    except OSError as exc:
        raise ArchiveError(f"cannot read archive {path}: {exc.strerror or exc}") from exc
    with fh:
        return extract_stream(fh, dest, engine=engine, label=path)



__all__ = ["extract_stream", "extract_file", "SafeExtractor", "ExtractReport", "MemberChecker",
           "ChunkStream", "Aborted"]
