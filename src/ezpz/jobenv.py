"""What the launcher told this process: rank, world size, local rank, which launcher.

Every launcher sets its own variables (torchrun ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``, MPICH
and PALS ``PMI_*``/``PALS_*``, Open MPI ``OMPI_COMM_WORLD_*``, Slurm ``SLURM_*``); the first
one present wins. torchrun's variables come first: under a torchrun started by mpiexec or
srun, ``PMI_RANK``/``SLURM_PROCID`` is the node's index and ``RANK`` the process's own rank.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from .config import Backend, choice
from .errors import ConfigError

RANK_VARS = ("RANK", "PMI_RANK", "PMIX_RANK", "PALS_RANKID", "OMPI_COMM_WORLD_RANK",
             "SLURM_PROCID")
SIZE_VARS = ("WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "PALS_SIZE", "OMPI_COMM_WORLD_SIZE",
             "SLURM_NTASKS")
LOCAL_RANK_VARS = ("LOCAL_RANK", "PALS_LOCAL_RANKID", "MPI_LOCALRANKID",
                   "OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID")
#: Variables only an MPI process manager sets (not torchrun).
MPI_RANK_VARS = ("PMI_RANK", "PMI_SIZE", "PMIX_RANK", "OMPI_COMM_WORLD_RANK", "PALS_RANKID")


def _env(environ: Mapping[str, str] | None) -> Mapping[str, str]:
    return os.environ if environ is None else environ


def _first_int(names: tuple[str, ...], default: int,
               environ: Mapping[str, str] | None) -> int:
    """The first of ``names`` set to an integer in the environment, else ``default``."""
    env = _env(environ)
    for var in names:
        value = env.get(var)
        if value is not None and value.strip().lstrip("-").isdigit():
            return int(value)
    return default


def get_rank(environ: Mapping[str, str] | None = None) -> int:
    """This process's rank as set by the launcher (0 when not launched)."""
    return _first_int(RANK_VARS, 0, environ)


def get_world_size(environ: Mapping[str, str] | None = None) -> int:
    """World size as set by the launcher (1 when not launched)."""
    return _first_int(SIZE_VARS, 1, environ)


def get_local_rank(environ: Mapping[str, str] | None = None) -> int:
    """Rank within the node as set by the launcher (0 when not launched)."""
    return _first_int(LOCAL_RANK_VARS, 0, environ)


def under_torchrun(environ: Mapping[str, str] | None = None) -> bool:
    """Whether torchrun (torch elastic) started this process."""
    env = _env(environ)
    if env.get("TORCHELASTIC_RUN_ID"):
        return True
    return env.get("LOCAL_RANK") is not None and env.get("WORLD_SIZE") is not None \
        and not any(v in env for v in MPI_RANK_VARS)


def resolve_backend(backend: str | Backend, launcher: str | None = None,
                    environ: Mapping[str, str] | None = None) -> Backend:
    """The transfer backend ``auto`` stands for; the one rule for every caller.

    With the launcher known (``ezpz-yeet-env`` builds the launch): torch under torchrun (its
    processes are not one MPI job, so ``mpi`` there is a :class:`ConfigError`), else mpi.
    Without it (a worker started by hand): torch when torchrun started this process, else
    mpi.
    """
    chosen = choice(Backend, backend, "transfer.backend")
    torchrun = launcher == "torchrun" if launcher is not None else under_torchrun(environ)
    if launcher == "torchrun" and chosen is Backend.mpi:
        raise ConfigError("transfer.backend=mpi cannot be used with launcher=torchrun "
                          "(torchrun's processes are not one MPI job): use "
                          "transfer.backend=torch or auto, or launcher=mpiexec")
    if chosen is not Backend.auto:
        return chosen
    return Backend.torch if torchrun else Backend.mpi
