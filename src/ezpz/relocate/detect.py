"""Finding what to relocate in a tree without a manifest: the kind and old prefix of the
environment, and the files that hold that prefix."""

from __future__ import annotations

import os
import re
import shlex
from collections import Counter
from pathlib import Path

from ..errors import EzpzError, RelocateError
from ..formats.prefix import find_prefix_files
from .rewrite import SCAN_CHUNK, SKIP_SUFFIXES, TRAMPOLINE


def detect_env(root: str | os.PathLike[str]) -> tuple[str, str | None]:
    """``(kind, old_prefix)`` of an unpacked tree without a manifest.

    ``kind`` is ``venv`` (``pyvenv.cfg``), ``conda`` (``conda-meta/``) or ``data``. The old
    prefix comes from ``bin/activate``, then ``pyvenv.cfg``'s ``command``, then the scripts'
    shebangs; None when nothing names it.
    """
    root = Path(root)
    if (root / "pyvenv.cfg").is_file():
        return "venv", (_prefix_from_activate(root) or _prefix_from_pyvenv_cfg(root)
                        or _prefix_from_shebangs(root))
    if (root / "conda-meta").is_dir():
        return "conda", _prefix_from_shebangs(root) or _prefix_from_conda_history(root)
    return "data", None



def _prefix_from_activate(root: Path) -> str | None:
    try:
        text = (root / "bin" / "activate").read_text(errors="replace")
    except OSError:
        return None
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


def _prefix_from_pyvenv_cfg(root: Path) -> str | None:
    try:
        lines = (root / "pyvenv.cfg").read_text(errors="replace").splitlines()
    except OSError:
        return None
    for line in lines:
        key, sep, value = line.partition("=")
        if sep and key.strip() == "command":
            try:
                words = shlex.split(value)
            except ValueError:
                return None
            if words and os.path.isabs(words[-1]):
                return os.path.normpath(words[-1])
    return None


def _prefix_from_shebangs(root: Path) -> str | None:
    """The most common ``<prefix>`` among ``bin/`` scripts run by ``<prefix>/bin/python*``."""
    seen: Counter[str] = Counter()
    bindir = root / "bin"
    try:
        names = sorted(os.listdir(bindir))
    except OSError:
        return None
    for name in names:
        path = bindir / name
        if path.is_symlink() or not path.is_file():
            continue
        try:
            with open(path, "rb") as fh:
                head = fh.read(1024)
        except OSError:
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


def _prefix_from_conda_history(root: Path) -> str | None:
    try:
        lines = (root / "conda-meta" / "history").read_text(errors="replace").splitlines()
    except OSError:
        return None
    for line in lines:
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


def scan_prefix_files(root: Path, old: str) -> list[tuple[str, str]]:
    """Every regular file holding ``old`` (``.pyc`` aside), as (relative path, text|binary):
    the scan ``ezpz-tar-env`` records in the manifest, done here on the delivered tree."""
    try:
        found = find_prefix_files(str(root), old)
    except EzpzError as exc:
        raise RelocateError(f"cannot relocate {root}: {exc}") from None
    return [(p.path, p.mode) for p in found if not p.path.endswith(SKIP_SUFFIXES)]


# --------------------------------------------------------------------------------------------
# file helpers


def file_contains(path: Path, needles: list[bytes]) -> bool:
    overlap = max(len(n) for n in needles) - 1
    try:
        with open(path, "rb") as fh:
            tail = b""
            while True:
                chunk = fh.read(SCAN_CHUNK)
                if not chunk:
                    return False
                buf = tail + chunk
                if any(n in buf for n in needles):
                    return True
                tail = buf[-overlap:] if overlap > 0 else b""
    except OSError:
        return False


def has_nul(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            while True:
                chunk = fh.read(SCAN_CHUNK)
                if not chunk:
                    return False
                if b"\0" in chunk:
                    return True
    except OSError:
        return False


def is_elf(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(4) == b"\x7fELF"
    except OSError:
        return False


