"""What one node leader does on its filesystem around the stream: the lock next to ``dst``,
the staging directory, the checks before anything is written, the marker, and the atomic
exchange of the finished tree with ``dst``."""

from __future__ import annotations

import errno
import fcntl
import glob
import json
import os
import socket
import time
from datetime import datetime, timezone
from typing import Any

from .. import __version__
from ..config import Choice, format_size
from ..errors import TransferError
from ..fsutil import free_bytes, remove
from ..log import get_logger
from .spec import Plan, WorkerSpec

log = get_logger(__name__)

#: The marker ezpz writes into every tree it installs (file mode: next to the file).
MARKER_RELPATH = ".ezpz/installed.json"


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
        self.staging = os.path.join(self.parent, f".{self.name}.ezpz-staging-{os.getpid()}")
        self.lock_path = os.path.join(self.parent, f".{self.name}.ezpz-lock")
        self.archive_copy: str | None = None
        self._lock_fd: int | None = None
        self.cleanup_paths: list[str] = []

    # -- marker ------------------------------------------------------------------------
    @property
    def marker_path(self) -> str:
        if self.file_mode:
            return os.path.join(self.parent, f".{self.name}.ezpz-installed.json")
        return os.path.join(self.dst, MARKER_RELPATH)

    def read_marker(self) -> dict[str, Any] | None:
        try:
            with open(self.marker_path) as fh:
                return json.load(fh)
        except (OSError, ValueError):
            return None

    def marker(self, digest: str) -> dict[str, Any]:
        return {"archive_id": self.plan.id, "xxh3_128": digest, "src": self.plan.src,
                "bytes": self.plan.bytes, "codec": self.plan.codec,
                "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "host": self.host, "ezpz_version": __version__}

    # -- lock --------------------------------------------------------------------------
    def lock(self, timeout: float) -> None:
        os.makedirs(self.parent, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    raise
                if time.monotonic() > deadline:
                    os.close(fd)
                    raise TransferError(f"another transfer into {self.dst} is still running "
                                        f"(lock {self.lock_path} held for {timeout:g}s); wait "
                                        "for it or choose another transfer.dst") from None
                time.sleep(0.05)
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def clean_stale(self) -> None:
        """Under the lock, leftovers of earlier killed transfers into dst are stale."""
        pats = [f".{self.name}.ezpz-staging-*", f".{self.name}.ezpz-old-*"]
        if self.spec.keep_archive:
            pats.append(f".{os.path.basename(self.plan.src)}.ezpz-partial-*")
        for pat in pats:
            for path in glob.glob(os.path.join(glob.escape(self.parent), pat)):
                log.info("removing stale %s", path)
                remove(path)

    # -- preflight ---------------------------------------------------------------------
    def preflight(self) -> Action:
        """``skip`` (already installed) or ``go``; raises TransferError to refuse."""
        if os.path.lexists(self.dst):
            if self.file_mode and os.path.isdir(self.dst):
                raise TransferError(f"transfer.dst: {self.dst} is a directory; a file cannot "
                                    "replace it (choose another transfer.dst)")
            if not self.file_mode and not os.path.isdir(self.dst):
                raise TransferError(f"transfer.dst: {self.dst} exists and is not a directory "
                                    "(remove it or choose another transfer.dst)")
            mark = self.read_marker()
            if mark and mark.get("archive_id") == self.plan.id and not self.spec.overwrite:
                return Action.skip
            if not self.spec.overwrite:
                what = (f"holds a different archive (from {mark.get('src')})" if mark
                        else "exists and was not installed by ezpz")
                raise TransferError(f"transfer.dst: {self.dst} {what}; pass "
                                    "transfer.overwrite=true to replace it")
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

    def make_staging(self) -> None:
        self.cleanup_paths.append(self.staging)
        if self.file_mode:
            return
        os.mkdir(self.staging, 0o700)

    def open_archive_copy(self) -> int:
        base = os.path.basename(self.plan.src)
        self.archive_copy = os.path.join(self.parent, f".{base}.ezpz-partial-{os.getpid()}")
        self.cleanup_paths.append(self.archive_copy)
        return os.open(self.archive_copy, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC,
                       0o644)

    # -- install -----------------------------------------------------------------------
    def install(self, tree: str, digest: str) -> None:
        """Write the marker into ``tree`` and rename it to dst (replacing an old dst)."""
        mark = self.marker(digest)
        if self.file_mode:
            tmp_mark = self.marker_path + f".{os.getpid()}"
            with open(tmp_mark, "w") as fh:
                json.dump(mark, fh)
            self.cleanup_paths.append(tmp_mark)
        else:
            os.makedirs(os.path.join(tree, ".ezpz"), exist_ok=True)
            with open(os.path.join(tree, MARKER_RELPATH), "w") as fh:
                json.dump(mark, fh, indent=1)
        old = None
        if os.path.lexists(self.dst):
            if _exchange(tree, self.dst):
                # one atomic step: dst is never missing; the previous version is now at `tree`
                old = tree
            else:
                old = os.path.join(self.parent, f".{self.name}.ezpz-old-{os.getpid()}")
                os.rename(self.dst, old)
                try:
                    os.rename(tree, self.dst)
                except OSError:
                    os.rename(old, self.dst)  # put the previous version back
                    raise
        else:
            os.rename(tree, self.dst)
        if self.file_mode:
            os.replace(tmp_mark, self.marker_path)
        if old:
            remove(old)
        if self.archive_copy:
            os.replace(self.archive_copy, os.path.join(self.parent, os.path.basename(self.plan.src)))
        if os.path.isdir(self.staging):
            remove(self.staging)
        self.cleanup_paths.clear()

    def cleanup(self) -> None:
        for path in self.cleanup_paths:
            remove(path)
        self.cleanup_paths.clear()


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: str, b: str) -> bool:
    """Swap the paths ``a`` and ``b`` atomically (Linux renameat2 RENAME_EXCHANGE).

    False where the kernel, libc or filesystem cannot (the caller then renames in two steps).
    """
    import ctypes

    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), b)
