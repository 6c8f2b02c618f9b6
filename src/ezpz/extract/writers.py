"""Writing accepted members into the destination: ezpz's own writer (``python`` engine).

Everything goes through the anchored API (:mod:`ezpz.anchored`): each member is created by
its last component under a descriptor of its parent directory, which was resolved beneath
the destination without following any symlink; files are created ``O_EXCL | O_NOFOLLOW``,
so nothing is ever written through a link.

File data is written by a pool of writer threads (:class:`WritePool`, ``writers`` of them)
while the extraction thread reads and checks the next members. Regular files whose data
lies whole in the decoded block go to the C writer (``ezpz.extract._fastx``, GIL released)
in batches. A larger file is written by the extraction thread itself when the pool has one
thread (on few cores that keeps both busy); with several, its data is handed to the pool
span by span (views of the decoded blocks, written at their offsets, so one large file is
written by several threads at once), its mode and mtime applied when its last span is
written. Directories, symlinks and hardlinks are made by the extraction thread, in archive
order, and the checks stay there: the pool only ever writes data into files it was given.
Two writes never race for one path: a member that replaces an earlier one (and a hardlink,
whose file may still be in the pool) first waits until everything handed out is written.
Directories are created writable (0700) and get their own mode and mtime at the end,
deepest first, as GNU tar does.
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
#: A large file's data is handed to the writer pool in spans of at most this many bytes.
SPAN_BYTES = 4 << 20


class WriteError(OSError):
    """A write of the member ``member`` failed (errno and strerror as the system said)."""

    def __init__(self, err: int, member: str) -> None:
        super().__init__(err, os.strerror(err))
        self.member = member


class PythonWriter:
    """Writes accepted members below ``root``; ``fast`` is the C writer module or None (then
    every member is written by the calling thread); ``writers`` the pool's threads."""

    def __init__(self, root: Anchor, report: ExtractReport, fast: Any = None,
                 writers: int = 1) -> None:
        self.root = root
        self.report = report
        self.dirs = DirCache(root, size=256)
        self._umask = current_umask()
        self._fast = fast
        self._writers = max(1, writers)
        self._batch: list[tuple[int, bytes, int, int, memoryview]] = []
        self._names: list[str] = []
        self._batch_bytes = 0
        self._block = -1
        self._pool: WritePool | None = None
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
                self.sync()  # what is there may still be in the pool
                self._unlink(a)
            if self._fast is not None and self._writers > 1:
                self._stream(a, reader)
            else:  # one writer thread: the parser writes the large file meanwhile
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
            self.sync()  # the linked file may be in the pool
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

    def _create(self, a: Accepted) -> tuple[int, bool]:
        """A new file for ``a`` (descriptor, and whether it was created with its mode)."""
        pfd = self.dirs.get(a.parent)
        direct = self._umask is not None and not a.mode & self._umask
        first = a.mode if direct else 0o600
        try:
            fd = os.open(a.leaf, _NEW_FILE, first, dir_fd=pfd)
        except FileExistsError:  # the destination held it before: replace it (not a directory)
            os.unlink(a.leaf, dir_fd=pfd)
            fd = os.open(a.leaf, _NEW_FILE, first, dir_fd=pfd)
        return fd, direct

    def _file(self, a: Accepted, reader: TarReader) -> None:
        fd, direct = self._create(a)
        try:
            view = reader.data_view()
            if view is not None:
                write_all(fd, view)
            else:
                reader.copy_data(fd, a.name)
            _set_meta(fd, a.mode, a.mtime, direct)
        finally:
            os.close(fd)

    def _stream(self, a: Accepted, reader: TarReader) -> None:
        """A file whose data spans decoded blocks: created here, its spans written in order
        by one thread of the pool (one file's writes would only queue on its inode lock),
        closed by that thread after the last."""
        self.flush()
        pool = self._get_pool()
        fd, direct = self._create(a)
        f = _Streamed(fd, a.name, a.mode, a.mtime, direct)
        lane = pool.lane()
        try:
            for span in reader.iter_data(a.name, SPAN_BYTES):
                pool.submit(_SPAN, (f, span), lane)
        except BaseException:
            f.failed = True
            raise
        finally:
            pool.submit(_CLOSE, (f,), lane, force=True)

    # -- the pool --------------------------------------------------------------------------
    def _get_pool(self) -> WritePool:
        if self._pool is None:
            self._pool = WritePool(self._fast, self._umask, self.report, self._writers)
        return self._pool

    def flush(self) -> None:
        """Hand the batch of files waiting for the C writer to the pool."""
        if self._batch:
            self._get_pool().submit(_BATCH, (self._batch, self._names))
            self._batch = []
            self._names = []
            self._batch_bytes = 0

    def sync(self) -> None:
        """Wait until everything handed to the pool is written (raising the first failure),
        then close the directory descriptors evicted meanwhile."""
        self.flush()
        if self._pool is not None:
            self._pool.sync()
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
        """Stop the pool (what waits is dropped, files it held are closed), then close the
        descriptors."""
        self._batch = []
        if self._pool is not None:
            self._pool.stop()
        self.dirs.close()


_BATCH = 0  # (records, names): files written whole by the C writer
_SPAN = 1  # (_Streamed, view): the next span of a large file
_CLOSE = 2  # (_Streamed,): its last span was handed out


class _Streamed:
    """A large file being written by one thread of the pool, span after span; closed (with
    its mode and mtime, unless a write failed) after the last."""

    def __init__(self, fd: int, name: str, mode: int, mtime: int, direct: bool) -> None:
        self.fd, self.name, self.mode, self.mtime, self.direct = fd, name, mode, mtime, direct
        self.failed = False

    def write(self, view: memoryview) -> None:
        if self.failed:
            return
        try:
            write_all(self.fd, view)
        except OSError as exc:
            self.failed = True
            raise WriteError(exc.errno or errno.EIO, self.name) from None

    def close(self) -> None:
        try:
            if not self.failed:
                _set_meta(self.fd, self.mode, self.mtime, self.direct)
        except OSError as exc:
            raise WriteError(exc.errno or errno.EIO, self.name) from None
        finally:
            os.close(self.fd)


class WritePool:
    """Writer threads, each with a queue of its own (a *lane*): batches for the C writer go
    to the lane with the least waiting, the spans of one large file all to one lane, in
    order. They are written (GIL released) while the extraction thread reads and checks the
    next members. At most ``DEPTH`` items wait per lane (each holds views of one decoded
    block); the first failure is raised by the next ``submit`` or ``sync``, and after it
    nothing more is written (files already open are only closed)."""

    DEPTH = 4

    def __init__(self, fast: Any, umask: int | None, report: ExtractReport,
                 threads: int = 1) -> None:
        self._fast = fast
        self._umask = -1 if umask is None else umask
        self._report = report
        self._count_lock = threading.Lock()
        self._lanes: list[queue.Queue[Any]] = [queue.Queue(maxsize=self.DEPTH)
                                               for _ in range(max(1, threads))]
        self._error: BaseException | None = None
        self._stopping = False
        self._threads = [threading.Thread(target=self._run, args=(q,), daemon=True,
                                          name=f"ezpz-write-{i}")
                         for i, q in enumerate(self._lanes)]
        for t in self._threads:
            t.start()

    def lane(self) -> int:
        """The lane with the least waiting."""
        lanes = self._lanes
        if len(lanes) == 1:
            return 0
        return min(range(len(lanes)), key=lambda i: lanes[i].unfinished_tasks)

    def submit(self, kind: int, item: tuple[Any, ...], lane: int | None = None,
               force: bool = False) -> None:
        """Queue ``item`` (on ``lane``, else the least busy one). A failure seen meanwhile is
        raised first, unless ``force`` (a file's close, which must reach its lane)."""
        if not force:
            self._raise()
        self._lanes[self.lane() if lane is None else lane].put((kind, item))

    def sync(self) -> None:
        for q in self._lanes:
            q.join()
        self._raise()

    def _raise(self) -> None:
        if self._error is not None:
            exc, self._error = self._error, None
            raise exc

    def stop(self) -> None:
        """Drop what waits (closing the files it held), then end the threads."""
        self._stopping = True
        for q in self._lanes:
            q.put(None)
        for t in self._threads:
            t.join()

    def _run(self, q: queue.Queue[Any]) -> None:
        while True:
            got = q.get()
            try:
                if got is None:
                    return
                kind, item = got
                if kind == _CLOSE:
                    item[0].close()
                elif self._stopping or self._error is not None:
                    if kind == _SPAN:
                        item[0].failed = True
                elif kind == _SPAN:
                    item[0].write(item[1])
                else:
                    self._batch(*item)
            except BaseException as exc:  # noqa: BLE001 - raised in the extraction thread
                if self._error is None:
                    self._error = exc
            finally:
                q.task_done()

    def _batch(self, batch: list[tuple[int, bytes, int, int, memoryview]],
               names: list[str]) -> None:
        start = 0
        while start < len(batch):
            part = batch[start:] if start else batch
            done, err = self._fast.write_files(part, self._umask)
            with self._count_lock:
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


def _set_meta(fd: int, mode: int, mtime: int, direct: bool) -> None:
    """A written file's mode (unless it was created with it) and mtime."""
    if not direct:
        os.fchmod(fd, mode)
    os.utime(fd, (mtime, mtime))


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
            _set_meta(fd, self.mode, self.mtime, False)
        except OSError as exc:
            raise WriteError(exc.errno or errno.EIO, self.name) from None
        finally:
            os.close(fd)
