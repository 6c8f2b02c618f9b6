"""The anchor: a directory opened once, every path resolved beneath it."""

from __future__ import annotations

import errno
import itertools
import os
import stat
from collections.abc import Iterator
from typing import NamedTuple

from .kernel import KERNEL

_DIR_PATH = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_DIR_READ = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

_tmp_counter = itertools.count()


def split(rel: str) -> list[str]:
    """The components of a path relative to an anchor; ValueError for anything that is not
    one (absolute, ``..``, a NUL byte). ``""`` and ``"."`` name the anchor itself."""
    if "\0" in rel:
        raise ValueError(f"NUL byte in path {rel!r}")
    if rel.startswith("/"):
        raise ValueError(f"absolute path {rel!r} where a path inside the tree is expected")
    parts = [p for p in rel.split("/") if p and p != "."]
    if ".." in parts:
        raise ValueError(f"'..' in path {rel!r}")
    return parts


def is_escape(exc: BaseException) -> bool:
    """Whether an OSError from this module means "a symlink or a non-directory on the way"."""
    return isinstance(exc, OSError) and exc.errno in (errno.ELOOP, errno.EXDEV, errno.ENOTDIR)


class Entry(NamedTuple):
    name: str
    kind: str  # dir | file | link | other


class Anchor:
    """A directory opened once; every path is resolved beneath it, never through a symlink.

    ``path`` is only used in messages. The anchor's own path is trusted (given by the user or
    made by ezpz); the anchor is closed by :meth:`close` or a ``with`` block.
    """

    def __init__(self, path: str, *, fd: int | None = None) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC) if fd is None \
            else fd

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Anchor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def show(self, rel: str) -> str:
        """``rel`` as a path for messages."""
        return os.path.join(self.path, rel) if rel else self.path

    # -- resolution --------------------------------------------------------------------
    def _open_parts(self, parts: list[str], flags: int, mode: int = 0) -> int:
        flags |= os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            if not parts:
                return os.open(".", flags & ~os.O_NOFOLLOW, dir_fd=self.fd)
            if KERNEL.openat2:
                return KERNEL.call_openat2(self.fd, "/".join(parts), flags,
                                           mode if flags & os.O_CREAT else 0)
            dfd = self._walk(parts[:-1])
            try:
                return os.open(parts[-1], flags, mode, dir_fd=dfd)
            finally:
                if dfd != self.fd:
                    os.close(dfd)
        except OSError as exc:
            exc.filename = self.show("/".join(parts))  # messages name the whole path
            raise

    def _walk(self, parts: list[str]) -> int:
        """An O_PATH descriptor of the directory ``parts``, one component at a time."""
        cur = self.fd
        for p in parts:
            try:
                nxt = os.open(p, _DIR_PATH, dir_fd=cur)
            finally:
                if cur != self.fd:
                    os.close(cur)
            cur = nxt
        return cur

    def _dir(self, parts: list[str]) -> int:
        """A descriptor of directory ``parts`` (the anchor's own for ``[]``: not to close)."""
        if not parts:
            return self.fd
        if KERNEL.openat2:
            return KERNEL.call_openat2(self.fd, "/".join(parts), _DIR_PATH, 0)
        return self._walk(parts)

    def parent(self, rel: str) -> tuple[int, str]:
        """(descriptor of the directory holding ``rel``, its last component). The caller
        closes the descriptor unless it is ``self.fd``."""
        parts = split(rel)
        if not parts:
            raise ValueError("the anchor itself has no parent inside the tree")
        return self._dir(parts[:-1]), parts[-1]

    def _done(self, dfd: int) -> None:
        if dfd != self.fd:
            os.close(dfd)

    def opendir(self, rel: str, *, path_only: bool = True) -> int:
        """A new descriptor of directory ``rel`` (O_PATH unless ``path_only`` is False)."""
        return self._open_parts(split(rel), _DIR_PATH if path_only else _DIR_READ)

    # -- single operations -------------------------------------------------------------
    def open(self, rel: str, flags: int, mode: int = 0o600) -> int:
        """open(2) of ``rel``; O_NOFOLLOW and O_CLOEXEC are always added."""
        return self._open_parts(split(rel), flags, mode)

    def lstat(self, rel: str) -> os.stat_result:
        parts = split(rel)
        if not parts:
            return os.fstat(self.fd)
        dfd = self._dir(parts[:-1])
        try:
            return os.stat(parts[-1], dir_fd=dfd, follow_symlinks=False)
        finally:
            self._done(dfd)

    def kind(self, rel: str) -> str | None:
        """``dir``, ``file``, ``link``, ``other``, or None when nothing (reachable) is there."""
        try:
            st = self.lstat(rel)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            if is_escape(exc):
                return None
            raise
        return _kind(st.st_mode)

    def mkdir(self, rel: str, mode: int = 0o700) -> None:
        dfd, leaf = self.parent(rel)
        try:
            os.mkdir(leaf, mode, dir_fd=dfd)
        finally:
            self._done(dfd)

    def makedirs(self, rel: str, mode: int = 0o700) -> None:
        """Create ``rel`` and missing parents; an existing component must be a directory."""
        cur = self.fd
        try:
            for p in split(rel):
                try:
                    os.mkdir(p, mode, dir_fd=cur)
                except FileExistsError:
                    pass
                nxt = os.open(p, _DIR_PATH, dir_fd=cur)
                if cur != self.fd:
                    os.close(cur)
                cur = nxt
        finally:
            if cur != self.fd:
                os.close(cur)

    def symlink(self, target: str, rel: str) -> None:
        dfd, leaf = self.parent(rel)
        try:
            os.symlink(target, leaf, dir_fd=dfd)
        finally:
            self._done(dfd)

    def readlink(self, rel: str) -> str:
        dfd, leaf = self.parent(rel)
        try:
            return os.readlink(leaf, dir_fd=dfd)
        finally:
            self._done(dfd)

    def link(self, src: str, dst: str) -> None:
        """A hardlink ``dst`` to the file ``src`` (a symlink at ``src`` is linked as itself,
        never followed)."""
        sfd, sleaf = self.parent(src)
        try:
            dfd, dleaf = self.parent(dst)
            try:
                os.link(sleaf, dleaf, src_dir_fd=sfd, dst_dir_fd=dfd, follow_symlinks=False)
            finally:
                self._done(dfd)
        finally:
            self._done(sfd)

    def unlink(self, rel: str) -> None:
        dfd, leaf = self.parent(rel)
        try:
            os.unlink(leaf, dir_fd=dfd)
        finally:
            self._done(dfd)

    def rename(self, src: str, dst: str, *, exchange: bool = False,
               noreplace: bool = False) -> bool:
        """rename(2) ``src`` to ``dst`` (symlinks are moved, never followed). With
        ``exchange``, swap them atomically and return True, or return False where the
        kernel or filesystem cannot (nothing changed then). With ``noreplace``, rename only
        while ``dst`` does not exist; False when it does or the kernel cannot."""
        sfd, sleaf = self.parent(src)
        try:
            dfd, dleaf = self.parent(dst)
            try:
                if exchange:
                    return KERNEL.exchange(sfd, sleaf, dfd, dleaf)
                if noreplace:
                    return KERNEL.rename_noreplace(sfd, sleaf, dfd, dleaf)
                os.rename(sleaf, dleaf, src_dir_fd=sfd, dst_dir_fd=dfd)
                return True
            finally:
                self._done(dfd)
        finally:
            self._done(sfd)

    def listdir(self, rel: str = "") -> list[Entry]:
        """The entries of directory ``rel``, sorted by name (``[]`` when it is missing, not a
        directory or behind a symlink)."""
        try:
            fd = self._open_parts(split(rel), _DIR_READ)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.EXDEV):
                return []
            raise
        try:
            return _scan(fd)
        finally:
            os.close(fd)

    # -- whole files ---------------------------------------------------------------------
    def read_bytes(self, rel: str, limit: int) -> bytes:
        """The content of the regular file ``rel``; OSError(EFBIG) when it holds more than
        ``limit`` bytes (nothing larger is read), OSError(EINVAL) when it is not a regular
        file (a FIFO is never waited for)."""
        fd = self.open(rel, os.O_RDONLY | os.O_NONBLOCK)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise OSError(errno.EINVAL, "not a regular file", self.show(rel))
            if st.st_size > limit:
                raise OSError(errno.EFBIG, f"larger than {limit} bytes", self.show(rel))
            parts = []
            got = 0
            while got <= limit:
                block = os.read(fd, min(1 << 20, limit + 1 - got))
                if not block:
                    break
                parts.append(block)
                got += len(block)
            if got > limit:
                raise OSError(errno.EFBIG, f"larger than {limit} bytes", self.show(rel))
            return b"".join(parts)
        finally:
            os.close(fd)

    def temp_name(self, rel: str, tag: str = "ezpz-tmp") -> str:
        """A fresh name next to ``rel`` for a file that will be renamed over it."""
        head, _, leaf = rel.rpartition("/")
        name = f".{leaf}.{tag}-{os.getpid()}-{next(_tmp_counter)}"
        return f"{head}/{name}" if head else name

    def write_file(self, rel: str, data: bytes, mode: int = 0o644) -> None:
        """Replace ``rel`` atomically with ``data`` (a new file renamed over it)."""
        tmp = self.temp_name(rel)
        fd = self.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            try:
                view = memoryview(data)
                while len(view):
                    view = view[os.write(fd, view):]
                os.fchmod(fd, mode)
            finally:
                os.close(fd)
            self.rename(tmp, rel)
        except BaseException:
            try:
                self.unlink(tmp)
            except OSError:
                pass
            raise

    def set_meta(self, rel: str, mode: int | None, mtime: float | None) -> None:
        """chmod and/or set the mtime of the file or directory ``rel`` (through a descriptor of
        it: a symlink there is refused, never followed)."""
        target: int | str
        try:
            fd = target = self._open_parts(split(rel), os.O_RDONLY | os.O_NONBLOCK)
        except PermissionError:  # a file this user may not read: change it by its O_PATH fd
            fd = self._open_parts(split(rel), os.O_PATH)
            target = f"/proc/self/fd/{fd}"
        try:
            if mode is not None:
                os.chmod(target, mode)
            if mtime is not None:
                os.utime(target, (mtime, mtime))
        finally:
            os.close(fd)

    # -- trees ---------------------------------------------------------------------------
    def walk(self, rel: str = "") -> Iterator[tuple[str, list[Entry]]]:
        """(directory, its entries) for ``rel`` and every directory below it, depth first in
        name order, without following symlinks, without recursion and with at most a few
        descriptors held (deeper levels are reopened through ``..``)."""
        from .trees import walk_fd

        base = "/".join(split(rel))
        try:
            top = self._open_parts(split(rel), _DIR_READ)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.EXDEV):
                return
            raise
        yield from walk_fd(top, base, self.show)

    def remove(self, rel: str) -> None:
        """Remove ``rel`` (a file, a symlink or a whole directory tree); missing is fine."""
        from .trees import remove_at

        dfd, leaf = self.parent(rel)
        try:
            remove_at(dfd, leaf)
        finally:
            self._done(dfd)


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISLNK(mode):
        return "link"
    return "other"


def _scan(fd: int) -> list[Entry]:
    out = []
    with os.scandir(fd) as it:
        for e in it:
            if e.is_symlink():
                kind = "link"
            elif e.is_dir(follow_symlinks=False):
                kind = "dir"
            elif e.is_file(follow_symlinks=False):
                kind = "file"
            else:
                kind = "other"
            out.append(Entry(e.name, kind))
    out.sort()
    return out


