"""One rank's part in a transfer: the phases, in order, with every failure reported.

0. a sentinel process is forked (:mod:`.sentinel`): it bounds start-up (MPI init cannot be
   timed out from Python) and cleans up after a rank that is killed or stuck;
1. the plan: rank 0 reads what it will send; every leader learns it (one broadcast);
2. every node leader takes the lock next to ``dst``, checks it and makes its staging
   directory; the leaders learn which nodes install (one byte per node);
3. the stream (:mod:`.stream`): rank 0 broadcasts to the nodes that install, which extract at
   their own pace (:mod:`.backlog`); a node lost on the way is left out (:mod:`.comm.recovery`);
4. each leader verifies, relocates and swaps the tree into ``dst`` (:mod:`.node`);
5. each leader mails its status to rank 0, which waits for every node (or declares it lost
   after ``timeout`` without a word), mails each the outcome, writes ``results.json`` and
   prints the summary (:mod:`.results`); the node's other ranks hear it from their leader.

Every wait is bounded by ``timeout``: a rank stuck longer removes its staging directory and
exits non-zero, as it does on SIGTERM, SIGINT or SIGHUP (``128 + signal``).
"""

from __future__ import annotations

import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from ..config import Status
from ..envkind import EnvKind, detect_kind
from ..errors import EXIT_FAILURE, ConfigError, EzpzError, TransferError
from ..fsutil import peak_rss_mb, process_start_time
from ..jobenv import get_rank
from ..log import get_logger
from . import sentinel as sentinel_mod
from .comm import Comm, CommTimeout, make_comm
from .comm.base import Dropped
from .node import Action, NodeInstall, check_dst_on_node
from .plan import make_plan
from .progress import Display, Reporter
from .results import LIST_FAILED, one_line, overall, summary, update_failed_hosts, write_results
from .spec import NodeStatus, Plan, TransferResult, WorkerSpec
from .stream import Consumer, LeaderSide, RootSide, pump
from .wire import Kind

log = get_logger(__name__)

#: How the process ends when it must end now (a timeout or a signal): no finalisation of
#: MPI or torch, which would wait for the peer that is gone.
Fatal = Callable[[int], Any]
#: One byte per node in the exchange of decisions.
_CODES = {Action.go: 1, Action.skip: 2, Action.fail: 3}


class Transfer:
    """One run of the collective on this rank (see :func:`ezpz.transfer.run_transfer`)."""

    def __init__(self, spec: WorkerSpec, *, comm: Comm | None = None,
                 fatal: Fatal = os._exit) -> None:
        self.spec = spec
        self._comm = comm
        self.fatal = fatal
        self.node: NodeInstall | None = None
        self.consumer: Consumer | None = None
        self.sentinel: sentinel_mod.Sentinel | None = None
        self.display: Display | None = None
        self.reporter = Reporter()
        self.statuses: dict[int, NodeStatus] = {}
        self.phases = {"read": 0.0, "broadcast": 0.0, "extract": 0.0, "verify": 0.0,
                       "relocate": 0.0, "total": 0.0}
        self.kind: str | None = None
        self.host = ""
        #: Every rank of the job is alive and will finalize too (see MPIComm.close).
        self.clean = True
        self._t_comm = 0.0

    # -- emergency exits (timeout watchdog, signals) ------------------------------------
    def _emergency_cleanup(self) -> None:
        if self.consumer is not None:
            self.consumer.stream.abort()
            if self.consumer.is_alive() and self.consumer is not threading.current_thread():
                self.consumer.join(5)  # let the extractor stop before its tree is removed
        if self.node is not None:
            self.node.cleanup()
        self._watch()

    def _on_timeout(self, what: str) -> None:
        log.critical("%s: timed out after %gs in %s; removing staging and exiting",
                     self.host, self.spec.timeout, what)
        self._emergency_cleanup()
        self.fatal(EXIT_FAILURE)

    def _on_signal(self, signum: int, _frame: Any) -> None:
        log.critical("%s: received signal %d; removing staging and exiting", self.host, signum)
        self._emergency_cleanup()
        self.fatal(128 + signum)

    def _watch(self) -> None:
        """Tell the sentinel what to remove should this rank end now."""
        if self.sentinel is not None:
            self.sentinel.watch(self.node.cleanup_paths if self.node is not None else ())

    # -- the run -------------------------------------------------------------------------
    def run(self, run_dir: str | None = None) -> TransferResult | None:
        t_start = time.perf_counter()
        spec = self.spec
        if self._comm is None:  # a real job: the sentinel first, before any thread exists
            import socket

            self.sentinel = sentinel_mod.start(spec.timeout,
                                               f"{socket.gethostname()} rank {get_rank()}")
        try:
            comm = self._comm or make_comm(spec.backend, spec.timeout,
                                           dist_backend=spec.dist_backend, device=spec.device)
        except BaseException:
            self._done()
            raise
        self._t_comm = time.time()
        if self.sentinel is not None:
            self.sentinel.started()
        self.host = comm.host
        comm.set_timeout_handler(self._on_timeout)
        old_handlers = {s: signal.signal(s, self._on_signal)
                        for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
                        if threading.current_thread() is threading.main_thread()}
        try:
            try:
                result = self._run(comm, run_dir, t_start)
                self._done()
                return result
            except CommTimeout as exc:
                log.critical("%s: %s", self.host, exc)
                self._emergency_cleanup()
                sys.stderr.flush()
                self.fatal(EXIT_FAILURE)
                return None
            except EzpzError:
                self._emergency_cleanup()
                self._done()
                raise
            except BaseException as exc:
                self._emergency_cleanup()
                if not type(exc).__module__.startswith(("mpi4py", "torch")):
                    raise
                # The communication library failed, e.g. because a peer process died. Exit
                # now: finalizing the library would wait for the dead peer.
                lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
                log.critical("%s: the %s communication failed (%s); a node or rank is gone, "
                             "see the launcher's output", self.host, spec.backend,
                             lines[-1] if lines else type(exc).__name__)
                sys.stdout.flush()
                sys.stderr.flush()
                self.fatal(EXIT_FAILURE)
                return None
        finally:
            for s, h in old_handlers.items():
                signal.signal(s, h)
            if self.display is not None:
                self.display.close()
            comm.close(finalize=self.clean)

    def _done(self) -> None:
        if self.sentinel is not None:
            self.sentinel.done()
            self.sentinel = None

    def _run(self, comm: Comm, run_dir: str | None, t_start: float
             ) -> TransferResult | None:
        spec = self.spec
        my = NodeStatus(host=comm.host)
        started = process_start_time() if self._comm is None else None
        if started is not None:
            my.timeline["start"] = started
        my.timeline["comm"] = self._t_comm
        plan = self._share_plan(comm)
        if not comm.is_leader:
            nchunks = max(1, math.ceil(plan.bytes / spec.chunk_bytes))
            final = comm.node_bcast_obj(None, timeout=spec.timeout * (nchunks + 4))
            self.clean = bool(final.get("clean"))
            if final.get("exit_code"):
                raise TransferError(final.get("error") or f"the transfer {final.get('status')}")
            return None

        action = self._prepare(plan, my) if check_dst_on_node(comm, spec, my, run_dir) \
            else Action.fail
        self._watch()
        codes = comm.allgather_byte(_CODES[action])
        if action is Action.skip:
            my.status = Status.skipped
        members = [i for i, c in enumerate(codes) if c == _CODES[Action.go]]
        digest = ""
        if members:
            comm.start_stream(members)
            if comm.node_index in comm.members:
                digest = self._stream(comm, plan, action is Action.go, my)
        if action is Action.go and not my.failed:
            try:
                self._install(digest)
            except (EzpzError, OSError) as exc:
                my.fail(one_line(exc))
        if my.failed and self.node is not None:
            self.node.cleanup()
        self._watch()
        my.timeline["done"] = time.time()
        my.seconds = time.perf_counter() - t_start
        my.mb_s = plan.bytes / my.seconds / 1e6 if my.seconds and my.status is Status.ok else 0.0
        my.rss_mb = round(peak_rss_mb(), 1)
        if my.failed:
            log.critical("%s: %s", my.host, my.error)
        return self._finish(comm, plan, my, digest, t_start, run_dir)

    # -- 1. the plan -------------------------------------------------------------------
    def _share_plan(self, comm: Comm) -> Plan:
        """Rank 0's plan, on every rank; every rank raises the same error when it failed."""
        msg: dict[str, Any] = {}
        if comm.is_leader:
            mine: dict[str, Any] = {}
            if comm.is_root:
                try:
                    mine = {"plan": make_plan(self.spec.src, self.spec.decompress).to_wire()}
                except ConfigError as exc:
                    mine = {"error": str(exc), "usage": True}
            msg = comm.bcast_obj(mine)
        msg = comm.node_bcast_obj(msg if comm.is_leader else None)
        if "error" in msg:
            raise (ConfigError if msg.get("usage") else TransferError)(msg["error"])
        return Plan.from_wire(msg["plan"])

    # -- 2. the node's checks ------------------------------------------------------------
    def _prepare(self, plan: Plan, my: NodeStatus) -> Action:
        try:
            self.node = NodeInstall(self.spec, plan, my.host)
            # half the timeout: a node that cannot get the lock reports it while the other
            # nodes still wait for its status
            self.node.lock(self.spec.timeout / 2)
            self.node.clean_stale()
            action = self.node.preflight()
            if action is Action.go:
                self.node.make_staging()
            return action
        except (EzpzError, OSError) as exc:
            my.fail(one_line(exc))
            return Action.fail

    # -- 3. the stream -------------------------------------------------------------------
    def _stream(self, comm: Comm, plan: Plan, active: bool, my: NodeStatus) -> str:
        spec = self.spec
        if active:
            assert self.node is not None
            try:
                # rank 0 spills only to keep the broadcast going for other nodes
                alone = comm.is_root and len(set(comm.members) - {0}) == 0
                self.consumer = Consumer(self.node, plan, spec, root=comm.is_root,
                                         spill=not alone)
            except OSError as exc:  # e.g. the kept archive copy cannot be created
                my.fail(one_line(exc))  # still take part in the broadcast, write nothing
            else:
                self.consumer.start()
            self._watch()
        if comm.is_root:
            extracting = [n for n in comm.members if n != 0 or self.consumer is not None]
            self.display = Display(plan.bytes, extracting)
        side = RootSide(spec, plan) if comm.is_root else LeaderSide(spec, plan, comm.host)
        backlog = self.consumer.stream if self.consumer is not None else None
        try:
            digest, err = pump(comm, side, backlog, spec.timeout, self.phases,
                               tick=lambda fed: self._tick(comm, fed))
        except Dropped as exc:
            digest, err = "", str(exc)
        my.timeline["stream_end"] = time.time()
        if err:
            my.fail(err)
            if comm.is_root:
                log.critical("%s: %s; aborting the transfer on every node", comm.host, err)
        consumer = self.consumer
        if consumer is not None:
            if my.failed:
                consumer.stream.abort()
            else:
                consumer.stream.close_input()
            self._wait_extraction(comm, consumer, my)
            self.phases["extract"] = consumer.seconds
            my.spilled = consumer.stream.spilled
            my.timeline["extract_end"] = consumer.finished_at or time.time()
        return digest

    def _tick(self, comm: Comm, fed: int) -> None:
        """After each chunk (and while waiting): progress, both ways."""
        done = self.consumer.stream.consumed if self.consumer is not None else fed
        if comm.is_root:
            self._service_root(comm)
            if self.display is not None:
                if self.consumer is not None:
                    self.display.update(0, fed, done)
                for n in comm.lost:
                    self.display.finished(n)
                self.display.show()
        elif self.reporter.due():
            comm.send(0, Kind.PROGRESS, {"recv": fed, "done": done})

    def _wait_extraction(self, comm: Comm, consumer: Consumer, my: NodeStatus) -> None:
        """Until the extraction ends; it fails when it makes no progress for ``timeout``."""
        last, seen = time.monotonic(), -1
        while consumer.is_alive():
            consumer.join(0.2)
            now = time.monotonic()
            if consumer.stream.consumed != seen:
                last, seen = now, consumer.stream.consumed
            elif now - last > self.spec.timeout:
                consumer.stream.abort()
                consumer.join(5)
                my.fail(f"extraction made no progress for transfer.timeout="
                        f"{self.spec.timeout:g}s")
                return
            self._tick(comm, comm.position)
        if consumer.error is not None:
            my.fail(one_line(consumer.error))

    # -- 4. verify, relocate, install ----------------------------------------------------
    def _install(self, digest: str) -> None:
        node = self.node
        assert node is not None
        tree = node.staging
        if not node.file_mode:
            report = self.consumer.report if self.consumer else None
            hints = report.hints if report is not None else None
            if report is not None and report.top:
                tree = os.path.join(node.staging, report.top)
                hints = hints.below(report.top) if hints is not None else None
            from ..formats.manifest import Manifest

            try:
                manifest = Manifest.load(tree)
            except (OSError, ValueError, TypeError):
                manifest = None
            self.kind = manifest.kind if manifest is not None else str(detect_kind(tree))
            if self.spec.relocate and self.kind in (EnvKind.venv, EnvKind.conda):
                t0 = time.perf_counter()
                from ..relocate import relocate

                rep = relocate(tree, new_prefix=node.dst, manifest=manifest,
                               hints=hints if manifest is None else None)
                log.info("relocated %d files to %s", rep.files_rewritten, node.dst)
                self.phases["relocate"] = time.perf_counter() - t0
        node.install(tree, digest)

    # -- 5. the outcome ------------------------------------------------------------------
    def _finish(self, comm: Comm, plan: Plan, my: NodeStatus, digest: str, t_start: float,
                run_dir: str | None) -> TransferResult | None:
        spec = self.spec
        result = None
        final: dict[str, Any]
        if comm.is_root:
            self.statuses[0] = my
            statuses = self._gather(comm)
            status, code = overall(statuses, spec)
            failed = [s.host for s in statuses if s.failed]
            nfailed = len(failed)
            # the outcome is recorded before any other rank hears it (and may exit)
            self.phases["total"] = time.perf_counter() - t_start
            result = TransferResult(
                status=status, exit_code=code, dst=spec.dst, nodes=comm.nnodes,
                ranks=comm.size, backend=str(spec.backend),
                archive={"path": plan.src, "bytes": plan.bytes, "codec": plan.codec,
                         "xxh3_128": digest or None},
                phases=self.phases, per_node=statuses, kind=self.kind,
                config={"transfer": spec.settings, "machine": spec.machine,
                        "launcher": spec.launcher, "backend": str(spec.backend)})
            if self.display is not None:
                self.display.close()
                self.display = None
            if run_dir:
                write_results(result, run_dir)
            print(summary(result), flush=True)
            # the whole list where nodes write it (partial), a few names for the message
            final = {"status": str(status), "exit_code": code, "nfailed": nfailed,
                     "clean": self.clean,
                     "failed": failed if status is Status.partial else failed[:LIST_FAILED]}
            for n in range(1, comm.nnodes):
                comm.send(n, Kind.FINAL, final)
        else:
            comm.send(0, Kind.STATUS, my.to_wire())
            final = self._await_final(comm)
            comm.goodbye()
            status, code = Status(final["status"]), int(final["exit_code"])
            failed = [str(h) for h in final.get("failed") or []]
            nfailed = int(final.get("nfailed") or len(failed))
            self.clean = bool(final.get("clean"))
        if not my.failed:
            update_failed_hosts(spec.dst, status, failed)
        if self.node is not None:
            self.node.unlock()
        comm.node_bcast_obj({"status": str(status), "exit_code": code, "error": my.error,
                             "clean": self.clean})
        comm.flush_mail(min(spec.timeout, 5.0))
        if not comm.is_root and code:
            more = nfailed - len(failed)
            raise TransferError(my.error or f"the transfer {status} on "
                                f"{', '.join(failed) or 'another node'}"
                                + (f" and {more} more node(s)" if more > 0 else ""))
        return result

    def _service_root(self, comm: Comm) -> list[int]:
        """Rank 0: take in progress and statuses that arrived; the nodes whose status came."""
        came = []
        for src, kind, msg in comm.take(Kind.PROGRESS, Kind.STATUS):
            if kind is Kind.PROGRESS:
                if self.display is not None:
                    self.display.update(src, msg.get("recv"), msg.get("done"))
            else:
                try:
                    self.statuses[src] = NodeStatus.from_wire(msg)
                except (TypeError, ValueError, KeyError):
                    self.statuses[src] = NodeStatus(host=comm.node_hosts[src],
                                                    status=Status.failed,
                                                    error="sent a status rank 0 cannot read")
                came.append(src)
                if self.display is not None:
                    self.display.finished(src)
        return came

    def _gather(self, comm: Comm) -> list[NodeStatus]:
        """Rank 0: every node's status; a node from which nothing was heard for ``timeout``
        (or that was left out of the broadcast) is failed. Nodes that reported already are
        kept alive with KEEPALIVE while they wait. O(1) per message, O(nodes) twice a second."""
        t0 = time.monotonic()
        every = max(1.0, self.spec.timeout / 3)
        alive_sent = checked = t0
        pending = set(range(1, comm.nnodes)) - set(self.statuses)
        while pending:
            pending.difference_update(self._service_root(comm))
            now = time.monotonic()
            if now - checked > 0.5 or not pending:
                checked = now
                for n in sorted(pending):
                    why = comm.lost.get(n)
                    if why is None and \
                            now - max(t0, comm.last_heard.get(n, 0.0)) > self.spec.timeout:
                        why = (f"no word from this node for transfer.timeout="
                               f"{self.spec.timeout:g}s (it is stopped, gone or stuck)")
                    if why is not None:
                        self.clean = False
                        self.statuses[n] = NodeStatus(host=comm.node_hosts[n],
                                                      status=Status.failed, error=why)
                        pending.discard(n)
                        if self.display is not None:
                            self.display.finished(n)
            if now - alive_sent > every:
                alive_sent = now
                for n in self.statuses:
                    if n:
                        comm.send(n, Kind.KEEPALIVE, {})
            if self.display is not None:
                self.display.show()
            if pending:
                time.sleep(0.005)
        for n, why in comm.lost.items():  # a lost node that reported later keeps its word
            self.clean = False
            if self.statuses[n].status is not Status.failed:
                self.statuses[n].fail(why)
        return [self.statuses[n] for n in range(comm.nnodes)]

    def _await_final(self, comm: Comm) -> dict[str, Any]:
        """A leader: rank 0's final word; rank 0 says it is alive every timeout/3."""
        deadline = time.monotonic() + self.spec.timeout
        while True:
            for _src, kind, msg in comm.take(Kind.FINAL, Kind.KEEPALIVE):
                if kind is Kind.FINAL and "status" in msg:
                    try:
                        Status(msg["status"])
                        return msg
                    except ValueError:
                        pass
                deadline = time.monotonic() + self.spec.timeout
            if time.monotonic() > deadline:
                raise CommTimeout(f"rank 0 sent no outcome for transfer.timeout="
                                  f"{self.spec.timeout:g}s (it is stopped, gone or stuck)")
            time.sleep(0.005)

