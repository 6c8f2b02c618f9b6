"""The run's outcome: the overall status from every node's, ``results.json``, the summary
rank 0 prints, and ``<dst>.failed-hosts`` after a partial run.

Rank 0 holds one :class:`~ezpz.transfer.spec.NodeStatus` per node (O(nodes), nothing
else grows with the job); ``results.json`` keeps every node; the console shows one row per
node up to :data:`TABLE_ROWS` nodes and a summary beyond (counts, fastest and slowest nodes,
the failures)."""

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
#: Nodes up to which the summary has one row per node.
TABLE_ROWS = 32
#: Failed nodes named one per line in the summary of a larger run.
LIST_FAILED = 20


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


def rate_mb_s(result: TransferResult) -> float | None:
    """Archive MB per second of the whole run; None when nothing was delivered (a failed or
    skipped run has no rate)."""
    total = result.phases.get("total") or 0.0
    if result.status not in (Status.ok, Status.partial) or not total:
        return None
    return float(result.archive.get("bytes", 0)) / total / 1e6


def to_json(result: TransferResult) -> dict[str, Any]:
    rate = rate_mb_s(result)
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
        "throughput_mb_s": round(rate, 3) if rate is not None else None,
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


def update_failed_hosts(dst: str, status: Status, failed_hosts: list[str]) -> None:
    """On a node that holds dst: list the failed hosts after a partial run (so that later
    launches can leave them out); remove the stale list after a clean run."""
    path = failed_hosts_path(dst)
    try:
        if status is Status.partial:
            tmp = f"{path}.{os.getpid()}"
            with open(tmp, "w") as fh:
                fh.writelines(f"{h}\n" for h in failed_hosts)
            os.replace(tmp, path)
        elif status in (Status.ok, Status.skipped) and os.path.lexists(path):
            os.unlink(path)
    except OSError as exc:
        log.warning("cannot update %s: %s", path, exc.strerror or exc)


def summary(result: TransferResult) -> str:
    """The lines rank 0 prints: the run, the nodes (a row each, or a summary of many), the
    phases, how to activate."""
    rate = rate_mb_s(result)
    out = [f"transfer {result.status}: {result.archive['path']} "
           f"({format_size(result.archive['bytes'])}, {result.archive['codec']}) -> "
           f"{result.dst} on {result.nodes} node(s), {result.ranks} rank(s), "
           f"backend {result.backend}" + (f", {rate:.1f} MB/s" if rate is not None else "")]
    if len(result.per_node) <= TABLE_ROWS:
        out += _table(result.per_node)
    else:
        out += _digest(result.per_node)
    ph = ", ".join(f"{k} {v:.2f}s" for k, v in result.phases.items())
    out.append(f"phases: {ph}")
    if result.exit_code == 0 and result.kind in (EnvKind.venv, EnvKind.conda):
        out.append(f"activate with: {activation_hint(result.kind, result.dst)}")
    return "\n".join(out)


def _table(nodes: list[NodeStatus]) -> list[str]:
    rows = [("host", "status", "seconds", "MB/s", "peak RSS MB", "error")]
    for n in nodes:
        rows.append((n.host, str(n.status), f"{n.seconds:.2f}",
                     f"{n.mb_s:.1f}" if n.status is Status.ok else "-",
                     f"{n.rss_mb:.0f}", n.error or ""))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    return ["  ".join(c.ljust(w) for c, w in zip(r[:5], widths)) + ("  " + r[5] if r[5] else "")
            for r in rows]


def _digest(nodes: list[NodeStatus]) -> list[str]:
    """Many nodes in a few lines: counts, fastest and slowest, memory, spills, failures."""
    counts: dict[str, int] = {}
    for n in nodes:
        counts[str(n.status)] = counts.get(str(n.status), 0) + 1
    lines = ["nodes: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))]
    done = sorted((n for n in nodes if n.status is Status.ok), key=lambda n: n.seconds)
    if done:
        med = done[len(done) // 2].seconds
        lines.append("fastest: " + ", ".join(f"{n.host} {n.seconds:.2f}s" for n in done[:3])
                     + f"; median {med:.2f}s; slowest: "
                     + ", ".join(f"{n.host} {n.seconds:.2f}s" for n in reversed(done[-3:])))
    top = max(nodes, key=lambda n: n.rss_mb)
    lines.append(f"peak RSS: max {top.rss_mb:.0f} MB ({top.host})")
    spilled = [n for n in nodes if n.spilled]
    if spilled:
        most = max(spilled, key=lambda n: n.spilled)
        lines.append(f"spilled (extraction behind the broadcast): {len(spilled)} node(s), "
                     f"most {format_size(most.spilled)} ({most.host})")
    failed = [n for n in nodes if n.failed]
    if failed:
        lines.append(f"failed ({len(failed)}):")
        lines += [f"  {n.host}: {n.error or 'failed'}" for n in failed[:LIST_FAILED]]
        if len(failed) > LIST_FAILED:
            lines.append(f"  ... and {len(failed) - LIST_FAILED} more (every node is in "
                         "results.json)")
    return lines


def one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:1000]


def activation_for(results: dict[str, Any], kind: str | None = None) -> str | None:
    """How to activate what ``results.json`` says was delivered (None without a dst)."""
    dst = results.get("dst")
    if not dst:
        return None
    return activation_hint(results.get("kind") or kind or EnvKind.venv, dst)
