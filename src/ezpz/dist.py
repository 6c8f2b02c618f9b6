"""torch.distributed set-up kept from the original ezpz API (``setup_torch_DDP``).

torch (and mpi4py, when the rendezvous address must be shared) are imported only inside
the function.
"""

from __future__ import annotations

import os
import socket
from datetime import timedelta

from .errors import ConfigError
from .jobenv import get_local_rank, get_rank, get_world_size
from .log import get_logger

log = get_logger(__name__)

def default_backend() -> str:
    import torch

    if torch.cuda.is_available():
        return "nccl"
    xpu = getattr(torch, "xpu", None)
    if xpu is not None and xpu.is_available():
        import torch.distributed as tdist

        return "xccl" if hasattr(tdist, "ProcessGroupXCCL") else "ccl"
    return "gloo"


def _share_master_addr(rank: int, world_size: int) -> None:
    """Under an MPI launcher without MASTER_ADDR: rank 0's hostname, broadcast with mpi4py."""
    if "MASTER_ADDR" in os.environ or world_size == 1:
        return
    try:
        from mpi4py import MPI
    except ImportError:
        os.environ["MASTER_ADDR"] = "localhost"
        return
    comm = MPI.COMM_WORLD
    if comm.Get_size() == world_size:
        os.environ["MASTER_ADDR"] = comm.bcast(socket.gethostname() if rank == 0 else None, root=0)
    else:
        os.environ["MASTER_ADDR"] = "localhost"


def setup_torch_DDP(rank: int | None = None, world_size: int | None = None,
                    timeout: float | timedelta = 3600, backend: str | None = None) -> int:
    """Initialise torch.distributed (``env://``) and return the world size.

    A no-op (returning the existing world size) when a process group already exists.
    ``rank`` / ``world_size`` default to what the launcher set (RANK/WORLD_SIZE under
    torchrun, PMI_RANK/PMI_SIZE under mpiexec, SLURM_PROCID/SLURM_NTASKS under srun);
    MASTER_ADDR defaults to rank 0's hostname (shared with mpi4py), MASTER_PORT to 29500.
    ``backend`` defaults to nccl (CUDA), xccl/ccl (XPU) or gloo.
    """
    import torch.distributed as tdist

    if not tdist.is_available():
        raise ConfigError("torch.distributed is not available in this torch build")
    if tdist.is_initialized():
        log.debug("torch.distributed is already initialized: nothing to do")
        return tdist.get_world_size()
    rank = get_rank() if rank is None else int(rank)
    world_size = get_world_size() if world_size is None else int(world_size)
    if not 0 <= rank < world_size:
        raise ConfigError(f"setup_torch_DDP: rank {rank} is not in [0, {world_size})")
    backend = backend or default_backend()
    if backend == "ccl":
        import oneccl_bindings_for_pytorch  # noqa: F401 - registers the ccl backend
    _share_master_addr(rank, world_size)
    os.environ.setdefault("MASTER_PORT", "29500")
    os.environ["RANK"] = str(rank)
    os.environ["WORLD_SIZE"] = str(world_size)
    os.environ.setdefault("LOCAL_RANK", str(get_local_rank()))
    if not isinstance(timeout, timedelta):
        timeout = timedelta(seconds=float(timeout))
    log.info("torch.distributed: backend=%s rank=%d world_size=%d master=%s:%s", backend, rank,
             world_size, os.environ.get("MASTER_ADDR", "localhost"), os.environ["MASTER_PORT"])
    os.environ.setdefault("MASTER_ADDR", "localhost")
    tdist.init_process_group(backend=backend, init_method="env://", rank=rank,
                             world_size=world_size, timeout=timeout)
    return world_size
