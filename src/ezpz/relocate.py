"""Make a venv or conda environment work at its new prefix.

An environment unpacked somewhere else still names its old absolute prefix in activate
scripts, script shebangs, ``pyvenv.cfg``, conda's text files and some binaries. Without a
rewrite ``/tmp/env/bin/pip`` silently runs the interpreter on the shared filesystem.

:func:`relocate` rewrites the old prefix to the new one:

- text files: plain replacement of the prefix (only where it ends a path component, so
  ``/a/env`` never matches inside ``/a/env2``); shebangs are rebuilt the way pip writes
  them: ``#!<python>`` when it fits the kernel's 127-byte limit and has no whitespace,
  else the ``#!/bin/sh`` + ``'''exec'`` trampoline, whichever the new path needs;
- binary files: conda's rule — each NUL-terminated string holding the prefix is rewritten
  in place and padded with NULs so that the file keeps its length; a new prefix longer than
  the old one cannot fit and is refused before any file is touched;
- ``conda-meta/*.json``: path records, leaving the packages' ``prefix_placeholder`` alone;
- symlinks whose absolute target lies under the old prefix become relative links;
- an interpreter bundled under ``.ezpz/python`` (``bundle_python=true`` in tar-env): the
  venv's ``home``/``executable`` keys and ``bin/python*`` links are pointed at it, and its
  absolute library run path is replaced by an ``$ORIGIN``-relative one.

Every changed file is first written next to itself under a temporary name (mode kept); only
when all of them are written are they renamed into place, so an error leaves the tree as it
was. The transfer worker calls this on each node's staging directory with ``new_prefix`` set
to the final destination, before the atomic rename.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shlex
import stat
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

from .errors import EXIT_FAILURE, EXIT_USAGE, EzpzError, RelocateError
from .log import get_logger
from .manifest import BUNDLED_PYTHON_RELPATH, MANIFEST_RELPATH, Manifest, PrefixFile

log = get_logger(__name__)

__all__ = ["RelocateReport", "relocate", "detect_env", "activation_hint", "main"]

#: Linux's shebang limit before 5.1 (what pip assumes): ``#!`` + path + args + newline.
MAX_SHEBANG = 127
#: Characters the activate scripts and conda's text files cannot hold unquoted.
_FORBIDDEN_IN_PREFIX = {"'": "a single quote", '"': "a double quote", "\\": "a backslash",
                        "$": "'$'", "`": "a backquote", "\n": "a newline", "\r": "a carriage return",
                        "\0": "a NUL byte"}
# A prefix only matches where it ends a path component: not followed by a name character.
_BOUNDARY = rb"(?![A-Za-z0-9_.+\-])"
_TMP_SUFFIX = ".ezpz-relocate"
_SKIP_SUFFIXES = (".pyc", ".pyo")
_TRAMPOLINE = re.compile(rb"\A#!/bin/sh\n'''exec' (?P<cmd>[^\n]*?) \"\$0\" \"\$@\"\n' '''")
_PLACEHOLDER_VALUE = re.compile(rb'"prefix_placeholder"\s*:\s*"(?:[^"\\]|\\.)*"')
_SCAN_CHUNK = 1 << 20


@dataclass
class RelocateReport:
    """What :func:`relocate` did."""

    kind: str  # venv | conda | data
    old_prefix: Optional[str]
    new_prefix: str
    files_rewritten: int
    seconds: float
    scanned: bool  # True when there was no manifest and the tree was scanned for the prefix
    links_repointed: int = 0


# --------------------------------------------------------------------------------------------
# public helpers


def activation_hint(kind: str, dst: str | os.PathLike[str]) -> str:
    """How to use an environment delivered to ``dst``: one shell command."""
    dst = os.fspath(dst)
    if kind == "conda":
        return f"conda activate {shlex.quote(dst)}"
    if kind == "venv":
        return f"source {shlex.quote(os.path.join(dst, 'bin', 'activate'))}"
    return f"files are in {shlex.quote(dst)}"


def detect_env(root: str | os.PathLike[str]) -> tuple[str, Optional[str]]:
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


def relocate(root: str | os.PathLike[str], new_prefix: str | os.PathLike[str] | None = None,
             manifest: Optional[Manifest] = None, *, old_prefix: str | None = None) -> RelocateReport:
    """Rewrite the environment unpacked at ``root`` so that it works at ``new_prefix``.

    ``root`` is where the tree is now; ``new_prefix`` where it will be used (default: ``root``).
    ``manifest`` defaults to ``<root>/.ezpz/manifest.json``; without one the kind and old
    prefix are detected (or taken from ``old_prefix``) and the tree is scanned, which reads
    every file and is slower. Raises :class:`RelocateError` with nothing changed when the
    environment cannot be relocated.
    """
    t0 = time.perf_counter()
    root_s = os.fspath(root)
    if not os.path.isdir(root_s):
        raise RelocateError(f"cannot relocate {root_s}: not a directory")
    root_p = Path(os.path.abspath(root_s))
    new = os.path.normpath(os.path.abspath(os.fspath(new_prefix) if new_prefix is not None else root_s))
    _check_new_prefix(new)

    if manifest is None:
        try:
            manifest = Manifest.load(root_p)
        except (OSError, ValueError, TypeError) as exc:
            raise RelocateError(f"cannot read {root_p / MANIFEST_RELPATH}: {exc}") from None

    scanned = False
    bundled: Optional[str] = None
    if manifest is not None:
        kind, old = manifest.kind, old_prefix or manifest.prefix
        bundled = manifest.bundled_python_prefix
        entries = [(p.path, p.mode) for p in manifest.prefix_files]
    else:
        kind, found = detect_env(root_p)
        old = old_prefix or found
        entries = []
    if kind not in ("venv", "conda", "data"):
        raise RelocateError(f"cannot relocate {root_p}: unknown environment kind {kind!r}")
    if kind == "data":
        return RelocateReport(kind, old, new, 0, time.perf_counter() - t0, False)
    if not old:
        raise RelocateError(f"cannot relocate {root_p}: no manifest and no old prefix found in "
                            "bin/activate, pyvenv.cfg or script shebangs; pass --from OLD_PREFIX")
    old = os.path.normpath(old)
    if not os.path.isabs(old) or old == os.sep:
        raise RelocateError(f"cannot relocate {root_p}: old prefix {old!r} is not an absolute "
                            "path below /")
    if bundled:
        bundled = os.path.normpath(bundled)
        if not (root_p / BUNDLED_PYTHON_RELPATH).is_dir():
            raise RelocateError(f"cannot relocate {root_p}: the manifest names a bundled "
                                f"interpreter but {BUNDLED_PYTHON_RELPATH}/ is missing")

    if manifest is None:
        scanned = True
        log.info("%s has no manifest: scanning every file for %s (slower than an archive made "
                 "by ezpz-tar-env)", root_p, old)
        entries = _scan_prefix_files(root_p, old)

    plan = _Plan(root_p, old, new, bundled)
    plan.add_entries(entries)
    if kind == "venv":
        plan.add_venv_extras()
    if bundled:
        plan.add_bundled_extras()
    plan.add_links(full_walk=scanned)
    if manifest is not None and (root_p / MANIFEST_RELPATH).is_file():
        # The manifest now describes the tree where it lives, so relocating again works. The
        # packer's facts about the original tree (paths, mtimes) do not describe this copy.
        moved = dataclasses.replace(manifest, prefix=new,
                                    bundled_python_prefix=plan.bundled_new if bundled else None,
                                    source={})
        plan.writes[MANIFEST_RELPATH] = moved.to_json().encode()
    rewritten, links = plan.execute()

    seconds = time.perf_counter() - t0
    log.info("relocated %s %s -> %s: %d files, %d links in %.3fs%s", kind, old, new, rewritten,
             links, seconds, " (scanned)" if scanned else "")
    if kind == "venv" and not bundled:
        _warn_missing_home(root_p)
    return RelocateReport(kind, old, new, rewritten, seconds, scanned, links)


# --------------------------------------------------------------------------------------------
# the plan: decide every change, write them all to temporary files, then rename them in place


class _Rewriter:
    """Old → new prefix mappings applied as one regex, longest prefix first."""

    def __init__(self, pairs: Iterable[tuple[str, str]]):
        self.map = {os.fsencode(o): os.fsencode(n) for o, n in pairs}
        alts = b"|".join(re.escape(o) for o in sorted(self.map, key=len, reverse=True))
        self.regex = re.compile(b"(?:" + alts + b")" + _BOUNDARY)

    def sub(self, data: bytes) -> bytes:
        return self.regex.sub(lambda m: self.map[m.group(0)], data)

    def text(self, data: bytes, conda_meta: bool = False) -> bytes:
        if conda_meta:
            return self._sub_outside(data, _PLACEHOLDER_VALUE)
        if data.startswith(b"#!"):
            head, body = _rewrite_shebang(data, self)
            return head + self.sub(body)
        return self.sub(data)

    def _sub_outside(self, data: bytes, protected: re.Pattern[bytes]) -> bytes:
        out, pos = [], 0
        for m in protected.finditer(data):
            out.append(self.sub(data[pos:m.start()]))
            out.append(m.group(0))
            pos = m.end()
        out.append(self.sub(data[pos:]))
        return b"".join(out)

    def binary(self, data: bytes, rel: str) -> bytes:
        """Rewrite each NUL-terminated string holding a prefix, padded to its old length."""
        out, pos = [], 0
        for m in self.regex.finditer(data):
            if m.start() < pos:
                continue
            end = data.find(b"\0", m.start())
            if end < 0:
                end = len(data)
            seg = data[m.start():end]
            new = self.sub(seg)
            if len(new) > len(seg):
                o = m.group(0)
                raise RelocateError(
                    f"cannot relocate {rel}: it is a binary file holding the old prefix "
                    f"{o.decode(errors='replace')!r} ({len(o)} bytes) and the new prefix "
                    f"{self.map[o].decode(errors='replace')!r} ({len(self.map[o])} bytes) is "
                    "longer; choose a destination path no longer than the old prefix")
            out.append(data[pos:m.start()])
            out.append(new + b"\0" * (len(seg) - len(new)))
            pos = end
        out.append(data[pos:])
        return b"".join(out)


class _Plan:
    def __init__(self, root: Path, old: str, new: str, bundled: Optional[str]):
        self.root, self.old, self.new, self.bundled = root, old, new, bundled
        self.bundled_new = os.path.join(new, BUNDLED_PYTHON_RELPATH) if bundled else None
        pairs = [(old, new)]
        if bundled and bundled != old:
            pairs.append((bundled, self.bundled_new))
        self.text_rw = _Rewriter(pairs)
        self.binary_rw = _Rewriter([(old, new)])
        self.files: dict[str, str] = {}  # rel path -> text | binary | rpath
        self.links: dict[str, str] = {}  # rel path -> new target
        self.writes: dict[str, bytes] = {}  # rel path -> new content (the manifest)

    # -- collecting ---------------------------------------------------------------------------

    def add_entries(self, entries: Iterable[tuple[str, str]]) -> None:
        for rel, mode in entries:
            rel = self._safe_rel(rel)
            if rel.endswith(_SKIP_SUFFIXES) or rel == MANIFEST_RELPATH:
                continue
            if mode not in ("text", "binary"):
                raise RelocateError(f"cannot relocate {rel}: unknown file mode {mode!r} in the "
                                    "manifest (expected text or binary)")
            self.files.setdefault(rel, mode)

    def add_venv_extras(self) -> None:
        """pyvenv.cfg and every script in bin/, whether or not a manifest listed them."""
        needles = [os.fsencode(self.old)] + ([os.fsencode(self.bundled)] if self.bundled else [])
        for rel in ["pyvenv.cfg"] + self._listdir("bin"):
            path = self.root / rel
            if rel in self.files or path.is_symlink() or not path.is_file():
                continue
            if _file_contains(path, needles):
                self.files[rel] = "binary" if _has_nul(path) else "text"

    def add_bundled_extras(self) -> None:
        """The bundled interpreter's scripts, sysconfig data, pkg-config files and run paths."""
        assert self.bundled is not None
        base = BUNDLED_PYTHON_RELPATH
        needle = [os.fsencode(self.bundled)]
        candidates = [r for r in self._listdir(f"{base}/bin")]
        candidates += [r for r in self._listdir(f"{base}/lib") if ".so" in os.path.basename(r)]
        for d in self._listdir(f"{base}/lib"):
            if os.path.basename(d).startswith("python") and (self.root / d).is_dir():
                candidates += [r for r in self._listdir(d)
                               if os.path.basename(r).startswith("_sysconfigdata")
                               and r.endswith(".py")]
        candidates += [r for r in self._listdir(f"{base}/lib/pkgconfig") if r.endswith(".pc")]
        # The venv's own interpreter copies (venv --copies) carry the same run path.
        candidates += [r for r in self._listdir("bin") if os.path.basename(r).startswith("python")]
        for rel in candidates:
            path = self.root / rel
            if rel in self.files or path.is_symlink() or not path.is_file():
                continue
            if _is_elf(path):
                if _file_contains(path, needle):
                    self.files[rel] = "rpath"
            elif _file_contains(path, needle) and not _has_nul(path):
                self.files[rel] = "text"

    def add_links(self, full_walk: bool) -> None:
        """Symlinks pointing into the old prefix (or the bundled interpreter's) become relative."""
        if full_walk:
            rels = []
            for dirpath, dirnames, filenames in os.walk(self.root):
                for name in dirnames + filenames:
                    p = os.path.join(dirpath, name)
                    if os.path.islink(p):
                        rels.append(os.path.relpath(p, self.root))
        else:
            rels = self._listdir("bin")
            if self.bundled:
                rels += self._listdir(f"{BUNDLED_PYTHON_RELPATH}/bin")
                rels += self._listdir(f"{BUNDLED_PYTHON_RELPATH}/lib")
        for rel in rels:
            path = self.root / rel
            if not path.is_symlink():
                continue
            target = os.readlink(path)
            if not os.path.isabs(target):
                continue
            inside = self._inside_env(os.path.normpath(target))
            if inside is not None:
                self.links[rel] = os.path.relpath(inside, os.path.dirname(rel) or ".")

    # -- executing ----------------------------------------------------------------------------

    def execute(self) -> tuple[int, int]:
        self._precheck()
        staged: list[tuple[str, str]] = []  # (temp, final)
        try:
            for rel, mode in sorted(self.files.items()):
                item = self._stage_file(rel, mode)
                if item:
                    staged.append(item)
            for rel, target in sorted(self.links.items()):
                staged.append(self._stage_link(rel, target))
            for rel, content in sorted(self.writes.items()):
                staged.append(self._write_tmp(rel, content,
                                              stat.S_IMODE(os.lstat(self.root / rel).st_mode)))
        except BaseException:
            for tmp, _ in staged:
                _unlink_quiet(tmp)
            raise
        for i, (tmp, final) in enumerate(staged):
            try:
                os.replace(tmp, final)
            except OSError as exc:
                for left, _ in staged[i:]:
                    _unlink_quiet(left)
                raise RelocateError(f"relocation of {self.root} stopped half-way: cannot replace "
                                    f"{final}: {exc.strerror or exc}; unpack it again") from None
        return len(staged) - len(self.links) - len(self.writes), len(self.links)

    def _precheck(self) -> None:
        """Refuse before writing anything: missing files, escapes, binary prefixes that do not fit."""
        grow = len(os.fsencode(self.new)) > len(os.fsencode(self.old))
        for rel, mode in sorted(self.files.items()):
            path = self.root / rel
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                raise RelocateError(f"cannot relocate {self.root}: {rel} is listed in the manifest "
                                    "but missing") from None
            if stat.S_ISLNK(st.st_mode):
                continue
            if not stat.S_ISREG(st.st_mode):
                raise RelocateError(f"cannot relocate {self.root}: {rel} is not a regular file")
            if not _within(self.root, path.parent):
                raise RelocateError(f"cannot relocate {self.root}: {rel} lies outside the "
                                    "environment (through a symlink)")
            if mode == "binary" and grow and _file_contains(path, [os.fsencode(self.old)]):
                o, n = os.fsencode(self.old), os.fsencode(self.new)
                raise RelocateError(
                    f"cannot relocate {rel}: it is a binary file holding the old prefix "
                    f"{self.old!r} ({len(o)} bytes) and the new prefix {self.new!r} ({len(n)} "
                    "bytes) is longer; choose a destination path no longer than the old prefix")

    def _stage_file(self, rel: str, mode: str) -> Optional[tuple[str, str]]:
        path = self.root / rel
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            return None
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise RelocateError(f"cannot relocate {rel}: {exc.strerror or exc}") from None
        if mode == "text" and b"\0" in data:
            mode = "binary"  # a manifest from an older scan; never grow a binary
        if mode == "text":
            conda_meta = rel.startswith("conda-meta/") and rel.endswith(".json")
            new = self.text_rw.text(data, conda_meta=conda_meta)
        elif mode == "binary":
            new = self.binary_rw.binary(data, rel)
        else:  # rpath
            new = self._rewrite_rpath(data, rel)
        if new == data:
            return None
        return self._write_tmp(rel, new, stat.S_IMODE(st.st_mode))

    def _write_tmp(self, rel: str, new: bytes, mode: int) -> tuple[str, str]:
        path = self.root / rel
        tmp = str(path.with_name(f".{path.name}{_TMP_SUFFIX}.{os.getpid()}"))
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(new)
            os.chmod(tmp, mode)
        except OSError as exc:
            _unlink_quiet(tmp)
            raise RelocateError(f"cannot relocate {rel}: writing its new version failed: "
                                f"{exc.strerror or exc}") from None
        return tmp, str(path)

    def _stage_link(self, rel: str, target: str) -> tuple[str, str]:
        path = self.root / rel
        tmp = str(path.with_name(f".{path.name}{_TMP_SUFFIX}.{os.getpid()}"))
        try:
            os.symlink(target, tmp)
        except OSError as exc:
            raise RelocateError(f"cannot relocate {rel}: re-pointing the link failed: "
                                f"{exc.strerror or exc}") from None
        return tmp, str(path)

    def _rewrite_rpath(self, data: bytes, rel: str) -> bytes:
        """Run-path entries ``<bundled>/lib`` → ``$ORIGIN/<relative>``, padded in place."""
        assert self.bundled is not None
        lib_old = os.fsencode(os.path.join(self.bundled, "lib"))
        lib_rel = os.path.relpath(os.path.join(BUNDLED_PYTHON_RELPATH, "lib"),
                                  os.path.dirname(rel) or ".")
        repl = b"$ORIGIN/" + os.fsencode(lib_rel)
        out, pos = [], 0
        for m in re.finditer(re.escape(lib_old) + rb"/?(?=[:\0])", data):
            if m.start() < pos:
                continue
            start = data.rfind(b"\0", 0, m.start()) + 1
            end = data.find(b"\0", m.end())
            seg = data[start:end]
            entries = seg.split(b":")
            if not any(e.rstrip(b"/") == lib_old for e in entries):
                continue
            new = b":".join(repl if e.rstrip(b"/") == lib_old else e for e in entries)
            if len(new) > len(seg):
                log.warning("%s: run path %r has no room for %r; left unchanged", rel, seg, repl)
                continue
            out.append(data[pos:start])
            out.append(new + b"\0" * (len(seg) - len(new)))
            pos = end
        out.append(data[pos:])
        return b"".join(out)

    # -- small helpers ------------------------------------------------------------------------

    def _inside_env(self, target: str) -> Optional[str]:
        """An absolute link target as a path relative to the env root, or None if outside."""
        if self.bundled and (target == self.bundled or target.startswith(self.bundled + os.sep)):
            return os.path.normpath(os.path.join(BUNDLED_PYTHON_RELPATH,
                                                 os.path.relpath(target, self.bundled)))
        if target == self.old or target.startswith(self.old.rstrip(os.sep) + os.sep):
            return os.path.relpath(target, self.old)
        return None

    def _listdir(self, rel: str) -> list[str]:
        try:
            names = sorted(os.listdir(self.root / rel))
        except (FileNotFoundError, NotADirectoryError):
            return []
        return [f"{rel}/{n}" for n in names if _TMP_SUFFIX not in n]

    def _safe_rel(self, rel: str) -> str:
        norm = os.path.normpath(rel)
        if os.path.isabs(rel) or norm.split(os.sep)[0] == ".." or norm == ".":
            raise RelocateError(f"cannot relocate {self.root}: manifest path {rel!r} is not a "
                                "path inside the environment")
        return norm.replace(os.sep, "/")


# --------------------------------------------------------------------------------------------
# shebangs


def _rewrite_shebang(data: bytes, rw: _Rewriter) -> tuple[bytes, bytes]:
    """Split ``data`` into (rewritten shebang header, rest). The header is rebuilt as pip would."""
    m = _TRAMPOLINE.match(data)
    if m:
        try:
            words = shlex.split(m.group("cmd").decode())
        except (ValueError, UnicodeDecodeError):
            return b"", data
        rest = data[m.end():]
    else:
        nl = data.find(b"\n")
        line = data[2:nl if nl >= 0 else len(data)]
        rest = data[nl:] if nl >= 0 else b""
        words = line.strip().split(maxsplit=1)
        try:
            words = [w.decode() for w in words]
        except UnicodeDecodeError:
            return b"", data
        if not words:
            return b"", data
    exe, args = os.fsencode(words[0]), [os.fsencode(w) for w in words[1:]]
    new_exe = rw.sub(exe)
    if new_exe == exe:
        return b"", data
    return _build_shebang(new_exe, args), rest


def _build_shebang(exe: bytes, args: list[bytes]) -> bytes:
    """The first line(s) of a script run by ``exe``, without the newline that follows.

    The ``exec`` trampoline is valid Python only: any other interpreter keeps a plain
    shebang (newer kernels accept up to 255 bytes).
    """
    post = b"".join(b" " + a for a in args)
    fits = b" " not in exe and b"\t" not in exe and len(exe) + len(post) + 3 <= MAX_SHEBANG
    if fits or not os.path.basename(exe).startswith((b"python", b"pypy")):
        if not fits:
            log.warning("shebang #!%s is longer than %d bytes or holds a space; it may not run",
                        os.fsdecode(exe), MAX_SHEBANG)
        return b"#!" + exe + post
    quoted = os.fsencode(shlex.quote(os.fsdecode(exe)))
    quoted_args = b"".join(b" " + os.fsencode(shlex.quote(os.fsdecode(a))) for a in args)
    return b"#!/bin/sh\n'''exec' " + quoted + quoted_args + b' "$0" "$@"\n' + b"' '''"


# --------------------------------------------------------------------------------------------
# detection and scanning


def _prefix_from_activate(root: Path) -> Optional[str]:
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


def _prefix_from_pyvenv_cfg(root: Path) -> Optional[str]:
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


def _prefix_from_shebangs(root: Path) -> Optional[str]:
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
        m = _TRAMPOLINE.match(head)
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


def _prefix_from_conda_history(root: Path) -> Optional[str]:
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


def _scan_prefix_files(root: Path, old: str) -> list[tuple[str, str]]:
    """Every regular file holding ``old`` (``.pyc`` aside), as (relative path, text|binary)."""
    try:
        from .archive import find_prefix_files  # the same scan tar-env uses
    except ImportError:
        find_prefix_files = None
    if find_prefix_files is not None:
        try:
            found: list[PrefixFile] = find_prefix_files(str(root), old)
        except EzpzError as exc:
            raise RelocateError(f"cannot relocate {root}: {exc}") from None
        return [(p.path, p.mode) for p in found if not p.path.endswith(_SKIP_SUFFIXES)]
    needle = [os.fsencode(old)]
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        for name in filenames:
            if name.endswith(_SKIP_SUFFIXES) or _TMP_SUFFIX in name:
                continue
            path = Path(dirpath) / name
            if path.is_symlink() or not path.is_file():
                continue
            if _file_contains(path, needle):
                out.append((path.relative_to(root).as_posix(),
                            "binary" if _has_nul(path) else "text"))
    return out


# --------------------------------------------------------------------------------------------
# file helpers


def _file_contains(path: Path, needles: list[bytes]) -> bool:
    overlap = max(len(n) for n in needles) - 1
    try:
        with open(path, "rb") as fh:
            tail = b""
            while True:
                chunk = fh.read(_SCAN_CHUNK)
                if not chunk:
                    return False
                buf = tail + chunk
                if any(n in buf for n in needles):
                    return True
                tail = buf[-overlap:] if overlap > 0 else b""
    except OSError:
        return False


def _has_nul(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            while True:
                chunk = fh.read(_SCAN_CHUNK)
                if not chunk:
                    return False
                if b"\0" in chunk:
                    return True
    except OSError:
        return False


def _is_elf(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(4) == b"\x7fELF"
    except OSError:
        return False


def _within(root: Path, path: Path) -> bool:
    real_root = os.path.realpath(root)
    real = os.path.realpath(path)
    return real == real_root or real.startswith(real_root.rstrip(os.sep) + os.sep)


def _unlink_quiet(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _check_new_prefix(new: str) -> None:
    for ch, what in _FORBIDDEN_IN_PREFIX.items():
        if ch in new:
            raise RelocateError(f"cannot relocate to {new!r}: the path contains {what}, which "
                                "activate scripts cannot hold; choose a path without quotes, "
                                "backslashes, '$', '`' or line breaks")


def _warn_missing_home(root: Path) -> None:
    try:
        lines = (root / "pyvenv.cfg").read_text(errors="replace").splitlines()
    except OSError:
        return
    for line in lines:
        key, sep, value = line.partition("=")
        if sep and key.strip() == "home" and not os.path.isdir(value.strip()):
            log.warning("pyvenv.cfg: home = %s does not exist on this node; the venv needs that "
                        "interpreter (pack with env.bundle_python=true to carry it along)",
                        value.strip())


# --------------------------------------------------------------------------------------------
# CLI: python -m ezpz.relocate PATH [--prefix NEW] [--from OLD]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m ezpz.relocate",
        description="Rewrite a venv or conda environment copied to PATH so that it works there "
                    "(or at --prefix, where it will be moved).")
    p.add_argument("path", metavar="PATH", help="the unpacked environment")
    p.add_argument("--prefix", metavar="NEW", help="where the environment will be used "
                   "(default: PATH)")
    p.add_argument("--from", dest="old_prefix", metavar="OLD",
                   help="the old prefix, when there is no manifest and it cannot be detected")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if not os.path.isdir(args.path):
        print(f"error: {args.path}: not a directory (PATH must be an unpacked environment)",
              file=sys.stderr)
        return EXIT_USAGE
    try:
        report = relocate(args.path, new_prefix=args.prefix, old_prefix=args.old_prefix)
    except (RelocateError, OSError) as exc:
        if os.environ.get("EZPZ_LOG_LEVEL", "").upper() == "DEBUG":
            raise
        if isinstance(exc, OSError):  # e.g. a directory of the tree this user cannot read
            exc = RelocateError(f"cannot relocate {args.path}: {exc.filename or ''}: "
                                f"{exc.strerror or exc}")
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    if report.kind == "data":
        print(f"{args.path}: not a venv or conda environment; nothing to relocate")
    else:
        print(f"relocated {report.kind} {report.old_prefix} -> {report.new_prefix} "
              f"({report.files_rewritten} files, {report.links_repointed} links)")
        print(activation_hint(report.kind, report.new_prefix))
    return 0


if __name__ == "__main__":
    sys.exit(main())
