"""GPUs and hosts: how many hosts and processes per host a launch uses.

:func:`resolve_topology` fills in whichever of ngpus / nhosts / ngpu_per_host is missing;
:func:`gpus_per_host` reads the machine preset, else the Slurm allocation, else counts with
torch; CPU binding and the rendezvous id come from the environment.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass

from ..config import MachineConfig
from ..errors import ConfigError, LaunchError
from ..log import get_logger

log = get_logger(__name__)


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
        if self.gpus_per_host <= 0:  # no GPUs: say processes, never claim GPUs
            return (f"Using {self.ngpus} processes [{self.nhosts} hosts] x "
                    f"[{self.ngpu_per_host} per host] (no GPUs)")
        return (f"Using [{self.ngpus}/{self.available}] GPUs [{self.nhosts} hosts] x "
                f"[{self.ngpu_per_host} GPU/host]")


def resolve_topology(*, ngpus: int | None, nhosts: int | None,
                     ngpu_per_host: int | None, hosts_available: int,
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
        import torch
    except ImportError:
        return 0
    if device in ("cuda", "cpu") and torch.cuda.is_available():
        return int(torch.cuda.device_count())
    xpu = getattr(torch, "xpu", None)
    if xpu is not None and xpu.is_available():
        return int(xpu.device_count())
    return 0


def in_slurm_allocation(environ: Mapping[str, str] | None = None) -> bool:
    env = os.environ if environ is None else environ
    return bool(env.get("SLURM_JOB_ID") or env.get("SLURM_JOBID"))


def _gpu_count(text: str) -> int | None:
    """``4``, ``a100:4``, ``gpu:a100:4``, ``gres:gpu:4``, ``gres/gpu:a100:2,gres/gpu:v100:2``
    → the number of GPUs (summed over types); None when ``text`` says nothing countable."""
    total, found = 0, False
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if "gres" in part and "gpu" not in part:
            continue  # another resource (gres/nic:2)
        m = re.search(r"(\d+)(?:\(.*\))?$", part)
        if not m:
            continue
        total += int(m.group(1))
        found = True
    return total if found else None


def _scontrol_tres_per_node(jobid: str) -> int | None:
    """GPUs per node the job asked for with ``--gres=gpu:N`` (``TresPerNode`` of
    ``scontrol show job``), which sets no variable in an ``salloc`` shell."""
    try:
        p = subprocess.run(["scontrol", "-o", "show", "job", jobid], capture_output=True,
                           text=True, timeout=10, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"\bTresPerNode=(\S+)", p.stdout) if p.returncode == 0 else None
    return _gpu_count(m.group(1)) if m else None


def slurm_gpus_per_node(environ: Mapping[str, str] | None = None
                        ) -> tuple[int, str] | None:
    """GPUs per node of the Slurm allocation this runs in, and where the count came from:
    ``SLURM_GPUS_ON_NODE`` (job steps, batch scripts), ``SLURM_GPUS_PER_NODE``
    (``--gpus-per-node``), ``SLURM_TRES_PER_NODE``, ``SLURM_JOB_GPUS`` (the GPU ids), then the
    job's gres (``--gres=gpu:N``) from ``scontrol``; 0 for an allocation without GPUs.
    None outside an allocation."""
    env = os.environ if environ is None else environ
    if not in_slurm_allocation(env):
        return None
    for var in ("SLURM_GPUS_ON_NODE", "SLURM_GPUS_PER_NODE", "SLURM_TRES_PER_NODE"):
        value = env.get(var, "").strip()
        count = _gpu_count(value) if value else None
        if count is not None:
            return count, var
    ids = env.get("SLURM_JOB_GPUS", "").strip()
    if ids:
        return len([i for i in ids.split(",") if i.strip()]), "SLURM_JOB_GPUS"
    jobid = env.get("SLURM_JOB_ID") or env.get("SLURM_JOBID") or ""
    count = _scontrol_tres_per_node(jobid)
    if count is not None:
        return count, f"the gres of Slurm job {jobid}"
    return 0, f"Slurm job {jobid} (no GPUs requested)"


def resolve_gpus_per_host(machine: MachineConfig, environ: Mapping[str, str] | None = None
                          ) -> tuple[int, str]:
    """GPUs per host and where the number came from: ``machine.gpus_per_node`` when set, else
    the Slurm allocation (inside one), else the count torch sees here (0 without torch)."""
    if machine.gpus_per_node is not None:
        if machine.gpus_per_node < 0:
            raise ConfigError(f"machine.gpus_per_node: must be 0 or more, got {machine.gpus_per_node}")
        return machine.gpus_per_node, "machine.gpus_per_node"
    slurm = slurm_gpus_per_node(environ)
    if slurm is not None:
        return slurm
    return detect_gpus(machine.device), "torch's device count"


def gpus_per_host(machine: MachineConfig, environ: Mapping[str, str] | None = None) -> int:
    """``machine.gpus_per_node``, or (when it is null) the Slurm allocation's GPUs per node,
    or the count torch sees here."""
    return resolve_gpus_per_host(machine, environ)[0]


def resolve_cpu_bind(machine: MachineConfig, environ: Mapping[str, str] | None = None
                     ) -> str | None:
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


def default_rdzv_id(environ: Mapping[str, str] | None = None) -> str:
    """The torchrun rendezvous id: the scheduler's job id, else ``ezpz``."""
    env = os.environ if environ is None else environ
    for var in ("PBS_JOBID", "SLURM_JOB_ID", "SLURM_JOBID"):
        if env.get(var):
            return env[var].split(".", 1)[0]
    return "ezpz"
