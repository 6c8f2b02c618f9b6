"""One small interface over mpi4py and torch.distributed for the transfer worker.

Ranks are grouped into nodes by hostname; the first rank of each node is its *leader*.
Collectives:

- :meth:`Comm.bcast_control` — a small fixed-size buffer from rank 0 to every leader; waited
  for by polling with short sleeps (a leader waiting for the root's next chunk does not spin);
- :meth:`Comm.bcast_data` — a raw buffer (bytearray / memoryview) from rank 0 to every
  leader: mpi4py's buffer ``Bcast`` or a torch ``uint8`` tensor over the same memory, never
  pickled; a watchdog bounds it;
- :meth:`Comm.node_bcast_obj`, :meth:`Comm.allgather_leaders` — small JSON objects in
  fixed-size buffers, polled with sleeps.

Every wait is bounded by ``timeout`` seconds: polled waits raise :class:`CommTimeout`; a
blocking data broadcast that overruns calls the watchdog's handler, which cleans up and ends
the process (``os._exit``), because a collective in flight cannot be cancelled.

mpi4py and torch are imported inside the functions that need them (``mpi``, ``torch``);
``local`` runs ranks as threads of one process, for unit tests of the orchestration.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from ...errors import TransferError
from ...log import get_logger

log = get_logger(__name__)

#: Bytes of one JSON object slot in gathers and node broadcasts.
OBJ_SLOT = 8192
#: Longest sleep (s) between tests of a data broadcast in flight; 0 = blocking ``Bcast``.
#: MPICH's blocking collectives busy-poll: a rank waiting for a peer that is still busy
#: extracting would burn a core the extraction needs (measured in
#: benchmarks/bench_transfer.py, where nodes share cores).
DATA_POLL = float(os.environ.get("EZPZ_BCAST_POLL", "0.0005"))


class CommTimeout(TransferError):
    """A collective did not complete within the timeout."""


def encode_obj(obj: Any, slot: int = OBJ_SLOT) -> bytes:
    raw = json.dumps(obj, separators=(",", ":")).encode()
    if len(raw) > slot - 8:
        raise TransferError(f"internal: status object of {len(raw)} bytes exceeds {slot - 8}")
    return len(raw).to_bytes(8, "little") + raw + bytes(slot - 8 - len(raw))


def decode_obj(buf: Any) -> Any:
    mv = memoryview(buf).cast("B")
    n = int.from_bytes(mv[:8], "little")
    return json.loads(bytes(mv[8:8 + n]))


class Watchdog:
    """Calls ``on_expire(what)`` from its own thread when an armed deadline passes."""

    def __init__(self, on_expire: Callable[[str], None]) -> None:
        self.on_expire = on_expire
        self._cond = threading.Condition()
        self._deadline: float | None = None
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
              timeout: float | None = None) -> None:
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
    def bcast_control(self, buf: bytearray, timeout: float | None = None) -> None:
        raise NotImplementedError

    def bcast_data(self, view: Any, nbytes: int) -> None:
        raise NotImplementedError

    def allgather_leaders(self, obj: Any) -> list[Any]:
        raise NotImplementedError

    def node_bcast_obj(self, obj: Any, timeout: float | None = None) -> Any:
        raise NotImplementedError

    def close(self) -> None:
        self.watchdog.stop()


