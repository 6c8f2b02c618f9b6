"""Ranks as threads of one process: the communicator for unit tests of the orchestration.

``LocalWorld(["a", "a", "b"])`` is a job of three ranks on two nodes ("a" holds ranks 0 and 1);
``world.comm(rank)`` gives each rank thread its communicator. The collectives keep the
semantics of the real ones (every member of a group makes the same calls in the same order,
a broadcast completes when every member has joined it, mail is point to point, every wait is
bounded), so the phases, a failing node, partial success, a lost node and timeouts are tested
in milliseconds without mpiexec; the simulated-node tests stay the end-to-end proof.

Faults for tests: ``world.freeze(rank, at=k)`` stops rank ``rank`` inside its k-th data
broadcast until ``world.thaw(rank)`` (a stopped process); ``world.kill(rank, at=k)`` ends its
thread there with :class:`Killed` (a killed process: it cleans nothing up).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

from .base import Comm, CommTimeout, Done, decode_obj, encode_obj


class Killed(BaseException):
    """Ends a rank thread the way SIGKILL ends a process (nothing runs after it)."""


class LocalWorld:
    """What the ranks of one in-process job share."""

    def __init__(self, hosts: list[str], timeout: float = 30.0) -> None:
        self.hosts = list(hosts)
        self.timeout = timeout
        self._cond = threading.Condition()
        #: (group, round) -> {member index: value}
        self._rounds: dict[tuple[str, int], dict[int, Any]] = {}
        self._readers: dict[tuple[str, int], int] = {}
        self.mail: dict[int, deque[bytes]] = {r: deque() for r in range(len(hosts))}
        #: mail frames delivered to each rank (what each rank's memory and time scale with)
        self.frames_in: dict[int, int] = {r: 0 for r in range(len(hosts))}
        self._freeze: dict[int, tuple[int, threading.Event]] = {}
        self._kill: dict[int, int] = {}

    @property
    def size(self) -> int:
        return len(self.hosts)

    def comm(self, rank: int, timeout: float | None = None) -> LocalComm:
        return LocalComm(self, rank, self.timeout if timeout is None else timeout)

    # faults ---------------------------------------------------------------------------
    def freeze(self, rank: int, at: int) -> None:
        self._freeze[rank] = (at, threading.Event())

    def thaw(self, rank: int) -> None:
        if rank in self._freeze:
            self._freeze[rank][1].set()

    def kill(self, rank: int, at: int) -> None:
        self._kill[rank] = at

    def _fault(self, rank: int, nth: int) -> None:
        if self._kill.get(rank) == nth:
            raise Killed(rank)
        at, event = self._freeze.get(rank, (None, None))
        if at == nth and event is not None:
            event.wait()

    # rounds ---------------------------------------------------------------------------
    def deposit(self, group: str, round_: int, index: int, value: Any) -> None:
        with self._cond:
            self._rounds.setdefault((group, round_), {})[index] = value
            self._cond.notify_all()

    def ready(self, group: str, round_: int, members: int) -> list[Any] | None:
        """The round's values in member order once every member deposited, else None."""
        key = (group, round_)
        with self._cond:
            values = self._rounds.get(key, {})
            if len(values) < members:
                return None
            out = [values[i] for i in range(members)]
            self._readers[key] = self._readers.get(key, 0) + 1
            if self._readers[key] == members:  # everyone has read it: forget the round
                del self._rounds[key], self._readers[key]
            return out

    def exchange(self, group: str, round_: int, index: int, members: int, value: Any,
                 timeout: float, what: str) -> list[Any]:
        """Deposit ``value`` as member ``index`` of ``group``'s round ``round_``; wait for all
        ``members`` values and return them in member order."""
        self.deposit(group, round_, index, value)
        deadline = time.monotonic() + timeout
        while True:
            got = self.ready(group, round_, members)
            if got is not None:
                return got
            left = deadline - time.monotonic()
            if left <= 0:
                raise CommTimeout(f"timed out after {timeout:g}s waiting for {what} (a "
                                  "node is stuck or gone; raise transfer.timeout if it is "
                                  "only slow)")
            with self._cond:
                self._cond.wait(min(left, 0.05))


class _Bcast:
    """A broadcast in flight: complete once every member of the group joined it."""

    failed = ""

    def __init__(self, comm: LocalComm, group: str, round_: int, members: int, view: Any,
                 nbytes: int) -> None:
        self.world = comm.world
        self.group, self.round, self.members = group, round_, members
        self.view, self.nbytes, self.root = view, nbytes, comm.is_root
        self.done = False

    def test(self) -> bool:
        if self.done:
            return True
        got = self.world.ready(self.group, self.round, self.members)
        if got is None:
            return False
        if not self.root:
            memoryview(self.view).cast("B")[:self.nbytes] = got[0]
        self.done = True
        return True


class LocalComm(Comm):
    """One rank of a :class:`LocalWorld`."""

    backend = "local"
    can_recover = True

    def __init__(self, world: LocalWorld, rank: int, timeout: float) -> None:
        super().__init__(timeout)
        self.world = world
        self.rank = rank
        self.size = world.size
        self.host = world.hosts[rank]
        self._set_topology(world.hosts)
        self._round: dict[str, int] = {}
        self._group = self._group_name(self.members, 0)
        self._data_calls = 0

    @staticmethod
    def _group_name(members: list[int], epoch: int) -> str:
        return f"stream:{epoch}:{','.join(map(str, members))}"

    def _next(self, group: str) -> int:
        n = self._round.get(group, 0)
        self._round[group] = n + 1
        return n

    def _leaders(self, value: Any, what: str, timeout: float | None) -> list[Any]:
        index = self.leader_ranks.index(self.rank)
        return self.world.exchange("leaders", self._next("leaders"), index, self.nnodes,
                                   value, self.timeout if timeout is None else timeout, what)

    # transport ------------------------------------------------------------------------
    def _post_bcast(self, buf: Any, nbytes: int) -> Any:
        index = self.members.index(self.node_index)
        round_ = self._next(self._group)
        data = bytes(memoryview(buf).cast("B")[:nbytes]) if self.is_root else None
        self.world.deposit(self._group, round_, index, data)
        return _Bcast(self, self._group, round_, len(self.members), buf, nbytes)

    def bcast_data(self, view: Any, nbytes: int) -> None:
        self._data_calls += 1
        self.world._fault(self.rank, self._data_calls)
        super().bcast_data(view, nbytes)

    def _make_group(self, members: list[int], epoch: int) -> None:
        self._group = self._group_name(members, epoch)

    def _post_frame(self, node: int, frame: bytearray) -> Done:
        dest = self.leader_ranks[node]
        with self.world._cond:
            self.world.mail[dest].append(bytes(frame))
            self.world.frames_in[dest] += 1
        return Done()

    def _poll_frames(self) -> list[bytes]:
        q = self.world.mail[self.rank]
        out = []
        with self.world._cond:
            while q:
                out.append(q.popleft())
        return out

    # collectives ----------------------------------------------------------------------
    def bcast_obj(self, obj: Any, timeout: float | None = None) -> Any:
        obj = _as_sent(obj)
        if self.nnodes == 1:
            return obj
        return self._leaders(obj if self.is_root else None, "the plan from rank 0",
                             timeout)[0]

    def allgather_byte(self, value: int, timeout: float | None = None) -> bytes:
        if self.nnodes == 1:
            return bytes([value])
        return bytes(self._leaders(value, "the other nodes", timeout))

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
