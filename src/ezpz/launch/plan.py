"""Planning a launch: find the hosts, resolve the GPUs, write a trimmed hostfile, build the argv.

:func:`plan_launch` does the impure part (reads the scheduler environment, counts GPUs, reads
``CPU_BIND``, may write a node file) around the pure builders of :mod:`ezpz.launch.argv`.
:func:`resolve_hosts` is the part that writes nothing (the CLIs check with it before a run
directory exists); :func:`build_plan` builds a plan again for other hosts (failover).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path

from ..config import LauncherConfig, MachineConfig
from ..errors import ConfigError, LaunchError
from ..log import get_logger
from .argv import build_argv, rank_wrapper_argv
from .hosts import HostList, all_local, detect_machine, discover_hosts, exclude_hosts
from .topology import (
    Topology,
    default_rdzv_id,
    in_slurm_allocation,
    resolve_cpu_bind,
    resolve_gpus_per_host,
    resolve_topology,
)

log = get_logger(__name__)

#: The rank wrapper, run as a script by every rank (see :mod:`ezpz.launch.rankwrap`).
RANK_WRAPPER = Path(__file__).resolve().with_name("rankwrap.py")


@dataclass(frozen=True)
class LaunchRequest:
    """What was asked for: all that is needed to build the argv again on other hosts."""

    machine: MachineConfig
    launcher: LauncherConfig
    cmd: tuple[str, ...]
    one_per_host: bool
    workdir: str | None
    cpu_bind: str | None
    rdzv_id: str
    torchrun: str
    wrap_ranks: bool
    #: Of MASTER_ADDR, MASTER_PORT, GLOO_SOCKET_IFNAME: those the caller's environment
    #: already sets (ezpz then leaves them alone).
    preset_vars: frozenset[str] = frozenset()


@dataclass
class LaunchPlan:
    argv: list[str]
    #: Variables added to the child's environment (``machine.env`` and ezpz's own).
    env: dict[str, str]
    topology: Topology
    hosts: list[str]
    hostlist: HostList
    hostfile: str | None
    filters: list[str] = field(default_factory=list)
    #: Every rank starts on this machine (hydra with only local aliases as hosts).
    local_only: bool = False
    #: Hosts held back (``launcher.spares``) to replace hosts found bad.
    spares: list[str] = field(default_factory=list)
    #: Hosts found bad and replaced so far (srun gets them as ``--exclude``).
    excluded: list[str] = field(default_factory=list)
    #: Each replaced host and the spare that took its place.
    replaced: dict[str, str] = field(default_factory=dict)
    #: The attempt this plan is for (1 for the first run).
    attempt: int = 1
    #: Where the rank wrapper records failed ranks for this attempt (None: nowhere).
    rank_dir: str | None = None
    #: The machine's bad-node patterns.
    bad_node_patterns: list[str] = field(default_factory=list)
    request: LaunchRequest | None = field(default=None, repr=False)

    def command_line(self) -> str:
        """The argv quoted for display (copy-pastable); never executed through a shell."""
        return shlex.join(self.argv)

    def child_env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ if base is None else base)
        env.update(self.env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        return env


def active_filters(machine: MachineConfig, launcher: LauncherConfig) -> list[str]:
    """The filters in effect: ``launcher.filters`` when given (``[]``: none), else the
    machine's (no repeats)."""
    chosen = machine.filters if launcher.filters is None else launcher.filters
    out: list[str] = []
    for f in chosen:
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
                  launcher: LauncherConfig, workdir: str | None,
                  name: str = "hostfile") -> str | None:
    """The node file to give the launcher: the job's own when it lists exactly the hosts
    used, else a trimmed copy in ``workdir`` (as ``name``); None when the launcher needs none."""
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
            path = Path(workdir) / name
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


def uses_srun(machine: MachineConfig, launcher: LauncherConfig) -> bool:
    return launcher.name == "srun" or (launcher.name == "torchrun"
                                       and machine.node_starter == "srun")


def resolve_hosts(machine: MachineConfig, launcher: LauncherConfig, *,
                  one_per_host: bool = False, environ: Mapping[str, str] | None = None,
                  hostlist: HostList | None = None, quiet: bool = False
                  ) -> tuple[HostList, Topology]:
    """The job's hosts (minus ``launcher.exclude_hosts``) and the topology on them, with
    ``launcher.spares`` hosts held back. Writes nothing; every mistake a user can make here
    (hosts, GPU counts, spares, srun outside an allocation) is a one-line LaunchError.
    ``quiet``: check only (no log lines)."""
    env = os.environ if environ is None else environ
    if uses_srun(machine, launcher) and not in_slurm_allocation(env):
        how = "launcher=srun" if launcher.name == "srun" else "machine.node_starter=srun"
        raise LaunchError(f"{how} needs a Slurm allocation (SLURM_JOB_ID is not set): run "
                          "inside salloc or sbatch, or use launcher=mpiexec")
    hostlist = hostlist or discover_hosts(launcher.hostfile, env, warn=not quiet)
    if launcher.exclude_hosts:
        before = len(hostlist)
        hostlist = exclude_hosts(hostlist, launcher.exclude_hosts)
        if not quiet:
            log.info("left out %d of %d hosts listed in %s", before - len(hostlist), before,
                     launcher.exclude_hosts)
    usable = len(hostlist) - launcher.spares
    if launcher.spares and usable < 1:
        raise LaunchError(f"launcher.spares={launcher.spares} leaves no host to run on (the job "
                          f"has {len(hostlist)}: {hostlist.source})")
    if one_per_host:
        topo = resolve_topology(ngpus=None, nhosts=launcher.nhosts, ngpu_per_host=1,
                                hosts_available=usable, gpus_per_host=0)
        if not quiet:
            log.info("one process per host on %d of %d hosts (%s)", topo.nhosts, len(hostlist),
                     hostlist.source)
        return hostlist, topo
    gpus, source = resolve_gpus_per_host(machine, env)
    try:
        topo = resolve_topology(ngpus=launcher.ngpus, nhosts=launcher.nhosts,
                                ngpu_per_host=launcher.ngpu_per_host, hosts_available=usable,
                                gpus_per_host=gpus)
    except LaunchError as exc:
        if launcher.spares and "hosts requested but the job has" in str(exc):
            raise LaunchError(f"{exc} once launcher.spares={launcher.spares} are held back"
                              ) from None
        raise
    if not quiet:
        log.info("%s (hosts from %s; GPUs per host from %s)", topo.describe(), hostlist.source,
                 source)
        if topo.gpus_per_host > 0 and topo.ngpus < topo.available:
            log.warning("using %d of the %d available GPUs", topo.ngpus, topo.available)
    return hostlist, topo


def plan_launch(machine: MachineConfig, launcher: LauncherConfig, cmd: Sequence[str], *,
                one_per_host: bool = False, environ: Mapping[str, str] | None = None,
                workdir: str | None = None, hostlist: HostList | None = None,
                wrap_ranks: bool = False) -> LaunchPlan:
    """Find the hosts, resolve the GPUs, build the argv. Logs the topology.

    ``one_per_host`` (transfers): one process per host, never bound to a CPU list; ngpus /
    ngpu_per_host are ignored and only ``launcher.nhosts`` limits the hosts.
    ``wrap_ranks``: run every rank under the rank wrapper (``launcher.rank_wrapper``; see
    :mod:`ezpz.launch.rankwrap`), which also gives mpiexec/srun ranks the DDP environment.
    ``launcher.spares`` hosts after the ones used are held back for :func:`failover_plan`.
    """
    env = os.environ if environ is None else environ
    if not cmd:
        raise LaunchError("no command to launch (give it after -- or as cmd=[...])")
    hostlist, topo = resolve_hosts(machine, launcher, one_per_host=one_per_host, environ=env,
                                   hostlist=hostlist)
    cpu_bind = None
    if not one_per_host:
        cpu_bind = resolve_cpu_bind(machine, env)
        if env.get("CPU_BIND"):
            log.info("CPU_BIND from the environment overrides machine.cpu_bind: %s", cpu_bind)
    hosts = hostlist.hosts[: topo.nhosts]
    spares = hostlist.hosts[topo.nhosts: topo.nhosts + launcher.spares]
    if spares:
        log.info("holding back %d spare host%s: %s", len(spares), "s" if len(spares) > 1 else "",
                 ", ".join(spares))
    request = LaunchRequest(
        machine=replace(machine, mpiexec=system_mpiexec(machine)), launcher=launcher,
        cmd=tuple(str(c) for c in cmd), one_per_host=one_per_host, workdir=workdir,
        cpu_bind=cpu_bind, rdzv_id=default_rdzv_id(env), torchrun=find_executable("torchrun"),
        wrap_ranks=wrap_ranks,
        preset_vars=frozenset(k for k in ("MASTER_ADDR", "MASTER_PORT", "GLOO_SOCKET_IFNAME")
                              if env.get(k)))
    return build_plan(request, hostlist, topo, hosts, spares=spares, excluded=[], attempt=1)


def build_plan(request: LaunchRequest, hostlist: HostList, topo: Topology, hosts: list[str],
               *, spares: list[str], excluded: list[str], attempt: int) -> LaunchPlan:
    """The plan for ``hosts`` (argv, environment, node file): the first attempt, or a later
    one on other hosts (see :func:`ezpz.launch.failover.failover_plan`)."""
    machine, launcher = request.machine, request.launcher
    hostfile = _hostfile_for(hostlist, hosts, machine, launcher, request.workdir,
                             "hostfile" if attempt == 1 else f"hostfile.attempt{attempt}")
    # MPICH hydra with every host an alias of this machine: all ranks start here, nothing
    # is reached over ssh (-hosts localhost; hydra places -ppn ranks per "host" in turn).
    local = machine.mpiexec_flavor == "hydra" and all_local(hosts)
    # srun picks nodes itself: name them whenever they are not simply the allocation's first
    pin = bool(launcher.exclude_hosts or excluded or hosts != hostlist.hosts[: len(hosts)])
    wrap = rank_wrapper_argv(sys.executable, str(RANK_WRAPPER)) if request.wrap_ranks else []
    argv = build_argv(machine, launcher, topo, request.cmd,
                      hosts=["localhost"] if local else hosts, hostfile=hostfile,
                      cpu_bind=request.cpu_bind, rdzv_id=request.rdzv_id,
                      torchrun=request.torchrun, local_addr="127.0.0.1" if local else None,
                      rank_wrap=wrap, nodelist=list(hosts) if pin else [], exclude=excluded)
    child_env = {str(k): str(v) for k, v in machine.env.items()}
    if local and (launcher.name == "torchrun" or request.wrap_ranks) \
            and "GLOO_SOCKET_IFNAME" not in request.preset_vars:
        # Every rank is on this machine: torch's rendezvous and gloo talk over loopback,
        # whatever the processes' hostnames are.
        child_env["GLOO_SOCKET_IFNAME"] = "lo"
    rank_dir = None
    if request.wrap_ranks:
        if launcher.name != "torchrun":  # torchrun gives its workers these itself
            child_env.update({"EZPZ_DDP_ENV": "1", "EZPZ_WORLD_SIZE": str(topo.ngpus),
                              "EZPZ_LOCAL_WORLD_SIZE": str(topo.ngpu_per_host)})
            if "MASTER_ADDR" not in request.preset_vars:
                child_env["MASTER_ADDR"] = "127.0.0.1" if local else hosts[0]
            if "MASTER_PORT" not in request.preset_vars:
                child_env["MASTER_PORT"] = str(launcher.rdzv_port)
        if launcher.label:
            child_env["EZPZ_RANK_LABEL"] = "1"
        if machine.bad_node_patterns:
            child_env["EZPZ_BAD_NODE_PATTERNS"] = json.dumps(machine.bad_node_patterns)
        if request.workdir:
            rank_dir = str(Path(request.workdir) / "ranks" / f"attempt-{attempt}")
            child_env["EZPZ_RANK_DIR"] = rank_dir
    return LaunchPlan(argv=argv, env=child_env, topology=topo, hosts=list(hosts),
                      hostlist=hostlist, hostfile=hostfile,
                      filters=active_filters(machine, launcher), local_only=local,
                      spares=list(spares), excluded=list(excluded), attempt=attempt,
                      rank_dir=rank_dir, bad_node_patterns=list(machine.bad_node_patterns),
                      request=request)


def next_attempt(plan: LaunchPlan) -> LaunchPlan:
    """The same launch again on the same hosts (a retry): its own attempt number and records."""
    if plan.request is None:
        return replace(plan, attempt=plan.attempt + 1)
    new = build_plan(plan.request, plan.hostlist, plan.topology, plan.hosts,
                     spares=plan.spares, excluded=plan.excluded, attempt=plan.attempt + 1)
    new.replaced = dict(plan.replaced)
    return new


def load_machine(name: str | None = None) -> MachineConfig:
    """A machine preset from the shipped ``conf/machine/<name>.yaml`` (default: detected)."""
    import yaml

    name = name or detect_machine()
    try:
        text = (resources.files("ezpz.conf") / "machine" / f"{name}.yaml").read_text()
    except FileNotFoundError:
        raise ConfigError(f"machine={name}: no such machine preset") from None
    data = yaml.safe_load(text) or {}
    data.pop("defaults", None)
    return MachineConfig(**data)
