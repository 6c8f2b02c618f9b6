"""The communicator over mpi4py: buffer broadcasts between node leaders, polled; mail over a
duplicate of the leaders' communicator; a lost leader left out with ``MPI_Comm_create_group``
(collective over the remaining members only).

``MPI_Finalize`` waits for every rank of the job (holding Python's GIL, so no Python timer
can end the wait), and MPICH's hydra treats a rank that exits without it as failed and ends
every other rank. So the worker finalizes explicitly, and only when the run's outcome says
that every node is alive (:meth:`MPIComm.close`); after a node was lost it exits without
finalizing (the lost rank would never join). mpi4py's own finalize at exit is turned off.
"""

from __future__ import annotations

import os
from collections import deque
from typing import Any

from ..wire import FRAME
from .base import (
    CONTROL_POLL,
    DATA_POLL,
    MPICH_TREE_CVARS,
    OBJ_SLOT,
    Comm,
    decode_obj,
    encode_obj,
)

#: Tag of every mail frame.
TAG_MAIL = 77
#: Receives the root keeps posted for mail (a leader: from the root only).
POSTED = 16


class _Req:
    """An MPI request and the buffer it uses (kept alive while MPI may touch it).

    A request that fails (MPICH reports a peer that died as an error of the operations that
    involve it) never completes: ``failed`` says why, and the stream treats it as a stall
    (the group is then repaired without the lost node). A send that fails counts as done:
    there is nobody left to receive it."""

    __slots__ = ("req", "buf", "failed", "send")

    def __init__(self, req: Any, buf: Any, send: bool = False) -> None:
        self.req, self.buf, self.failed, self.send = req, buf, "", send

    def test(self) -> bool:
        if self.failed:
            return self.send
        try:
            return bool(self.req.Test())
        except Exception as exc:  # noqa: BLE001 - mpi4py.MPI.Exception, reported as a stall
            self.failed = str(exc).strip().splitlines()[-1] if str(exc).strip() else repr(exc)
            return self.send


class MPIComm(Comm):
    backend = "mpi"
    can_recover = True

    def __init__(self, timeout: float) -> None:
        super().__init__(timeout)
        import mpi4py

        mpi4py.rc.finalize = False  # close() decides (see the module's docstring)
        for key, value in MPICH_TREE_CVARS.items():  # read by MPI_Init
            os.environ.setdefault(key, value)
        from mpi4py import MPI  # MPI_Init: bounded by the worker's sentinel, not by Python

        self.MPI = MPI
        self.world = MPI.COMM_WORLD
        self.rank = self.world.Get_rank()
        self.size = self.world.Get_size()
        with self.guarded("the host name exchange"):
            ids = self.world.allgather((self.host, os.getpid()))
        self._set_topology([h for h, _ in ids], [p for _, p in ids])
        self._check_leader_visible()
        with self.guarded("splitting the communicator by node"):
            self.node = self.world.Split(self.node_index, self.rank)
            color = 0 if self.is_leader else MPI.UNDEFINED
            self.leaders = self.world.Split(color, self.rank)
            if self.is_leader:
                self.ctl: Any = self.leaders.Dup()  # mail
                self.spare: Any = self.leaders.Dup()  # parent of every later stream group
        self.bc: Any = self.leaders
        self._posted: deque[_Req] = deque()
        if self.is_leader and self.nnodes > 1:
            for _ in range(POSTED if self.is_root else 4):
                self._post_recv()

    # mail ----------------------------------------------------------------------------
    def _post_recv(self) -> None:
        buf = bytearray(FRAME)
        src = self.MPI.ANY_SOURCE if self.is_root else 0
        self._posted.append(_Req(self.ctl.Irecv([buf, self.MPI.BYTE], source=src,
                                                tag=TAG_MAIL), buf))

    def _post_frame(self, node: int, frame: bytearray) -> _Req:
        try:
            req = self.ctl.Isend([frame, self.MPI.BYTE], dest=node, tag=TAG_MAIL)
        except self.MPI.Exception:  # the peer is known to be gone: nothing to send to
            r = _Req(None, frame, send=True)
            r.failed = "the peer is gone"
            return r
        return _Req(req, frame, send=True)

    def _poll_frames(self) -> list[bytes]:
        out = []
        # in posting order: frames from one sender match the receives in the order posted
        while self._posted and self._posted[0].test():
            out.append(bytes(self._posted.popleft().buf))
            self._post_recv()
        if self._posted and self._posted[0].failed:  # an error for a lost peer: listen again
            self._posted.popleft()
            self._post_recv()
        return out

    # the stream -------------------------------------------------------------------------
    def _post_bcast(self, buf: Any, nbytes: int) -> _Req:
        view = memoryview(buf).cast("B")[:nbytes]
        return _Req(self.bc.Ibcast([view, self.MPI.BYTE], root=0), buf)

    def _make_group(self, members: list[int], epoch: int) -> None:
        if epoch == 0 and members == list(range(self.nnodes)):
            self.bc = self.leaders
            return
        group = self.spare.Get_group().Incl(members)
        self.bc = self.spare.Create_group(group, tag=epoch)
        group.Free()

    def bcast_data(self, view: Any, nbytes: int) -> None:
        if DATA_POLL or len(self.members) <= 1:
            super().bcast_data(view, nbytes)
            return
        if nbytes and self.node_index in self.members:  # EZPZ_BCAST_POLL=0: blocking
            with self.guarded("a data broadcast"):
                self.bc.Bcast([memoryview(view).cast("B")[:nbytes], self.MPI.BYTE], root=0)

    # collectives over all leaders ------------------------------------------------------
    def bcast_obj(self, obj: Any, timeout: float | None = None) -> Any:
        if self.nnodes == 1:
            return decode_obj(encode_obj(obj))
        buf = bytearray(encode_obj(obj)) if self.is_root else bytearray(OBJ_SLOT)
        req = self.leaders.Ibcast([buf, self.MPI.BYTE], root=0)
        self._poll(req.Test, "the plan from rank 0", CONTROL_POLL, timeout)
        return decode_obj(buf)

    def allgather_byte(self, value: int, timeout: float | None = None) -> bytes:
        if self.nnodes == 1:
            return bytes([value])
        send = bytearray([value])
        recv = bytearray(self.nnodes)
        req = self.leaders.Iallgather([send, self.MPI.BYTE], [recv, self.MPI.BYTE])
        self._poll(req.Test, "the other nodes", CONTROL_POLL, timeout)
        return bytes(recv)

    def node_bcast_obj(self, obj: Any, timeout: float | None = None) -> Any:
        if self.local_size == 1:
            return obj
        buf = bytearray(encode_obj(obj)) if self.is_leader else bytearray(OBJ_SLOT)
        req = self.node.Ibcast([buf, self.MPI.BYTE], root=0)
        self._poll(req.Test, "this node's leader", CONTROL_POLL, timeout, alive=self.leader_gone)
        return decode_obj(buf)

    def close(self, finalize: bool = True) -> None:
        super().close(finalize)
        self._sending = [r for r in self._sending if not r.test()]
        if finalize and self.MPI.Is_initialized() and not self.MPI.Is_finalized():
            for req in self._posted:  # our own receives that nothing will match any more
                req.req.Cancel()
                req.req.Wait()
            self._posted.clear()
            self.MPI.Finalize()

