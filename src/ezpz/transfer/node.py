"""What one node leader does on its filesystem around the stream: the checks of ``dst``
before anything is written (whose it is, whether it is shared by several nodes), the lock
next to ``dst``, the staging directory, the marker, and the atomic exchange of the finished
tree with ``dst``.

Ownership: ezpz replaces or removes only a tree it installed itself, recognised by its
marker, and only when the tree, the marker and the entries next to ``dst`` (lock, staging,
kept archive) belong to the running user and nobody else can write to them
(:func:`install_state`). Every other existing ``dst`` is refused, whatever
``transfer.overwrite`` says. The lock and the staging entries are created exclusively and
never through a symbolic link; their names are unique per transfer.
"""

from __future__ import annotations

import errno
import fcntl
import glob
import json
import os
import secrets
import socket
import stat
import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from .. import __version__
from ..anchored import Anchor
from ..config import Choice, format_size
from ..errors import EzpzError, TransferError
from ..formats.manifest import MARKER_RELPATH, RESERVED_DIR
from ..fsutil import free_bytes, remove
from ..log import get_logger
from ..ownership import (
    ensure_private_dir,
    foreign_reason,
    lstat_or_none,
    protected_paths,
    protected_reason,
    read_private_json,
    user_dir,
)
from .spec import Plan, WorkerSpec

if TYPE_CHECKING:
    from .comm import Comm
    from .spec import NodeStatus

log = get_logger(__name__)

__all__ = ["MARKER_RELPATH", "NOT_REPLACED", "Action", "NodeInstall", "check_dst_on_node",
           "install_state", "marker_path_for", "prepare_parent"]

#: What ezpz tells a user whose dst is not ezpz's to do.
NOT_REPLACED = ("ezpz never replaces it, whatever transfer.overwrite says: choose another "
                "transfer.dst, or remove it yourself")


def marker_path_for(dst: str, file_mode: bool) -> str:
    """Where the marker of an install at ``dst`` lives."""
    if file_mode:
        parent, name = os.path.split(dst)
        return os.path.join(parent, f".{name}.ezpz-installed.json")
    return os.path.join(dst, MARKER_RELPATH)


def install_state(dst: str, file_mode: bool) -> tuple[dict[str, Any] | None, str | None]:
    """For an existing ``dst``: ``(marker, None)`` when it is an ezpz install of the running
    user (tree, ``.ezpz``, marker: real, owned, not writable by others), else
    ``(None, why it is not)``."""
    st = lstat_or_none(dst)
    if st is None:
        return None, "it is missing"
    why = foreign_reason(st, want="file" if file_mode else "dir")
    if why:
        return None, why
    if not file_mode:
        st = lstat_or_none(os.path.join(dst, ".ezpz"))
        if st is None:
            return None, "it holds no ezpz marker"
        why = foreign_reason(st, want="dir")
        if why:
            return None, f"its .ezpz directory: {why}"
    mark, why = read_private_json(marker_path_for(dst, file_mode))
    if mark is None:
        return None, ("it holds no ezpz marker" if why == "it is missing"
                      else f"its ezpz marker: {why}")
    if not isinstance(mark.get("archive_id"), str):
        return None, "its ezpz marker names no archive"
    return mark, None


def prepare_parent(dst: str) -> None:
    """Create the directories above ``dst``; the per-user directory (``/tmp/ezpz-<user>``)
    with mode 0700, and it is checked before use. Raises :class:`TransferError`."""
    parent = os.path.dirname(dst)
    mine = user_dir()
    if parent == mine or parent.startswith(mine + "/"):
        why = ensure_private_dir(mine)
        if why:
            raise TransferError(f"transfer.dst: the per-user directory {mine} cannot be used "
                                f"({why}); remove it or choose another transfer.dst")
    os.makedirs(parent, exist_ok=True)


def check_dst_on_node(comm: Comm, spec: WorkerSpec, my: NodeStatus,
                      run_dir: str | None = None) -> bool:
    """Every node leader, before its lock: refuse a ``dst`` that must never be one (the root,
    a mount point, $HOME, the current directory, the interpreter's environment, anything
    holding ``src`` or the run directory), and a ``dst`` that is one directory shared by
    several nodes. The leaders exchange what they see, so every leader must call this.

    Shared: each leader creates a token file next to ``dst`` (exclusively, under a unique
    name); a leader that sees another node's token shares the directory with it. Returns
    False (with ``my`` failed) when this node must not go on."""
    dst = os.path.abspath(spec.dst)
    parent, name = os.path.split(dst)
    err: str | None = None
    why = protected_reason(dst, protected_paths(src=[spec.src], run_dir=run_dir))
    if why:
        err = (f"transfer.dst: {dst} {why}; ezpz never installs there (give a new directory "
               f"such as {user_dir()}/<name>)")
    if comm.nnodes < 2:
        if err:
            my.fail(err)
        return err is None
    # one name shared by this run's leaders (rank 0's), then one token per node: a leader that
    # finds another node's token next to dst shares the directory with it
    run = comm.bcast_obj(secrets.token_hex(8) if comm.is_root else None)
    stem = f".{name}.ezpz-node-{run}-"
    token = None
    if err is None:
        token = f"{stem}{comm.node_index}"
        try:
            prepare_parent(dst)
            os.close(os.open(os.path.join(parent, token),
                             os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                             0o600))
        except (OSError, EzpzError) as exc:
            token = None
            err = str(exc) if isinstance(exc, EzpzError) else \
                f"cannot write next to transfer.dst in {parent}: {exc.strerror or exc}"
    comm.allgather_byte(1)  # every leader has written its token
    seen: list[str] = []
    if token:
        try:
            others = [e for e in os.listdir(parent) if e.startswith(stem) and e != token]
        except OSError:
            others = []
        for entry in others:
            index = entry[len(stem):]
            if index.isdigit() and int(index) < comm.nnodes:
                seen.append(comm.node_hosts[int(index)])
    comm.allgather_byte(1)  # every leader has looked: the tokens may go
    if token:
        try:
            os.unlink(os.path.join(parent, token))
        except OSError:
            pass
    if seen and err is None:
        err = (f"transfer.dst: {parent} is one directory shared by several nodes (this node "
               f"sees the files of {', '.join(seen[:3])}{' ...' if len(seen) > 3 else ''}); "
               f"give a node-local path such as {user_dir()}/{name}")
    if err:
        my.fail(err)
    return err is None


class Action(Choice):
    """What a node does after its checks: install, skip (already installed), or fail."""

    go = "go"
    skip = "skip"
    fail = "fail"


class NodeInstall:
    """Everything one leader does on its node's filesystem around the stream."""

    def __init__(self, spec: WorkerSpec, plan: Plan, host: str | None = None) -> None:
        self.spec = spec
        self.plan = plan
        self.host = host or socket.gethostname()
        self.dst = os.path.abspath(spec.dst)
        self.parent = os.path.dirname(self.dst)
        self.name = os.path.basename(self.dst)
        self.file_mode = plan.file_mode
        #: Unique per transfer: temporary names of two transfers never collide.
        self.token = f"{os.getpid()}-{secrets.token_hex(4)}"
        self.staging = os.path.join(self.parent, f".{self.name}.ezpz-staging-{self.token}")
        self.lock_path = os.path.join(self.parent, f".{self.name}.ezpz-lock")
        #: keep_archive: where the archive copy ends up (its partial copy is named per dst).
        self.copy_path = (os.path.join(self.parent, os.path.basename(plan.src))
                          if spec.keep_archive and not self.file_mode else None)
        self.archive_copy: str | None = None
        self._lock_fd: int | None = None
        self.cleanup_paths: list[str] = []

    # -- marker ------------------------------------------------------------------------
    @property
    def marker_path(self) -> str:
        return marker_path_for(self.dst, self.file_mode)

    def read_marker(self) -> dict[str, Any] | None:
        """The marker of an ezpz install of the running user at dst, else None."""
        return install_state(self.dst, self.file_mode)[0]

    def marker(self, digest: str) -> dict[str, Any]:
        return {"archive_id": self.plan.id, "xxh3_128": digest, "src": self.plan.src,
                "bytes": self.plan.bytes, "codec": self.plan.codec,
                "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "host": self.host, "ezpz_version": __version__}

    # -- lock --------------------------------------------------------------------------
    def lock(self, timeout: float) -> None:
        """Take the lock next to dst (waiting up to ``timeout``). The lock file is created
        exclusively, never through a symbolic link, and must be the running user's; the last
        holder removes it (:meth:`unlock`), so a waiter that got the lock of a removed file
        takes the new one."""
        prepare_parent(self.dst)
        deadline = time.monotonic() + timeout
        busy = TransferError(f"another transfer into {self.dst} is still running (lock "
                             f"{self.lock_path} held for {timeout:g}s); wait for it or choose "
                             "another transfer.dst")
        while True:
            fd = self._open_lock()
            if fd is None:  # removed between our two opens: create it again
                if time.monotonic() > deadline:
                    raise busy
                continue
            try:
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except OSError as exc:
                        if exc.errno not in (errno.EAGAIN, errno.EACCES):
                            raise
                    if time.monotonic() > deadline:
                        raise busy from None
                    time.sleep(0.05)
            except BaseException:
                os.close(fd)
                raise
            if self._is_lock_file(fd):
                self._lock_fd = fd
                return
            os.close(fd)  # its last holder removed it: lock the file that is there now

    def _open_lock(self) -> int | None:
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            return os.open(self.lock_path, flags | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        try:
            fd = os.open(self.lock_path, flags)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise TransferError(f"the lock {self.lock_path} is a symbolic link, not ezpz's "
                                    "lock; remove it or choose another transfer.dst") from None
            raise
        why = foreign_reason(os.fstat(fd), want="file")
        if why:
            os.close(fd)
            raise TransferError(f"the lock {self.lock_path} is not ezpz's ({why}); remove it "
                                "or choose another transfer.dst")
        return fd

    def _is_lock_file(self, fd: int) -> bool:
        st = lstat_or_none(self.lock_path)
        mine = os.fstat(fd)
        return st is not None and (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)

    def unlock(self) -> None:
        """Release the lock and remove its file (no debris next to dst)."""
        fd, self._lock_fd = self._lock_fd, None
        if fd is None:
            return
        try:
            if self._is_lock_file(fd):
                os.unlink(self.lock_path)
        except OSError:
            pass
        os.close(fd)

    def clean_stale(self) -> None:
        """Under the lock, leftovers of earlier killed transfers into dst are stale. Only the
        running user's are removed; anything else is left and named in the log."""
        pats = [f".{self.name}.ezpz-staging-*", f".{self.name}.ezpz-old-*",
                f".{self.name}.ezpz-partial-*", f".{self.name}.ezpz-node-*"]
        for pat in pats:
            for path in glob.glob(os.path.join(glob.escape(self.parent), pat)):
                st = lstat_or_none(path)
                if st is None:
                    continue
                if st.st_uid != os.geteuid() or stat.S_ISLNK(st.st_mode):
                    log.warning("leaving %s alone: it looks like an ezpz leftover but is not "
                                "yours", path)
                    continue
                log.info("removing stale %s", path)
                remove(path)

    # -- preflight ---------------------------------------------------------------------
    def preflight(self) -> Action:
        """``skip`` (already installed) or ``go``; raises TransferError to refuse."""
        if os.path.lexists(self.dst):
            if self.file_mode and os.path.isdir(self.dst) and not os.path.islink(self.dst):
                raise TransferError(f"transfer.dst: {self.dst} is a directory; a file cannot "
                                    "replace it (choose another transfer.dst)")
            if not self.file_mode and not os.path.isdir(self.dst):
                raise TransferError(f"transfer.dst: {self.dst} exists and is not a directory "
                                    "(remove it or choose another transfer.dst)")
            mark, why = install_state(self.dst, self.file_mode)
            if mark is None:
                raise TransferError(f"transfer.dst: {self.dst} exists and is not an ezpz "
                                    f"install of yours ({why}); {NOT_REPLACED}")
            if mark.get("archive_id") == self.plan.id and not self.spec.overwrite:
                return Action.skip
            if not self.spec.overwrite:
                raise TransferError(f"transfer.dst: {self.dst} holds a different archive (from "
                                    f"{mark.get('src')}); pass transfer.overwrite=true to "
                                    "replace it")
        self._check_archive_copy()
        need = 0
        if self.file_mode:
            need = self.plan.bytes
        elif self.plan.total_bytes:
            need = self.plan.total_bytes
        if self.spec.keep_archive and not self.file_mode:
            need += self.plan.bytes
        free = free_bytes(self.parent) if need else None
        if free is not None and free < need:
            raise TransferError(f"not enough space in {self.parent} on {self.host}: need "
                                f"{format_size(need)}, {format_size(free)} free; free space "
                                "or choose another transfer.dst")
        return Action.go

    def _check_archive_copy(self) -> bool:
        """keep_archive: True when the copy's place already holds this archive (kept by
        ezpz); raises TransferError when it holds anything ezpz may not replace."""
        path = self.copy_path
        if path is None:
            return False
        if path == self.dst or os.path.realpath(path) == os.path.realpath(self.plan.src):
            raise TransferError(f"transfer.keep_archive: the copy {path} would replace "
                                f"{'transfer.dst' if path == self.dst else 'transfer.src'}; "
                                "choose another transfer.dst")
        if not os.path.lexists(path):
            return False
        mark, why = install_state(path, file_mode=True)
        if mark is None:
            raise TransferError(f"transfer.keep_archive: {path} exists and is not an archive "
                                f"ezpz kept ({why}); {NOT_REPLACED}")
        if mark.get("archive_id") == self.plan.id:
            return True
        if not self.spec.overwrite:
            raise TransferError(f"transfer.keep_archive: {path} holds a different archive "
                                f"(from {mark.get('src')}); pass transfer.overwrite=true to "
                                "replace it")
        return False

    def make_staging(self) -> None:
        self.cleanup_paths.append(self.staging)
        if self.file_mode:
            return
        os.mkdir(self.staging, 0o700)  # exclusive: never an existing entry or a link

    def open_archive_copy(self) -> int:
        self.archive_copy = os.path.join(self.parent, f".{self.name}.ezpz-partial-{self.token}")
        self.cleanup_paths.append(self.archive_copy)
        return os.open(self.archive_copy, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                       | os.O_CLOEXEC, 0o600)

    def _place_archive_copy(self, digest: str) -> None:
        """Move the kept archive copy into place, its marker first (so a copy is never seen
        without one); a copy of this archive that is already there is kept."""
        if self.archive_copy is None or self.copy_path is None:
            return
        if self._check_archive_copy():
            remove(self.archive_copy)
            return
        mark = self.marker(digest)
        mark_path = marker_path_for(self.copy_path, True)
        tmp = f"{mark_path}.{self.token}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o644)
        try:
            with os.fdopen(fd, "w") as fh:
                json.dump(mark, fh)
            os.replace(tmp, mark_path)
        except BaseException:
            remove(tmp)
            raise
        os.chmod(self.archive_copy, 0o644)
        os.replace(self.archive_copy, self.copy_path)

    # -- install -----------------------------------------------------------------------
    def install(self, tree: str, digest: str) -> None:
        """Write the marker into ``tree`` and rename it to dst (replacing an old dst).

        Every step is anchored (:mod:`ezpz.anchored`): the marker is created under the
        tree's own ``.ezpz/`` (a symlink there, or at any parent, is refused, never
        followed) and renamed into place; the renames and removals name entries of dst's
        parent directory, opened once.
        """
        mark = self.marker(digest)
        with Anchor(self.parent) as parent:
            rel_tree = os.path.relpath(tree, self.parent)
            tmp_mark: str | None = None
            if self.file_mode:
                tmp_mark = parent.temp_name(os.path.basename(self.marker_path))
                self.cleanup_paths.append(os.path.join(self.parent, tmp_mark))
                fd = parent.open(tmp_mark, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                with os.fdopen(fd, "w") as fh:
                    json.dump(mark, fh)
            else:
                with Anchor(tree, fd=parent.opendir(rel_tree, path_only=False)) as t:
                    t.makedirs(RESERVED_DIR)
                    t.write_file(MARKER_RELPATH, json.dumps(mark, indent=1).encode(), 0o644)
            self._seal(tree, os.path.join(self.parent, tmp_mark) if tmp_mark else None)
            self._check_archive_copy()
            old = None
            if parent.kind(self.name) is not None:
                if install_state(self.dst, self.file_mode)[0] is None:  # changed since preflight
                    raise TransferError(f"transfer.dst: {self.dst} was created or changed during "
                                        f"the transfer and is not an ezpz install; {NOT_REPLACED}")
                if parent.rename(rel_tree, self.name, exchange=True):
                    # one atomic step: dst is never missing; the previous version is now at tree
                    old = rel_tree
                else:
                    old = f".{self.name}.ezpz-old-{self.token}"
                    parent.rename(self.name, old)
                    try:
                        parent.rename(rel_tree, self.name)
                    except OSError:
                        parent.rename(old, self.name)  # put the previous version back
                        raise
            elif not parent.rename(rel_tree, self.name, noreplace=True):
                if parent.kind(self.name) is not None:
                    raise TransferError(f"transfer.dst: {self.dst} appeared during the transfer; "
                                        f"{NOT_REPLACED}")
                parent.rename(rel_tree, self.name)
            if tmp_mark:
                parent.rename(tmp_mark, os.path.basename(self.marker_path))
            if old:
                parent.remove(old)
            self._place_archive_copy(digest)
            staging = os.path.basename(self.staging)
            if parent.kind(staging) == "dir":
                parent.remove(staging)
        self.cleanup_paths.clear()

    def _seal(self, tree: str, tmp_mark: str | None) -> None:
        """Nobody but the running user may write to the new install's top, its ``.ezpz``
        directory and its marker (else the next run could not count it as ezpz's, e.g. under
        umask 002). Opened without following links, the marker through its directory."""
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        fds: list[int] = []
        try:
            fds.append(os.open(tree, flags))
            if self.file_mode:
                if tmp_mark is not None:
                    fds.append(os.open(tmp_mark, flags))
            else:
                fds.append(os.open(".ezpz", flags | os.O_DIRECTORY, dir_fd=fds[0]))
                fds.append(os.open("installed.json", flags, dir_fd=fds[1]))
            for fd in fds:
                mode = stat.S_IMODE(os.fstat(fd).st_mode)
                if mode & 0o022:
                    os.fchmod(fd, mode & ~0o022)
        except OSError as exc:
            raise TransferError(f"cannot seal the new install at {tree}: "
                                f"{exc.strerror or exc}") from None
        finally:
            for fd in fds:
                os.close(fd)

    def cleanup(self) -> None:
        """Remove what this transfer left next to dst (staging tree, partial copies):
        iteratively, never following a symlink."""
        for path in self.cleanup_paths:
            remove(path)
        self.cleanup_paths.clear()
        self.unlock()
