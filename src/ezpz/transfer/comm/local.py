"""Ranks as threads of one process: the communicator for unit tests of the orchestration.

``LocalWorld(["a", "a", "b"])`` is a job of three ranks on two nodes ("a" holds ranks 0 and 1);
``world.comm(rank)`` gives each rank thread its communicator. The collectives keep the
semantics of the real ones (every rank of a group makes the same calls in the same order,
rank 0 of the leaders is the root, every wait bounded), so the phases, a failing node,
partial success and timeouts are tested in milliseconds without mpiexec; the simulated-node
tests stay the end-to-end proof.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from .base import Comm, CommTimeout, decode_obj, encode_obj


class LocalWorld:
    """What the ranks of one in-process job share."""

    def __init__(self, hosts: list[str], timeout: float = 30.0) -> None:
        self.hosts = list(hosts)
        self.timeout = timeout
        self._cond = threading.Condition()
        #: (group, round) -> {member index: value}
        self._rounds: dict[tuple[str, int], dict[int, Any]] = {}
        self._readers: dict[tuple[str, int], int] = {}

    @property
    def size(self) -> int:
        return len(self.hosts)

    def comm(self, rank: int, timeout: float | None = None) -> LocalComm:
        return LocalComm(self, rank, self.timeout if timeout is None else timeout)

    def exchange(self, group: str, round_: int, index: int, members: int, value: Any,
                 timeout: float, what: str) -> list[Any]:
        """Deposit ``value`` as member ``index`` of ``group``'s round ``round_``; wait for all
        ``members`` values and return them in member order."""
        key = (group, round_)
        deadline = time.monotonic() + timeout
        with self._cond:
            self._rounds.setdefault(key, {})[index] = value
            self._cond.notify_all()
            while len(self._rounds[key]) < members:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise CommTimeout(f"timed out after {timeout:g}s waiting for {what} (a "
                                      "node is stuck or gone; raise transfer.timeout if it is "
                                      "only slow)")
                self._cond.wait(min(left, 0.05))
            values = self._rounds[key]
            out = [values[i] for i in range(members)]
            self._readers[key] = self._readers.get(key, 0) + 1
            if self._readers[key] == members:  # everyone has read it: forget the round
                del self._rounds[key], self._readers[key]
            return out


class LocalComm(Comm):
    """One rank of a :class:`LocalWorld`."""

    backend = "local"

    def __init__(self, world: LocalWorld, rank: int, timeout: float) -> None:
        super().__init__(timeout)
        self.world = world
        self.rank = rank
        self.size = world.size
        self.host = world.hosts[rank]
        self._set_topology(world.hosts)
        self._round: dict[str, int] = {}

    def _next(self, group: str) -> int:
        n = self._round.get(group, 0)
        self._round[group] = n + 1
        return n

    def _leaders(self, value: Any, what: str, timeout: float | None) -> list[Any]:
        index = self.leader_ranks.index(self.rank)
        return self.world.exchange("leaders", self._next("leaders"), index, self.nnodes,
                                   value, self.timeout if timeout is None else timeout, what)

    def bcast_control(self, buf: bytearray, timeout: float | None = None) -> None:
        if not self.is_leader or self.nnodes == 1:
            return
        got = self._leaders(bytes(buf) if self.is_root else None, "the next chunk from rank 0",
                            timeout)
        buf[:] = got[0]

    def bcast_data(self, view: Any, nbytes: int) -> None:
        if self.nnodes == 1 or nbytes == 0:
            return
        data = bytes(memoryview(view)[:nbytes]) if self.is_root else None
        got = self._leaders(data, "a data broadcast", None)
        memoryview(view)[:nbytes] = got[0]

    def allgather_leaders(self, obj: Any) -> list[Any]:
        obj = _as_sent(obj)
        if self.nnodes == 1:
            return [obj]
        return self._leaders(obj, "the other nodes", None)

    def node_bcast_obj(self, obj: Any, timeout: float | None = None) -> Any:
        obj = _as_sent(obj)
        if self.local_size == 1:
            return obj
        group = f"node:{self.host}"
        got = self.world.exchange(group, self._next(group), self.local_rank, self.local_size,
                                  obj, self.timeout if timeout is None else timeout,
                                  "this node's leader")
        return got[0]


def _as_sent(obj: Any) -> Any:
    """``obj`` as the real communicators deliver it: through JSON, within one slot."""
    return decode_obj(encode_obj(obj))
