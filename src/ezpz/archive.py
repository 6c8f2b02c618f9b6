"""Archive building blocks: tar members, codec writers, the manifest member, prefix scanning.

Layout of an archive written by :func:`write_archive` (all codecs):

``<name>/.ezpz/manifest.json`` is the first tar member, then the environment's tree, then
the end-of-archive blocks. For ``zstd`` and ``gzip`` the manifest member is compressed as its
own frame (gzip: member) at the start of the file, followed by padding that decoders skip
(a zstd skippable frame, or an empty gzip member carrying a comment), followed by one frame
holding the rest of the tar stream. Every zstd/gzip decoder that reads concatenated frames
(``zstd -d``, ``gzip -d``, ``tar -x``, python-zstandard with ``read_across_frames=True``,
Python's ``gzip`` module) sees one plain tar stream. The split lets the tree be compressed
while it is scanned for the prefix, with the manifest written last into the space reserved
for it; :func:`read_manifest` only decodes the first frame.
"""

from __future__ import annotations

import gzip as _gzip
import json
import os
import re
import shutil
import stat
import struct
import subprocess
import tarfile
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional

from . import codecs
from .errors import ArchiveError
from .log import get_logger
from .manifest import MANIFEST_RELPATH, Manifest, PrefixFile

logger = get_logger(__name__)

BLOCK = 512
#: Files up to this size are read with one call; larger ones are streamed in chunks.
CHUNK = 4 * 1024 * 1024
#: Uncompressed bytes gathered before one call into the compressor.
FLUSH = 1024 * 1024
ZSTD_SKIPPABLE_MAGIC = 0x184D2A50
DEFAULT_LEVELS = {"zstd": 3, "gzip": 6, "none": 0}
#: The largest size (and mtime) an 11-digit octal ustar field holds.
_OCTAL11_MAX = 8**11 - 1
#: Longest manifest accepted by read_manifest (a corrupt header must not make us allocate GBs).
_MANIFEST_MAX = 256 * 1024 * 1024


def default_level(codec: str) -> int:
    return DEFAULT_LEVELS[codec]


def cpu_count() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


# --------------------------------------------------------------------------------------
# tar headers
# --------------------------------------------------------------------------------------
_USTAR = struct.Struct("100s8s8s8s12s12s8sc100s6s2s32s32s8s8s155s12x")


def _pax_record(key: bytes, value: bytes) -> bytes:
    body = b" " + key + b"=" + value + b"\n"
    n = len(body) + 1
    while len(str(n).encode()) + len(body) != n:
        n = len(str(n).encode()) + len(body)
    return str(n).encode() + body


def tar_header(name: bytes, mode: int, size: int, mtime: int, typeflag: bytes,
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
    if size > _OCTAL11_MAX:
        pax.append(_pax_record(b"size", str(size).encode()))
    mtime = min(max(int(mtime), 0), _OCTAL11_MAX)
    out = b""
    if pax:
        data = b"".join(pax)
        out = _one_header(b"././@PaxHeader", 0o644, len(data), mtime, b"x", b"")
        out += data + bytes(-len(data) % BLOCK)
    return out + _one_header(name, mode, size if size <= _OCTAL11_MAX else 0, mtime, typeflag,
                             linkname)


def _one_header(name: bytes, mode: int, size: int, mtime: int, typeflag: bytes,
                linkname: bytes) -> bytes:
    h = _USTAR.pack(name, b"%07o\0" % (mode & 0o7777), b"0000000\0", b"0000000\0",
                    b"%011o\0" % size, b"%011o\0" % mtime, b"        ", typeflag, linkname,
                    b"ustar\0", b"00", b"", b"", b"0000000\0", b"0000000\0", b"")
    return h[:148] + b"%06o\0 " % sum(h) + h[156:]


def member(name: bytes, data: bytes, mode: int = 0o644, mtime: Optional[int] = None) -> bytes:
    """A complete regular-file member (header, data, padding)."""
    mtime = int(time.time()) if mtime is None else mtime
    return tar_header(name, mode, len(data), mtime, b"0") + data + bytes(-len(data) % BLOCK)


END_OF_ARCHIVE = bytes(2 * BLOCK)


# --------------------------------------------------------------------------------------
# codecs: streaming writers, whole-buffer frames, padding
# --------------------------------------------------------------------------------------
class Sink:
    """Where the uncompressed tar stream goes. ``close()`` ends the frame, never the file."""

    description = "plain tar"

    def __init__(self, fh) -> None:
        self._fh = fh

    def write(self, data) -> None:
        self._fh.write(data)

    def close(self) -> None:
        self._fh.flush()

    def abort(self) -> None:
        pass


class _ZstdSink(Sink):
    def __init__(self, fh, level: int, threads: int) -> None:
        import zstandard

        self._zstd = zstandard
        super().__init__(fh)
        n = threads or cpu_count()
        self.description = f"zstd level {level}, {n} thread{'s' if n > 1 else ''}"
        cctx = zstandard.ZstdCompressor(level=level, threads=n if n > 1 else 0,
                                          write_checksum=True)
        self._writer = cctx.stream_writer(fh, closefd=False)

    def write(self, data) -> None:
        self._writer.write(data)

    def close(self) -> None:
        self._writer.flush(self._zstd.FLUSH_FRAME)
        self._writer.close()
        self._fh.flush()


class _PigzSink(Sink):
    def __init__(self, fh, pigz: str, level: int, threads: int) -> None:
        super().__init__(fh)
        n = threads or cpu_count()
        self.description = f"gzip level {level} via pigz, {n} thread{'s' if n > 1 else ''}"
        fh.flush()
        self._proc = subprocess.Popen([pigz, "-c", "-n", f"-{level}", "-p", str(n)],
                                      stdin=subprocess.PIPE, stdout=fh, stderr=subprocess.PIPE)

    def write(self, data) -> None:
        try:
            self._proc.stdin.write(data)
        except BrokenPipeError:
            self.close()  # raises with pigz's message
            raise ArchiveError("pigz stopped reading its input")

    def close(self) -> None:
        try:
            self._proc.stdin.close()
        except BrokenPipeError:
            pass
        err = self._proc.stderr.read().decode(errors="replace").strip()
        rc = self._proc.wait()
        if rc != 0:
            raise OSError(f"pigz failed (exit {rc}): {err.splitlines()[-1] if err else ''}")

    def abort(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()


class _GzipModuleSink(Sink):
    def __init__(self, fh, level: int, threads: int) -> None:
        super().__init__(fh)
        try:
            from isal import igzip_threaded

            n = threads or cpu_count()
            # ISA-L has levels 0..3; map gzip's 1..9 onto 1..3.
            isal_level = 1 if level <= 3 else 2 if level <= 6 else 3
            self._gz = igzip_threaded.open(fh, "wb", compresslevel=isal_level, threads=n)
            self.description = f"gzip via isal level {isal_level}, {n} thread{'s' if n > 1 else ''}"
        except ImportError:
            self._gz = _gzip.GzipFile(fileobj=fh, mode="wb", compresslevel=level, mtime=0)
            self.description = f"gzip level {level} (standard library, 1 thread)"

    def write(self, data) -> None:
        self._gz.write(data)

    def close(self) -> None:
        self._gz.close()
        self._fh.flush()


def open_sink(codec: str, fh, level: Optional[int] = None, threads: int = 0) -> Sink:
    """A writer that compresses into ``fh`` at its current offset.

    zstd: python-zstandard on ``threads`` cores (0 = all). gzip: ``pigz`` when it is on PATH,
    else python-isal's threaded writer when importable, else the standard library.
    """
    level = default_level(codec) if level is None else level
    if codec == "zstd":
        return _ZstdSink(fh, level, threads)
    if codec == "gzip":
        pigz = shutil.which("pigz")
        if pigz:
            return _PigzSink(fh, pigz, level, threads)
        return _GzipModuleSink(fh, level, threads)
    if codec == "none":
        return Sink(fh)
    raise ArchiveError(f"unknown codec {codec!r} (choose zstd, gzip or none)")


def compress_frame(codec: str, data: bytes, level: Optional[int] = None) -> bytes:
    """``data`` as one complete, independent frame (zstd) or member (gzip)."""
    level = default_level(codec) if level is None else level
    if codec == "zstd":
        import zstandard

        return zstandard.ZstdCompressor(level=level, write_checksum=True).compress(data)
    if codec == "gzip":
        return _gzip.compress(data, compresslevel=level, mtime=0)
    return data


def padding(codec: str, n: int) -> Optional[bytes]:
    """Exactly ``n`` bytes that a decoder skips, or None when the codec cannot pad ``n``."""
    if n == 0:
        return b""
    if codec == "zstd" and n >= 8:
        return struct.pack("<II", ZSTD_SKIPPABLE_MAGIC, n - 8) + bytes(n - 8)
    if codec == "gzip" and n >= 21:
        # An empty member whose header carries a comment of spaces (FLG.FCOMMENT).
        return (b"\x1f\x8b\x08\x10\0\0\0\0\0\xff" + b" " * (n - 21) + b"\0"
                + b"\x03\x00" + struct.pack("<II", 0, 0))
    return None


# --------------------------------------------------------------------------------------
# prefix scanning
# --------------------------------------------------------------------------------------
def classify(data: bytes) -> str:
    """``binary`` when the data holds a NUL byte (as conda-pack decides), else ``text``."""
    return "binary" if b"\0" in data else "text"


def scan_file(path: str | os.PathLike[str], prefix: bytes) -> Optional[str]:
    """``text``/``binary`` when the file contains ``prefix``, else None."""
    found = False
    nul = False
    keep = len(prefix) - 1
    tail = b""
    with open(path, "rb", buffering=0) as fh:
        while True:
            chunk = fh.read(CHUNK)
            if not chunk:
                break
            if not found:
                found = prefix in chunk or (keep > 0 and prefix in tail + chunk[:keep])
                tail = chunk[-keep:] if keep > 0 else b""
            if not nul:
                nul = b"\0" in chunk
            if found and nul:
                break
    if not found:
        return None
    return "binary" if nul else "text"


def find_prefix_files(root: str | os.PathLike[str], prefix: str | bytes,
                      paths: Optional[Iterable[str]] = None) -> list[PrefixFile]:
    """The regular files under ``root`` that contain ``prefix``, sorted by path.

    ``paths`` (relative, '/'-separated) limits the scan; by default every regular file under
    ``root`` is read (symlinks are not followed). ``mode`` is ``binary`` for files holding a
    NUL byte, else ``text``.
    """
    root = os.fspath(root)
    needle = os.fsencode(prefix) if isinstance(prefix, str) else prefix
    if not needle:
        raise ArchiveError("find_prefix_files: the prefix is empty")
    if paths is None:
        rels = []
        for dirpath, _dirs, names in os.walk(root):
            for name in names:
                full = os.path.join(dirpath, name)
                if stat.S_ISREG(os.lstat(full).st_mode):
                    rels.append(os.path.relpath(full, root).replace(os.sep, "/"))
    else:
        rels = list(paths)
    out = []
    for rel in sorted(rels):
        full = os.path.join(root, rel)
        if not os.path.isfile(full) or os.path.islink(full):
            continue
        try:
            mode = scan_file(full, needle)
        except OSError as exc:
            raise ArchiveError(f"{full}: cannot read ({exc.strerror})") from exc
        if mode is not None:
            out.append(PrefixFile(rel, mode))
    return out


# --------------------------------------------------------------------------------------
# the tree
# --------------------------------------------------------------------------------------
@dataclass
class Entry:
    """One filesystem object to pack: where it is and its name inside the archive."""

    path: str
    arcname: str  # '/'-separated, no trailing slash
    st: os.stat_result
    #: Name relative to the environment root, recorded in the manifest (None: not recorded).
    relname: Optional[str] = None


def compile_excludes(patterns: Iterable[str]) -> Callable[[str], bool]:
    """A predicate on '/'-separated relative paths for glob patterns.

    ``*`` and ``?`` stay within one path component, ``**`` spans any number of them, a
    pattern without ``/`` matches the last component at any depth (``*.pyc``,
    ``__pycache__``), one with ``/`` matches from the root (``lib/**/tests``). A matching
    directory excludes everything under it.
    """
    regexes = []
    for pat in patterns:
        pat = pat.strip().strip("/")
        if not pat:
            continue
        anchored = "/" in pat
        i, out = 0, []
        while i < len(pat):
            if pat.startswith("**/", i):
                out.append("(?:.*/)?")
                i += 3
            elif pat.startswith("**", i):
                out.append(".*")
                i += 2
            elif pat[i] == "*":
                out.append("[^/]*")
                i += 1
            elif pat[i] == "?":
                out.append("[^/]")
                i += 1
            elif pat[i] == "[":
                j = pat.find("]", i + 1)
                if j < 0:
                    out.append(re.escape(pat[i]))
                    i += 1
                else:
                    body = pat[i + 1:j].replace("\\", "\\\\")
                    if body.startswith("!"):
                        body = "^" + body[1:]
                    out.append(f"[{body}]")
                    i = j + 1
            else:
                out.append(re.escape(pat[i]))
                i += 1
        rx = "".join(out)
        regexes.append(re.compile(("" if anchored else "(?:.*/)?") + rx + r"\Z"))

    def excluded(rel: str) -> bool:
        return any(r.match(rel) for r in regexes)

    return excluded


@dataclass
class Tree:
    entries: list[Entry] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    skipped_special: list[str] = field(default_factory=list)


def walk_tree(root: str, arc_root: str, excluded: Callable[[str], bool] = lambda rel: False,
              record: bool = True, skip: Iterable[str] = ()) -> Tree:
    """Every directory, regular file and symlink under ``root`` (not following symlinks),
    sorted within each directory, ``root`` itself first; excluded paths left out.

    Files and directories this process cannot read are listed in ``Tree.unreadable``
    (and left out); sockets, FIFOs and devices in ``Tree.skipped_special``.
    """
    tree = Tree()
    skip = set(skip)
    tree.entries.append(Entry(root, arc_root, os.lstat(root), "" if record else None))
    stack = [(root, "")]
    while stack:
        dirpath, rel = stack.pop()
        try:
            with os.scandir(dirpath) as it:
                items = sorted(it, key=lambda e: e.name)
        except OSError:
            tree.unreadable.append(dirpath)
            continue
        subdirs = []
        for item in items:
            r = f"{rel}/{item.name}" if rel else item.name
            if r in skip or excluded(r):
                continue
            st = item.stat(follow_symlinks=False)
            mode = st.st_mode
            entry = Entry(item.path, f"{arc_root}/{r}", st, r if record else None)
            if stat.S_ISDIR(mode):
                if not os.access(item.path, os.R_OK | os.X_OK):
                    tree.unreadable.append(item.path)
                    continue
                tree.entries.append(entry)
                subdirs.append((item.path, r))
            elif stat.S_ISREG(mode):
                if not os.access(item.path, os.R_OK):
                    tree.unreadable.append(item.path)
                    continue
                tree.entries.append(entry)
            elif stat.S_ISLNK(mode):
                tree.entries.append(entry)
            else:
                tree.skipped_special.append(item.path)
        # Depth-first in name order: push in reverse so the first name is visited first.
        stack.extend(reversed(subdirs))
    return tree


# --------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------
@dataclass
class BodyStats:
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    total_bytes: int = 0
    prefix_files: list[PrefixFile] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def write_body(sink: Sink, entries: Iterable[Entry], prefix: Optional[bytes],
               progress: Callable[[int], None] = lambda n: None,
               skip_unreadable: bool = False) -> BodyStats:
    """Stream the entries as tar members (and the end-of-archive blocks) into ``sink``.

    Regular files are scanned for ``prefix`` while they are read; hardlinks are stored as
    regular files, symlinks as symlinks. ``progress`` gets the uncompressed byte count of each
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
            if found and e.relname is not None:
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
               buf: bytearray, sink: Sink, prefix: Optional[bytes], keep: int,
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
        found = bool(prefix) and prefix in data
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


def manifest_member(manifest: Manifest, pad_to: Optional[int] = None) -> bytes:
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


def write_archive(fh, codec: str, level: Optional[int], threads: int, body: Iterable[Entry],
                  reserve: int, make_manifest: Callable[[BodyStats], Manifest],
                  prefix: Optional[bytes], progress: Callable[[int], None] = lambda n: None,
                  skip_unreadable: bool = False, spill: Optional[Callable[[], object]] = None
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
    manifest = make_manifest(stats)
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


def _copy_range(src, dst, offset: int, length: int) -> None:
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


# --------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------
def open_stream(path: str | os.PathLike[str]):
    """A binary stream of the archive's decompressed tar data (codec detected by content).

    Returns (stream, codec, underlying file); the caller closes both.
    """
    codec = codecs.detect_file(path)
    fh = open(path, "rb")
    if codec == "zstd":
        import zstandard

        return zstandard.ZstdDecompressor().stream_reader(fh, read_across_frames=True), codec, fh
    if codec == "gzip":
        return _gzip.GzipFile(fileobj=fh, mode="rb"), codec, fh
    if codec == "none":
        return fh, codec, fh
    fh.close()
    raise ArchiveError(f"{path}: not a tar archive ezpz can read (detected {codec}); "
                       "use zstd, gzip or plain tar")


def read_manifest(path: str | os.PathLike[str]) -> Optional[Manifest]:
    """The manifest of an archive, or None when its first member is not an ezpz manifest.

    Only the start of the archive is decoded. Raises :class:`ArchiveError` when the file
    cannot be read or is not a tar archive in a known codec.
    """
    try:
        stream, _codec, fh = open_stream(path)
    except OSError as exc:
        raise ArchiveError(f"{path}: cannot read ({exc.strerror})") from exc
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tf:
            first = tf.next()
            if first is None or not first.isfile():
                return None
            parts = first.name.split("/")
            if len(parts) != 3 or "/".join(parts[1:]) != MANIFEST_RELPATH:
                return None
            if first.size > _MANIFEST_MAX:
                raise ArchiveError(f"{path}: manifest member is implausibly large "
                                   f"({first.size} bytes); the archive is corrupt")
            data = tf.extractfile(first).read()
        return Manifest.from_json(data)
    except ArchiveError:
        raise
    except (tarfile.TarError, EOFError, ValueError, TypeError, OSError) as exc:
        raise ArchiveError(f"{path}: not a readable ezpz archive ({exc})") from exc
    except Exception as exc:  # zstandard.ZstdError and friends
        if type(exc).__module__.startswith("zstandard"):
            raise ArchiveError(f"{path}: corrupt zstd data ({exc})") from exc
        raise
    finally:
        try:
            stream.close()
        finally:
            fh.close()


def iter_members(path: str | os.PathLike[str]):
    """(TarInfo, data or None) for every member, streaming (tests and tools)."""
    stream, _codec, fh = open_stream(path)
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tf:
            for info in tf:
                data = tf.extractfile(info).read() if info.isfile() else None
                yield info, data
    finally:
        stream.close()
        fh.close()


__all__ = ["read_manifest", "find_prefix_files", "open_stream", "iter_members", "open_sink",
           "compress_frame", "padding", "tar_header", "walk_tree", "write_body",
           "write_archive", "compile_excludes", "scan_file", "classify", "Entry", "Tree",
           "BodyStats", "default_level", "cpu_count"]
