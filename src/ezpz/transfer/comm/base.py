"""One small interface over mpi4py and torch.distributed for the transfer worker.

Ranks are grouped into nodes by hostname; the first rank of each node is its *leader*, and
node 0's leader is rank 0, the *root*. What the leaders do together:

- :meth:`Comm.bcast_obj` (the plan), :meth:`Comm.allgather_byte` (each node's decision):
  small collectives over all leaders, polled, at start;
- the *stream*: :meth:`Comm.bcast_control` (a small fixed-size block) and
  :meth:`Comm.bcast_data` (a raw buffer, never pickled) from the root to the leaders of the
  *stream group* (the nodes that install, see :mod:`.recovery`: a leader that stops
  answering is left out and the others go on);
- *mail* (:meth:`Comm.send`, :meth:`Comm.take`): small messages between the root and one
  leader (progress, each node's status, the final word), point to point, so that the root's
  cost is O(nodes) and a lost node costs the others nothing but a timeout.

A node's other ranks hear from their leader only (:meth:`Comm.node_bcast_obj`).

Every wait is bounded: polled waits raise :class:`CommTimeout` after ``timeout`` seconds
without progress; a blocking call that overruns calls the watchdog's handler, which cleans
up and ends the process (``os._exit``), because a collective in flight cannot be cancelled.

mpi4py and torch are imported inside the modules that need them (``mpi``, ``torch``);
``local`` runs ranks as threads of one process, for unit tests of the orchestration.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from ...errors import TransferError
from ...log import get_logger
from ..wire import Assembler, Kind, frames

log = get_logger(__name__)

#: Bytes of one JSON object slot in start-up collectives and node broadcasts.
OBJ_SLOT = 8192
#: Longest sleep (s) between tests of a data broadcast in flight. MPICH's blocking
#: collectives busy-poll: a rank waiting for a peer that is still busy extracting would burn
#: a core the extraction needs (measured in benchmarks/bench_transfer.py).
DATA_POLL = float(os.environ.get("EZPZ_BCAST_POLL", "0.0005"))
#: Longest sleep (s) between tests of a control collective (the plan, status exchanges, node
#: broadcasts). MPICH advances a non-blocking collective only inside an MPI call, so every
#: step of its algorithm waits for the next test: a long sleep here multiplies by the steps
#: (benchmarks/scale_model.py measured 119 ms per step with 50 ms sleeps).
CONTROL_POLL = float(os.environ.get("EZPZ_CONTROL_POLL", "0.002"))
#: MPICH's algorithms for the worker's non-blocking collectives, unless the user chose:
#: trees (``ceil(log2 p)`` steps) instead of the rings MPICH picks for large messages at scale
#: (``p - 1`` steps, each waiting for a poll). A library that does not know them ignores them.
MPICH_TREE_CVARS = {"MPIR_CVAR_IBCAST_INTRA_ALGORITHM": "sched_binomial",
                    "MPIR_CVAR_IALLGATHER_INTRA_ALGORITHM": "sched_brucks"}
#: Seconds the root waits for the answers of the stream group while recovering it (the nodes
#: that are alive answer in milliseconds; those that do not have been silent for a whole
#: ``timeout`` already).
PROBE_SECONDS = 5.0


class CommTimeout(TransferError):
    """A collective did not complete within the timeout."""


class Dropped(TransferError):
    """This node was left out of the broadcast (it did not answer in time)."""


class Resync(Exception):
    """The stream group changed: the broadcast goes on from byte ``resume``."""

    def __init__(self, resume: int) -> None:
        super().__init__(resume)
        self.resume = resume


class Request(Protocol):
    #: Why the communication library gave up on this request ("" while it has not).
    failed: str

    def test(self) -> bool: ...


class Done:
    """A request that is already complete."""

    failed = ""

    def test(self) -> bool:
        return True


def encode_obj(obj: Any, slot: int = OBJ_SLOT) -> bytes:
    raw = json.dumps(obj, separators=(",", ":")).encode()
    if len(raw) > slot - 8:
        raise TransferError(f"internal: message of {len(raw)} bytes exceeds {slot - 8}")
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


def pid_state(pid: int) -> str | None:
    """The state letter of ``pid`` (``R``, ``S``, ``T`` stopped, ``Z``...), None when gone or
    not visible from here."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


class Comm:
    """Base class: topology, polling and mail; backends implement the transport."""

    backend = "none"
    #: Whether a leader that stops answering can be left out of the stream (MPI, local).
    can_recover = False

    def __init__(self, timeout: float) -> None:
        self.timeout = float(timeout)
        self.host = socket.gethostname()
        self.rank = 0
        self.size = 1
        self.hosts: list[str] = []  # hostname of every rank
        self.pids: list[int] = []  # pid of every rank (0 when unknown)
        self.node_hosts: list[str] = []  # one per node, in node order
        self.node_index = 0
        self.local_rank = 0
        self.local_size = 1
        self.leader_ranks: list[int] = []  # world rank of each node's leader
        self.watchdog = Watchdog(_default_expire)
        # the stream group (see recovery.py)
        self.epoch = 0
        self.members: list[int] = []  # node indices, the root first
        self.position = 0  # bytes this rank has handed on in the stream
        self.lost: dict[int, str] = {}  # root: node index -> why it was left out
        self.stream_done: set[int] = set()  # root: nodes that received the whole stream
        self.abandoned: list[Any] = []  # requests in flight on a group left behind
        # mail
        self._mail_id = 0
        self._asm = Assembler()
        self._inbox: list[tuple[int, Kind, dict[str, Any]]] = []
        self._sending: list[Any] = []
        self.last_heard: dict[int, float] = {}  # root: node -> monotonic time of its last mail

    # topology -------------------------------------------------------------------------
    def _set_topology(self, hosts: list[str], pids: list[int] | None = None) -> None:
        self.hosts = hosts
        self.pids = list(pids) if pids else [0] * len(hosts)
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
        self.members = list(range(len(order)))

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
              timeout: float | None = None, alive: Callable[[], str | None] | None = None
              ) -> None:
        """Wait for ``done()``; CommTimeout after ``timeout`` s, or as soon as ``alive()``
        names a reason to stop waiting."""
        limit = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        delay = 0.0
        checked = time.monotonic()
        while not done():
            now = time.monotonic()
            if now > deadline:
                raise CommTimeout(f"timed out after {limit:g}s waiting for {what} "
                                  "(a node is stuck or gone; raise transfer.timeout if it is "
                                  "only slow)")
            if alive is not None and now - checked > 0.2:
                checked = now
                why = alive()
                if why:
                    raise CommTimeout(f"stopped waiting for {what}: {why}")
            if delay:
                time.sleep(delay)
            delay = min(max_sleep, delay * 2 if delay else 0.0001)

    def guarded(self, what: str) -> Any:
        """Context manager arming the watchdog for a blocking call."""
        comm = self

        class _G:
            def __enter__(self) -> None:
                comm.watchdog.arm(comm.timeout, what)

            def __exit__(self, *exc: Any) -> None:
                comm.watchdog.disarm()

        return _G()

    def leader_gone(self) -> str | None:
        """On a node's other ranks: why the node's leader can no longer answer (it exited,
        or it has been stopped for longer than the timeout), None while it can."""
        if self.is_leader:
            return None
        pid = self.pids[self.leader_ranks[self.node_index]] if self.pids else 0
        if not pid or not self._leader_visible:
            return None
        state = pid_state(pid)
        if state is None or state == "Z":
            return f"this node's leader (pid {pid}) is gone"
        if state in ("T", "t"):
            since = self._leader_stopped_since or time.monotonic()
            self._leader_stopped_since = since
            if time.monotonic() - since > self.timeout:
                return f"this node's leader (pid {pid}) has been stopped for {self.timeout:g}s"
        else:
            self._leader_stopped_since = None
        return None

    _leader_visible = False
    _leader_stopped_since: float | None = None

    def _check_leader_visible(self) -> None:
        """Whether the leader's pid can be watched from here (same pid namespace)."""
        if not self.is_leader and self.pids:
            pid = self.pids[self.leader_ranks[self.node_index]]
            self._leader_visible = bool(pid) and pid_state(pid) is not None

    # mail -----------------------------------------------------------------------------
    def send(self, node: int, kind: Kind, obj: dict[str, Any]) -> None:
        """Post ``obj`` to node ``node``'s leader (the root: node 0); never blocks."""
        self._mail_id += 1
        for frame in frames(kind, self.node_index, self._mail_id, obj):
            self._sending.append(self._post_frame(node, frame))
        if len(self._sending) > 64:
            self._sending = [r for r in self._sending if not r.test()]

    def pump_mail(self) -> None:
        """Move what arrived into the inbox."""
        for frame in self._poll_frames():
            got = self._asm.add(frame)
            if got is not None:
                self._inbox.append(got)
                if self.is_root:
                    self.last_heard[got[0]] = time.monotonic()

    def take(self, *kinds: Kind) -> list[tuple[int, Kind, dict[str, Any]]]:
        """Remove and return the messages of these kinds (in arrival order)."""
        self.pump_mail()
        out = [m for m in self._inbox if m[1] in kinds]
        if out:
            self._inbox = [m for m in self._inbox if m[1] not in kinds]
        return out

    def goodbye(self) -> None:
        """A leader, after the final word: nothing more will come from it (a backend whose
        receives cannot be cancelled stops listening then)."""

    def flush_mail(self, timeout: float = 5.0) -> None:
        """Wait (bounded) until what this rank sent has left."""
        deadline = time.monotonic() + timeout
        while self._sending and time.monotonic() < deadline:
            self._sending = [r for r in self._sending if not r.test()]
            if self._sending:
                time.sleep(0.001)

    # transport (backends) -------------------------------------------------------------
    def _post_frame(self, node: int, frame: bytearray) -> Request:
        raise NotImplementedError

    def _poll_frames(self) -> list[bytes]:
        """Every frame that arrived for this rank."""
        raise NotImplementedError

    def _post_bcast(self, buf: Any, nbytes: int) -> Request:
        """A broadcast of ``buf[:nbytes]`` from the root over the current stream group."""
        raise NotImplementedError

    def _make_group(self, members: list[int], epoch: int) -> None:
        """Make ``members`` (node indices, the root first) the stream group; collective over
        the members only."""
        raise NotImplementedError

    # collectives over all leaders (start) ---------------------------------------------
    def bcast_obj(self, obj: Any, timeout: float | None = None) -> Any:
        """The root's ``obj`` (JSON, one slot) on every leader."""
        raise NotImplementedError

    def allgather_byte(self, value: int, timeout: float | None = None) -> bytes:
        """One byte from every leader, in node order (N bytes per leader)."""
        raise NotImplementedError

    def node_bcast_obj(self, obj: Any, timeout: float | None = None) -> Any:
        raise NotImplementedError

    # the stream (see recovery.py for what happens when it stalls) ---------------------
    def bcast_control(self, buf: bytearray, timeout: float | None = None) -> None:
        from .recovery import stream_wait

        if len(self.members) > 1 and self.node_index in self.members:
            stream_wait(self, self._post_bcast(buf, len(buf)), "the next chunk from rank 0",
                        0.001, timeout)

    def bcast_data(self, view: Any, nbytes: int) -> None:
        from .recovery import stream_wait

        if len(self.members) > 1 and nbytes and self.node_index in self.members:
            stream_wait(self, self._post_bcast(view, nbytes), "a data broadcast", DATA_POLL,
                        None)

    def start_stream(self, members: list[int]) -> None:
        """The stream group: the root and the nodes that install (every leader calls this
        with the same list)."""
        members = sorted(set(members) | {0})
        if members != self.members:
            self.members = members
            if self.node_index in members:
                with self.guarded("forming the group of the nodes that install"):
                    self._make_group(members, self.epoch)

    def end_stream(self, stream_bytes: int) -> None:
        """After the end of the stream: a leader tells the root; the root waits until every
        member has it (recovering the stream for those that are stuck)."""
        from .recovery import root_end_of_stream

        if self.is_root:
            root_end_of_stream(self, stream_bytes)
        elif self.node_index in self.members:
            self.send(0, Kind.STREAM_DONE, {"pos": stream_bytes, "epoch": self.epoch})

    def close(self, finalize: bool = True) -> None:
        """End this rank's communication. ``finalize``: every rank of the job is known to be
        alive and about to do the same (a library's finalize waits for all of them)."""
        self.watchdog.stop()
