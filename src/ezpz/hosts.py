"""Node discovery and machine detection.

Host discovery (hostfile, PBS, Slurm ranges, localhost) lives here with machine detection:
both read the scheduler environment.
"""

from __future__ import annotations

import os
import socket

#: Machines with a preset under conf/machine/ that ``machine=auto`` can pick.
KNOWN_MACHINES = ("local", "aurora", "sunspot", "polaris", "slurm")


def short_hostname(name: str) -> str:
    """``x1921c7s1b0n0-hsn0.hsn.cm.sunspot.alcf.anl.gov`` → ``x1921c7s1b0n0``."""
    short = name.strip().split(".", 1)[0]
    if short.endswith("-hsn0"):
        short = short[: -len("-hsn0")]
    return short


def detect_machine(hostname: str | None = None, environ: dict[str, str] | None = None) -> str:
    """Pick a machine preset from the hostname and the scheduler environment.

    Aurora compute nodes are ``x4…``, Sunspot ``x1…`` (and its ``uan…`` login nodes),
    Polaris ``x3…``. On any other host inside a Slurm allocation: ``slurm``. Else ``local``.
    A PBS job's first host is used when the process runs on a login node.
    """
    env = os.environ if environ is None else environ
    names = [hostname if hostname is not None else socket.gethostname()]
    for var in ("PBS_O_HOST",):
        if env.get(var):
            names.append(env[var])
    for name in names:
        short = short_hostname(name).lower()
        if short.startswith("x4"):
            return "aurora"
        if short.startswith("x1") or short.startswith("uan"):
            return "sunspot"
        if short.startswith("x3"):
            return "polaris"
        if "aurora" in name:
            return "aurora"
        if "sunspot" in name:
            return "sunspot"
        if "polaris" in name:
            return "polaris"
    if env.get("SLURM_JOB_ID") or env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST"):
        return "slurm"
    return "local"
