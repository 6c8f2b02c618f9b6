"""A CPU-limited cgroup for one simulated node (cgroup v2 ``cpu.max``, or v1's CFS quota).

``cpu_limit(percent)`` yields the directory of a fresh cgroup whose processes together get at
most ``percent`` of one CPU; ``join(cgroup, pid)`` moves a process (all its threads, and the
threads and processes it starts later) into it. The cgroup is removed afterwards (its
processes have exited by then).
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

V2 = Path("/sys/fs/cgroup")
V2_HYBRID = Path("/sys/fs/cgroup/unified")
V1_CPU = Path("/sys/fs/cgroup/cpu")
PERIOD_US = 100_000


def _v2_root() -> Path | None:
    for root in (V2, V2_HYBRID):
        try:
            if "cpu" in (root / "cgroup.controllers").read_text().split():
                return root
        except OSError:
            continue
    return None


def available() -> tuple[bool, str]:
    """Whether a CPU limit can be set here, and why not."""
    if os.geteuid() != 0:
        return False, "a CPU-limited cgroup needs root"
    if _v2_root() is None and not (V1_CPU / "cpu.cfs_quota_us").exists():
        return False, "no cgroup CPU controller (v2 cpu.max or v1 cpu.cfs_quota_us)"
    return True, ""


def join(cgroup: Path, pid: int) -> None:
    (cgroup / "cgroup.procs").write_text(str(pid))


@contextlib.contextmanager
def cpu_limit(percent: float) -> Iterator[Path]:
    quota = max(1000, int(PERIOD_US * percent / 100))
    name = f"ezpz-test-{uuid.uuid4().hex[:8]}"
    root = _v2_root()
    if root is not None:
        try:  # let the children of the root use the cpu controller
            (root / "cgroup.subtree_control").write_text("+cpu")
        except OSError:
            pass
        path = root / name
        path.mkdir()
        (path / "cpu.max").write_text(f"{quota} {PERIOD_US}")
    else:
        path = V1_CPU / name
        path.mkdir()
        (path / "cpu.cfs_period_us").write_text(str(PERIOD_US))
        (path / "cpu.cfs_quota_us").write_text(str(quota))
    try:
        yield path
    finally:
        for _ in range(100):  # processes leave a cgroup a moment after they exit
            try:
                path.rmdir()
                break
            except OSError:
                time.sleep(0.1)
