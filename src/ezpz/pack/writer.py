"""The archive writer: the manifest's frame first, then the tree.

Layout of an archive written by :func:`write_archive` (all codecs):

``<name>/.ezpz/manifest.json`` is the first tar member, then the environment's tree, then
the end-of-archive blocks. For ``zstd`` and ``gzip`` the manifest member is compressed as its
own frame (gzip: member) at the start of the file, followed by padding that decoders skip
(a zstd skippable frame, or an empty gzip member carrying a comment), followed by the rest
of the tar stream: for gzip one member; for zstd independent frames of
:data:`~ezpz.pack.sinks.FRAME_BYTES` tar bytes each, whose offsets the manifest records
(``frames``) and which the nodes decode side by side. Every zstd/gzip decoder that reads
concatenated frames (``zstd -d``, ``gzip -d``, ``tar -x``, python-zstandard with
``read_across_frames=True``, Python's ``gzip`` module) sees one plain tar stream. The split lets the tree be compressed
while it is scanned for the prefix, with the manifest written last into the space reserved
for it; :func:`ezpz.formats.manifest.read_manifest` only decodes the first frame.
"""

from __future__ import annotations

import dataclasses
import json
import os
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import IO

from ..errors import ArchiveError
from ..formats.manifest import MANIFEST_RELPATH, Manifest, PrefixFile
from ..formats.prefix import CHUNK
from ..formats.tarheader import BLOCK, END_OF_ARCHIVE, member, tar_header
from ..log import get_logger
from ..relocate.rewrite import SKIP_SUFFIXES
from .sinks import Sink, compress_frame, open_sink, padding
from .tree import Entry

logger = get_logger(__name__)

#: Uncompressed bytes gathered before one call into the compressor.
FLUSH = 1024 * 1024


@dataclass
class BodyStats:
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    total_bytes: int = 0
    prefix_files: list[PrefixFile] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def write_body(sink: Sink, entries: Iterable[Entry], prefix: bytes | None,
               progress: Callable[[int], None] = lambda n: None,
               skip_unreadable: bool = False) -> BodyStats:
    """Stream the entries as tar members (and the end-of-archive blocks) into ``sink``.

    Regular files are scanned for ``prefix`` while they are read (``prefix_files``: those
    relocation rewrites; compiled ``.pyc``/``.pyo`` files, which it leaves alone, are not
    listed: in a large venv they are 14,000 of 14,025 and made the manifest 1.9 MB);
    hardlinks are stored as regular files, symlinks as symlinks. ``progress`` gets the uncompressed byte count of each
    batch handed to the sink.
    """
    stats = BodyStats()
    buf = bytearray()
    keep = len(prefix) - 1 if prefix else 0
    o_flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    for e in entries:
        st = e.st
        mode = st.st_mode
        name = os.fsencode(e.arcname)
        if stat.S_ISDIR(mode):
            buf += tar_header(name + b"/", mode, 0, st.st_mtime, b"5")
            stats.dirs += 1
        elif stat.S_ISLNK(mode):
            buf += tar_header(name, mode, 0, st.st_mtime, b"2", os.fsencode(os.readlink(e.path)))
            stats.symlinks += 1
        elif stat.S_ISREG(mode):
            size = st.st_size
            try:
                fd = os.open(e.path, o_flags)
            except OSError as exc:
                if skip_unreadable:
                    logger.warning("skipping unreadable file %s (%s)", e.path, exc.strerror)
                    stats.skipped.append(e.path)
                    continue
                raise ArchiveError(f"{e.path}: cannot read ({exc.strerror}); fix its "
                                   "permissions or pass skip_unreadable=true") from exc
            try:
                found, nul = _copy_file(fd, e.path, size, name, st, buf, sink, prefix, keep,
                                        progress)
            finally:
                os.close(fd)
            if len(buf) >= FLUSH:
                progress(len(buf))
                sink.write(buf)
                buf = bytearray()
            stats.files += 1
            stats.total_bytes += size
            if found and e.relname is not None and not e.relname.endswith(SKIP_SUFFIXES):
                stats.prefix_files.append(PrefixFile(e.relname, "binary" if nul else "text"))
            continue
        if len(buf) >= FLUSH:
            progress(len(buf))
            sink.write(buf)
            buf = bytearray()
    buf += END_OF_ARCHIVE
    progress(len(buf))
    sink.write(buf)
    stats.prefix_files.sort(key=lambda p: p.path)
    return stats


def _copy_file(fd: int, path: str, size: int, name: bytes, st: os.stat_result,
               buf: bytearray, sink: Sink, prefix: bytes | None, keep: int,
               progress: Callable[[int], None] = lambda n: None) -> tuple[bool, bool]:
    """Append one file's member to ``buf`` (or stream it to ``sink`` when large).

    Returns (contains prefix, contains NUL).
    """
    header = tar_header(name, st.st_mode, size, st.st_mtime, b"0")
    if size <= CHUNK:
        data = os.read(fd, size) if size else b""
        while len(data) < size:
            more = os.read(fd, size - len(data))
            if not more:
                raise ArchiveError(f"{path}: file shrank while it was being packed; "
                                   "stop whatever is writing to the environment and retry")
            data += more
        buf += header
        buf += data
        buf += bytes(-size % BLOCK)
        found = prefix is not None and bool(prefix) and prefix in data
        return found, found and b"\0" in data
    # Large file: flush what is pending, then stream it in chunks.
    buf += header
    progress(len(buf))
    sink.write(buf)
    del buf[:]
    found = nul = False
    tail = b""
    left = size
    while left:
        chunk = os.read(fd, min(left, CHUNK))
        if not chunk:
            raise ArchiveError(f"{path}: file shrank while it was being packed; "
                               "stop whatever is writing to the environment and retry")
        left -= len(chunk)
        if prefix and not found:
            found = prefix in chunk or (keep > 0 and prefix in tail + chunk[:keep])
            tail = chunk[-keep:] if keep > 0 else b""
        if not nul:
            nul = b"\0" in chunk
        progress(len(chunk))
        sink.write(chunk)
    buf += bytes(-size % BLOCK)
    return found, nul


def manifest_member(manifest: Manifest, pad_to: int | None = None) -> bytes:
    """The manifest as a tar member; ``pad_to`` pads the JSON with spaces to that many bytes."""
    data = manifest.to_json().encode()
    if pad_to is not None:
        if len(data) > pad_to:
            raise ValueError("manifest longer than the space reserved for it")
        data += b" " * (pad_to - len(data))
    name = f"{manifest.name}/{MANIFEST_RELPATH}".encode()
    return member(name, data)


def reserve_size(codec: str, entries: list[Entry], manifest_name: str) -> int:
    """Bytes reserved at the start of the file for the manifest (multiple of 4 KiB).

    For ``none`` the reservation holds a manifest that lists every file; for compressed
    codecs it is an estimate (a larger manifest makes the writer copy the body once).
    """
    head = len(tar_header(f"{manifest_name}/{MANIFEST_RELPATH}".encode(), 0o644, 0, 0, b"0"))
    if codec == "none":
        listed = sum(len(json.dumps(e.relname)) + 48 for e in entries
                     if e.relname is not None and stat.S_ISREG(e.st.st_mode))
        n = head + 8192 + listed
    else:
        n = 4096 + 40 * len(entries)
    return -(-n // 4096) * 4096


def write_archive(fh: IO[bytes], codec: str, level: int | None, threads: int, body: Iterable[Entry],
                  reserve: int, make_manifest: Callable[[BodyStats], Manifest],
                  prefix: bytes | None, progress: Callable[[int], None] = lambda n: None,
                  skip_unreadable: bool = False, spill: Callable[[], IO[bytes]] | None = None
                  ) -> tuple[Manifest, BodyStats, str]:
    """Write a complete archive into the empty file ``fh`` (opened ``w+b``/``x+b``; see the
    module docstring).

    The body is written from offset ``reserve``; the manifest built from its statistics is then
    written at offset 0 and the gap filled with codec padding. When it does not fit, ``spill()``
    must return a new empty file: the manifest and a copy of the body go there and that file is
    the result (the caller renames whichever file is returned in ``fh.name``).
    Returns (manifest, stats, description of the codec).
    """
    fh.seek(reserve)
    sink = open_sink(codec, fh, level, threads)
    try:
        stats = write_body(sink, body, prefix, progress, skip_unreadable)
        sink.close()
    except BaseException:
        sink.abort()
        raise
    end = fh.seek(0, os.SEEK_END)
    manifest = dataclasses.replace(make_manifest(stats), frames=list(sink.frames))
    if codec == "none":
        json_len = len(manifest.to_json().encode())
        hdr = len(manifest_member(manifest)) - json_len - (-json_len % BLOCK)
        room = reserve - hdr
        if json_len <= room:
            fh.seek(0)
            fh.write(manifest_member(manifest, pad_to=room))
            fh.flush()
            return manifest, stats, sink.description
        head = manifest_member(manifest)
    else:
        head = compress_frame(codec, manifest_member(manifest), level)
        pad = padding(codec, reserve - len(head)) if len(head) <= reserve else None
        if pad is not None:
            fh.seek(0)
            fh.write(head + pad)
            fh.flush()
            return manifest, stats, sink.description
    if spill is None:
        raise ArchiveError("the manifest does not fit the space reserved for it")
    logger.debug("manifest (%d bytes) exceeds the %d reserved: copying the body", len(head),
                 reserve)
    out = spill()
    out.write(head)
    out.flush()
    _copy_range(fh, out, reserve, end - reserve)
    return manifest, stats, sink.description


def _copy_range(src: IO[bytes], dst: IO[bytes], offset: int, length: int) -> None:
    """Append ``length`` bytes of ``src`` (opened for reading too) from ``offset`` to ``dst``."""
    src.flush()
    dst.flush()
    fd_in, fd_out = src.fileno(), dst.fileno()
    try:
        while length > 0:
            n = os.copy_file_range(fd_in, fd_out, min(length, 1 << 30), offset)
            if n == 0:
                break
            offset += n
            length -= n
    except (AttributeError, OSError):
        pass  # not supported here: copy through user space
    while length > 0:
        chunk = os.pread(fd_in, min(length, CHUNK), offset)
        if not chunk:
            raise ArchiveError("archive body ended early while copying it")
        view = memoryview(chunk)
        while view:  # os.write may write less than asked
            view = view[os.write(fd_out, view):]
        offset += len(chunk)
        length -= len(chunk)

