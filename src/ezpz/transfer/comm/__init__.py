"""One small interface over mpi4py and torch.distributed for the transfer worker (see
:mod:`ezpz.transfer.comm.base`), plus an in-process stand-in for unit tests."""

from __future__ import annotations

from ...config import Backend
from ...errors import TransferError
from .base import Comm, CommTimeout

__all__ = ["Comm", "CommTimeout", "make_comm"]


def make_comm(backend: str, timeout: float, *, dist_backend: str = "gloo",
              device: str = "cpu") -> Comm:
    """The communicator for ``backend`` (``mpi`` or ``torch``; resolve ``auto`` first)."""
    if backend == Backend.mpi:
        from .mpi import MPIComm

        try:
            return MPIComm(timeout)
        except ImportError as exc:
            raise TransferError(f"transfer.backend=mpi needs mpi4py ({exc}); install mpi4py "
                                "or use backend=torch") from exc
    if backend == Backend.torch:
        from .torch import TorchComm

        try:
            return TorchComm(timeout, dist_backend=dist_backend, device=device)
        except ImportError as exc:
            raise TransferError(f"transfer.backend=torch needs torch ({exc}); pip install "
                                "'ezpz-hpc[torch]' or use backend=mpi") from exc
    raise TransferError(f"transfer.backend: {backend!r} is not a backend (choose mpi or torch)")

