"""The per-node transfer worker: ``python -m ezpz.transfer``.

Rank 0 reads the archive once, chunk k+1 while chunk k is broadcast to one leader per node
(raw buffers, never pickled). Each leader hashes what it receives and feeds a decompress +
safe-extract thread (:mod:`ezpz.extract`) through a bounded queue, into a staging directory
next to ``dst``; after verification (xxh3-128) and relocation the staging tree is swapped
into ``dst`` and a marker records the archive. The other ranks of a node wait for their
leader.

The modules follow the data: :mod:`.spec` (what ranks are handed and hand back),
:mod:`.plan` (rank 0's view of the source), :mod:`.wire` (the control block), :mod:`.stream`
(reader, broadcast loop, consumer), :mod:`.node` (lock, staging, marker, exchange),
:mod:`.worker` (the phases), :mod:`.results` (status, results.json, summary) and
:mod:`.comm` (MPI, torch.distributed, and an in-process stand-in).
"""

from __future__ import annotations

import os

from ..config import MachineConfig, TransferConfig
from ..errors import ConfigError
from ..jobenv import resolve_backend
from .comm import Comm
from .plan import check_user_paths, default_dst, make_plan
from .results import failed_hosts_path
from .spec import RESULTS_FILE, SPEC_FILE, NodeStatus, Plan, TransferResult, WorkerSpec
from .worker import Fatal, Transfer

__all__ = ["run_transfer", "spec_for", "WorkerSpec", "Plan", "NodeStatus", "TransferResult",
           "RESULTS_FILE", "SPEC_FILE", "default_dst", "check_user_paths", "make_plan",
           "failed_hosts_path", "Transfer"]


def spec_for(transfer: TransferConfig, *, machine: MachineConfig | None = None,
             launcher: str | None = None, src: str | None = None) -> WorkerSpec:
    """The worker spec for ``transfer``: ``src`` required (``src`` overrides it), ``dst``
    defaulted, ``backend=auto`` decided for ``launcher`` (None: from this process's
    environment, as when the worker was started by hand)."""
    src = src or transfer.src
    if not src:
        raise ConfigError("transfer.src: missing (give the archive, e.g. "
                          "transfer.src=/path/env.tar.zst)")
    backend = resolve_backend(transfer.backend, launcher)
    dst = transfer.dst or default_dst(src, transfer.decompress)
    return WorkerSpec.from_settings(transfer, src=src, dst=dst, backend=backend,
                                    machine=machine, launcher=launcher)


def run_transfer(spec: WorkerSpec, *, run_dir: str | None = None,
                 comm: Comm | None = None, fatal: Fatal = os._exit
                 ) -> TransferResult | None:
    """Deliver ``spec.src`` to ``spec.dst`` on every node (collective over all ranks).

    Returns the result on rank 0 (None elsewhere). Raises ConfigError for bad input (on every
    rank), TransferError on ranks of a failed run; a rank stuck longer than ``spec.timeout``
    in any wait removes its staging directory and ends the process (``fatal``).
    """
    return Transfer(spec, comm=comm, fatal=fatal).run(run_dir)
