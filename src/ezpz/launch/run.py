"""Running a launch: output, signals, the idle watchdog, retries and failover.

:func:`run_attempt` runs one argv in a process group of its own while an
:class:`~ezpz.launch.output.OutputPump` copies its output in whole lines (filtered lines kept
in the run dir), and:

- passes SIGINT, SIGTERM and SIGHUP on as the launcher needs them: mpiexec (hydra, PALS) gets
  the signal itself and forwards it to every rank; srun's tasks get it through
  ``scancel --signal`` (srun answers SIGTERM by killing its tasks at once); any other command
  gets it on its whole process group. Whatever is still running ``grace`` seconds later is
  killed; the exit code is 128 + the signal. A second SIGINT kills at once;
- stops a job that printed nothing for ``idle_timeout`` seconds the same way (SIGTERM, grace,
  kill) and reports exit code 124.

:func:`run_plan` runs a :class:`~ezpz.launch.plan.LaunchPlan` up to 1 + ``launcher.retries``
+ ``launcher.spares`` times: a failed attempt whose bad node is identified (see
:mod:`ezpz.launch.failover`) is relaunched with a spare in that node's place, any other
failure is rerun as it was while retries are left, each after ``retry_delay`` seconds
(doubling). Every attempt is logged with its exit code and cause and recorded, with the hosts
used, replaced and left, in ``<run dir>/launch.json``.

Compatibility with the original ezpz: :func:`launch` and :func:`run_command`.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from ..config import LauncherConfig
from ..errors import LaunchError
from ..log import debug_enabled, get_logger
from .failover import Diagnosis, diagnose, failover_plan, read_rank_records
from .output import HostHit, OutputPump, compile_patterns
from .plan import LaunchPlan, load_machine, next_attempt, plan_launch

log = get_logger(__name__)

#: Seconds a job gets to exit after a forwarded signal before its group is killed.
KILL_GRACE = 10.0
#: Exit code of a job stopped by the idle watchdog (as coreutils' timeout).
IDLE_EXIT = 124
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _signame(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


class SignalTrap:
    """Note SIGINT, SIGTERM and SIGHUP while a job runs (main thread only; elsewhere the
    handlers stay as they are). The run loop acts on :attr:`received`."""

    def __init__(self) -> None:
        self.received: list[int] = []
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> SignalTrap:
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._note)
        return self

    def __exit__(self, *_exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _note(self, signum: int, _frame: object) -> None:
        self.received.append(signum)

    def wait(self, seconds: float) -> bool:
        """Sleep ``seconds`` unless a signal arrives first (then True)."""
        deadline = time.monotonic() + seconds
        while not self.received and time.monotonic() < deadline:
            time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
        return bool(self.received)


class Stopper:
    """Deliver a stop signal to a running launch the way its launcher needs it."""

    def __init__(self, proc: subprocess.Popen[bytes], argv: Sequence[str],
                 env: Mapping[str, str] | None = None) -> None:
        self.proc = proc
        name = os.path.basename(str(argv[0])) if argv else ""
        self.kind = ("srun" if name == "srun" else
                     "mpiexec" if name.startswith(("mpiexec", "mpirun")) else "group")
        self.jobid = (env or os.environ).get("SLURM_JOB_ID") or os.environ.get("SLURM_JOB_ID")

    def deliver(self, sig: int) -> str:
        """Send ``sig``; returns who got it (for the log)."""
        if self.kind == "srun":
            step = self._srun_step()
            if step and self._run(["scancel", f"--signal={_signame(sig).removeprefix('SIG')}",
                                   step]):
                return f"the tasks of Slurm step {step} (scancel --signal)"
            self._kill(self.proc.pid, sig)
            return "srun (its step could not be found: srun ends its tasks at once)"
        if self.kind == "mpiexec":
            self._kill(self.proc.pid, sig)
            return "mpiexec, which passes it on to every rank"
        self._killpg(sig)
        return "the command's process group"

    def kill(self) -> None:
        """SIGKILL everything of the launch (srun: its step too)."""
        if self.kind == "srun":
            step = self._srun_step()
            if step:
                self._run(["scancel", "--signal=KILL", step])
        self._killpg(signal.SIGKILL)

    def _srun_step(self) -> str | None:
        """The Slurm step this srun runs (``scontrol show step`` names each step's srun pid)."""
        if not self.jobid:
            return None
        try:
            p = subprocess.run(["scontrol", "-o", "show", "step", self.jobid],
                               capture_output=True, text=True, timeout=10,
                               stdin=subprocess.DEVNULL)
        except (OSError, subprocess.SubprocessError):
            return None
        for line in p.stdout.splitlines():
            step = re.search(r"\bStepId=(\S+)", line)
            pid = re.search(r"\bSrunHost:Pid=\S*:(\d+)\b", line)
            if step and pid and int(pid.group(1)) == self.proc.pid:
                return step.group(1)
        return None

    @staticmethod
    def _run(argv: list[str]) -> bool:
        try:
            return subprocess.run(argv, capture_output=True, timeout=10,
                                  stdin=subprocess.DEVNULL).returncode == 0
        except (OSError, subprocess.SubprocessError):
            return False

    @staticmethod
    def _kill(pid: int, sig: int) -> None:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def _killpg(self, sig: int) -> None:
        try:
            os.killpg(self.proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


@dataclass
class AttemptResult:
    #: What the attempt reports: the launcher's exit status (128+N for signal N), 124 after
    #: an idle stop, 128 + the signal when a signal stopped it.
    exit_code: int
    #: The stop signal ezpz received during the attempt (None: none).
    signal: int | None = None
    idle: bool = False
    elapsed: float = 0.0
    host_hits: list[HostHit] = field(default_factory=list)
    #: The attempt's process group on this host.
    pgid: int | None = None


def run_attempt(argv: Sequence[str], env: Mapping[str, str] | None, pump: OutputPump,
                trap: SignalTrap, *, grace: float = KILL_GRACE,
                idle_timeout: float | None = None, header: str | None = None
                ) -> AttemptResult:
    """Run ``argv`` once (see the module doc); raises :class:`LaunchError` when it cannot start."""
    argv = [str(a) for a in argv]
    start = time.monotonic()
    try:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=None if env is None else dict(env),
                                start_new_session=True)
    except FileNotFoundError:
        raise LaunchError(f"cannot run {argv[0]!r}: no such file or command on PATH") from None
    except PermissionError:
        raise LaunchError(f"cannot run {argv[0]!r}: permission denied") from None
    assert proc.stdout is not None
    pump.start(proc.stdout, header)
    stopper = Stopper(proc, argv, env)
    seen = len(trap.received)
    got: int | None = None
    idle = False
    kill_at: float | None = None
    killed = False
    while True:
        try:
            rc = proc.wait(timeout=0.1)
            break
        except subprocess.TimeoutExpired:
            pass
        now = time.monotonic()
        for sig in trap.received[seen:]:
            seen += 1
            if got is None and not idle:
                got, kill_at = sig, now + grace
                log.warning("received %s: passing it to %s; %g s to exit before it is killed",
                            _signame(sig), stopper.deliver(sig), grace)
            elif got is None:  # the idle stop is under way: the user's signal decides the end
                got = sig
                log.warning("received %s while the idle job stops", _signame(sig))
            elif sig == signal.SIGINT and not killed:
                log.warning("received SIGINT again: killing the job now")
                stopper.kill()
                killed = True
            else:
                log.info("received %s again while the job stops: ignored", _signame(sig))
        if (idle_timeout and got is None and not idle
                and now - pump.last_activity > idle_timeout):
            idle, kill_at = True, now + grace
            log.error("no output for %g s (launcher.idle_timeout): stopping the job "
                      "(SIGTERM to %s, %g s to exit)", idle_timeout,
                      stopper.deliver(signal.SIGTERM), grace)
        if kill_at is not None and now >= kill_at and not killed:
            log.warning("the job is still running %g s after %s: killing it", grace,
                        "the idle stop" if idle else _signame(got or 0))
            stopper.kill()
            killed = True
    if got is not None or idle:
        stopper.kill()  # what is left of the group (ranks that outlived their launcher)
    pump.join(timeout=5.0)
    code = 128 - rc if rc < 0 else rc
    if got is not None:
        code = 128 + got
    elif idle:
        code = IDLE_EXIT
    return AttemptResult(code, got, idle, time.monotonic() - start, list(pump.host_hits),
                         proc.pid)


def _filters_for(filters: Iterable[str | re.Pattern[str]]) -> list[re.Pattern[str]]:
    active = compile_patterns([f for f in filters if f])
    if active and debug_enabled():
        log.info("output filters disabled by EZPZ_LOG_LEVEL=DEBUG: %s",
                 [p.pattern for p in active])
        return []
    if active:
        log.info("filtering output with %d filters (hidden lines are kept; EZPZ_LOG_LEVEL=DEBUG "
                 "or launcher.filters=[] shows everything)", len(active))
    return active


def run_command(command: Sequence[str] | str, filters: Iterable[str] | None = None, *,
                env: Mapping[str, str] | None = None, out: IO[str] | None = None,
                grace: float = KILL_GRACE, idle_timeout: float | None = None,
                filtered_log: str | None = None) -> int:
    """Run ``command`` (an argv; a string is split with :func:`shlex.split`, never given to
    a shell), stream its merged stdout/stderr line by line minus the lines in which one of
    ``filters`` (regular expressions) is found, and return its exit code (128+N when killed by
    signal N, 124 when stopped after ``idle_timeout`` seconds without output).

    Hidden lines go to ``filtered_log`` (default: a new file in ``TMPDIR``, made only when a
    line is hidden); the end of the run says how many and where. Signals are handled as in
    :func:`run_attempt`. ``EZPZ_LOG_LEVEL=DEBUG`` disables the filters (and lists them).
    """
    argv = shlex.split(command) if isinstance(command, str) else [str(c) for c in command]
    if not argv:
        raise LaunchError("no command to run")
    pump = OutputPump(sys.stdout if out is None else out, _filters_for(filters or []),
                      filtered_log=filtered_log)
    log.info("running: %s", shlex.join(argv))
    try:
        with SignalTrap() as trap:
            result = run_attempt(argv, env, pump, trap, grace=grace, idle_timeout=idle_timeout)
    finally:
        pump.close()
    if pump.summary():
        log.info("%s", pump.summary())
    log.info("finished with exit code %d in %.2f s", result.exit_code, result.elapsed)
    return result.exit_code


# --------------------------------------------------------------------------------------
# attempts: retries and failover
# --------------------------------------------------------------------------------------
def _cause(result: AttemptResult, diag: Diagnosis, launcher: LauncherConfig) -> str:
    if result.signal is not None:
        return f"stopped by {_signame(result.signal)}"
    if result.idle:
        return f"no output for {launcher.idle_timeout:g} s (launcher.idle_timeout)"
    if diag.bad:
        return "; ".join(f"bad node {h}: {why}" for h, why in diag.bad.items())
    if diag.ranks:
        more = f" (and {len(diag.ranks) - 3} more)" if len(diag.ranks) > 3 else ""
        return "; ".join(diag.ranks[:3]) + more
    if result.exit_code > 128:
        return f"the launcher was killed by {_signame(result.exit_code - 128)}"
    return f"exit code {result.exit_code}"


class _History:
    """``<run dir>/launch.json``: every attempt and the hosts used, replaced and left."""

    def __init__(self, workdir: str | None, plan: LaunchPlan) -> None:
        self.path = Path(workdir) / "launch.json" if workdir else None
        self.data: dict[str, Any] = {"attempts": [], "exit_code": None}
        self.update(plan)

    def update(self, plan: LaunchPlan, **attempt: Any) -> None:
        if attempt:
            self.data["attempts"].append(attempt)
        self.data["hosts"] = {"used": plan.hosts, "replaced": plan.replaced,
                              "spares_left": plan.spares}

    def write(self) -> None:
        if self.path is None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f".{self.path.name}.tmp")
            tmp.write_text(json.dumps(self.data, indent=1) + "\n")
            os.replace(tmp, self.path)
        except OSError as exc:
            log.warning("cannot write %s: %s", self.path, exc)


def _next_plan(plan: LaunchPlan, diag: Diagnosis, retries_left: int
               ) -> tuple[LaunchPlan | None, str | None]:
    """The plan of the next attempt and what it is (failover / retry), or (None, None)."""
    if diag.bad and len(diag.bad) <= len(plan.spares):
        new = failover_plan(plan, diag.bad)
        for bad in diag.bad:
            log.warning("replacing %s with spare %s (%s)", bad, new.replaced[bad], diag.bad[bad])
        return new, "failover"
    if diag.bad:
        log.warning("no spare left for %s (%d bad, %d spares left)", ", ".join(diag.bad),
                    len(diag.bad), len(plan.spares))
    if retries_left > 0:
        return next_attempt(plan), "retry"
    return None, None


def run_plan(plan: LaunchPlan, *, dry_run: bool = False, out: IO[str] | None = None) -> int:
    """Log the resolved command; print it and return 0 for a dry run, else run it with the
    launcher's retries, spares, idle watchdog and grace (see the module doc)."""
    shown = {k: v for k, v in plan.env.items() if not k.startswith("EZPZ_")}
    if shown:
        log.info("environment: %s", " ".join(f"{k}={v}" for k, v in shown.items()))
    if dry_run:
        log.info("dry run (launcher.dry_run=true): printing the command, running nothing")
        print(plan.command_line(), file=out or sys.stdout)
        return 0
    launcher = plan.request.launcher if plan.request else LauncherConfig()
    workdir = plan.request.workdir if plan.request else None
    pump = OutputPump(sys.stdout if out is None else out, _filters_for(plan.filters),
                      filtered_log=str(Path(workdir) / "filtered.log") if workdir else None,
                      labels=launcher.label,
                      host_patterns=compile_patterns(plan.bad_node_patterns,
                                                     "machine.bad_node_patterns"))
    history = _History(workdir, plan)
    most = 1 + launcher.retries + len(plan.spares)
    retries_left, relaunches, current = launcher.retries, 0, plan
    try:
        with SignalTrap() as trap:
            while True:
                n = current.attempt
                log.info("running%s: %s", f" (attempt {n} of at most {most})" if most > 1 else "",
                         current.command_line())
                result = run_attempt(current.argv, current.child_env(), pump, trap,
                                     grace=launcher.grace, idle_timeout=launcher.idle_timeout,
                                     header=f"attempt {n}" if n > 1 else None)
                diag = Diagnosis()
                if result.exit_code != 0 and result.signal is None:
                    diag = diagnose(current, result.host_hits, read_rank_records(current.rank_dir))
                cause = "ok" if result.exit_code == 0 else _cause(result, diag, launcher)
                nxt, action = (None, None)
                if result.exit_code != 0 and result.signal is None:
                    nxt, action = _next_plan(current, diag, retries_left)
                if result.exit_code == 0:
                    log.info("attempt %d succeeded in %.1f s", n, result.elapsed)
                elif result.signal is not None:
                    log.warning("attempt %d %s after %.1f s (exit code %d)", n, cause,
                                result.elapsed, result.exit_code)
                else:
                    log.error("attempt %d failed with exit code %d after %.1f s: %s", n,
                              result.exit_code, result.elapsed, cause)
                    if diag.bad or len(diag.ranks) > 3:  # (else the cause lists them all)
                        for line in diag.ranks[:10]:
                            log.info("  %s", line)
                history.update(nxt or current, attempt=n, hosts=current.hosts,
                               command=current.argv, exit_code=result.exit_code, cause=cause,
                               bad_hosts=diag.bad, failed_ranks=diag.ranks, next=action,
                               seconds=round(result.elapsed, 3))
                history.data["exit_code"] = result.exit_code
                history.write()
                if nxt is None:
                    code = result.exit_code
                    break
                if result.pgid is not None:  # nothing of a failed attempt outlives it
                    try:
                        os.killpg(result.pgid, signal.SIGKILL)
                    except (ProcessLookupError, PermissionError):
                        pass
                if action == "retry":
                    retries_left -= 1
                delay = launcher.retry_delay * 2 ** relaunches
                relaunches += 1
                if delay > 0:
                    log.info("attempt %d (%s) in %g s", nxt.attempt, action, delay)
                    if trap.wait(delay):
                        code = 128 + trap.received[0]
                        log.warning("received %s while waiting: not relaunching",
                                    _signame(trap.received[0]))
                        history.data["exit_code"] = code
                        history.write()
                        break
                current = nxt
    finally:
        pump.close()
    if pump.summary():
        log.info("%s", pump.summary())
        history.data["filtered"] = {"lines": pump.hidden, "file": pump.filtered_path}
        history.write()
    if plan.spares or current.replaced:
        replaced = ", ".join(f"{a} -> {b}" for a, b in current.replaced.items()) or "none"
        log.info("hosts used: %s; replaced: %s; spares left: %s", ", ".join(current.hosts),
                 replaced, ", ".join(current.spares) or "none")
    log.info("finished with exit code %d after %d attempt%s%s", code, current.attempt,
             "s" if current.attempt > 1 else "",
             f" (record: {history.path})" if history.path and current.attempt > 1 else "")
    return code


# --------------------------------------------------------------------------------------
# the original ezpz API
# --------------------------------------------------------------------------------------
def _as_argv(value: Sequence[str] | str | None) -> list[str]:
    if value is None:
        return []
    return shlex.split(value) if isinstance(value, str) else [str(v) for v in value]


def launch(launch_cmd: Sequence[str] | str | None = None,
           cmd_to_launch: Sequence[str] | str | None = None,
           filters: Iterable[str] | None = None, include_python: bool = False) -> int:
    """Original ezpz API: run ``cmd_to_launch`` with ``launch_cmd`` (default: this job's
    mpiexec on every GPU of the detected machine) and the machine's filters plus ``filters``
    (regular expressions; hidden lines are kept in a file named at the end).

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
