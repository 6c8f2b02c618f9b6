"""Files that hold an environment's prefix: what the manifest's ``prefix_files`` lists
(``ezpz-tar-env`` scans while packing) and what relocation scans for without a manifest."""

from __future__ import annotations

import errno
import os
import re
import shlex
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field

from ..anchored import Anchor
from ..errors import ArchiveError
from .manifest import PrefixFile

#: Compiled Python files: they name their source by its old path, and are never rewritten
#: (nor listed in a manifest, nor looked at by relocation).
SKIP_SUFFIXES = (".pyc", ".pyo")
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


def prefix_in_activate(text: str) -> str | None:
    """The old prefix a venv's ``bin/activate`` sets (``VIRTUAL_ENV=/abs/path``), or None."""
    for m in re.finditer(r"^\s*(?:export\s+)?VIRTUAL_ENV=(.+)$", text, re.M):
        value = m.group(1).strip()
        if "$(" in value or "`" in value:
            continue
        try:
            words = shlex.split(value)
        except ValueError:
            continue
        if len(words) == 1 and os.path.isabs(words[0]):
            return os.path.normpath(words[0])
    return None


def prefix_in_pyvenv_cfg(text: str) -> str | None:
    """The old prefix in ``pyvenv.cfg``'s ``command`` (``... -m venv /abs/path``), or None."""
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() == "command":
            try:
                words = shlex.split(value)
            except ValueError:
                return None
            if words and os.path.isabs(words[-1]):
                return os.path.normpath(words[-1])
    return None


@dataclass
class PrefixHints:
    """What an extraction saw of a tree it wrote from an archive without a manifest, so that
    relocation need not read the whole tree again (:mod:`ezpz.extract.hints` collects it).

    ``needle`` was looked for in every byte of the tar stream; ``files`` are the regular files
    whose data held it (with the hardlinks to them), ``links`` the symlinks with an absolute
    target; paths relative to the extraction's destination, '/'-separated. When the old
    prefix contains ``needle``, every file that holds the prefix is among ``files``: relocation
    reads only those. ``why`` (not empty) says why the hints cannot be used.
    """

    needle: bytes = b""
    files: list[str] = field(default_factory=list)
    links: list[str] = field(default_factory=list)
    why: str = ""

    def usable(self, old: str) -> str:
        """Empty when the hints cover every file holding ``old``, else why not."""
        if self.why:
            return self.why
        if not self.needle or self.needle not in os.fsencode(old):
            return (f"the old prefix {old} does not contain "
                    f"{self.needle.decode(errors='replace')!r}, the name looked for while "
                    "extracting")
        return ""

    def below(self, top: str | None) -> PrefixHints:
        """The hints for the tree at ``top`` (a directory of the destination), paths relative
        to it."""
        if not top:
            return self
        head = top.rstrip("/") + "/"
        n = len(head)
        return PrefixHints(self.needle, [p[n:] for p in self.files if p.startswith(head)],
                           [p[n:] for p in self.links if p.startswith(head)], self.why)
