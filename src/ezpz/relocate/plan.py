"""The relocation plan: decide every change, write them all to temporary files, then
rename them in place (an error leaves the tree as it was).

Every file is opened, created, renamed or removed through the tree's anchor
(:mod:`ezpz.anchored`): a path with a symlink anywhere in it is refused, a file is never
written through a link, and the rewritten version is a new file renamed over the old one.
Files are rewritten from descriptor to descriptor in bounded memory (:mod:`.stream`).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable

from ..anchored import Anchor, is_escape
from ..errors import RelocateError
from ..formats.manifest import BUNDLED_PYTHON_RELPATH, MANIFEST_RELPATH
from ..fsutil import write_all
from ..log import get_logger
from .detect import file_contains, has_nul, is_elf
from .rewrite import SKIP_SUFFIXES, TMP_SUFFIX, Rewriter, _rewrite_shebang
from .stream import CHUNK, BinaryPadding, chunks, rewrite_segments, stream_sub

log = get_logger(__name__)

#: Largest conda-meta record rewritten (in memory: its placeholders must be seen whole).
CONDA_META_MAX = 64 << 20
_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL


class Plan:
    def __init__(self, root: Anchor, old: str, new: str, bundled: str | None):
        self.root, self.old, self.new, self.bundled = root, old, new, bundled
        self.bundled_new = os.path.join(new, BUNDLED_PYTHON_RELPATH) if bundled else None
        pairs = [(old, new)]
        if bundled and bundled != old and self.bundled_new:
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
        for rel in ["pyvenv.cfg"] + self._listdir("bin", "file"):
            if rel in self.files or self.root.kind(rel) != "file":
                continue
            if file_contains(self.root, rel, needles):
                self.files[rel] = "binary" if has_nul(self.root, rel) else "text"

    def add_bundled_extras(self) -> None:
        """The bundled interpreter's scripts, sysconfig data, pkg-config files and run paths."""
        assert self.bundled is not None
        base = BUNDLED_PYTHON_RELPATH
        needle = [os.fsencode(self.bundled)]
        candidates = self._listdir(f"{base}/bin", "file")
        candidates += [r for r in self._listdir(f"{base}/lib", "file")
                       if ".so" in os.path.basename(r)]
        for d in self._listdir(f"{base}/lib", "dir"):
            if os.path.basename(d).startswith("python"):
                candidates += [r for r in self._listdir(d, "file")
                               if os.path.basename(r).startswith("_sysconfigdata")
                               and r.endswith(".py")]
        candidates += [r for r in self._listdir(f"{base}/lib/pkgconfig", "file")
                       if r.endswith(".pc")]
        # The venv's own interpreter copies (venv --copies) carry the same run path.
        candidates += [r for r in self._listdir("bin", "file")
                       if os.path.basename(r).startswith("python")]
        for rel in candidates:
            if rel in self.files:
                continue
            if is_elf(self.root, rel):
                if file_contains(self.root, rel, needle):
                    self.files[rel] = "rpath"
            elif file_contains(self.root, rel, needle) and not has_nul(self.root, rel):
                self.files[rel] = "text"

    def add_links(self, full_walk: bool, only: list[str] | None = None) -> None:
        """Symlinks pointing into the old prefix (or the bundled interpreter's) become relative.

        ``only``: the tree's symlinks with an absolute target are among these paths (the
        extraction listed them), read instead of walking the tree."""
        if only is not None:
            rels = [r for r in only if self.root.kind(r) == "link"]
        elif full_walk:
            rels = [f"{d}/{e.name}" if d else e.name for d, entries in self.root.walk()
                    for e in entries if e.kind == "link"]
        else:
            rels = self._listdir("bin", "link")
            if self.bundled:
                rels += self._listdir(f"{BUNDLED_PYTHON_RELPATH}/bin", "link")
                rels += self._listdir(f"{BUNDLED_PYTHON_RELPATH}/lib", "link")
        for rel in rels:
            target = self.root.readlink(rel)
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
                                              stat.S_IMODE(self.root.lstat(rel).st_mode)))
        except BaseException:
            for tmp, _ in staged:
                self._unlink_quiet(tmp)
            raise
        for i, (tmp, final) in enumerate(staged):
            try:
                self.root.rename(tmp, final)
            except OSError as exc:
                for left, _ in staged[i:]:
                    self._unlink_quiet(left)
                raise RelocateError(f"relocation of {self.root.path} stopped half-way: cannot "
                                    f"replace {final}: {exc.strerror or exc}; unpack it "
                                    "again") from None
        return len(staged) - len(self.links) - len(self.writes), len(self.links)

    def _precheck(self) -> None:
        """Refuse before writing anything: missing files, escapes, binary prefixes that do not fit."""
        grow = len(os.fsencode(self.new)) > len(os.fsencode(self.old))
        for rel, mode in sorted(self.files.items()):
            try:
                st = self.root.lstat(rel)
            except FileNotFoundError:
                raise RelocateError(f"cannot relocate {self.root.path}: {rel} is listed in the "
                                    "manifest but missing") from None
            except OSError as exc:
                if is_escape(exc):
                    raise RelocateError(f"cannot relocate {self.root.path}: {rel} lies outside "
                                        "the environment (through a symlink)") from None
                raise
            if stat.S_ISLNK(st.st_mode):
                continue
            if not stat.S_ISREG(st.st_mode):
                raise RelocateError(f"cannot relocate {self.root.path}: {rel} is not a regular "
                                    "file")
            if mode == "binary" and grow and file_contains(self.root, rel,
                                                           [os.fsencode(self.old)]):
                o, n = os.fsencode(self.old), os.fsencode(self.new)
                raise RelocateError(
                    f"cannot relocate {rel}: it is a binary file holding the old prefix "
                    f"{self.old!r} ({len(o)} bytes) and the new prefix {self.new!r} ({len(n)} "
                    "bytes) is longer; choose a destination path no longer than the old prefix")

    def _stage_file(self, rel: str, mode: str) -> tuple[str, str] | None:
        """The new version of ``rel`` written next to it, or None when nothing changes."""
        if self.root.kind(rel) == "link":
            return None  # a symlink listed as a file: left as it is (never written through)
        try:
            src = self.root.open(rel, os.O_RDONLY | os.O_NONBLOCK)
        except OSError as exc:
            raise RelocateError(f"cannot relocate {rel}: {exc.strerror or exc}") from None
        try:
            st = os.fstat(src)
            if not stat.S_ISREG(st.st_mode):
                return None  # a symlink or another kind of file: left as it is
            first = os.read(src, CHUNK)
            if mode == "text" and (b"\0" in first or (len(first) == CHUNK and
                                                      has_nul(self.root, rel))):
                mode = "binary"  # a manifest from an older scan; never grow a binary
            tmp = self._tmp_name(rel)
            try:
                dst = self.root.open(tmp, _NEW, 0o600)
            except OSError as exc:
                raise RelocateError(f"cannot relocate {rel}: writing its new version failed: "
                                    f"{exc.strerror or exc}") from None
            try:
                changed = self._rewrite(rel, mode, src, dst, first, st.st_size)
                os.fchmod(dst, stat.S_IMODE(st.st_mode))
            except OSError as exc:
                os.close(dst)
                self._unlink_quiet(tmp)
                raise RelocateError(f"cannot relocate {rel}: writing its new version failed: "
                                    f"{exc.strerror or exc}") from None
            except BaseException:
                os.close(dst)
                self._unlink_quiet(tmp)
                raise
            os.close(dst)
            if not changed:
                self._unlink_quiet(tmp)
                return None
            return tmp, rel
        finally:
            os.close(src)

    def _rewrite(self, rel: str, mode: str, src: int, dst: int, first: bytes,
                 size: int) -> bool:
        def out(data: bytes) -> None:
            view = memoryview(data)
            while len(view):
                view = view[os.write(dst, view):]

        if mode == "text":
            if rel.startswith("conda-meta/") and rel.endswith(".json"):
                if size > CONDA_META_MAX:
                    raise RelocateError(f"cannot relocate {rel}: a conda-meta record of {size} "
                                        f"bytes (more than {CONDA_META_MAX >> 20} MiB)")
                data = b"".join(chunks(src, first))
                new = self.text_rw.text(data, conda_meta=True)
                out(new)
                return new != data
            changed = False
            if first.startswith(b"#!"):
                head, first = _rewrite_shebang(first, self.text_rw)
                if head:
                    out(head)
                    changed = True
            rw = self.text_rw
            return stream_sub(chunks(src, first), out, rw.regex, lambda m: rw.map[m.group(0)],
                              max(map(len, rw.map))) or changed
        if mode == "binary":
            rw = self.binary_rw
            pad = BinaryPadding(rel, self.old, self.new)
            changed = stream_sub(chunks(src, first), out, rw.regex, lambda m: rw.map[m.group(0)],
                                 max(map(len, rw.map)), pad.on_raw, pad.on_match)
            out(pad.tail())
            return changed
        assert self.bundled is not None  # rpath
        lib_old = os.fsencode(os.path.join(self.bundled, "lib"))
        return rewrite_segments(chunks(src, first), out, lib_old,
                                lambda seg: self._rpath_segment(seg, rel, lib_old))

    def _tmp_name(self, rel: str) -> str:
        head, _, leaf = rel.rpartition("/")
        name = f".{leaf}{TMP_SUFFIX}.{os.getpid()}"
        return f"{head}/{name}" if head else name

    def _write_tmp(self, rel: str, new: bytes, mode: int) -> tuple[str, str]:
        tmp = self._tmp_name(rel)
        try:
            fd = self.root.open(tmp, _NEW, 0o600)
            try:
                write_all(fd, new)
                os.fchmod(fd, mode)
            finally:
                os.close(fd)
        except OSError as exc:
            self._unlink_quiet(tmp)
            raise RelocateError(f"cannot relocate {rel}: writing its new version failed: "
                                f"{exc.strerror or exc}") from None
        return tmp, rel

    def _stage_link(self, rel: str, target: str) -> tuple[str, str]:
        tmp = self._tmp_name(rel)
        try:
            self.root.symlink(target, tmp)
        except OSError as exc:
            raise RelocateError(f"cannot relocate {rel}: re-pointing the link failed: "
                                f"{exc.strerror or exc}") from None
        return tmp, rel

    def _rpath_segment(self, seg: bytes, rel: str, lib_old: bytes) -> bytes | None:
        """A run-path string with ``<bundled>/lib`` entries made ``$ORIGIN``-relative (padded
        to its length), or None when it has none or no room."""
        entries = seg.split(b":")
        if not any(e.rstrip(b"/") == lib_old for e in entries):
            return None
        lib_rel = os.path.relpath(os.path.join(BUNDLED_PYTHON_RELPATH, "lib"),
                                  os.path.dirname(rel) or ".")
        repl = b"$ORIGIN/" + os.fsencode(lib_rel)
        new = b":".join(repl if e.rstrip(b"/") == lib_old else e for e in entries)
        if len(new) > len(seg):
            log.warning("%s: run path %r has no room for %r; left unchanged", rel, seg, repl)
            return None
        return new + b"\0" * (len(seg) - len(new))

    # -- small helpers ------------------------------------------------------------------------

    def _inside_env(self, target: str) -> str | None:
        """An absolute link target as a path relative to the env root, or None if outside."""
        if self.bundled and (target == self.bundled or target.startswith(self.bundled + os.sep)):
            return os.path.normpath(os.path.join(BUNDLED_PYTHON_RELPATH,
                                                 os.path.relpath(target, self.bundled)))
        if target == self.old or target.startswith(self.old.rstrip(os.sep) + os.sep):
            return os.path.relpath(target, self.old)
        return None

    def _listdir(self, rel: str, kind: str) -> list[str]:
        """The entries of kind ``kind`` (file, dir, link) of directory ``rel``, sorted; none
        when it is missing or behind a symlink."""
        return [f"{rel}/{e.name}" for e in self.root.listdir(rel)
                if e.kind == kind and TMP_SUFFIX not in e.name]

    def _safe_rel(self, rel: str) -> str:
        norm = os.path.normpath(rel)
        if os.path.isabs(rel) or norm.split(os.sep)[0] == ".." or norm == "." or "\0" in rel:
            raise RelocateError(f"cannot relocate {self.root.path}: manifest path {rel!r} is not "
                                "a path inside the environment")
        return norm.replace(os.sep, "/")

    def _unlink_quiet(self, rel: str) -> None:
        try:
            self.root.unlink(rel)
        except OSError:
            pass

