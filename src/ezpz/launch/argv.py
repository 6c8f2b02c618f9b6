"""Pure argv builders: mpiexec (PALS and MPICH hydra), srun and torchrun.

Every function here is a pure function of the schema dataclasses and plain values and returns
an argv list; nothing here ever goes through a shell or reads the environment.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..config import LauncherConfig, MachineConfig
from ..errors import LaunchError
from .topology import Topology

NODE_STARTERS = ("mpiexec", "srun")


def rank_wrapper_argv(python: str, script: str) -> list[str]:
    """The argv prefix that runs one rank under ezpz's rank wrapper (``rankwrap.py``, run as a
    script with ``-S``: it needs the standard library only, never site-packages)."""
    return [python, "-S", script, "--"]


def mpiexec_argv(machine: MachineConfig, topo: Topology, cmd: Sequence[str], *,
                 hostfile: str | None, hosts: Sequence[str] = (),
                 cpu_bind: str | None = None, verbose: bool = False,
                 extra_args: Sequence[str] = (), wrap: Sequence[str] = ()) -> list[str]:
    """mpiexec with the machine's flag spelling.

    ``pals`` (Cray PALS on ALCF): ``mpiexec --envall --np=N --ppn=P --hostfile=F [--verbose]
    [--cpu-bind=B] --line-buffer [machine flags] [extra] [wrap] cmd`` (``--line-buffer``:
    PALS passes each rank's output on in whole lines).
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
        argv.append("--line-buffer")
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
              cpu_bind: str | None = None, verbose: bool = False,
              extra_args: Sequence[str] = (), wrap: Sequence[str] = (),
              nodelist: Sequence[str] = (), exclude: Sequence[str] = ()) -> list[str]:
    """``srun -N H --ntasks-per-node=P --mpi=M [--nodelist=a,b] [--exclude=c] [--cpu-bind=B]
    [--verbose] [extra] [wrap] cmd``; ``nodelist`` pins the hosts (when some of the
    allocation's are left out or replaced), ``exclude`` names hosts found bad."""
    argv = ["srun", "-N", str(topo.nhosts), f"--ntasks-per-node={topo.ngpu_per_host}",
            f"--mpi={machine.srun_mpi}"]
    if nodelist:
        argv.append("--nodelist=" + ",".join(nodelist))
    if exclude:
        argv.append("--exclude=" + ",".join(exclude))
    if cpu_bind:
        argv.append(f"--cpu-bind={cpu_bind}")
    if verbose:
        argv.append("--verbose")
    return [*argv, *extra_args, *wrap, *cmd]


def torchrun_argv(topo: Topology, cmd: Sequence[str], *, endpoint_host: str, port: int,
                  rdzv_id: str, extra_args: Sequence[str] = (),
                  torchrun: str = "torchrun", local_addr: str | None = None) -> list[str]:
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
               cmd: Sequence[str], *, hosts: Sequence[str], hostfile: str | None,
               cpu_bind: str | None = None, rdzv_id: str = "ezpz",
               torchrun: str = "torchrun", local_addr: str | None = None,
               rank_wrap: Sequence[str] = (), nodelist: Sequence[str] | None = None,
               exclude: Sequence[str] = ()) -> list[str]:
    """The full argv for ``launcher.name`` on ``machine`` (pure).

    ``hosts`` are the hosts used (the first ``topo.nhosts`` of the job); ``hostfile`` names
    exactly them (or is None for hydra on this machine, which then gets ``-hosts``).
    ``launcher=torchrun`` starts one torchrun per host with ``machine.node_starter``
    (mpiexec or srun) and never binds that one process to a CPU list.
    ``rank_wrap`` (see :func:`rank_wrapper_argv`) goes in front of every rank's command,
    before ``launcher.wrap``; under torchrun it wraps each worker (a ``.py`` script is then
    run with the wrapper's interpreter, as torchrun would). srun gets ``--nodelist`` (default:
    the hosts, when ``launcher.exclude_hosts`` leaves some out) and ``--exclude``.
    """
    cmd = [str(c) for c in cmd]
    if not cmd:
        raise LaunchError("no command to launch (give it after -- or as cmd=[...])")
    rank_wrap = [str(a) for a in rank_wrap]
    if launcher.name == "mpiexec":
        return mpiexec_argv(machine, topo, cmd, hostfile=hostfile, hosts=hosts,
                            cpu_bind=cpu_bind, verbose=launcher.verbose,
                            extra_args=launcher.extra_args, wrap=[*rank_wrap, *launcher.wrap])
    # srun picks hosts from the allocation itself: name them when some are left out.
    if nodelist is None:
        nodelist = list(hosts) if launcher.exclude_hosts else []
    if launcher.name == "srun":
        return srun_argv(machine, topo, cmd, cpu_bind=cpu_bind, verbose=launcher.verbose,
                         extra_args=launcher.extra_args, wrap=[*rank_wrap, *launcher.wrap],
                         nodelist=nodelist, exclude=exclude)
    if launcher.name == "torchrun":
        if machine.node_starter not in NODE_STARTERS:
            raise LaunchError(f"machine.node_starter: {machine.node_starter!r} is not supported "
                              "(choose mpiexec or srun)")
        worker = cmd
        if rank_wrap:
            worker = [*rank_wrap, *([rank_wrap[0]] if cmd[0].endswith(".py") else []), *cmd]
        inner = torchrun_argv(topo, worker, endpoint_host=hosts[0] if hosts else "localhost",
                              port=launcher.rdzv_port, rdzv_id=launcher.rdzv_id or rdzv_id,
                              extra_args=launcher.extra_args, torchrun=torchrun,
                              local_addr=local_addr)
        per_host = Topology(topo.nhosts, 1, topo.hosts_available, topo.gpus_per_host)
        if machine.node_starter == "srun":
            return srun_argv(machine, per_host, inner, verbose=launcher.verbose,
                             wrap=launcher.wrap, nodelist=nodelist, exclude=exclude)
        return mpiexec_argv(machine, per_host, inner, hostfile=hostfile, hosts=hosts,
                            verbose=launcher.verbose, wrap=launcher.wrap)
    raise LaunchError(f"launcher.name: {launcher.name!r} is not a launcher "
                      "(choose mpiexec, torchrun or srun)")
