"""PBS helpers kept from the original ezpz API, as thin layers over ezpz.launch.

The returned launch commands are strings for display and for callers that expect them;
ezpz itself never runs a string through a shell (use :func:`ezpz.launch.plan_launch` for
an argv).
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping

from .config import LauncherConfig
from .launch import load_machine, plan_launch
from .launch.hosts import PBS_AUX_DIR, discover_hosts

_SENTINEL = "__ezpz_command__"


def get_pbs_jobid(environ: Mapping[str, str] | None = None) -> str | None:
    """``PBS_JOBID`` of this job, or None outside a PBS job."""
    env = os.environ if environ is None else environ
    return env.get("PBS_JOBID") or None


def get_pbs_nodefile(jobid: str | None = None,
                     environ: Mapping[str, str] | None = None) -> str | None:
    """``PBS_NODEFILE``, else ``/var/spool/pbs/aux/<jobid>`` when it exists, else None."""
    env = os.environ if environ is None else environ
    if env.get("PBS_NODEFILE"):
        return env["PBS_NODEFILE"]
    jobid = jobid or get_pbs_jobid(env)
    if jobid:
        path = os.path.join(PBS_AUX_DIR, jobid)
        if os.path.exists(path):
            return path
    return None


def get_pbs_launch_cmd(ngpus: int | None = None, nhosts: int | None = None,
                       ngpu_per_host: int | None = None,
                       hostfile: str | None = None) -> str:
    """The mpiexec prefix (without the command) for this job on the detected machine.

    Any subset of ngpus / nhosts / ngpu_per_host may be given (see
    :func:`ezpz.launch.resolve_topology`); errors are :class:`ezpz.errors.LaunchError`.
    """
    launcher = LauncherConfig(name="mpiexec", hostfile=hostfile, ngpus=ngpus, nhosts=nhosts,
                              ngpu_per_host=ngpu_per_host)
    plan = plan_launch(load_machine(), launcher, [_SENTINEL])
    return shlex.join(plan.argv[:-1])


def build_launch_cmd(hostfile: str | None = None) -> str:
    """The launch prefix for every GPU of the job (original ezpz name)."""
    return get_pbs_launch_cmd(hostfile=hostfile)


def get_hosts(hostfile: str | None = None) -> list[str]:
    """The job's unique hosts (hostfile, PBS, Slurm or localhost)."""
    return discover_hosts(hostfile).hosts
