"""Small filesystem helpers every wing uses: whole writes, free space, removal, memory."""

from __future__ import annotations

import json
import os
import time
from typing import Any

from .anchored import remove_at


def write_all(fd: int, data: Any) -> None:
    """Write every byte of ``data`` to ``fd`` (``os.write`` may write less than asked)."""
    view = memoryview(data).cast("B")
    while len(view):
        view = view[os.write(fd, view):]


def free_bytes(path: str) -> int | None:
    """Bytes an unprivileged user may still write under ``path``; None when unknown
    (pseudo filesystems report no size)."""
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    if not st.f_blocks:
        return None
    return st.f_bavail * st.f_frsize


def is_readonly(path: str) -> bool:
    """Whether ``path`` lies on a filesystem mounted read-only."""
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def remove(path: str) -> None:
    """Remove a file, symlink or directory tree; missing is fine. Never follows a symlink
    and never recurses (:func:`ezpz.anchored.remove_at`: very deep trees are removed too).
    Retries briefly (a file still being closed by another thread)."""
    parent, name = os.path.split(os.path.abspath(path))
    for _ in range(3):
        try:
            fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                remove_at(fd, name)
            finally:
                os.close(fd)
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.05)


def write_json_atomic(path: str, obj: Any, indent: int | None = 1) -> None:
    """``obj`` as JSON at ``path``, through a temporary file renamed over it."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as fh:
        json.dump(obj, fh, indent=indent)
    os.replace(tmp, path)


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM) in MB."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:  # pragma: no cover - not Linux
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def process_start_time() -> float | None:
    """When this process started (seconds since the epoch, to the kernel's clock tick of
    10 ms), from /proc; None when unknown."""
    try:
        with open("/proc/self/stat", "rb") as fh:
            fields = fh.read().rpartition(b")")[2].split()
        since_boot = int(fields[19]) / os.sysconf("SC_CLK_TCK")
        return time.time() - (time.clock_gettime(time.CLOCK_BOOTTIME) - since_boot)
    except (OSError, ValueError, IndexError):  # pragma: no cover - not Linux
        return None


def current_umask() -> int | None:
    """The process's umask, read without changing it (Linux); None when unknown."""
    try:
        with open("/proc/self/status", "rb") as fh:
            for line in fh:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return None


def cpu_count() -> int:
    """The cores this process may run on (its affinity mask), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)
