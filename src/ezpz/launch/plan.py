"""Planning a launch: find the hosts, resolve the GPUs, write a trimmed hostfile, build the argv.

:func:`plan_launch` does the impure part (reads the scheduler environment, counts GPUs, reads
``CPU_BIND``, may write a node file) around the pure builders of :mod:`ezpz.launch.argv`.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
import tempfile
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Mapping, Optional, Sequence

from ..config import LauncherConfig, MachineConfig
from ..errors import ConfigError, LaunchError
from ..log import get_logger
from .argv import build_argv
from .hosts import HostList, all_local, detect_machine, discover_hosts, exclude_hosts
from .topology import (Topology, default_rdzv_id, gpus_per_host, resolve_cpu_bind,
                       resolve_topology)

log = get_logger(__name__)


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
