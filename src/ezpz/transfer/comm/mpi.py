"""The communicator over mpi4py: buffer broadcasts between node leaders, polled."""

from __future__ import annotations

from typing import Any

from .base import DATA_POLL, OBJ_SLOT, Comm, decode_obj, encode_obj


class MPIComm(Comm):
    backend = "mpi"

    def __init__(self, timeout: float) -> None:
        super().__init__(timeout)
        from mpi4py import MPI

        self.MPI = MPI
        self.world = MPI.COMM_WORLD
        self.rank = self.world.Get_rank()
        self.size = self.world.Get_size()
        with self.guarded("the host name exchange"):
            hosts = self.world.allgather(self.host)
        self._set_topology(hosts)
        with self.guarded("splitting the communicator by node"):
            self.node = self.world.Split(self.node_index, self.rank)
            color = 0 if self.is_leader else MPI.UNDEFINED
            self.leaders = self.world.Split(color, self.rank)

    def bcast_control(self, buf: bytearray, timeout: float | None = None) -> None:
        if self.leaders == self.MPI.COMM_NULL or self.leaders.Get_size() == 1:
            return
        req = self.leaders.Ibcast([buf, self.MPI.BYTE], root=0)
        self._poll(req.Test, "the next chunk from rank 0", 0.001, timeout)

    def bcast_data(self, view: Any, nbytes: int) -> None:
        if self.leaders.Get_size() == 1 or nbytes == 0:
            return
        buf = [memoryview(view)[:nbytes], self.MPI.BYTE]
        if not DATA_POLL:
            with self.guarded("a data broadcast"):
                self.leaders.Bcast(buf, root=0)
            return
        req = self.leaders.Ibcast(buf, root=0)
        self._poll(req.Test, "a data broadcast", DATA_POLL)

    def _allgather(self, comm: Any, obj: Any, what: str, timeout: float | None) -> list[Any]:
        n = comm.Get_size()
        send = bytearray(encode_obj(obj))
        recv = bytearray(OBJ_SLOT * n)
        req = comm.Iallgather([send, self.MPI.BYTE], [recv, self.MPI.BYTE])
        self._poll(req.Test, what, 0.05, timeout)
        return [decode_obj(memoryview(recv)[i * OBJ_SLOT:(i + 1) * OBJ_SLOT]) for i in range(n)]

    def allgather_leaders(self, obj: Any) -> list[Any]:
        return self._allgather(self.leaders, obj, "the other nodes", None)

    def node_bcast_obj(self, obj: Any, timeout: float | None = None) -> Any:
        if self.local_size == 1:
            return obj
        buf = bytearray(encode_obj(obj)) if self.is_leader else bytearray(OBJ_SLOT)
        req = self.node.Ibcast([buf, self.MPI.BYTE], root=0)
        self._poll(req.Test, "this node's leader", 0.05, timeout)
        return decode_obj(buf)



