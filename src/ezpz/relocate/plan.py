"""The relocation plan: decide every change, write them all to temporary files, then
rename them in place (an error leaves the tree as it was)."""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterable
from pathlib import Path

from ..errors import RelocateError
from ..formats.manifest import BUNDLED_PYTHON_RELPATH, MANIFEST_RELPATH
from ..log import get_logger
from .detect import file_contains, has_nul, is_elf
from .rewrite import SKIP_SUFFIXES, TMP_SUFFIX, Rewriter

log = get_logger(__name__)


class Plan:
    def __init__(self, root: Path, old: str, new: str, bundled: str | None):
        self.root, self.old, self.new, self.bundled = root, old, new, bundled
        self.bundled_new = os.path.join(new, BUNDLED_PYTHON_RELPATH) if bundled else None
        pairs = [(old, new)]
        if bundled and bundled != old:
            pairs.append((bundled, self.bundled_new))
        self.text_rw = Rewriter(pairs)
        self.binary_rw = Rewriter([(old, new)])
        self.files: dict[str, str] = {}  # rel path -> text | binary | rpath
        self.links: dict[str, str] = {}  # rel path -> new target
        self.writes: dict[str, bytes] = {}  # rel path -> new content (the manifest)

    # -- collecting ---------------------------------------------------------------------------

    def add_entries(self, entries: Iterable[tuple[str, str]]) -> None:
        for rel, mode in entries:
            rel = self._safe_rel(rel)
            if rel.endswith(SKIP_SUFFIXES) or rel == MANIFEST_RELPATH:
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
            if file_contains(path, needles):
                self.files[rel] = "binary" if has_nul(path) else "text"

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
            if is_elf(path):
                if file_contains(path, needle):
                    self.files[rel] = "rpath"
            elif file_contains(path, needle) and not has_nul(path):
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
            if mode == "binary" and grow and file_contains(path, [os.fsencode(self.old)]):
                o, n = os.fsencode(self.old), os.fsencode(self.new)
                raise RelocateError(
                    f"cannot relocate {rel}: it is a binary file holding the old prefix "
                    f"{self.old!r} ({len(o)} bytes) and the new prefix {self.new!r} ({len(n)} "
                    "bytes) is longer; choose a destination path no longer than the old prefix")

    def _stage_file(self, rel: str, mode: str) -> tuple[str, str] | None:
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
        tmp = str(path.with_name(f".{path.name}{TMP_SUFFIX}.{os.getpid()}"))
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
        tmp = str(path.with_name(f".{path.name}{TMP_SUFFIX}.{os.getpid()}"))
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

    def _inside_env(self, target: str) -> str | None:
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
        return [f"{rel}/{n}" for n in names if TMP_SUFFIX not in n]

    def _safe_rel(self, rel: str) -> str:
        norm = os.path.normpath(rel)
        if os.path.isabs(rel) or norm.split(os.sep)[0] == ".." or norm == ".":
            raise RelocateError(f"cannot relocate {self.root}: manifest path {rel!r} is not a "
                                "path inside the environment")
        return norm.replace(os.sep, "/")


# --------------------------------------------------------------------------------------------
# shebangs




def _within(root: Path, path: Path) -> bool:
    real_root = os.path.realpath(root)
    real = os.path.realpath(path)
    return real == real_root or real.startswith(real_root.rstrip(os.sep) + os.sep)


def _unlink_quiet(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


