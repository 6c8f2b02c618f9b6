"""Writing accepted members into the destination: ezpz's own writer (``python`` engine).

Everything goes through the anchored API (:mod:`ezpz.anchored`): each member is created by
its last component under a descriptor of its parent directory, which was resolved beneath
the destination without following any symlink; files are created ``O_EXCL | O_NOFOLLOW``,
so nothing is ever written through a link. Regular files whose data lies whole in the
decoded block are handed to the C writer (``ezpz.extract._fastx``) in batches, written by a
thread of their own with the GIL released while the next members are read and checked;
everything else is written here, after the batches it could depend on (same path, a
hardlink's file) were written. Directories are created writable
(0700) and get their own mode and mtime at the end, deepest first, as GNU tar does.
"""

from __future__ import annotations

import errno
import os
import queue
import sys
import threading
from typing import Any

from ..anchored import Anchor, DirCache
from ..formats.tarread import TarReader
from ..fsutil import current_umask, write_all
from .checks import DIR, FILE, HARDLINK, ROOT, SYMLINK, Accepted, ExtractReport

_DIR_PATH = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_FS_ENCODING = sys.getfilesystemencoding()
_FS_ERRORS = sys.getfilesystemencodeerrors()
#: A batch for the C writer is written when it holds this many files or bytes.
BATCH_FILES = 256
BATCH_BYTES = 16 << 20


class WriteError(OSError):
    """A write of the member ``member`` failed (errno and strerror as the system said)."""

    def __init__(self, err: int, member: str) -> None:
        super().__init__(err, os.strerror(err))
        self.member = member


class PythonWriter:
    """Writes accepted members below ``root``; ``fast`` is the C writer module or None."""

    def __init__(self, root: Anchor, report: ExtractReport, fast: Any = None) -> None:
        self.root = root
        self.report = report
        self.dirs = DirCache(root, size=256)
        self._umask = current_umask()
        self._fast = fast
        self._batch: list[tuple[int, bytes, int, int, memoryview]] = []
        self._names: list[str] = []
        self._batch_bytes = 0
        self._block = -1
        self._thread: _BatchWriter | None = None
        self._dir_meta: dict[str, tuple[int, int]] = {}
        self._root_meta: tuple[int, int] | None = None

    # -- members -------------------------------------------------------------------------
    def put(self, a: Accepted, reader: TarReader) -> None:
        kind, _rel, parent, leaf, mode, mtime, size, _target, replaces, implied, name = a
        if implied:
            for d in implied:
                self._mkdir(d)
        if kind == FILE:
            if self._fast is not None and not replaces:
                if self._batch and reader.blocks != self._block:
                    self.flush()  # hold views of one decoded block at a time
                view = reader.data_view()
                if view is not None:
                    self._block = reader.blocks
                    self._batch.append((self.dirs.get(parent),
                                        leaf.encode(_FS_ENCODING, _FS_ERRORS), mode, mtime,
                                        view))
                    self._names.append(name)
                    self._batch_bytes += size
                    if len(self._batch) >= BATCH_FILES or self._batch_bytes >= BATCH_BYTES:
                        self.flush()
                    return
            if replaces:
                self.sync()  # what is there may still be in a batch
                self._unlink(a)
            self._file(a, reader)
        elif kind == DIR:
            if a.replaces:
                self.sync()
                self._unlink(a)
            self._mkdir(a.rel)
            self._dir_meta[a.rel] = (a.mode, a.mtime)
        elif kind == SYMLINK:
            pfd = self.dirs.get(a.parent)
            if a.replaces:
                self.sync()
                self._unlink(a)
            os.symlink(a.target, a.leaf, dir_fd=pfd)
            try:
                os.utime(a.leaf, (a.mtime, a.mtime), dir_fd=pfd, follow_symlinks=False)
            except OSError:  # pragma: no cover - filesystems without lutimes
                pass
        elif kind == HARDLINK:
            self.sync()  # the linked file may be in a batch
            if a.replaces:
                self._unlink(a)
            thead, _, tleaf = a.target.rpartition("/")
            os.link(tleaf, a.leaf, src_dir_fd=self.dirs.get(thead),
                    dst_dir_fd=self.dirs.get(a.parent), follow_symlinks=False)
        elif kind == ROOT:
            self._root_meta = (a.mode, a.mtime)

    def _mkdir(self, rel: str) -> None:
        head, _, leaf = rel.rpartition("/")
        pfd = self.dirs.get(head)
        try:
            os.mkdir(leaf, 0o700, dir_fd=pfd)
        except FileExistsError:
            pass  # a directory again (the checks allow only that): it is reused
        self.dirs.add(rel, os.open(leaf, _DIR_PATH, dir_fd=pfd))
        if self.dirs.retired > 64:  # descriptors evicted from the cache: close them once no
            self.sync()  # batch uses them any more

    def _unlink(self, a: Accepted) -> None:
        """Remove what an earlier member of this archive left at ``a.rel`` (never a
        directory: the checks refuse that)."""
        try:
            os.unlink(a.leaf, dir_fd=self.dirs.get(a.parent))
        except FileNotFoundError:
            pass

    def _file(self, a: Accepted, reader: TarReader, view: memoryview | None = None) -> None:
        pfd = self.dirs.get(a.parent)
        mode = a.mode
        direct = self._umask is not None and not mode & self._umask
        first = mode if direct else 0o600
        try:
            fd = os.open(a.leaf, _NEW_FILE, first, dir_fd=pfd)
        except FileExistsError:  # the destination held it before: replace it (not a directory)
            os.unlink(a.leaf, dir_fd=pfd)
            fd = os.open(a.leaf, _NEW_FILE, first, dir_fd=pfd)
        try:
            if view is None:
                view = reader.data_view()
            if view is not None:
                write_all(fd, view)
            else:
                reader.copy_data(fd, a.name)
            if not direct:
                os.fchmod(fd, mode)
            os.utime(fd, (a.mtime, a.mtime))
        finally:
            os.close(fd)

    # -- the C writer ----------------------------------------------------------------------
    def flush(self) -> None:
        """Hand the batch of files waiting for the C writer to its thread."""
        if self._batch:
            if self._thread is None:
                self._thread = _BatchWriter(self._fast, self._umask, self.report)
            self._thread.submit(self._batch, self._names)
            self._batch = []
            self._names = []
            self._batch_bytes = 0

    def sync(self) -> None:
        """Wait until every batch is written (raising the first failure), then close the
        directory descriptors evicted meanwhile."""
        self.flush()
        if self._thread is not None:
            self._thread.sync()
        self.dirs.release()

    # -- the end -------------------------------------------------------------------------
    def finish(self) -> None:
        """Write what waits, then give directories their modes and mtimes, deepest first."""
        self.sync()
        for rel in sorted(self._dir_meta, key=lambda r: r.count("/"), reverse=True):
            mode, mtime = self._dir_meta[rel]
            self.root.set_meta(rel, mode, mtime)
        if self._root_meta is not None:
            mode, mtime = self._root_meta
            os.fchmod(self.root.fd, mode)
            os.utime(self.root.fd, (mtime, mtime))

    def close(self) -> None:
        """Stop the batch writer (what waits is dropped), then close the descriptors."""
        self._batch = []
        if self._thread is not None:
            self._thread.stop()
        self.dirs.close()


class _BatchWriter:
    """The C writer in a thread of its own: batches are written (GIL released) while the
    extraction thread reads and checks the next members. At most ``DEPTH`` batches wait;
    the first failure is raised by the next ``submit`` or ``sync``."""

    DEPTH = 2

    def __init__(self, fast: Any, umask: int | None, report: ExtractReport) -> None:
        self._fast = fast
        self._umask = -1 if umask is None else umask
        self._report = report
        self._q: queue.Queue[Any] = queue.Queue(maxsize=self.DEPTH)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="ezpz-write", daemon=True)
        self._thread.start()

    def submit(self, batch: list[tuple[int, bytes, int, int, memoryview]],
               names: list[str]) -> None:
        self._raise()
        self._q.put((batch, names))

    def sync(self) -> None:
        self._q.join()
        self._raise()

    def _raise(self) -> None:
        if self._error is not None:
            exc, self._error = self._error, None
            raise exc

    def stop(self) -> None:
        while True:  # drop what waits, then let the thread end
            try:
                self._q.get_nowait()
                self._q.task_done()
            except queue.Empty:
                break
        self._q.put(None)
        self._thread.join()

    def _run(self) -> None:
        while True:
            item = self._q.get()
            try:
                if item is None:
                    return
                if self._error is None:
                    self._write(*item)
            except BaseException as exc:  # noqa: BLE001 - raised in the extraction thread
                self._error = exc
            finally:
                self._q.task_done()

    def _write(self, batch: list[tuple[int, bytes, int, int, memoryview]],
               names: list[str]) -> None:
        start = 0
        while start < len(batch):
            part = batch[start:] if start else batch
            done, err = self._fast.write_files(part, self._umask)
            self._report.fast_members += done
            start += done
            if not err:
                return
            if err != errno.EEXIST:
                raise WriteError(err, names[start])
            # the destination held this path before: Python replaces it, C goes on
            dirfd, leaf, mode, mtime, view = batch[start]
            head = _Record(dirfd, leaf, mode, mtime, names[start])
            try:
                os.unlink(leaf, dir_fd=dirfd)
            except OSError as exc:
                raise WriteError(exc.errno or errno.EIO, head.name) from None
            head.write(view)
            start += 1


class _Record:
    """One file of a batch written by Python (after the C writer found its path taken)."""

    def __init__(self, dirfd: int, leaf: bytes, mode: int, mtime: int, name: str) -> None:
        self.dirfd, self.leaf, self.mode, self.mtime, self.name = dirfd, leaf, mode, mtime, name

    def write(self, view: memoryview) -> None:
        try:
            fd = os.open(self.leaf, _NEW_FILE, 0o600, dir_fd=self.dirfd)
        except OSError as exc:
            raise WriteError(exc.errno or errno.EIO, self.name) from None
        try:
            write_all(fd, view)
            os.fchmod(fd, self.mode)
            os.utime(fd, (self.mtime, self.mtime))
        except OSError as exc:
            raise WriteError(exc.errno or errno.EIO, self.name) from None
        finally:
            os.close(fd)
