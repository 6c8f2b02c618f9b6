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
from ..anchored import Anchor
from ..config import Choice, format_size
from ..errors import TransferError
from ..formats.manifest import MARKER_RELPATH, RESERVED_DIR
from ..fsutil import free_bytes, remove
from ..log import get_logger
from .spec import Plan, WorkerSpec

log = get_logger(__name__)

__all__ = ["MARKER_RELPATH", "Action", "NodeInstall"]


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
        """Write the marker into ``tree`` and rename it to dst (replacing an old dst).

        Every step is anchored (:mod:`ezpz.anchored`): the marker is created under the
        tree's own ``.ezpz/`` (a symlink there, or at any parent, is refused, never
        followed) and renamed into place; the renames and removals name entries of dst's
        parent directory, opened once.
        """
        mark = self.marker(digest)
        with Anchor(self.parent) as parent:
            rel_tree = os.path.relpath(tree, self.parent)
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
            old = None
            if parent.kind(self.name) is not None:
                if parent.rename(rel_tree, self.name, exchange=True):
                    # one atomic step: dst is never missing; the previous version is now at tree
                    old = rel_tree
                else:
                    old = f".{self.name}.ezpz-old-{os.getpid()}"
                    parent.rename(self.name, old)
                    try:
                        parent.rename(rel_tree, self.name)
                    except OSError:
                        parent.rename(old, self.name)  # put the previous version back
                        raise
            else:
                parent.rename(rel_tree, self.name)
            if self.file_mode:
                parent.rename(tmp_mark, os.path.basename(self.marker_path))
            if old:
                parent.remove(old)
            if self.archive_copy:
                os.replace(self.archive_copy,
                           os.path.join(self.parent, os.path.basename(self.plan.src)))
            staging = os.path.basename(self.staging)
            if parent.kind(staging) == "dir":
                parent.remove(staging)
        self.cleanup_paths.clear()

    def cleanup(self) -> None:
        """Remove what this transfer left next to dst (staging tree, partial copies):
        iteratively, never following a symlink."""
        for path in self.cleanup_paths:
            remove(path)
        self.cleanup_paths.clear()
