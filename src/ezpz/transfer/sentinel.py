"""A small guard process next to each rank: what the rank cannot do for itself.

A rank can clean up after itself on a timeout or a catchable signal, but not when:

- it is SIGKILLed (MPICH's hydra SIGKILLs the process group of every rank as soon as one
  rank exits non-zero or dies, so the survivors of a lost rank are killed mid-cleanup);
- it is stuck in a call that holds Python's GIL, so that no Python timer can run (``MPI_Init``
  waiting for a rank that is stopped or missing does exactly that);
- it is stopped (SIGSTOP) for longer than ``transfer.timeout``: the launcher then waits for it
  forever.

:func:`start` forks the sentinel before MPI or torch.distributed start and before any thread
exists (fork is cheap and touches no filesystem). The sentinel leaves the rank's session (a
launcher's kill of the rank's process group does not reach it), keeps only stderr open, and
reads a pipe from the rank:

- the paths the rank would remove if it failed now (staging directory, partial archive copy);
- a heartbeat, every second, from a thread of the rank.

When the pipe closes without the rank having said ``done`` (the rank ended, however), the
sentinel removes those paths and exits. When no heartbeat came for ``timeout`` seconds while
the sentinel itself was running (a job suspended as a whole stops the sentinel too, and is
not a stuck rank), it says so on stderr, sends the rank SIGTERM and SIGCONT (so that a
stopped rank runs its own clean-up), SIGKILLs it ``grace`` seconds later if it is still there,
and removes the paths itself.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import threading
import time
from collections.abc import Iterable

from ..fsutil import remove

#: Seconds between heartbeats.
BEAT = 1.0
#: The shortest silence taken for a stuck rank, whatever ``transfer.timeout`` says (a
#: heartbeat may be late by a few seconds on a loaded machine).
MIN_SILENCE = 5.0


class Sentinel:
    """The rank's end of the pipe to its sentinel (see the module's docstring)."""

    def __init__(self, pid: int, fd: int) -> None:
        self.pid = pid
        self._fd = fd
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._paths: tuple[str, ...] = ()
        self._thread = threading.Thread(target=self._beat, name="ezpz-heartbeat", daemon=True)
        self._thread.start()

    def _send(self, line: str) -> None:
        data = line.encode("utf-8", "surrogateescape") + b"\n"
        with self._lock:
            if self._fd < 0:
                return
            try:
                os.write(self._fd, data)
            except OSError:  # the sentinel is gone: nothing to tell it any more
                os.close(self._fd)
                self._fd = -1

    def _beat(self) -> None:
        while not self._stop.wait(BEAT):
            self._send("beat")

    def watch(self, paths: Iterable[str]) -> None:
        """The paths to remove should this rank end now (replaces the previous list)."""
        paths = tuple(paths)
        if paths != self._paths:
            self._paths = paths
            self._send("clear")
            for p in paths:
                self._send("path " + p)

    def started(self) -> None:
        """The communication library is up (before this, a stuck rank holds nothing to clean
        up, and cannot run a signal handler: it is SIGKILLed at once)."""
        self._send("started")

    def done(self) -> None:
        """The rank ends normally: remove nothing; the sentinel exits."""
        self._stop.set()
        self._send("clear")
        self._send("done")
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


def start(timeout: float, label: str, grace: float | None = None) -> Sentinel | None:
    """Fork the sentinel; None where that is not safe (threads already running) or possible."""
    if threading.active_count() > 1 or not hasattr(os, "fork"):
        return None
    r, w = os.pipe2(os.O_CLOEXEC)
    rank_pid = os.getpid()
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        pid = os.fork()
    except OSError:
        os.close(r)
        os.close(w)
        return None
    if pid == 0:  # the sentinel
        code = 0
        try:
            os.close(w)
            _detach(r)
            _run(r, rank_pid, max(timeout, MIN_SILENCE), label,
                 grace if grace is not None else max(5.0, min(timeout, 30.0)))
        except BaseException:  # noqa: BLE001 - the sentinel must never return into the rank
            code = 1
        os._exit(code)
    os.close(r)
    return Sentinel(pid, w)


#: The sentinel's process name (``/proc/<pid>/comm``; its command line is the rank's).
NAME = "ezpz-sentinel"


def _detach(keep: int) -> None:
    os.setsid()
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(15, NAME.encode(), 0, 0, 0)  # PR_SET_NAME
    except (OSError, AttributeError):
        pass
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_IGN)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.close(null)
    # everything else the rank had open (the launcher's sockets, PMI) is not ours
    for fd in _open_fds():
        if fd > 2 and fd != keep:
            try:
                os.close(fd)
            except OSError:
                pass


def _open_fds() -> list[int]:
    try:
        return [int(x) for x in os.listdir("/proc/self/fd")]
    except OSError:
        return list(range(3, 1024))


def _say(label: str, msg: str) -> None:
    try:
        os.write(2, f"ezpz-transfer: {label}: {msg}\n".encode(errors="replace"))
    except OSError:
        pass


def _run(fd: int, rank: int, timeout: float, label: str, grace: float) -> None:
    paths: list[str] = []
    done = started = False
    buf = b""
    last_beat = last_wake = time.monotonic()
    while True:
        ready, _, _ = select.select([fd], [], [], BEAT)
        now = time.monotonic()
        if now - last_wake > 3 * BEAT:  # the sentinel itself was not running (suspended)
            last_beat = now
        last_wake = now
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                break  # the rank ended
            last_beat = now
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for raw in lines:
                line = raw.decode("utf-8", "surrogateescape")
                if line == "clear":
                    paths = []
                elif line.startswith("path "):
                    paths.append(line[5:])
                elif line == "started":
                    started = True
                elif line == "done":
                    done = True
            continue
        if now - last_beat > timeout:
            if started:
                _say(label, f"no sign of life from the worker (pid {rank}) for {timeout:g}s: "
                            "it is stopped or stuck; ending it")
            else:
                _say(label, f"the worker (pid {rank}) did not get through start-up within "
                            f"{timeout:g}s (MPI or torch.distributed start-up waits for a rank "
                            "that is stopped, missing or slow to start; transfer.timeout sets "
                            "the limit); ending it")
            _end(rank, fd, grace if started else 0.0)
            break
    if not done:
        for p in paths:
            remove(p)


def _end(pid: int, fd: int, grace: float) -> None:
    """SIGTERM (and SIGCONT, for a stopped rank) so that the rank cleans up; SIGKILL after
    ``grace`` seconds (at once when 0). Returns once the rank is gone (its end of the pipe
    closed)."""
    for sig in (signal.SIGTERM, signal.SIGCONT) if grace > 0 else ():
        try:
            os.kill(pid, sig)
        except OSError:
            return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready and not os.read(fd, 65536):
            return
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        return
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready and not os.read(fd, 65536):
            return
