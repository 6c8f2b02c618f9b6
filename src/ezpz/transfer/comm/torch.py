"""The communicator over torch.distributed (gloo on CPU; nccl/xccl for device buffers).

torch.distributed makes every rank of the job take part in creating a group, so a leader
that stops answering cannot be left out of the stream: a stalled stream ends the run within
the timeout (``can_recover`` is False). Mail (status, final word) is point to point as with
MPI, so a node lost after the stream is reported failed and the others finish.

gloo's point-to-point requests cannot be polled (``is_completed`` turns true only in
``wait``) nor cancelled: a thread per leader waits for mail frames, and stops after the
last message it can get (a leader: the final word; rank 0: every other leader's ``BYE``),
so that no receive is left pending when the process group is destroyed.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from typing import Any

from ...errors import TransferError
from ...jobenv import get_rank, get_world_size
from ..wire import FRAME, Assembler, Kind
from .base import CONTROL_POLL, OBJ_SLOT, Comm, CommTimeout, decode_obj, encode_obj

#: Tag of every mail frame.
TAG_MAIL = 77


class _Work:
    __slots__ = ("work", "buf")
    failed = ""

    def __init__(self, work: Any, buf: Any) -> None:
        self.work, self.buf = work, buf

    def test(self) -> bool:
        return bool(self.work.is_completed())


class _Sent:
    """A send in flight: gloo says it is done only in ``wait``."""

    __slots__ = ("work", "buf")
    failed = ""

    def __init__(self, work: Any, buf: Any) -> None:
        self.work, self.buf = work, buf

    def test(self) -> bool:
        return False

    def wait(self, timeout: float | None = None) -> bool:
        from datetime import timedelta

        try:
            if timeout is None:
                self.work.wait()
            else:
                self.work.wait(timedelta(seconds=max(0.001, timeout)))
            return True
        except Exception:  # noqa: BLE001 - a peer that is gone never takes it
            return False


class _Receiver(threading.Thread):
    """Waits for mail frames (see the module's docstring)."""

    def __init__(self, comm: TorchComm) -> None:
        super().__init__(name="ezpz-mail", daemon=True)
        self.comm = comm
        self.frames: deque[bytes] = deque()

    def run(self) -> None:
        comm, dist, torch = self.comm, self.comm.dist, self.comm.torch
        asm = Assembler()
        byes = 0
        try:
            while True:
                buf = bytearray(FRAME)
                work = dist.irecv(torch.frombuffer(buf, dtype=torch.uint8),
                                  src=None if comm.is_root else 0, group=comm.leaders,
                                  tag=TAG_MAIL)
                work.wait()
                frame = bytes(buf)
                self.frames.append(frame)
                got = asm.add(frame)
                if got is None:
                    continue
                if comm.is_root and got[1] is Kind.BYE:
                    byes += 1
                    if byes == comm.nnodes - 1:
                        return
                elif not comm.is_root and got[1] is Kind.FINAL:
                    return
        except Exception:  # noqa: BLE001 - the group is gone: the main thread times out
            return


class TorchComm(Comm):
    backend = "torch"
    can_recover = False

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
            ids: list[Any] = [None] * self.size
            dist.all_gather_object(ids, (self.host, os.getpid()))
        self._set_topology([str(h) for h, _ in ids], [int(p) for _, p in ids])
        self._check_leader_visible()
        with self.guarded("creating the node groups"):
            self.node_groups = {}
            for h in self.node_hosts:
                ranks = [r for r, x in enumerate(self.hosts) if x == h]
                self.node_groups[h] = dist.new_group(ranks)
            self.node = self.node_groups[self.host if self.host in self.node_groups
                                         else self.node_hosts[self.node_index]]
            self.leaders = dist.new_group(self.leader_ranks)
        self._views: dict[int, tuple[Any, Any]] = {}
        self._receiver: _Receiver | None = None
        if self.is_leader and self.nnodes > 1:
            self._receiver = _Receiver(self)
            self._receiver.start()

    def _tensor(self, buf: Any) -> Any:
        key = id(buf)
        got = self._views.get(key)
        if got is None or got[0] is not buf:
            got = (buf, self.torch.frombuffer(buf, dtype=self.torch.uint8))
            self._views[key] = got
        return got[1]

    def _wait_work(self, work: Any, what: str, max_sleep: float, timeout: float | None,
                   alive: Any = None) -> None:
        self._poll(work.is_completed, what, max_sleep, timeout, alive=alive)
        work.wait()

    # mail ----------------------------------------------------------------------------
    def _post_frame(self, node: int, frame: bytearray) -> _Sent:
        t = self.torch.frombuffer(frame, dtype=self.torch.uint8)
        return _Sent(self.dist.isend(t, dst=self.leader_ranks[node], group=self.leaders,
                                     tag=TAG_MAIL), frame)

    def _poll_frames(self) -> list[bytes]:
        out: list[bytes] = []
        q = self._receiver.frames if self._receiver is not None else None
        while q:
            out.append(q.popleft())
        return out

    def send(self, node: int, kind: Kind, obj: dict[str, Any]) -> None:
        super().send(node, kind, obj)
        if len(self._sending) > 256:  # gloo cannot say which are done: wait for the oldest
            for s in self._sending[:128]:
                s.wait(self.timeout)
            del self._sending[:128]

    def goodbye(self) -> None:
        self.send(0, Kind.BYE, {})

    def flush_mail(self, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        for s in self._sending:
            s.wait(deadline - time.monotonic())
        self._sending.clear()
        if self._receiver is not None:
            self._receiver.join(max(0.0, deadline - time.monotonic()))

    # the stream: every leader takes part (no groups of some ranks only) ----------------
    def start_stream(self, members: list[int]) -> None:
        self.members = list(range(self.nnodes))

    def _make_group(self, members: list[int], epoch: int) -> None:
        raise CommTimeout("the torch backend cannot leave a node out of the broadcast")

    def _post_bcast(self, buf: Any, nbytes: int) -> _Work:
        t = self._tensor(buf)[:nbytes]
        return _Work(self.dist.broadcast(t, src=0, group=self.leaders, async_op=True), buf)

    def bcast_data(self, view: Any, nbytes: int) -> None:
        if self.device == "cpu":
            super().bcast_data(view, nbytes)
            return
        if self.nnodes == 1 or nbytes == 0:
            return
        t = self._tensor(view)[:nbytes]
        with self.guarded("a data broadcast"):
            dev = t.to(self.device)
            self.dist.broadcast(dev, src=0, group=self.leaders)
            if self.rank != 0:
                t.copy_(dev.cpu())

    # collectives over all leaders ------------------------------------------------------
    def bcast_obj(self, obj: Any, timeout: float | None = None) -> Any:
        if self.nnodes == 1:
            return decode_obj(encode_obj(obj))
        buf = bytearray(encode_obj(obj)) if self.is_root else bytearray(OBJ_SLOT)
        t = self.torch.frombuffer(buf, dtype=self.torch.uint8)
        work = self.dist.broadcast(t, src=0, group=self.leaders, async_op=True)
        self._wait_work(work, "the plan from rank 0", CONTROL_POLL, timeout)
        return decode_obj(buf)

    def allgather_byte(self, value: int, timeout: float | None = None) -> bytes:
        if self.nnodes == 1:
            return bytes([value])
        torch = self.torch
        send = torch.tensor([value], dtype=torch.uint8)
        outs = [torch.empty(1, dtype=torch.uint8) for _ in range(self.nnodes)]
        work = self.dist.all_gather(outs, send, group=self.leaders, async_op=True)
        self._wait_work(work, "the other nodes", CONTROL_POLL, timeout)
        return bytes(int(o.item()) for o in outs)

    def node_bcast_obj(self, obj: Any, timeout: float | None = None) -> Any:
        if self.local_size == 1:
            return obj
        buf = bytearray(encode_obj(obj)) if self.is_leader else bytearray(OBJ_SLOT)
        t = self.torch.frombuffer(buf, dtype=self.torch.uint8)
        src = self.leader_ranks[self.node_index]
        work = self.dist.broadcast(t, src=src, group=self.node, async_op=True)
        self._wait_work(work, "this node's leader", CONTROL_POLL, timeout,
                        alive=self.leader_gone)
        return decode_obj(buf)

    def close(self, finalize: bool = True) -> None:
        super().close(finalize)
        if not finalize or (self._receiver is not None and self._receiver.is_alive()):
            return  # a peer is gone, or a receive is pending: destroying would wait for it
        try:
            if self.dist.is_initialized():
                self.dist.destroy_process_group()
        except Exception:  # noqa: BLE001 - best effort at exit
            pass
