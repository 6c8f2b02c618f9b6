"""Finding what to relocate in a tree without a manifest: the kind and old prefix of the
environment, and the files that hold that prefix.

Everything is read through the tree's anchor (:mod:`ezpz.anchored`): no symlink is followed
(a ``bin/activate`` planted as a link to a file elsewhere is not read), and the small files
read whole are read up to ``SMALL_MAX`` bytes.
"""

from __future__ import annotations

import os
import shlex
import stat
from collections import Counter

from ..anchored import Anchor
from ..errors import EzpzError, RelocateError
from ..formats.prefix import find_prefix_files, prefix_in_activate, prefix_in_pyvenv_cfg
from .rewrite import SCAN_CHUNK, SKIP_SUFFIXES, TRAMPOLINE

#: Largest activate script, pyvenv.cfg or conda history read to find the old prefix.
SMALL_MAX = 4 << 20


def _read_text(root: Anchor, rel: str) -> str | None:
    try:
        return root.read_bytes(rel, SMALL_MAX).decode(errors="replace")
    except OSError:
        return None


def detect_env(root: str | os.PathLike[str] | Anchor) -> tuple[str, str | None]:
    """``(kind, old_prefix)`` of an unpacked tree without a manifest.

    ``kind`` is ``venv`` (``pyvenv.cfg``), ``conda`` (``conda-meta/``) or ``data``. The old
    prefix comes from ``bin/activate``, then ``pyvenv.cfg``'s ``command``, then the scripts'
    shebangs; None when nothing names it.
    """
    if not isinstance(root, Anchor):
        with Anchor(os.fspath(root)) as anchor:
            return detect_env(anchor)
    if root.kind("pyvenv.cfg") == "file":
        return "venv", (_prefix_from_activate(root) or _prefix_from_pyvenv_cfg(root)
                        or _prefix_from_shebangs(root))
    if root.kind("conda-meta") == "dir":
        return "conda", _prefix_from_shebangs(root) or _prefix_from_conda_history(root)
    return "data", None


def _prefix_from_activate(root: Anchor) -> str | None:
    text = _read_text(root, "bin/activate")
    return prefix_in_activate(text) if text is not None else None


def _prefix_from_pyvenv_cfg(root: Anchor) -> str | None:
    text = _read_text(root, "pyvenv.cfg")
    return prefix_in_pyvenv_cfg(text) if text is not None else None


def _prefix_from_shebangs(root: Anchor) -> str | None:
    """The most common ``<prefix>`` among ``bin/`` scripts run by ``<prefix>/bin/python*``."""
    seen: Counter[str] = Counter()
    for entry in root.listdir("bin"):
        if entry.kind != "file":
            continue
        head = _head(root, f"bin/{entry.name}", 1024)
        if head is None:
            continue
        if not head.startswith(b"#!"):
            continue
        m = TRAMPOLINE.match(head)
        try:
            if m:
                words = shlex.split(m.group("cmd").decode())
            else:
                words = head[2:].split(b"\n", 1)[0].decode().split()
        except (ValueError, UnicodeDecodeError):
            continue
        if not words:
            continue
        exe = words[0]
        if os.path.isabs(exe) and os.path.basename(os.path.dirname(exe)) == "bin" \
                and os.path.basename(exe).startswith("python"):
            seen[os.path.dirname(os.path.dirname(exe))] += 1
    return seen.most_common(1)[0][0] if seen else None


def _prefix_from_conda_history(root: Anchor) -> str | None:
    text = _read_text(root, "conda-meta/history")
    if text is None:
        return None
    for line in text.splitlines():
        if not line.startswith("# cmd:"):
            continue
        try:
            words = shlex.split(line[len("# cmd:"):])
        except ValueError:
            continue
        for i, w in enumerate(words):
            if w in ("-p", "--prefix") and i + 1 < len(words) and os.path.isabs(words[i + 1]):
                return os.path.normpath(words[i + 1])
            if w.startswith("--prefix=") and os.path.isabs(w[9:]):
                return os.path.normpath(w[9:])
    return None


def scan_prefix_files(root: Anchor, old: str,
                      paths: list[str] | None = None) -> list[tuple[str, str]]:
    """Every regular file holding ``old`` (``.pyc`` aside), as (relative path, text|binary):
    the scan ``ezpz-tar-env`` records in the manifest, done here on the delivered tree
    (only on ``paths`` when given: the files the extraction saw holding part of ``old``)."""
    if paths is not None:
        paths = [p for p in paths if not p.endswith(SKIP_SUFFIXES)]
    try:
        found = find_prefix_files(root, old, paths)
    except EzpzError as exc:
        raise RelocateError(f"cannot relocate {root.path}: {exc}") from None
    return [(p.path, p.mode) for p in found if not p.path.endswith(SKIP_SUFFIXES)]


# --------------------------------------------------------------------------------------------
# file helpers (anchored, streaming)


def _head(root: Anchor, rel: str, n: int) -> bytes | None:
    try:
        fd = root.open(rel, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        return os.read(fd, n)
    except OSError:
        return None
    finally:
        os.close(fd)


def _blocks(root: Anchor, rel: str) -> list[int] | None:
    """A descriptor of the regular file ``rel`` in a list (closed by the caller), or None."""
    try:
        fd = root.open(rel, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return None
    return [fd]


def file_contains(root: Anchor, rel: str, needles: list[bytes]) -> bool:
    got = _blocks(root, rel)
    if got is None:
        return False
    fd = got[0]
    overlap = max(len(n) for n in needles) - 1
    try:
        tail = b""
        while True:
            chunk = os.read(fd, SCAN_CHUNK)
            if not chunk:
                return False
            buf = tail + chunk
            if any(n in buf for n in needles):
                return True
            tail = buf[-overlap:] if overlap > 0 else b""
    except OSError:
        return False
    finally:
        os.close(fd)


def has_nul(root: Anchor, rel: str) -> bool:
    return file_contains(root, rel, [b"\0"])


def is_elf(root: Anchor, rel: str) -> bool:
    got = _blocks(root, rel)
    if got is None:
        return False
    try:
        return os.read(got[0], 4) == b"\x7fELF"
    except OSError:
        return False
    finally:
        os.close(got[0])
