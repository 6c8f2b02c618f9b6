"""The launch wing: hosts, topology, pure argv builders, planning and running.

    hosts     node discovery (hostfile, PBS, Slurm, localhost), machine detection, node lists
    topology  GPUs and hosts -> processes per host, CPU binding, rendezvous id
    argv      pure argv builders for mpiexec (PALS, hydra), srun and torchrun
    plan      plan_launch: hosts + topology + argv (+ a trimmed hostfile)
    run       run_command / run_plan: output filters, signal forwarding

``from ezpz.launch import launch, run_command`` (the original ezpz API) keeps working.
"""

from __future__ import annotations

from .argv import NODE_STARTERS, build_argv, mpiexec_argv, srun_argv, torchrun_argv
from .hosts import (HostList, all_local, detect_machine, discover_hosts, exclude_hosts,
                    expand_nodelist, is_local_host, read_hostfile, short_hostname,
                    unique_hosts)
from .plan import (LaunchPlan, active_filters, find_executable, load_machine, plan_launch,
                   system_mpiexec)
from .run import KILL_GRACE, launch, run_command, run_plan
from .topology import (Topology, default_rdzv_id, detect_gpus, gpus_per_host,
                       resolve_cpu_bind, resolve_topology)

__all__ = [
    "KILL_GRACE", "NODE_STARTERS", "HostList", "LaunchPlan", "Topology", "active_filters",
    "all_local", "build_argv", "default_rdzv_id", "detect_gpus", "detect_machine",
    "discover_hosts", "exclude_hosts", "expand_nodelist", "find_executable", "gpus_per_host",
    "is_local_host", "launch", "load_machine", "mpiexec_argv", "plan_launch", "read_hostfile",
    "resolve_cpu_bind", "resolve_topology", "run_command", "run_plan", "short_hostname",
    "srun_argv", "system_mpiexec", "torchrun_argv", "unique_hosts",
]
