"""The run's outcome: the overall status from every node's, ``results.json``, the summary
rank 0 prints, and ``<dst>.failed-hosts`` after a partial run."""

from __future__ import annotations

import math
import os
import socket
from datetime import datetime, timezone
from typing import Any

from .. import __version__
from ..config import Status, format_size
from ..envkind import EnvKind, activation_hint
from ..errors import EXIT_FAILURE
from ..fsutil import write_json_atomic
from ..log import get_logger
from .spec import RESULTS_FILE, NodeStatus, TransferResult, WorkerSpec

log = get_logger(__name__)

FAILED_HOSTS_SUFFIX = ".failed-hosts"


def overall(statuses: list[NodeStatus], spec: WorkerSpec) -> tuple[Status, int]:
    """The run's status and exit code: ``partial`` (exit 0) only when the user allowed fewer
    nodes than all (``min_success_nodes`` / ``min_success_fraction``) and enough succeeded."""
    n = len(statuses)
    failed = sum(s.failed for s in statuses)
    if not failed:
        skipped = all(s.status is Status.skipped for s in statuses)
        return (Status.skipped if skipped else Status.ok), 0
    good = n - failed
    need = n
    if spec.min_success_nodes is not None:
        need = min(need, spec.min_success_nodes)
    if spec.min_success_fraction is not None:
        need = min(need, math.ceil(spec.min_success_fraction * n))
    if good and good >= need and need < n:
        return Status.partial, 0
    return Status.failed, EXIT_FAILURE


def to_json(result: TransferResult) -> dict[str, Any]:
    total = result.phases.get("total") or 0.0
    return {
        "ezpz_version": __version__,
        "host": socket.gethostname(),
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "status": str(result.status),
        "exit_code": result.exit_code,
        "config": result.config,
        "nodes": result.nodes,
        "ranks": result.ranks,
        "archive": result.archive,
        "dst": result.dst,
        "kind": result.kind,
        "phases": {k: round(v, 6) for k, v in result.phases.items()},
        "throughput_mb_s": round(result.archive.get("bytes", 0) / total / 1e6, 3) if total else 0.0,
        "per_node": [n.to_wire() for n in result.per_node],
        "failed_hosts": result.failed_hosts,
    }


def write_results(result: TransferResult, run_dir: str) -> str:
    os.makedirs(run_dir, exist_ok=True)
    path = os.path.join(run_dir, RESULTS_FILE)
    write_json_atomic(path, to_json(result))
    return path


def failed_hosts_path(dst: str) -> str:
    """``<dst>.failed-hosts``: the hosts a partial run left out, one per line."""
    return os.path.abspath(dst).rstrip("/") + FAILED_HOSTS_SUFFIX


def update_failed_hosts(dst: str, status: Status, statuses: list[NodeStatus]) -> None:
    """On a node that holds dst: list the failed hosts after a partial run (so that later
    launches can leave them out); remove the stale list after a clean run."""
    path = failed_hosts_path(dst)
    try:
        if status is Status.partial:
            tmp = f"{path}.{os.getpid()}"
            with open(tmp, "w") as fh:
                fh.writelines(f"{s.host}\n" for s in statuses if s.failed)
            os.replace(tmp, path)
        elif status in (Status.ok, Status.skipped) and os.path.lexists(path):
            os.unlink(path)
    except OSError as exc:
        log.warning("cannot update %s: %s", path, exc.strerror or exc)


def summary(result: TransferResult) -> str:
    """The lines rank 0 prints: the run, one row per node, the phases, how to activate."""
    rows = [("host", "status", "seconds", "MB/s", "peak RSS MB", "error")]
    for n in result.per_node:
        rows.append((n.host, str(n.status), f"{n.seconds:.2f}", f"{n.mb_s:.1f}",
                     f"{n.rss_mb:.0f}", n.error or ""))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:5], widths)) + ("  " + r[5] if r[5] else "")
             for r in rows]
    ph = ", ".join(f"{k} {v:.2f}s" for k, v in result.phases.items())
    total = result.phases.get("total") or 0
    rate = result.archive["bytes"] / total / 1e6 if total else 0.0
    out = [f"transfer {result.status}: {result.archive['path']} "
           f"({format_size(result.archive['bytes'])}, {result.archive['codec']}) -> "
           f"{result.dst} on {result.nodes} node(s), {result.ranks} rank(s), "
           f"backend {result.backend}, {rate:.1f} MB/s", *lines, f"phases: {ph}"]
    if result.exit_code == 0 and result.kind in (EnvKind.venv, EnvKind.conda):
        out.append(f"activate with: {activation_hint(result.kind, result.dst)}")
    return "\n".join(out)


def one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:1000]


def activation_for(results: dict[str, Any], kind: str | None = None) -> str | None:
    """How to activate what ``results.json`` says was delivered (None without a dst)."""
    dst = results.get("dst")
    if not dst:
        return None
    return activation_hint(results.get("kind") or kind or EnvKind.venv, dst)
