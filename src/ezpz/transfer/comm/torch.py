"""The communicator over torch.distributed (gloo on CPU; nccl/xccl for device buffers)."""

from __future__ import annotations

import os
from typing import Any

from ...errors import TransferError
from ...jobenv import get_rank, get_world_size
from .base import OBJ_SLOT, Comm, decode_obj, encode_obj


class TorchComm(Comm):
    backend = "torch"

    def __init__(self, timeout: float, dist_backend: str = "gloo", device: str = "cpu") -> None:
        super().__init__(timeout)
        from datetime import timedelta

        import torch
        import torch.distributed as dist

        self.torch = torch
        self.dist = dist
        self.rank, self.size = get_rank(), get_world_size()
        if self.size > 1 and (not os.environ.get("MASTER_ADDR") or not os.environ.get("MASTER_PORT")):
            raise TransferError("transfer.backend=torch needs MASTER_ADDR and MASTER_PORT in the "
                                "environment (torchrun sets them); set them or use backend=mpi")
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29500")
        self.device = "cpu" if device == "cpu" else device
        self.dist_backend = "gloo" if self.device == "cpu" else dist_backend
        with self.guarded("torch.distributed initialisation"):
            if not dist.is_initialized():
                dist.init_process_group(self.dist_backend, init_method="env://", rank=self.rank,
                                        world_size=self.size, timeout=timedelta(seconds=timeout))
            hosts: list[Any] = [None] * self.size
            dist.all_gather_object(hosts, self.host)
        self._set_topology([str(h) for h in hosts])
        with self.guarded("creating the node groups"):
            self.node_groups = {}
            for h in self.node_hosts:
                ranks = [r for r, x in enumerate(self.hosts) if x == h]
                self.node_groups[h] = dist.new_group(ranks)
            self.node = self.node_groups[self.host if self.host in self.node_groups
                                         else self.node_hosts[self.node_index]]
            self.leaders = dist.new_group(self.leader_ranks)
        self._views: dict[int, Any] = {}

    def _tensor(self, buf: Any) -> Any:
        key = id(buf)
        t = self._views.get(key)
        if t is None:
            t = self.torch.frombuffer(buf, dtype=self.torch.uint8)
            self._views[key] = t
        return t

    def _wait_work(self, work: Any, what: str, max_sleep: float, timeout: float | None) -> None:
        self._poll(work.is_completed, what, max_sleep, timeout)
        work.wait()

    def bcast_control(self, buf: bytearray, timeout: float | None = None) -> None:
        if not self.is_leader or self.nnodes == 1:
            return
        t = self.torch.frombuffer(buf, dtype=self.torch.uint8)
        work = self.dist.broadcast(t, src=0, group=self.leaders, async_op=True)
        self._wait_work(work, "the next chunk from rank 0", 0.001, timeout)

    def bcast_data(self, view: Any, nbytes: int) -> None:
        if self.nnodes == 1 or nbytes == 0:
            return
        t = self._tensor(view)[:nbytes]
        with self.guarded("a data broadcast"):
            if self.device != "cpu":
                dev = t.to(self.device)
                self.dist.broadcast(dev, src=0, group=self.leaders)
                if self.rank != 0:
                    t.copy_(dev.cpu())
            else:
                self.dist.broadcast(t, src=0, group=self.leaders)

    def _allgather(self, group: Any, n: int, obj: Any, what: str,
                   timeout: float | None) -> list[Any]:
        torch = self.torch
        send = torch.frombuffer(bytearray(encode_obj(obj)), dtype=torch.uint8)
        outs = [torch.empty(OBJ_SLOT, dtype=torch.uint8) for _ in range(n)]
        work = self.dist.all_gather(outs, send, group=group, async_op=True)
        self._wait_work(work, what, 0.05, timeout)
        return [decode_obj(o.numpy().tobytes()) for o in outs]

    def allgather_leaders(self, obj: Any) -> list[Any]:
        if self.nnodes == 1:
            return [obj]
        return self._allgather(self.leaders, self.nnodes, obj, "the other nodes", None)

    def node_bcast_obj(self, obj: Any, timeout: float | None = None) -> Any:
        if self.local_size == 1:
            return obj
        buf = bytearray(encode_obj(obj)) if self.is_leader else bytearray(OBJ_SLOT)
        t = self.torch.frombuffer(buf, dtype=self.torch.uint8)
        src = self.leader_ranks[self.node_index]
        work = self.dist.broadcast(t, src=src, group=self.node, async_op=True)
        self._wait_work(work, "this node's leader", 0.05, timeout)
        return decode_obj(buf)

    def close(self) -> None:
        super().close()
        try:
            if self.dist.is_initialized():
                self.dist.destroy_process_group()
        except Exception:  # noqa: BLE001 - best effort at exit
            pass
