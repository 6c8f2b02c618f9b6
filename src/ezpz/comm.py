"""One small interface over mpi4py and torch.distributed for the transfer worker.

Ranks are grouped into nodes by hostname; the first rank of each node is its *leader*.
Collectives:

- :meth:`Comm.bcast_control` — a small fixed-size buffer from rank 0 to every leader; waited
  for by polling with short sleeps (a leader waiting for the root's next chunk does not spin);
- :meth:`Comm.bcast_data` — a raw buffer (bytearray / memoryview) from rank 0 to every
  leader: mpi4py's buffer ``Bcast`` or a torch ``uint8`` tensor over the same memory, never
  pickled; a watchdog bounds it;
- :meth:`Comm.node_bcast_obj`, :meth:`Comm.allgather_leaders`, :meth:`Comm.gather_obj`,
  :meth:`Comm.barrier` — small JSON objects in fixed-size buffers, polled with sleeps.

Every wait is bounded by ``timeout`` seconds: polled waits raise :class:`CommTimeout`; a
blocking data broadcast that overruns calls the watchdog's handler, which cleans up and ends
the process (``os._exit``), because a collective in flight cannot be cancelled.

mpi4py and torch are imported inside the functions that need them.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from typing import Any, Callable, Optional

from .errors import TransferError
from .log import get_logger

log = get_logger(__name__)

#: Bytes of one JSON object slot in gathers and node broadcasts.
OBJ_SLOT = 8192
#: Longest sleep (s) between tests of a data broadcast in flight; 0 = blocking ``Bcast``.
#: MPICH's blocking collectives busy-poll: a rank waiting for a peer that is still busy
#: extracting would burn a core the extraction needs (measured in
#: benchmarks/bench_transfer.py, where nodes share cores).
DATA_POLL = float(os.environ.get("EZPZ_BCAST_POLL", "0.0005"))
_PMI_VARS = ("PMI_RANK", "PMI_SIZE", "PMIX_RANK", "OMPI_COMM_WORLD_RANK", "PALS_RANKID")


class CommTimeout(TransferError):
    """A collective did not complete within the timeout."""


def resolve_backend(name: str, environ: Optional[dict[str, str]] = None) -> str:
    """``auto`` → ``torch`` when launched by torchrun, else ``mpi``; others unchanged."""
    env = os.environ if environ is None else environ
    if name != "auto":
        return name
    if env.get("TORCHELASTIC_RUN_ID"):
        return "torch"
    if env.get("LOCAL_RANK") is not None and env.get("WORLD_SIZE") is not None \
            and not any(v in env for v in _PMI_VARS):
        return "torch"
    return "mpi"


def _encode(obj: Any, slot: int = OBJ_SLOT) -> bytes:
    raw = json.dumps(obj, separators=(",", ":")).encode()
    if len(raw) > slot - 8:
        raise TransferError(f"internal: status object of {len(raw)} bytes exceeds {slot - 8}")
    return len(raw).to_bytes(8, "little") + raw + bytes(slot - 8 - len(raw))


def _decode(buf: Any) -> Any:
    mv = memoryview(buf).cast("B")
    n = int.from_bytes(mv[:8], "little")
    return json.loads(bytes(mv[8:8 + n]))


class Watchdog:
    """Calls ``on_expire(what)`` from its own thread when an armed deadline passes."""

    def __init__(self, on_expire: Callable[[str], None]) -> None:
        self.on_expire = on_expire
        self._cond = threading.Condition()
        self._deadline: Optional[float] = None
        self._what = ""
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name="ezpz-watchdog", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        with self._cond:
            while not self._stop:
                if self._deadline is None:
                    self._cond.wait()
                    continue
                left = self._deadline - time.monotonic()
                if left > 0:
                    self._cond.wait(left)
                    continue
                what = self._what
                self._deadline = None
                break
            else:
                return
        self.on_expire(what)

    def arm(self, seconds: float, what: str) -> None:
        with self._cond:
            self._deadline = time.monotonic() + seconds
            self._what = what
            self._cond.notify()

    def disarm(self) -> None:
        with self._cond:
            self._deadline = None
            self._cond.notify()

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()


def _default_expire(what: str) -> None:
    log.critical("timed out in %s; exiting", what)
    os._exit(1)


class Comm:
    """Base class: topology and the polling helpers; backends implement the collectives."""

    backend = "none"

    def __init__(self, timeout: float) -> None:
        self.timeout = float(timeout)
        self.host = socket.gethostname()
        self.rank = 0
        self.size = 1
        self.hosts: list[str] = []  # hostname of every rank
        self.node_hosts: list[str] = []  # one per node, in node order
        self.node_index = 0
        self.local_rank = 0
        self.local_size = 1
        self.leader_ranks: list[int] = []  # world rank of each node's leader
        self.watchdog = Watchdog(_default_expire)

    # topology -------------------------------------------------------------------------
    def _set_topology(self, hosts: list[str]) -> None:
        self.hosts = hosts
        first: dict[str, int] = {}  # host -> its first (leader) rank, in order of appearance
        for r, h in enumerate(hosts):
            first.setdefault(h, r)
        order = list(first)
        me = hosts[self.rank]
        self.node_hosts = order
        self.node_index = order.index(me)
        mine = [r for r, h in enumerate(hosts) if h == me]
        self.local_rank = mine.index(self.rank)
        self.local_size = len(mine)
        self.leader_ranks = list(first.values())

    @property
    def nnodes(self) -> int:
        return len(self.node_hosts)

    @property
    def is_leader(self) -> bool:
        return self.local_rank == 0

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    def set_timeout_handler(self, handler: Callable[[str], None]) -> None:
        self.watchdog.on_expire = handler

    # polling --------------------------------------------------------------------------
    def _poll(self, done: Callable[[], bool], what: str, max_sleep: float,
              timeout: Optional[float] = None) -> None:
        limit = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        delay = 0.0
        while not done():
            if time.monotonic() > deadline:
                raise CommTimeout(f"timed out after {limit:g}s waiting for {what} "
                                  "(a node is stuck or gone; raise transfer.timeout if it is "
                                  "only slow)")
            if delay:
                time.sleep(delay)
            delay = min(max_sleep, delay * 2 if delay else 0.0001)

    def guarded(self, what: str):
        """Context manager arming the watchdog for a blocking call."""
        comm = self

        class _G:
            def __enter__(self) -> None:
                comm.watchdog.arm(comm.timeout, what)

            def __exit__(self, *exc: Any) -> None:
                comm.watchdog.disarm()

        return _G()

    # interface ------------------------------------------------------------------------
    def bcast_control(self, buf: bytearray, timeout: Optional[float] = None) -> None:
        raise NotImplementedError

    def bcast_data(self, view: Any, nbytes: int) -> None:
        raise NotImplementedError

    def allgather_leaders(self, obj: Any) -> list[Any]:
        raise NotImplementedError

    def node_bcast_obj(self, obj: Any, timeout: Optional[float] = None) -> Any:
        raise NotImplementedError

    def gather_obj(self, obj: Any, timeout: Optional[float] = None) -> Optional[list[Any]]:
        raise NotImplementedError

    def barrier(self, timeout: Optional[float] = None) -> None:
        raise NotImplementedError

    def abort(self, code: int = 1) -> None:
        os._exit(code)

    def close(self) -> None:
        self.watchdog.stop()


# --------------------------------------------------------------------------------------
# MPI
# --------------------------------------------------------------------------------------
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

    def bcast_control(self, buf: bytearray, timeout: Optional[float] = None) -> None:
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

    def _allgather(self, comm: Any, obj: Any, what: str, timeout: Optional[float]) -> list[Any]:
        n = comm.Get_size()
        send = bytearray(_encode(obj))
        recv = bytearray(OBJ_SLOT * n)
        req = comm.Iallgather([send, self.MPI.BYTE], [recv, self.MPI.BYTE])
        self._poll(req.Test, what, 0.05, timeout)
        return [_decode(memoryview(recv)[i * OBJ_SLOT:(i + 1) * OBJ_SLOT]) for i in range(n)]

    def allgather_leaders(self, obj: Any) -> list[Any]:
        return self._allgather(self.leaders, obj, "the other nodes", None)

    def node_bcast_obj(self, obj: Any, timeout: Optional[float] = None) -> Any:
        if self.local_size == 1:
            return obj
        buf = bytearray(_encode(obj)) if self.is_leader else bytearray(OBJ_SLOT)
        req = self.node.Ibcast([buf, self.MPI.BYTE], root=0)
        self._poll(req.Test, "this node's leader", 0.05, timeout)
        return _decode(buf)

    def gather_obj(self, obj: Any, timeout: Optional[float] = None) -> Optional[list[Any]]:
        send = bytearray(_encode(obj))
        recv = bytearray(OBJ_SLOT * self.size) if self.rank == 0 else None
        req = self.world.Igather([send, self.MPI.BYTE],
                                 [recv, self.MPI.BYTE] if recv is not None else None, root=0)
        self._poll(req.Test, "the status of every rank", 0.05, timeout)
        if recv is None:
            return None
        return [_decode(memoryview(recv)[i * OBJ_SLOT:(i + 1) * OBJ_SLOT])
                for i in range(self.size)]

    def barrier(self, timeout: Optional[float] = None) -> None:
        req = self.world.Ibarrier()
        self._poll(req.Test, "every rank (barrier)", 0.05, timeout)

    def abort(self, code: int = 1) -> None:
        try:
            self.world.Abort(code)
        finally:  # pragma: no cover
            os._exit(code)


# --------------------------------------------------------------------------------------
# torch.distributed
# --------------------------------------------------------------------------------------
def _env_rank_size(environ: Optional[dict[str, str]] = None) -> tuple[int, int]:
    env = os.environ if environ is None else environ
    for rk, sz in (("RANK", "WORLD_SIZE"), ("PMI_RANK", "PMI_SIZE"),
                   ("PMIX_RANK", "PMIX_SIZE"), ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"),
                   ("SLURM_PROCID", "SLURM_NTASKS")):
        if env.get(rk) is not None and env.get(sz) is not None:
            return int(env[rk]), int(env[sz])
    return 0, 1


class TorchComm(Comm):
    backend = "torch"

    def __init__(self, timeout: float, dist_backend: str = "gloo", device: str = "cpu") -> None:
        super().__init__(timeout)
        from datetime import timedelta

        import torch
        import torch.distributed as dist

        self.torch = torch
        self.dist = dist
        self.rank, self.size = _env_rank_size()
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

    def _wait_work(self, work: Any, what: str, max_sleep: float, timeout: Optional[float]) -> None:
        self._poll(work.is_completed, what, max_sleep, timeout)
        work.wait()

    def bcast_control(self, buf: bytearray, timeout: Optional[float] = None) -> None:
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
                   timeout: Optional[float]) -> list[Any]:
        torch = self.torch
        send = torch.frombuffer(bytearray(_encode(obj)), dtype=torch.uint8)
        outs = [torch.empty(OBJ_SLOT, dtype=torch.uint8) for _ in range(n)]
        work = self.dist.all_gather(outs, send, group=group, async_op=True)
        self._wait_work(work, what, 0.05, timeout)
        return [_decode(o.numpy().tobytes()) for o in outs]

    def allgather_leaders(self, obj: Any) -> list[Any]:
        if self.nnodes == 1:
            return [obj]
        return self._allgather(self.leaders, self.nnodes, obj, "the other nodes", None)

    def node_bcast_obj(self, obj: Any, timeout: Optional[float] = None) -> Any:
        if self.local_size == 1:
            return obj
        buf = bytearray(_encode(obj)) if self.is_leader else bytearray(OBJ_SLOT)
        t = self.torch.frombuffer(buf, dtype=self.torch.uint8)
        src = self.leader_ranks[self.node_index]
        work = self.dist.broadcast(t, src=src, group=self.node, async_op=True)
        self._wait_work(work, "this node's leader", 0.05, timeout)
        return _decode(buf)

    def gather_obj(self, obj: Any, timeout: Optional[float] = None) -> Optional[list[Any]]:
        if self.size == 1:
            return [obj]
        out = self._allgather(None, self.size, obj, "the status of every rank", timeout)
        return out if self.rank == 0 else None

    def barrier(self, timeout: Optional[float] = None) -> None:
        if self.size == 1:
            return
        work = self.dist.barrier(async_op=True)
        self._wait_work(work, "every rank (barrier)", 0.05, timeout)

    def close(self) -> None:
        super().close()
        try:
            if self.dist.is_initialized():
                self.dist.destroy_process_group()
        except Exception:  # noqa: BLE001 - best effort at exit
            pass


def make_comm(backend: str, timeout: float, *, dist_backend: str = "gloo",
              device: str = "cpu") -> Comm:
    """The communicator for ``backend`` (``mpi`` or ``torch``; resolve ``auto`` first)."""
    if backend == "mpi":
        try:
            return MPIComm(timeout)
        except ImportError as exc:
            raise TransferError(f"transfer.backend=mpi needs mpi4py ({exc}); install mpi4py "
                                "or use backend=torch") from exc
    if backend == "torch":
        try:
            return TorchComm(timeout, dist_backend=dist_backend, device=device)
        except ImportError as exc:
            raise TransferError(f"transfer.backend=torch needs torch ({exc}); pip install "
                                "'ezpz[torch]' or use backend=mpi") from exc
    raise TransferError(f"transfer.backend: {backend!r} is not a backend (choose mpi or torch)")
