"""One rank's part in a transfer: the phases, in order, with every failure reported.

1. the plan: rank 0 reads what it will send; every rank learns it (or the user's error);
2. every node leader takes the lock next to ``dst``, checks it and makes its staging
   directory; the node's other ranks wait for their leader's final word;
3. the stream (:mod:`ezpz.transfer.stream`): rank 0 broadcasts, the leaders extract;
4. each leader verifies, relocates and swaps the tree into ``dst`` (:mod:`.node`);
5. every leader learns every node's status; rank 0 writes ``results.json`` and prints the
   summary (:mod:`.results`).

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
from ..fsutil import peak_rss_mb
from ..log import get_logger
from .comm import Comm, CommTimeout, make_comm
from .node import Action, NodeInstall, check_dst_on_node
from .plan import make_plan
from .results import one_line, overall, summary, update_failed_hosts, write_results
from .spec import NodeStatus, Plan, TransferResult, WorkerSpec
from .stream import Consumer, LeaderSide, RootSide, pump

log = get_logger(__name__)

#: How the process ends when it must end now (a timeout or a signal): no finalisation of
#: MPI or torch, which would wait for the peer that is gone.
Fatal = Callable[[int], Any]


class Transfer:
    """One run of the collective on this rank (see :func:`ezpz.transfer.run_transfer`)."""

    def __init__(self, spec: WorkerSpec, *, comm: Comm | None = None,
                 fatal: Fatal = os._exit) -> None:
        self.spec = spec
        self._comm = comm
        self.fatal = fatal
        self.node: NodeInstall | None = None
        self.consumer: Consumer | None = None
        self.phases = {"read": 0.0, "broadcast": 0.0, "extract": 0.0, "verify": 0.0,
                       "relocate": 0.0, "total": 0.0}
        self.kind: str | None = None
        self.host = ""

    # -- emergency exits (timeout watchdog, signals) ------------------------------------
    def _emergency_cleanup(self) -> None:
        if self.consumer is not None:
            self.consumer.stream.abort()
            if self.consumer.is_alive() and self.consumer is not threading.current_thread():
                self.consumer.join(5)  # let the extractor stop before its tree is removed
        if self.node is not None:
            self.node.cleanup()

    def _on_timeout(self, what: str) -> None:
        log.critical("%s: timed out after %gs in %s; removing staging and exiting",
                     self.host, self.spec.timeout, what)
        self._emergency_cleanup()
        self.fatal(EXIT_FAILURE)

    def _on_signal(self, signum: int, _frame: Any) -> None:
        log.critical("%s: received signal %d; removing staging and exiting", self.host, signum)
        self._emergency_cleanup()
        self.fatal(128 + signum)

    # -- the run -------------------------------------------------------------------------
    def run(self, run_dir: str | None = None) -> TransferResult | None:
        t_start = time.perf_counter()
        spec = self.spec
        comm = self._comm or make_comm(spec.backend, spec.timeout,
                                       dist_backend=spec.dist_backend, device=spec.device)
        self.host = comm.host
        comm.set_timeout_handler(self._on_timeout)
        old_handlers = {s: signal.signal(s, self._on_signal)
                        for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
                        if threading.current_thread() is threading.main_thread()}
        try:
            try:
                return self._run(comm, run_dir, t_start)
            except CommTimeout as exc:
                log.critical("%s: %s", self.host, exc)
                self._emergency_cleanup()
                sys.stderr.flush()
                self.fatal(EXIT_FAILURE)
                return None
            except EzpzError:
                self._emergency_cleanup()
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
            comm.close()

    def _run(self, comm: Comm, run_dir: str | None, t_start: float
             ) -> TransferResult | None:
        spec = self.spec
        my = NodeStatus(host=comm.host)
        plan = self._share_plan(comm)
        if not comm.is_leader:
            nchunks = max(1, math.ceil(plan.bytes / spec.chunk_bytes))
            final = comm.node_bcast_obj(None, timeout=spec.timeout * (nchunks + 4))
            if final.get("exit_code"):
                raise TransferError(final.get("error") or f"the transfer {final.get('status')}")
            return None

        action = self._prepare(plan, my) if check_dst_on_node(comm, spec, my, run_dir) \
            else Action.fail
        actions = comm.allgather_leaders(str(action))
        if action is Action.skip:
            my.status = Status.skipped
        digest = ""
        if Action.go in actions:
            digest = self._stream(comm, plan, action is Action.go, my)
        if action is Action.go and not my.failed:
            try:
                self._install(digest)
            except (EzpzError, OSError) as exc:
                my.fail(one_line(exc))
        if my.failed and self.node is not None:
            self.node.cleanup()
        my.seconds = time.perf_counter() - t_start
        my.mb_s = plan.bytes / my.seconds / 1e6 if my.seconds and my.status is Status.ok else 0.0
        my.rss_mb = round(peak_rss_mb(), 1)
        if my.failed:
            log.critical("%s: %s", my.host, my.error)

        # every leader learns every node's status; the node's other ranks from the leader
        statuses = [NodeStatus.from_wire(s) for s in comm.allgather_leaders(my.to_wire())]
        status, code = overall(statuses, spec)
        if not my.failed:
            update_failed_hosts(spec.dst, status, statuses)
        if self.node is not None:
            self.node.unlock()
        comm.node_bcast_obj({"status": str(status), "exit_code": code, "error": my.error})
        self.phases["total"] = time.perf_counter() - t_start
        result = TransferResult(
            status=status, exit_code=code, dst=spec.dst, nodes=comm.nnodes, ranks=comm.size,
            backend=str(spec.backend),
            archive={"path": plan.src, "bytes": plan.bytes, "codec": plan.codec,
                     "xxh3_128": digest or None},
            phases=self.phases, per_node=statuses, kind=self.kind,
            config={"transfer": spec.settings, "machine": spec.machine,
                    "launcher": spec.launcher, "backend": str(spec.backend)})
        if not comm.is_root:
            if code:
                raise TransferError(my.error or f"the transfer {status} on "
                                    f"{', '.join(result.failed_hosts)}")
            return None
        if run_dir:
            write_results(result, run_dir)
        print(summary(result), flush=True)
        return result

    # -- 1. the plan -------------------------------------------------------------------
    def _share_plan(self, comm: Comm) -> Plan:
        """Rank 0's plan, on every rank; every rank raises the same error when it failed."""
        msg: dict[str, Any] = {}
        if comm.is_leader:
            mine = None
            if comm.is_root:
                try:
                    mine = {"plan": make_plan(self.spec.src, self.spec.decompress).to_wire()}
                except ConfigError as exc:
                    mine = {"error": str(exc), "usage": True}
            msg = comm.allgather_leaders(mine)[0]
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
                self.consumer = Consumer(self.node, plan, spec)
            except OSError as exc:  # e.g. the kept archive copy cannot be created
                my.fail(one_line(exc))  # still take part in the broadcast, write nothing
            else:
                self.consumer.start()
        side = RootSide(spec, plan) if comm.is_root else LeaderSide(spec, plan, comm.host)
        digest, err = pump(comm, side, self.consumer, spec.timeout, self.phases)
        if err:
            my.fail(err)
            if comm.is_root:
                log.critical("%s: %s; aborting the transfer on every node", comm.host, err)
        consumer = self.consumer
        if consumer is not None:
            consumer.stream.close_input()
            consumer.join(spec.timeout)
            if consumer.is_alive():
                consumer.stream.abort()
                consumer.join(5)
                my.fail(f"extraction did not finish within transfer.timeout={spec.timeout:g}s")
            elif consumer.error is not None:
                my.fail(one_line(consumer.error))
            self.phases["extract"] = consumer.seconds
        return digest

    # -- 4. verify, relocate, install ----------------------------------------------------
    def _install(self, digest: str) -> None:
        node = self.node
        assert node is not None
        tree = node.staging
        if not node.file_mode:
            report = self.consumer.report if self.consumer else None
            if report is not None and report.top:
                tree = os.path.join(node.staging, report.top)
            from ..formats.manifest import Manifest

            try:
                manifest = Manifest.load(tree)
            except (OSError, ValueError, TypeError):
                manifest = None
            self.kind = manifest.kind if manifest is not None else str(detect_kind(tree))
            if self.spec.relocate and self.kind in (EnvKind.venv, EnvKind.conda):
                t0 = time.perf_counter()
                from ..relocate import relocate

                rep = relocate(tree, new_prefix=node.dst, manifest=manifest)
                log.info("relocated %d files to %s", rep.files_rewritten, node.dst)
                self.phases["relocate"] = time.perf_counter() - t0
        node.install(tree, digest)
