"""Whole trees below a directory descriptor: removal and walks, iterative, never following
a symlink, with a bounded number of descriptors held (deeper levels are reopened through
``..``, checked by device and inode); and a cache of directory descriptors for writers."""

from __future__ import annotations

import errno
import os
import stat
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from .anchor import _DIR_PATH, _DIR_READ, Entry, _scan

if TYPE_CHECKING:
    from .anchor import Anchor

#: Directory descriptors an iterative removal or walk keeps open at most.
_KEEP_FDS = 16


def walk_fd(top: int, base: str, show: Callable[[str], str]) -> Iterator[tuple[str, list[Entry]]]:
    """(directory, entries) below the open directory ``top`` (named ``base``), depth first in
    name order; ``top`` is closed at the end. ``show`` names a path in errors."""
    # levels: [fd or -1, (dev, ino), subdirectories still to visit, path]
    levels: list[list[Any]] = []

    def enter(fd: int, path: str) -> list[Entry]:
        st = os.fstat(fd)
        entries = _scan(fd)
        levels.append([fd, (st.st_dev, st.st_ino),
                       [e.name for e in reversed(entries) if e.kind == "dir"], path])
        if len(levels) > _KEEP_FDS:
            old = levels[-_KEEP_FDS - 1]
            if old[0] >= 0:
                os.close(old[0])
                old[0] = -1
        return entries

    try:
        yield base, enter(top, base)
        while levels:
            level = levels[-1]
            if level[2]:
                name = level[2].pop()
                path = f"{level[3]}/{name}" if level[3] else name
                try:
                    fd = os.open(name, _DIR_READ, dir_fd=level[0])
                except OSError as exc:
                    if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                        continue  # gone, or replaced by a symlink meanwhile
                    exc.filename = show(path)
                    raise
                yield path, enter(fd, path)
                continue
            levels.pop()
            if levels and levels[-1][0] < 0:
                levels[-1][0] = _reopen_parent(level[0], levels[-1][1], level[3])
            os.close(level[0])
    finally:
        for level in levels:
            if level[0] >= 0:
                os.close(level[0])


def _reopen_parent(child: int, ident: tuple[int, int], path: str) -> int:
    """A descriptor of the parent of directory ``child`` (through ``..``), checked to be the
    directory ``ident`` (device, inode) it was when it was entered."""
    fd = os.open("..", _DIR_READ, dir_fd=child)
    st = os.fstat(fd)
    if (st.st_dev, st.st_ino) != ident:
        os.close(fd)
        raise OSError(errno.ESTALE, "the tree changed while it was walked", path)
    return fd


def _open_dir_for_removal(parent: int, name: str) -> int:
    try:
        return os.open(name, _DIR_READ, dir_fd=parent)
    except PermissionError:  # a mode-000 directory of our own: make it readable first
        os.chmod(name, 0o700, dir_fd=parent, follow_symlinks=True)
        return os.open(name, _DIR_READ, dir_fd=parent)


def remove_at(parent: int, name: str) -> None:
    """Remove the entry ``name`` of directory ``parent``: a file or symlink is unlinked, a
    directory removed with everything below it (iteratively, never following a symlink,
    at most ``_KEEP_FDS`` descriptors held). Missing is fine."""
    try:
        st = os.stat(name, dir_fd=parent, follow_symlinks=False)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(name, dir_fd=parent)
        return
    # levels: [name, fd or -1, (dev, ino), subdirectories still to remove]
    top = _open_dir_for_removal(parent, name)
    levels: list[list[Any]] = []

    def push(lname: str, fd: int) -> None:
        st = os.fstat(fd)
        if st.st_mode & 0o700 != 0o700:  # a read-only directory of ours: entries go first
            try:
                os.fchmod(fd, stat.S_IMODE(st.st_mode) | 0o700)
            except OSError:
                pass
        subdirs = []
        with os.scandir(fd) as it:
            for e in it:
                if e.is_dir(follow_symlinks=False):
                    subdirs.append(e.name)
                else:
                    try:
                        os.unlink(e.name, dir_fd=fd)
                    except FileNotFoundError:
                        pass
        levels.append([lname, fd, (st.st_dev, st.st_ino), subdirs])
        if len(levels) > _KEEP_FDS:  # hold a bounded number of descriptors
            old = levels[-_KEEP_FDS - 1]
            if old[1] >= 0:
                os.close(old[1])
                old[1] = -1

    try:
        push(name, top)
        while levels:
            level = levels[-1]
            if level[3]:
                sub = level[3].pop()
                try:
                    fd = _open_dir_for_removal(level[1], sub)
                except FileNotFoundError:
                    continue
                push(sub, fd)
                continue
            levels.pop()
            if not levels:
                os.close(level[1])
                os.rmdir(name, dir_fd=parent)
                break
            up = levels[-1]
            if up[1] < 0:  # reopen the parent level through "..", and make sure it is it
                try:
                    up[1] = _reopen_parent(level[1], up[2], name)
                except OSError:
                    os.close(level[1])
                    raise
            os.close(level[1])
            os.rmdir(level[0], dir_fd=up[1])
    finally:
        for level in levels:
            if level[1] >= 0:
                try:
                    os.close(level[1])
                except OSError:
                    pass


class DirCache:
    """Descriptors of directories below an anchor, by relative path, least recently used
    closed first (``size`` at most). ``get`` resolves beneath the anchor without following
    symlinks; ``add`` records a directory the caller has just made."""

    def __init__(self, anchor: Anchor, size: int = 128) -> None:
        self.anchor = anchor
        self.size = size
        self._fds: OrderedDict[str, int] = OrderedDict()
        #: Descriptors evicted while a caller may still use them; closed by ``release``.
        self._retired: list[int] = []
        self._last = ""  # the directory asked for last (members mostly share their parent)
        self._last_fd = anchor.fd

    def get(self, rel: str) -> int:
        if rel == self._last:
            return self._last_fd
        if not rel:
            return self.anchor.fd
        fd = self._fds.get(rel)
        if fd is not None:
            self._fds.move_to_end(rel)
            self._last, self._last_fd = rel, fd
            return fd
        head, _, leaf = rel.rpartition("/")
        pfd = self._fds.get(head) if head else self.anchor.fd
        if pfd is not None:
            fd = os.open(leaf, _DIR_PATH, dir_fd=pfd)
        else:
            fd = self.anchor.opendir(rel)
        self._put(rel, fd)
        self._last, self._last_fd = rel, fd
        return fd

    def add(self, rel: str, fd: int) -> None:
        old = self._fds.pop(rel, None)
        if old is not None:
            self._retired.append(old)
        self._put(rel, fd)
        self._last, self._last_fd = rel, fd

    def _put(self, rel: str, fd: int) -> None:
        self._fds[rel] = fd
        if len(self._fds) > self.size:
            _, old = self._fds.popitem(last=False)
            self._retired.append(old)
            if old == self._last_fd:
                self._last, self._last_fd = "", self.anchor.fd

    @property
    def retired(self) -> int:
        """Evicted descriptors not closed yet."""
        return len(self._retired)

    def release(self) -> None:
        """Close evicted descriptors (call when nothing holds them any more)."""
        for fd in self._retired:
            os.close(fd)
        self._retired.clear()

    def close(self) -> None:
        self.release()
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        self._last, self._last_fd = "", self.anchor.fd
