"""Launch commands: GPU/host resolution, argv builders per launcher, running with filters.

The builders (:func:`mpiexec_argv`, :func:`torchrun_argv`, :func:`srun_argv` and
:func:`build_argv`) are pure functions of the schema dataclasses and plain values and return
argv lists; nothing here ever goes through a shell. :func:`plan_launch` does the impure part
(find the hosts, count GPUs, read ``CPU_BIND``, write a trimmed hostfile when needed) and
:func:`run_command` runs an argv with the machine's output filters, forwarding Ctrl-C and
SIGTERM to the child's whole process group.

Compatibility with the original ezpz: :func:`launch` and :func:`run_command`.
"""

from __future__ import annotations

import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import IO, Iterable, Mapping, Optional, Sequence

from .config import LauncherConfig, MachineConfig
from .errors import ConfigError, LaunchError
from .hosts import HostList, all_local, detect_machine, discover_hosts, exclude_hosts
from .log import debug_enabled, get_logger

log = get_logger(__name__)

#: Seconds a child gets to exit after a forwarded signal before its group is killed.
KILL_GRACE = 10.0
NODE_STARTERS = ("mpiexec", "srun")


# --------------------------------------------------------------------------------------
# GPUs and hosts → topology
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Topology:
    """How many hosts and processes per host a launch uses."""

    nhosts: int
    ngpu_per_host: int
    #: Hosts and GPUs per host the job has (0 GPUs: a machine without GPUs).
    hosts_available: int
    gpus_per_host: int

    @property
    def ngpus(self) -> int:
        return self.nhosts * self.ngpu_per_host

    @property
    def available(self) -> int:
        per_host = self.gpus_per_host if self.gpus_per_host > 0 else self.ngpu_per_host
        return self.hosts_available * per_host

    def describe(self) -> str:
        return (f"Using [{self.ngpus}/{self.available}] GPUs [{self.nhosts} hosts] x "
                f"[{self.ngpu_per_host} GPU/host]")


def resolve_topology(*, ngpus: Optional[int], nhosts: Optional[int],
                     ngpu_per_host: Optional[int], hosts_available: int,
                     gpus_per_host: int) -> Topology:
    """Fill in whichever of ngpus / nhosts / ngpu_per_host is missing.

    - nothing given: every host, every GPU;
    - ``ngpus`` alone: as few hosts as hold them (``ceil(ngpus / gpus_per_host)``), the GPUs
      spread evenly over them (on a machine without GPUs: over up to every host);
    - ``nhosts`` and/or ``ngpu_per_host``: the other one from the job (all GPUs per host /
      all hosts), or from ``ngpus`` when it is given too;
    - all three: they must agree.

    On a machine without GPUs (``gpus_per_host`` 0) the default is one process per host and
    any ``ngpu_per_host`` is allowed. Raises :class:`LaunchError` with one line otherwise.
    """
    H, G = hosts_available, gpus_per_host
    if H < 1:
        raise LaunchError("no hosts to launch on")
    for key, value in (("ngpus", ngpus), ("nhosts", nhosts), ("ngpu_per_host", ngpu_per_host)):
        if value is not None and value < 1:
            raise LaunchError(f"launcher.{key}: must be at least 1, got {value}")
    default_p = G if G > 0 else 1
    n, h, p = ngpus, nhosts, ngpu_per_host
    if n is not None and G > 0 and n > H * G:
        raise LaunchError(f"launcher.ngpus={n} is more than the {H * G} GPUs available "
                          f"({H} hosts x {G} per host)")
    if n is None and h is None and p is None:
        h, p = H, default_p
    elif n is not None and h is None and p is None:
        h = min(H, math.ceil(n / G)) if G > 0 else min(H, n)
        if n % h:
            raise LaunchError(
                f"launcher.ngpus={n} cannot be spread evenly over {h} hosts; give "
                f"launcher.nhosts and launcher.ngpu_per_host")
        p = n // h
    elif n is None:
        h = H if h is None else h
        p = default_p if p is None else p
    elif h is not None and p is None:
        if n % h:
            raise LaunchError(f"launcher.ngpus={n} is not divisible by launcher.nhosts={h}")
        p = n // h
    elif h is None and p is not None:
        if n % p:
            raise LaunchError(
                f"launcher.ngpus={n} is not divisible by launcher.ngpu_per_host={p}")
        h = n // p
    else:
        assert h is not None and p is not None  # for the type checker: all three given
        if n != h * p:
            raise LaunchError(
                f"launcher.ngpus={n} != launcher.nhosts={h} x launcher.ngpu_per_host={p}")
    if h > H:
        raise LaunchError(f"{h} hosts requested but the job has {H}")
    if G > 0 and p > G:
        raise LaunchError(f"{p} GPUs per host requested but the machine has {G} per host")
    return Topology(nhosts=h, ngpu_per_host=p, hosts_available=H, gpus_per_host=G)


def detect_gpus(device: str = "cpu") -> int:
    """GPUs on this node as torch sees them (cuda, then xpu); 0 without torch or GPUs."""
    try:
        import torch  # noqa: PLC0415 - torch only where a GPU count is needed
    except ImportError:
        return 0
    if device in ("cuda", "cpu") and torch.cuda.is_available():
        return int(torch.cuda.device_count())
    xpu = getattr(torch, "xpu", None)
    if xpu is not None and xpu.is_available():
        return int(xpu.device_count())
    return 0


def gpus_per_host(machine: MachineConfig) -> int:
    """``machine.gpus_per_node``, or the count torch sees here when it is null."""
    if machine.gpus_per_node is not None:
        if machine.gpus_per_node < 0:
            raise ConfigError(f"machine.gpus_per_node: must be 0 or more, got {machine.gpus_per_node}")
        return machine.gpus_per_node
    return detect_gpus(machine.device)


def resolve_cpu_bind(machine: MachineConfig, environ: Optional[Mapping[str, str]] = None
                     ) -> Optional[str]:
    """``CPU_BIND`` from the environment (with or without a leading ``--cpu-bind=``) wins
    over ``machine.cpu_bind``."""
    env = os.environ if environ is None else environ
    value = env.get("CPU_BIND", "").strip()
    if value:
        for prefix in ("--cpu-bind=", "--cpu-bind "):
            if value.startswith(prefix):
                value = value[len(prefix):].strip()
        return value or None
    return machine.cpu_bind or None


def default_rdzv_id(environ: Optional[Mapping[str, str]] = None) -> str:
    """The torchrun rendezvous id: the scheduler's job id, else ``ezpz``."""
    env = os.environ if environ is None else environ
    for var in ("PBS_JOBID", "SLURM_JOB_ID", "SLURM_JOBID"):
        if env.get(var):
            return env[var].split(".", 1)[0]
    return "ezpz"


# --------------------------------------------------------------------------------------
# argv builders (pure)
# --------------------------------------------------------------------------------------
def mpiexec_argv(machine: MachineConfig, topo: Topology, cmd: Sequence[str], *,
                 hostfile: Optional[str], hosts: Sequence[str] = (),
                 cpu_bind: Optional[str] = None, verbose: bool = False,
                 extra_args: Sequence[str] = (), wrap: Sequence[str] = ()) -> list[str]:
    """mpiexec with the machine's flag spelling.

    ``pals`` (Cray PALS on ALCF): ``mpiexec --envall --np=N --ppn=P --hostfile=F [--verbose]
    [--cpu-bind=B] [machine flags] [extra] [wrap] cmd``.
    ``hydra`` (MPICH): ``mpiexec -n N -ppn P (-f F | -hosts a,b) [-verbose] [-bind-to B]
    [machine flags] [extra] [wrap] cmd``; with no hostfile the hosts go to ``-hosts``.
    """
    n, p = topo.ngpus, topo.ngpu_per_host
    if machine.mpiexec_flavor == "pals":
        if not hostfile:
            raise LaunchError("PALS mpiexec needs a hostfile (launcher.hostfile or PBS_NODEFILE)")
        argv = [machine.mpiexec, "--envall", f"--np={n}", f"--ppn={p}", f"--hostfile={hostfile}"]
        if verbose:
            argv.append("--verbose")
        if cpu_bind:
            argv.append(f"--cpu-bind={cpu_bind}")
    elif machine.mpiexec_flavor == "hydra":
        argv = [machine.mpiexec, "-n", str(n), "-ppn", str(p)]
        if hostfile:
            argv += ["-f", hostfile]
        elif hosts:
            argv += ["-hosts", ",".join(hosts)]
        if verbose:
            argv.append("-verbose")
        if cpu_bind:
            argv += ["-bind-to", cpu_bind]
    else:
        raise LaunchError(f"machine.mpiexec_flavor: {machine.mpiexec_flavor!r} is not a flavor "
                          "(choose pals or hydra)")
    return [*argv, *machine.mpiexec_flags, *extra_args, *wrap, *cmd]


def srun_argv(machine: MachineConfig, topo: Topology, cmd: Sequence[str], *,
              cpu_bind: Optional[str] = None, verbose: bool = False,
              extra_args: Sequence[str] = (), wrap: Sequence[str] = (),
              nodelist: Sequence[str] = ()) -> list[str]:
    """``srun -N H --ntasks-per-node=P --mpi=M [--nodelist=a,b] [--cpu-bind=B] [--verbose]
    [extra] [wrap] cmd``; ``nodelist`` pins the hosts (when some of the allocation's are left out)."""
    argv = ["srun", "-N", str(topo.nhosts), f"--ntasks-per-node={topo.ngpu_per_host}",
            f"--mpi={machine.srun_mpi}"]
    if nodelist:
        argv.append("--nodelist=" + ",".join(nodelist))
    if cpu_bind:
        argv.append(f"--cpu-bind={cpu_bind}")
    if verbose:
        argv.append("--verbose")
    return [*argv, *extra_args, *wrap, *cmd]


def torchrun_argv(topo: Topology, cmd: Sequence[str], *, endpoint_host: str, port: int,
                  rdzv_id: str, extra_args: Sequence[str] = (),
                  torchrun: str = "torchrun", local_addr: Optional[str] = None) -> list[str]:
    """One node's torchrun: ``torchrun --nnodes=H --nproc-per-node=P --rdzv-backend=c10d
    --rdzv-endpoint=HOST:PORT --rdzv-id=ID [extra] cmd``.

    A command that is not a ``.py`` script (``python -m x``, an executable) gets
    ``--no-python`` so torchrun runs it as given. ``local_addr`` (``--local-addr``) is the
    address each agent advertises instead of its hostname.
    """
    argv = [torchrun, f"--nnodes={topo.nhosts}", f"--nproc-per-node={topo.ngpu_per_host}",
            "--rdzv-backend=c10d", f"--rdzv-endpoint={endpoint_host}:{port}",
            f"--rdzv-id={rdzv_id}"]
    if local_addr:
        argv.append(f"--local-addr={local_addr}")
    argv += list(extra_args)
    if cmd and not str(cmd[0]).endswith(".py"):
        argv.append("--no-python")
    return [*argv, *cmd]


def build_argv(machine: MachineConfig, launcher: LauncherConfig, topo: Topology,
               cmd: Sequence[str], *, hosts: Sequence[str], hostfile: Optional[str],
               cpu_bind: Optional[str] = None, rdzv_id: str = "ezpz",
               torchrun: str = "torchrun", local_addr: Optional[str] = None) -> list[str]:
    """The full argv for ``launcher.name`` on ``machine`` (pure).

    ``hosts`` are the hosts used (the first ``topo.nhosts`` of the job); ``hostfile`` names
    exactly them (or is None for hydra on this machine, which then gets ``-hosts``).
    ``launcher=torchrun`` starts one torchrun per host with ``machine.node_starter``
    (mpiexec or srun) and never binds that one process to a CPU list.
    """
    cmd = [str(c) for c in cmd]
    if not cmd:
        raise LaunchError("no command to launch (give it after -- or as cmd=[...])")
    if launcher.name == "mpiexec":
        return mpiexec_argv(machine, topo, cmd, hostfile=hostfile, hosts=hosts,
                            cpu_bind=cpu_bind, verbose=launcher.verbose,
                            extra_args=launcher.extra_args, wrap=launcher.wrap)
    # srun picks hosts from the allocation itself: name them when some are left out.
    nodelist = list(hosts) if launcher.exclude_hosts else []
    if launcher.name == "srun":
        return srun_argv(machine, topo, cmd, cpu_bind=cpu_bind, verbose=launcher.verbose,
                         extra_args=launcher.extra_args, wrap=launcher.wrap, nodelist=nodelist)
    if launcher.name == "torchrun":
        if machine.node_starter not in NODE_STARTERS:
            raise LaunchError(f"machine.node_starter: {machine.node_starter!r} is not supported "
                              "(choose mpiexec or srun)")
        inner = torchrun_argv(topo, cmd, endpoint_host=hosts[0] if hosts else "localhost",
                              port=launcher.rdzv_port, rdzv_id=launcher.rdzv_id or rdzv_id,
                              extra_args=launcher.extra_args, torchrun=torchrun,
                              local_addr=local_addr)
        per_host = Topology(topo.nhosts, 1, topo.hosts_available, topo.gpus_per_host)
        if machine.node_starter == "srun":
            return srun_argv(machine, per_host, inner, verbose=launcher.verbose,
                             wrap=launcher.wrap, nodelist=nodelist)
        return mpiexec_argv(machine, per_host, inner, hostfile=hostfile, hosts=hosts,
                            verbose=launcher.verbose, wrap=launcher.wrap)
    raise LaunchError(f"launcher.name: {launcher.name!r} is not a launcher "
                      "(choose mpiexec, torchrun or srun)")


# --------------------------------------------------------------------------------------
# planning (reads the environment, may write a hostfile)
# --------------------------------------------------------------------------------------
@dataclass
class LaunchPlan:
    argv: list[str]
    #: Variables added to the child's environment (``machine.env``).
    env: dict[str, str]
    topology: Topology
    hosts: list[str]
    hostlist: HostList
    hostfile: Optional[str]
    filters: list[str] = field(default_factory=list)
    #: Every rank starts on this machine (hydra with only local aliases as hosts).
    local_only: bool = False

    def command_line(self) -> str:
        """The argv quoted for display (copy-pastable); never executed through a shell."""
        return shlex.join(self.argv)

    def child_env(self, base: Optional[Mapping[str, str]] = None) -> dict[str, str]:
        env = dict(os.environ if base is None else base)
        env.update(self.env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        return env


def active_filters(machine: MachineConfig, launcher: LauncherConfig) -> list[str]:
    """The machine's known noise plus the user's ``launcher.filters`` (no repeats)."""
    out: list[str] = []
    for f in [*machine.filters, *launcher.filters]:
        if f and f not in out:
            out.append(f)
    return out


def find_executable(name: str, *, sibling: bool = True) -> str:
    """``name`` as given when it is a path or on PATH, else (with ``sibling``) the one next to
    this interpreter (a venv's ``mpiexec``/``torchrun`` when the venv is not activated), else
    ``name``."""
    if os.sep in name or shutil.which(name):
        return name
    candidate = Path(sys.executable).parent / name
    return str(candidate) if sibling and candidate.exists() else name


def system_mpiexec(machine: MachineConfig) -> str:
    """The mpiexec for ``machine``. On PALS machines (Aurora, Sunspot, Polaris) it must be the
    system's: the MPICH wheel's mpiexec next to this interpreter is never picked there, and a
    warning says so when the one on PATH comes from this Python environment."""
    if machine.mpiexec_flavor != "pals":
        return find_executable(machine.mpiexec)
    exe = find_executable(machine.mpiexec, sibling=False)
    found = shutil.which(exe)
    if found and Path(found).resolve().is_relative_to(Path(sys.prefix).resolve()):
        log.warning("%s comes from this Python environment (%s), not the system: on %s use the "
                    "site's MPI (e.g. module load ...) and do not install ezpz[local] there",
                    found, sys.prefix, machine.name)
    return exe


def _hostfile_for(hostlist: HostList, hosts: list[str], machine: MachineConfig,
                  launcher: LauncherConfig, workdir: Optional[str]) -> Optional[str]:
    """The node file to give the launcher: the job's own when it lists exactly the hosts
    used, else a trimmed copy in ``workdir``; None when the launcher needs none."""
    uses_mpiexec = launcher.name == "mpiexec" or (
        launcher.name == "torchrun" and machine.node_starter == "mpiexec")
    if not uses_mpiexec:
        return None
    if machine.mpiexec_flavor == "hydra" and (hostlist.hostfile is None or all_local(hosts)):
        return None  # -hosts (all on this machine) instead of a file
    if hostlist.hostfile is not None and hostlist.lines == hosts:
        return hostlist.hostfile
    text = "".join(h + "\n" for h in hosts)
    try:
        if workdir:
            Path(workdir).mkdir(parents=True, exist_ok=True)
            path = Path(workdir) / "hostfile"
            path.write_text(text)
        else:  # no run directory: a private file, never one shared with other jobs
            fd, name = tempfile.mkstemp(prefix="ezpz-hostfile-", dir=os.environ.get("TMPDIR") or None)
            with os.fdopen(fd, "w") as fh:
                fh.write(text)
            path = Path(name)
    except OSError as exc:
        raise LaunchError(f"cannot write the node file for the launch: {exc}") from None
    log.info("wrote %d hosts of %s to %s", len(hosts), hostlist.source, path)
    return str(path)


def plan_launch(machine: MachineConfig, launcher: LauncherConfig, cmd: Sequence[str], *,
                one_per_host: bool = False, environ: Optional[Mapping[str, str]] = None,
                workdir: Optional[str] = None, hostlist: Optional[HostList] = None) -> LaunchPlan:
    """Find the hosts, resolve the GPUs, build the argv. Logs the topology.

    ``one_per_host`` (transfers): one process per host, never bound to a CPU list; ngpus /
    ngpu_per_host are ignored and only ``launcher.nhosts`` limits the hosts.
    """
    env = os.environ if environ is None else environ
    if not cmd:
        raise LaunchError("no command to launch (give it after -- or as cmd=[...])")
    hostlist = hostlist or discover_hosts(launcher.hostfile, env)
    if launcher.exclude_hosts:
        before = len(hostlist)
        hostlist = exclude_hosts(hostlist, launcher.exclude_hosts)
        log.info("left out %d of %d hosts listed in %s", before - len(hostlist), before,
                 launcher.exclude_hosts)
    if one_per_host:
        topo = resolve_topology(ngpus=None, nhosts=launcher.nhosts, ngpu_per_host=1,
                                hosts_available=len(hostlist), gpus_per_host=0)
        log.info("one process per host on %d of %d hosts (%s)", topo.nhosts, len(hostlist),
                 hostlist.source)
        cpu_bind = None
    else:
        topo = resolve_topology(ngpus=launcher.ngpus, nhosts=launcher.nhosts,
                                ngpu_per_host=launcher.ngpu_per_host,
                                hosts_available=len(hostlist), gpus_per_host=gpus_per_host(machine))
        log.info("%s (hosts from %s)", topo.describe(), hostlist.source)
        if topo.ngpus < topo.available:
            log.warning("using %d of the %d available GPUs", topo.ngpus, topo.available)
        cpu_bind = resolve_cpu_bind(machine, env)
        if env.get("CPU_BIND"):
            log.info("CPU_BIND from the environment overrides machine.cpu_bind: %s", cpu_bind)
    hosts = hostlist.hosts[: topo.nhosts]
    hostfile = _hostfile_for(hostlist, hosts, machine, launcher, workdir)
    # MPICH hydra with every host an alias of this machine: all ranks start here, nothing
    # is reached over ssh (-hosts localhost; hydra places -ppn ranks per "host" in turn).
    local = machine.mpiexec_flavor == "hydra" and all_local(hosts)
    machine = replace(machine, mpiexec=system_mpiexec(machine))
    argv = build_argv(machine, launcher, topo, cmd, hosts=["localhost"] if local else hosts,
                      hostfile=hostfile, cpu_bind=cpu_bind, rdzv_id=default_rdzv_id(env),
                      torchrun=find_executable("torchrun"),
                      local_addr="127.0.0.1" if local else None)
    child_env = {str(k): str(v) for k, v in machine.env.items()}
    if local and launcher.name == "torchrun" and "GLOO_SOCKET_IFNAME" not in env:
        # Every rank is on this machine: torch's rendezvous and gloo talk over loopback,
        # whatever the processes' hostnames are.
        child_env["GLOO_SOCKET_IFNAME"] = "lo"
    return LaunchPlan(argv=argv, env=child_env,
                      topology=topo, hosts=hosts, hostlist=hostlist, hostfile=hostfile,
                      filters=active_filters(machine, launcher), local_only=local)


# --------------------------------------------------------------------------------------
# running
# --------------------------------------------------------------------------------------
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


# --------------------------------------------------------------------------------------
# presets without Hydra, and the original ezpz API
# --------------------------------------------------------------------------------------
def load_machine(name: Optional[str] = None) -> MachineConfig:
    """A machine preset from the shipped ``conf/machine/<name>.yaml`` (default: detected)."""
    import yaml  # noqa: PLC0415 - only the compatibility helpers need it

    name = name or detect_machine()
    try:
        text = (resources.files("ezpz.conf") / "machine" / f"{name}.yaml").read_text()
    except FileNotFoundError:
        raise ConfigError(f"machine={name}: no such machine preset") from None
    data = yaml.safe_load(text) or {}
    data.pop("defaults", None)
    return MachineConfig(**data)


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
