"""ezpz's rank wrapper: runs one rank's command and stands between it and the launcher.

    python -S rankwrap.py -- cmd [args ...]

``ezpz-launch`` puts this in front of every rank's command (``launcher.rank_wrapper``). It is
run as a script, imports the standard library only (never ezpz or site-packages), and:

- **whole lines**: the command's stdout and stderr go through one pipe; the wrapper passes
  them on in whole lines, each write at most ``PIPE_BUF`` bytes of complete lines, so lines of
  different ranks never glue together in the launcher's output (a line longer than
  ``PIPE_BUF`` can still be split by the launcher); a progress bar's redraw (ending in ``\r``)
  counts as a line; a last line without a newline gets one;
- **labels** (``EZPZ_RANK_LABEL=1``): each line is prefixed with ``<rank>: ``;
- **the DDP environment** (``EZPZ_DDP_ENV=1``, set under mpiexec and srun): ``RANK``,
  ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE`` from the launcher's variables (PMI,
  PALS, Slurm, Open MPI), falling back to ``EZPZ_WORLD_SIZE``/``EZPZ_LOCAL_WORLD_SIZE``;
  ``MASTER_ADDR``/``MASTER_PORT`` come from the launch itself;
- **signals**: SIGHUP, SIGINT and SIGTERM are passed on to the command's process group once
  each (a launcher that both signals a group and forwards the signal does not interrupt a
  checkpoint handler twice), SIGUSR1/SIGUSR2 every time; the command dies with this wrapper
  (``PR_SET_PDEATHSIG``), so a wrapper killed by its launcher leaves no orphan;
- **a record of a failed rank** (``EZPZ_RANK_DIR``): when the command fails, or prints a line
  matching one of ``EZPZ_BAD_NODE_PATTERNS`` (a JSON list of regular expressions), the
  wrapper writes ``<dir>/rank-<rank>.json``: host, exit code or signal, whether the signal
  came from the launcher, the matching lines. Ranks that succeed write nothing.

It exits as the command did (the same code, or the same signal).
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # json, re and socket are imported only when used: every rank starts this
    import re

PIPE_BUF = 4096
#: A line longer than this is passed on in pieces (memory stays bounded).
MAX_PENDING = 1 << 20
#: After the command exited: output from children it left behind is passed on while it keeps
#: coming (at most DRAIN_IDLE seconds apart, for at most DRAIN_MAX seconds).
DRAIN_IDLE = 1.0
DRAIN_MAX = 10.0
STOP_SIGNALS = (signal.SIGHUP, signal.SIGINT, signal.SIGTERM)
FORWARDED = (*STOP_SIGNALS, signal.SIGUSR1, signal.SIGUSR2)
#: Variables that configure this wrapper; the command does not see them.
OWN_VARS = ("EZPZ_RANK_DIR", "EZPZ_RANK_LABEL", "EZPZ_BAD_NODE_PATTERNS", "EZPZ_DDP_ENV",
            "EZPZ_WORLD_SIZE", "EZPZ_LOCAL_WORLD_SIZE")

RANK_VARS = ("PMI_RANK", "PALS_RANKID", "SLURM_PROCID", "OMPI_COMM_WORLD_RANK", "PMIX_RANK")
SIZE_VARS = ("PMI_SIZE", "PALS_SIZE", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "EZPZ_WORLD_SIZE")
LOCAL_RANK_VARS = ("MPI_LOCALRANKID", "PALS_LOCAL_RANKID", "SLURM_LOCALID",
                   "OMPI_COMM_WORLD_LOCAL_RANK", "PMI_LOCAL_RANK")
LOCAL_SIZE_VARS = ("MPI_LOCALNRANKS", "PALS_LOCAL_SIZE", "OMPI_COMM_WORLD_LOCAL_SIZE",
                   "PMI_LOCAL_SIZE", "SLURM_NTASKS_PER_NODE", "EZPZ_LOCAL_WORLD_SIZE")


def _first_int(env: dict[str, str], names: tuple[str, ...]) -> int | None:
    for name in names:
        value = env.get(name, "").strip()
        if value.isdigit():
            return int(value)
    return None


def rank_of(env: dict[str, str]) -> int | None:
    """This rank's global rank: torchrun's RANK for a torchrun worker, else the launcher's."""
    if env.get("TORCHELASTIC_RUN_ID") and env.get("RANK", "").isdigit():
        return int(env["RANK"])
    return _first_int(env, RANK_VARS)


def set_ddp_env(env: dict[str, str]) -> None:
    """RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE from the launcher's variables (in place).

    Left alone under torchrun (it sets them) or when no launcher variable names the rank.
    """
    if env.get("TORCHELASTIC_RUN_ID"):
        return
    rank = _first_int(env, RANK_VARS)
    if rank is None:
        return
    size = _first_int(env, SIZE_VARS) or rank + 1
    local_size = _first_int(env, LOCAL_SIZE_VARS) or 1
    local_rank = _first_int(env, LOCAL_RANK_VARS)
    if local_rank is None:
        local_rank = rank % local_size
    env.update({"RANK": str(rank), "WORLD_SIZE": str(size), "LOCAL_RANK": str(local_rank),
                "LOCAL_WORLD_SIZE": str(local_size), "GROUP_RANK": str(rank // local_size)})


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except BrokenPipeError:
            return
        view = view[n:]


class LinePasser:
    """Pass bytes on in whole lines (optionally labelled), scanning each for patterns."""

    def __init__(self, out_fd: int, label: bytes, patterns: list[re.Pattern[str]]) -> None:
        self.out_fd = out_fd
        self.label = label
        self.patterns = patterns
        self.pending = b""
        self.hits: list[dict[str, object]] = []

    def _scan(self, line: bytes) -> None:
        if not self.patterns or len(self.hits) >= 20:
            return
        text = line.decode(errors="replace").rstrip("\r\n")
        for i, pattern in enumerate(self.patterns):
            m = pattern.search(text)
            if m:
                host = m.groupdict().get("host") if pattern.groupindex else None
                self.hits.append({"pattern": i, "host": host, "line": text[:500]})

    def _emit(self, lines: list[bytes]) -> None:
        batch = b""
        for line in lines:
            self._scan(line)
            item = self.label + line
            if batch and len(batch) + len(item) > PIPE_BUF:
                _write_all(self.out_fd, batch)
                batch = b""
            batch += item
        if batch:
            _write_all(self.out_fd, batch)

    def feed(self, data: bytes) -> None:
        self.pending += data
        # a line ends with \n; a progress bar redrawn in place ends each redraw with \r
        cut = max(self.pending.rfind(b"\n"), self.pending.rfind(b"\r"))
        if cut >= 0:
            complete, self.pending = self.pending[:cut + 1], self.pending[cut + 1:]
            self._emit(complete.splitlines(keepends=True))
        if len(self.pending) > MAX_PENDING:
            self._emit([self.pending])
            self.pending = b""

    def close(self) -> None:
        if self.pending:
            self._emit([self.pending + b"\n"])
            self.pending = b""


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _compile(raw: str) -> list[re.Pattern[str]]:
    if not raw:
        return []
    import json
    import re

    try:
        return [re.compile(p) for p in json.loads(raw)]
    except (ValueError, re.error, TypeError):
        return []


def _signal_name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


def _record(directory: str, rank: int | None, child_pid: int, rc: int,
            stopped_by: int | None, hits: list[dict[str, object]]) -> None:
    """``<directory>/rank-<rank>.json``, written atomically (a failure here is not fatal)."""
    import json
    import socket

    sig = -rc if rc < 0 else None
    data = {
        "rank": rank, "host": socket.gethostname(), "node": os.environ.get("SLURMD_NODENAME"),
        "pid": child_pid, "exit_code": None if sig else rc,
        "signal": _signal_name(sig) if sig else None,
        "stopped_by": _signal_name(stopped_by) if stopped_by else None,
        "patterns": hits, "time": time.time(),
    }
    name = f"rank-{rank if rank is not None else os.getpid()}.json"
    try:
        os.makedirs(directory, exist_ok=True)
        tmp = os.path.join(directory, f".{name}.{os.getpid()}.tmp")
        with open(tmp, "w") as fh:
            json.dump(data, fh)
        os.replace(tmp, os.path.join(directory, name))
    except OSError as exc:
        print(f"ezpz rank wrapper: cannot write {directory}/{name}: {exc}", file=sys.stderr)


def _exit_like(rc: int) -> None:
    """Exit with ``rc``, or die of the same signal the command died of."""
    if rc >= 0:
        sys.exit(rc)
    sig = -rc
    try:
        import resource

        resource.setrlimit(resource.RLIMIT_CORE, (0, resource.getrlimit(resource.RLIMIT_CORE)[1]))
    except (ImportError, OSError, ValueError):
        pass
    signal.signal(sig, signal.SIG_DFL)
    os.kill(os.getpid(), sig)
    sys.exit(128 + sig)


def main(argv: list[str]) -> None:
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        print("usage: rankwrap.py -- cmd [args ...]", file=sys.stderr)
        sys.exit(2)
    own = {k: os.environ.get(k, "") for k in OWN_VARS}
    env = {k: v for k, v in os.environ.items() if k not in OWN_VARS}
    if own["EZPZ_DDP_ENV"] == "1":
        env.update({k: own[k] for k in ("EZPZ_WORLD_SIZE", "EZPZ_LOCAL_WORLD_SIZE") if own[k]})
        set_ddp_env(env)
        env.pop("EZPZ_WORLD_SIZE", None)
        env.pop("EZPZ_LOCAL_WORLD_SIZE", None)
    rank = rank_of(env)
    label = f"{rank if rank is not None else '?'}: ".encode() if own["EZPZ_RANK_LABEL"] == "1" else b""
    passer = LinePasser(1, label, _compile(own["EZPZ_BAD_NODE_PATTERNS"]))

    read_fd, write_fd = os.pipe()
    try:
        # close_fds=False: descriptors the launcher handed this rank (srun's PMI_FD, ...) must
        # reach the command; the wrapper's own descriptors are not inheritable anyway.
        child = subprocess.Popen(argv, stdout=write_fd, stderr=write_fd, env=env, close_fds=False,
                                 start_new_session=True, preexec_fn=_die_with_parent)
    except OSError as exc:
        print(f"ezpz rank wrapper: cannot run {argv[0]!r}: {exc.strerror or exc}",
              file=sys.stderr)
        sys.exit(127 if isinstance(exc, FileNotFoundError) else 126)
    finally:
        os.close(write_fd)

    forwarded: set[int] = set()
    stopped_by: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        if signum in STOP_SIGNALS:
            if signum in forwarded:
                return
            forwarded.add(signum)
            stopped_by.append(signum)
        try:
            os.killpg(child.pid, signum)
        except (ProcessLookupError, PermissionError):
            pass

    for sig in FORWARDED:
        signal.signal(sig, forward)

    exited_at: float | None = None
    last_data = time.monotonic()
    while True:
        now = time.monotonic()
        if exited_at is None and child.poll() is not None:
            exited_at = now
        if exited_at is None:
            timeout = 0.5
        else:  # the command is gone; children it left behind may still hold the pipe
            timeout = min(last_data + DRAIN_IDLE, exited_at + DRAIN_MAX) - now
            if timeout <= 0:
                break
        ready, _, _ = select.select([read_fd], [], [], timeout)
        if not ready:
            continue
        data = os.read(read_fd, 65536)
        if not data:
            break
        last_data = time.monotonic()
        passer.feed(data)
    passer.close()
    os.close(read_fd)
    rc = child.wait()
    if own["EZPZ_RANK_DIR"] and (rc != 0 or passer.hits):
        _record(own["EZPZ_RANK_DIR"], rank, child.pid, rc, stopped_by[0] if stopped_by else None,
                passer.hits)
    _exit_like(rc)


if __name__ == "__main__":
    main(sys.argv[1:])
