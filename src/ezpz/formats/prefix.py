"""Files that hold an environment's prefix: what the manifest's ``prefix_files`` lists
(``ezpz-tar-env`` scans while packing) and what relocation scans for without a manifest."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable

from ..errors import ArchiveError
from .manifest import PrefixFile

#: Files are scanned in reads of this size.
CHUNK = 4 * 1024 * 1024


def classify(data: bytes) -> str:
    """``binary`` when the data holds a NUL byte (as conda-pack decides), else ``text``."""
    return "binary" if b"\0" in data else "text"


def scan_file(path: str | os.PathLike[str], prefix: bytes) -> str | None:
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
                      paths: Iterable[str] | None = None) -> list[PrefixFile]:
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
