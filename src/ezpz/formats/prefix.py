"""Files that hold an environment's prefix: what the manifest's ``prefix_files`` lists
(``ezpz-tar-env`` scans while packing) and what relocation scans for without a manifest."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable

from ..anchored import Anchor
from ..errors import ArchiveError
from .manifest import PrefixFile

#: Files are scanned in reads of this size.
CHUNK = 4 * 1024 * 1024


def classify(data: bytes) -> str:
    """``binary`` when the data holds a NUL byte (as conda-pack decides), else ``text``."""
    return "binary" if b"\0" in data else "text"


def scan_file(path: str | os.PathLike[str], prefix: bytes) -> str | None:
    """``text``/``binary`` when the file contains ``prefix``, else None."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return scan_fd(fd, prefix)
    finally:
        os.close(fd)


def scan_fd(fd: int, prefix: bytes) -> str | None:
    """:func:`scan_file` of an open file."""
    found = False
    nul = False
    keep = len(prefix) - 1
    tail = b""
    while True:
        chunk = os.read(fd, CHUNK)
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


def find_prefix_files(root: str | os.PathLike[str] | Anchor, prefix: str | bytes,
                      paths: Iterable[str] | None = None) -> list[PrefixFile]:
    """The regular files under ``root`` that contain ``prefix``, sorted by path.

    ``paths`` (relative, '/'-separated) limits the scan; by default every regular file under
    ``root`` is read. Everything is reached through the tree's anchor: symlinks are never
    followed (a path through one is skipped), the walk is iterative. ``mode`` is ``binary``
    for files holding a NUL byte, else ``text``.
    """
    if not isinstance(root, Anchor):
        with Anchor(os.fspath(root)) as anchor:
            return find_prefix_files(anchor, prefix, paths)
    needle = os.fsencode(prefix) if isinstance(prefix, str) else prefix
    if not needle:
        raise ArchiveError("find_prefix_files: the prefix is empty")
    if paths is None:
        rels = [f"{d}/{e.name}" if d else e.name for d, entries in root.walk()
                for e in entries if e.kind == "file"]
    else:
        rels = list(paths)
    out = []
    for rel in sorted(rels):
        try:
            fd = root.open(rel, os.O_RDONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR, errno.EXDEV):
                continue  # missing, a symlink, or behind one
            raise ArchiveError(f"{root.show(rel)}: cannot read ({exc.strerror})") from exc
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                continue
            mode = scan_fd(fd, needle)
        except OSError as exc:
            raise ArchiveError(f"{root.show(rel)}: cannot read ({exc.strerror})") from exc
        finally:
            os.close(fd)
        if mode is not None:
            out.append(PrefixFile(rel, mode))
    return out
