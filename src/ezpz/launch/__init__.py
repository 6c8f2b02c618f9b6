"""The launch wing: hosts, topology, pure argv builders, planning and running.

    hosts     node discovery (hostfile, PBS, Slurm, localhost), machine detection, node lists
    topology  GPUs and hosts -> processes per host, CPU binding, rendezvous id
    argv      pure argv builders for mpiexec (PALS, hydra), srun and torchrun
    plan      plan_launch: hosts + topology + argv (+ a trimmed hostfile)
    output    whole lines to the console, filtered lines kept in the run dir
    failover  which node failed an attempt; the next plan with a spare in its place
    run       run_command / run_plan: signals, idle watchdog, retries, failover
    rankwrap  the rank-side wrapper (a script: whole lines, labels, DDP variables, records)

``from ezpz.launch import launch, run_command`` (the original ezpz API) keeps working.
"""

from __future__ import annotations

from .argv import (
                   NODE_STARTERS,
                   build_argv,
                   mpiexec_argv,
                   rank_wrapper_argv,
                   srun_argv,
                   torchrun_argv,
)
from .failover import diagnose, failover_plan
from .hosts import (
                   HostList,
                   all_local,
                   detect_machine,
                   discover_hosts,
                   exclude_hosts,
                   expand_nodelist,
                   is_local_host,
                   read_hostfile,
                   short_hostname,
                   unique_hosts,
)
from .output import OutputPump, compile_patterns
from .plan import (
                   LaunchPlan,
                   active_filters,
                   build_plan,
                   find_executable,
                   load_machine,
                   next_attempt,
                   plan_launch,
                   resolve_hosts,
                   system_mpiexec,
)
from .run import IDLE_EXIT, KILL_GRACE, launch, run_attempt, run_command, run_plan
from .topology import (
                   Topology,
                   default_rdzv_id,
                   detect_gpus,
                   gpus_per_host,
                   resolve_cpu_bind,
                   resolve_gpus_per_host,
                   resolve_topology,
                   slurm_gpus_per_node,
)

__all__ = [
    "IDLE_EXIT", "KILL_GRACE", "NODE_STARTERS", "HostList", "LaunchPlan", "OutputPump",
    "Topology", "active_filters", "all_local", "build_argv", "build_plan", "compile_patterns",
    "default_rdzv_id", "detect_gpus", "detect_machine", "diagnose", "discover_hosts",
    "exclude_hosts", "expand_nodelist", "failover_plan", "find_executable", "gpus_per_host",
    "is_local_host", "launch", "load_machine", "mpiexec_argv", "next_attempt", "plan_launch",
    "rank_wrapper_argv", "read_hostfile", "resolve_cpu_bind", "resolve_gpus_per_host",
    "resolve_hosts", "resolve_topology", "run_attempt", "run_command", "run_plan",
    "short_hostname", "slurm_gpus_per_node", "srun_argv", "system_mpiexec", "torchrun_argv",
    "unique_hosts",
]
