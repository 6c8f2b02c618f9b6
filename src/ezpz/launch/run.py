"""Running a launch: the child's output line by line minus the filtered lines, signals
forwarded to the child's process group, the exit code returned.

Compatibility with the original ezpz: :func:`launch` and :func:`run_command`.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from typing import IO, Iterable, Mapping, Optional, Sequence

from ..config import LauncherConfig
from ..errors import LaunchError
from ..log import debug_enabled, get_logger
from .plan import LaunchPlan, load_machine, plan_launch

log = get_logger(__name__)

#: Seconds a child gets to exit after a forwarded signal before its group is killed.
KILL_GRACE = 10.0


def _pump(stream: IO[bytes], filters: Sequence[str], out: IO[str], counts: list[int]) -> None:
    for raw in iter(stream.readline, b""):
        line = raw.decode(errors="replace")
        if filters and any(f in line for f in filters):
            counts[0] += 1
            continue
        out.write(line)
        out.flush()


def run_command(command: Sequence[str] | str, filters: Optional[Iterable[str]] = None, *,
                env: Optional[Mapping[str, str]] = None, out: Optional[IO[str]] = None,
                grace: float = KILL_GRACE) -> int:
    """Run ``command`` (an argv; a string is split with :func:`shlex.split`, never given to
    a shell), stream its merged stdout/stderr line by line minus the lines containing any of
    ``filters``, and return its exit code (128+N when killed by signal N).

    The child runs in its own process group; SIGINT, SIGTERM and SIGHUP received here are
    sent to that whole group, and the group is killed if it has not exited ``grace`` seconds
    later. ``EZPZ_LOG_LEVEL=DEBUG`` disables the filters (and lists them).
    """
    argv = shlex.split(command) if isinstance(command, str) else [str(c) for c in command]
    if not argv:
        raise LaunchError("no command to run")
    out = sys.stdout if out is None else out
    active = [f for f in (filters or []) if f]
    if active and debug_enabled():
        log.info("output filters disabled by EZPZ_LOG_LEVEL=DEBUG: %s", active)
        active = []
    elif active:
        log.info("filtering output with %d filters (EZPZ_LOG_LEVEL=DEBUG shows everything)",
                 len(active))
    log.info("running: %s", shlex.join(argv))
    start = time.monotonic()
    try:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=None if env is None else dict(env),
                                start_new_session=True)
    except FileNotFoundError:
        raise LaunchError(f"cannot run {argv[0]!r}: no such file or command on PATH") from None
    except PermissionError:
        raise LaunchError(f"cannot run {argv[0]!r}: permission denied") from None
    counts = [0]
    assert proc.stdout is not None
    reader = threading.Thread(target=_pump, args=(proc.stdout, active, out, counts), daemon=True)
    reader.start()

    received: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        received.append(signum)
        log.warning("received %s: forwarding to the child's process group",
                    signal.Signals(signum).name)
        _signal_group(proc, signum)

    handled = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in handled:
            previous[sig] = signal.signal(sig, forward)
    try:
        while True:
            try:
                rc = proc.wait(timeout=0.2 if not received else grace)
                break
            except subprocess.TimeoutExpired:
                if received:
                    log.warning("child still running %.0f s after %s: killing its process group",
                                grace, signal.Signals(received[-1]).name)
                    _signal_group(proc, signal.SIGKILL)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    # Whatever else is left in the group (ranks that outlived mpiexec) goes too.
    if received:
        _signal_group(proc, signal.SIGKILL)
    reader.join(timeout=5.0)
    if rc < 0:
        rc = 128 - rc
    if received and rc < 128:
        # Interrupted: report the signal (130 for SIGINT, 143 for SIGTERM) whatever exit
        # status the launcher chose for its killed ranks.
        rc = 128 + received[0]
    elapsed = time.monotonic() - start
    if counts[0]:
        log.info("dropped %d filtered lines", counts[0])
    log.info("finished with exit code %d in %.2f s", rc, elapsed)
    return rc


def _signal_group(proc: subprocess.Popen, signum: int) -> None:
    try:
        os.killpg(proc.pid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def run_plan(plan: LaunchPlan, *, dry_run: bool = False, out: Optional[IO[str]] = None) -> int:
    """Log the resolved command; print it and return 0 for a dry run, else run it."""
    if plan.env:
        log.info("environment: %s", " ".join(f"{k}={v}" for k, v in plan.env.items()))
    if dry_run:
        log.info("dry run (launcher.dry_run=true): printing the command, running nothing")
        print(plan.command_line(), file=out or sys.stdout)
        return 0
    return run_command(plan.argv, plan.filters, env=plan.child_env(), out=out)


def _as_argv(value: Sequence[str] | str | None) -> list[str]:
    if value is None:
        return []
    return shlex.split(value) if isinstance(value, str) else [str(v) for v in value]


def launch(launch_cmd: Sequence[str] | str | None = None,
           cmd_to_launch: Sequence[str] | str | None = None,
           filters: Optional[Iterable[str]] = None, include_python: bool = False) -> int:
    """Original ezpz API: run ``cmd_to_launch`` with ``launch_cmd`` (default: this job's
    mpiexec on every GPU of the detected machine) and the machine's filters.

    Strings are split with :func:`shlex.split`; nothing runs through a shell.
    ``include_python`` puts this interpreter in front of a command that does not start with
    one. Returns the exit code.
    """
    cmd = _as_argv(cmd_to_launch)
    if not cmd:
        raise LaunchError("launch: cmd_to_launch is empty")
    if include_python and "python" not in os.path.basename(cmd[0]):
        cmd = [sys.executable, *cmd]
    machine = load_machine()
    all_filters = [*machine.filters, *(filters or [])]
    if launch_cmd is None:
        plan = plan_launch(machine, LauncherConfig(), cmd)
        return run_command(plan.argv, all_filters, env=plan.child_env())
    return run_command([*_as_argv(launch_cmd), *cmd], all_filters)
