"""The stream goes on without a node that stops answering.

Rank 0 (the root) broadcasts the archive to the *stream group* (the leaders of the nodes
that install). A collective needs every member: one node killed or stopped would hold all
the others. So every wait of the stream is bounded, and mail (point to point, see
:mod:`.base`) repairs the group:

1. A leader whose broadcast made no progress for ``timeout`` tells the root (``STALL``); the
   root notices on its own when its side makes none.
2. The root asks every member that has not yet received the whole stream where it is
   (``PROBE``). Members answer in milliseconds from inside their wait (``POSITION``); a
   member that does not answer within :data:`~.base.PROBE_SECONDS` is *lost*: it is left
   out (``DROP``, should it ever read it) and reported failed.
3. The root sends the others the new group and where the stream resumes (``EPOCH``: the
   smallest position among them); they all form the new group (a collective over its members
   only: the lost node takes no part) and the stream goes on from there, each leader skipping
   what it already has. Requests in flight on the old group are abandoned, never freed or
   reused (a node that was only stopped may still complete them later).

At the end of the stream, the root waits until every member has said that it received
everything (``STREAM_DONE``), or is lost, so that a member stuck on the last chunk is not
forgotten. The root itself cannot be replaced: when it is lost, the leaders give up within
``timeout`` plus twice :data:`~.base.PROBE_SECONDS`.

Backends that cannot form a group of some leaders only (torch.distributed makes every rank
take part) give up on the first stall instead (``CommTimeout``).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from ...log import get_logger
from ..wire import Kind
from .base import CommTimeout, Dropped, Request, Resync

if TYPE_CHECKING:
    from .base import Comm

log = get_logger(__name__)


#: Seconds between looks at the mail while a broadcast is waited for.
MAIL_EVERY = 0.01


def probe_seconds(comm: Comm) -> float:
    from .base import PROBE_SECONDS

    return min(comm.timeout, PROBE_SECONDS)


def stream_wait(comm: Comm, req: Request, what: str, max_sleep: float,
                timeout: float | None) -> None:
    """Wait for one broadcast of the stream; raise Resync when the group changed."""
    limit = comm.timeout if timeout is None else timeout
    deadline = time.monotonic() + limit
    delay = 0.0
    probed = False  # answered a PROBE: wait for the new group only
    reported = False
    mail_at = 0.0
    while probed or not req.test():
        now = time.monotonic()
        if req.failed and now <= deadline:  # the library gave up on a peer
            log.warning("%s: %s failed (%s); treating it as a stall", comm.host, what,
                        req.failed)
            deadline = now - 1.0
        if now < mail_at and now <= deadline:
            # recovery mail is rare: looked at every MAIL_EVERY s, not at every test (a
            # node short of CPU must not spend it on polling)
            if delay:
                time.sleep(delay)
            delay = min(max_sleep, delay * 2 if delay else 0.0001)
            continue
        mail_at = now + MAIL_EVERY
        if comm.is_root:
            stalls = [m for m in comm.take(Kind.STALL, Kind.STREAM_DONE)
                      if _note_done(comm, m) and m[2].get("epoch") == comm.epoch]
            if stalls or now > deadline:
                if not comm.can_recover:
                    raise _timeout(limit, what)
                who = ", ".join(comm.node_hosts[s] for s, _k, _m in stalls) or "rank 0"
                log.warning("the broadcast made no progress for %gs (seen by %s); finding out "
                            "which nodes still answer", limit, who)
                comm.abandoned.append(req)
                raise Resync(recover(comm))
        else:
            for _src, kind, msg in comm.take(Kind.PROBE, Kind.EPOCH, Kind.DROP):
                if kind is Kind.DROP:
                    comm.abandoned.append(req)
                    raise Dropped(msg.get("why") or "left out of the broadcast")
                if kind is Kind.PROBE and msg.get("epoch") == comm.epoch and not probed:
                    comm.send(0, Kind.POSITION, {"epoch": comm.epoch, "pos": comm.position})
                    probed = True
                    # the root waits a whole probe window for the others, then says more
                    deadline = now + 2 * probe_seconds(comm)
                elif kind is Kind.EPOCH and int(msg.get("epoch", -1)) > comm.epoch:
                    comm.abandoned.append(req)
                    _join(comm, msg)
                    raise Resync(int(msg["resume"]))
            if now > deadline:
                if not comm.can_recover:
                    raise _timeout(limit, what)
                if reported or probed:
                    raise _timeout(2 * probe_seconds(comm), "rank 0 to repair the broadcast "
                                   f"(after {limit:g}s without progress)")
                # a live root answers at once, or after a probe window it is busy with
                comm.send(0, Kind.STALL, {"epoch": comm.epoch, "pos": comm.position})
                reported = True
                deadline = now + 2 * probe_seconds(comm)
        if delay:
            time.sleep(delay)
        delay = min(max_sleep, delay * 2 if delay else 0.0001)


def _timeout(limit: float, what: str) -> CommTimeout:
    return CommTimeout(f"timed out after {limit:g}s waiting for {what} (a node is stuck or "
                       "gone; raise transfer.timeout if it is only slow)")


def _note_done(comm: Comm, msg: tuple[int, Kind, dict[str, Any]]) -> bool:
    """Record STREAM_DONE messages; True for the others (STALL)."""
    if msg[1] is Kind.STREAM_DONE:
        comm.stream_done.add(msg[0])
        return False
    return True


def _join(comm: Comm, msg: dict[str, Any]) -> None:
    members = [int(m) for m in msg["members"]]
    comm.epoch = int(msg["epoch"])
    comm.members = members
    log.info("%s: the broadcast goes on with %d node(s) from byte %d", comm.host,
             len(members), int(msg["resume"]))
    with comm.guarded("forming the new group of the broadcast"):
        comm._make_group(members, comm.epoch)


def recover(comm: Comm) -> int:
    """On the root: find who still answers, leave the others out, form the new group.
    Returns the byte from which the stream resumes."""
    targets = [m for m in comm.members[1:] if m not in comm.stream_done and m not in comm.lost]
    for m in targets:
        comm.send(m, Kind.PROBE, {"epoch": comm.epoch})
    replies: dict[int, int] = {}
    deadline = time.monotonic() + probe_seconds(comm)
    pending = set(targets)
    while pending and time.monotonic() < deadline:
        for src, kind, msg in comm.take(Kind.POSITION, Kind.STREAM_DONE, Kind.STALL):
            if kind is Kind.STREAM_DONE:
                comm.stream_done.add(src)
            elif kind is Kind.POSITION and msg.get("epoch") == comm.epoch:
                replies[src] = int(msg.get("pos", 0))
        pending = set(targets) - set(replies) - comm.stream_done
        if pending:
            time.sleep(0.001)
    for m in sorted(pending):
        comm.lost[m] = (f"no answer within {probe_seconds(comm):g}s after the broadcast "
                        f"stalled for {comm.timeout:g}s (the node is stopped, gone or stuck)")
        comm.send(m, Kind.DROP, {"epoch": comm.epoch, "why": "left out of the broadcast "
                                 "after it did not answer rank 0 in time"})
    alive = [0] + sorted(replies)
    resume = min([comm.position, *replies.values()])
    comm.epoch += 1
    if pending:
        log.warning("left out of the broadcast (no answer): %s",
                    ", ".join(comm.node_hosts[m] for m in sorted(pending)))
    log.info("the broadcast goes on with %d node(s) from byte %d", len(alive), resume)
    for m in alive[1:]:
        comm.send(m, Kind.EPOCH, {"epoch": comm.epoch, "members": alive, "resume": resume})
    comm.members = alive
    with comm.guarded("forming the new group of the broadcast"):
        comm._make_group(alive, comm.epoch)
    return resume


def root_end_of_stream(comm: Comm, stream_bytes: int) -> None:
    """On the root, after the end of the stream was broadcast: wait until every member of
    the group has received all of it or is lost. A member that says it is stuck, or from
    which nothing was heard for ``timeout``, makes the root recover the stream (Resync).
    Rank 0's work is O(1) per message and O(members) twice a second."""
    t0 = time.monotonic()
    waiting = {m for m in comm.members[1:] if m not in comm.stream_done and m not in comm.lost}
    checked = t0
    while waiting:
        stalls = []
        for src, kind, msg in comm.take(Kind.STREAM_DONE, Kind.STALL):
            if kind is Kind.STREAM_DONE:
                comm.stream_done.add(src)
                waiting.discard(src)
            elif msg.get("epoch") == comm.epoch:
                stalls.append(src)
        now = time.monotonic()
        silent = False
        if now - checked > 0.5:
            checked = now
            silent = any(now - max(t0, comm.last_heard.get(m, 0.0)) > comm.timeout
                         for m in waiting)
        if stalls or silent:
            if not comm.can_recover:
                raise _timeout(comm.timeout, "the other nodes to receive the end of the stream")
            raise Resync(recover(comm))
        time.sleep(0.002)
