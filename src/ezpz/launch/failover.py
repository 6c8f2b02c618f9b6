"""Which node made an attempt fail, and the next plan with a spare in its place.

A node is taken for bad when, in a failed attempt,

1. a line of output matches one of ``machine.bad_node_patterns``: the node is the pattern's
   ``host`` group when it has one (a host name or address of this launch), else the node of
   the rank that printed the line (from the rank wrapper's record);
2. a rank was killed by SIGBUS or SIGKILL that it did not get from the launcher (a hardware
   memory error; the node's OOM killer or health check) on some but not all of the hosts.

An exit code alone never blames a node: a Python exception on every rank, or on rank 0 only,
is the program's. :func:`failover_plan` is the one function a caller needs to move a launch
off failed hosts (``ezpz-launch`` after an attempt; a delivery retry may call it too).
"""

from __future__ import annotations

import ipaddress
import json
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import LaunchError
from ..log import get_logger
from .hosts import short_hostname
from .output import HostHit
from .plan import LaunchPlan, build_plan

log = get_logger(__name__)

#: Signals that, when they kill a rank without coming from the launcher, point at its node.
NODE_SIGNALS = ("SIGBUS", "SIGKILL")


def _key(name: str) -> str:
    return short_hostname(name).lower()


def read_rank_records(rank_dir: str | None) -> list[dict[str, Any]]:
    """The rank wrapper's records of failed ranks (``rank-<r>.json``), in rank order."""
    if not rank_dir:
        return []
    out = []
    for path in sorted(Path(rank_dir).glob("rank-*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict):
            out.append(data)
    out.sort(key=lambda r: (r.get("rank") is None, r.get("rank") or 0))
    return out


class HostMatcher:
    """Map a name seen at run time (a hostname, a Slurm node name, an address) to one of the
    launch's hosts."""

    def __init__(self, hosts: Sequence[str]) -> None:
        self.hosts = list(hosts)
        self._by_key = {_key(h): h for h in self.hosts}
        self._by_addr: dict[str, str] | None = None

    def match(self, name: str | None) -> str | None:
        if not name:
            return None
        host = self._by_key.get(_key(name))
        if host is not None:
            return host
        try:
            addr = str(ipaddress.ip_address(name.strip()))
        except ValueError:
            return None
        if self._by_addr is None:  # resolve the launch's hosts once, only when needed
            self._by_addr = {}
            for h in self.hosts:
                try:
                    self._by_addr.setdefault(socket.gethostbyname(h), h)
                except OSError:
                    pass
        return self._by_addr.get(addr)


@dataclass
class Diagnosis:
    """What a failed attempt says about its nodes."""

    #: Bad hosts of the launch and why each is taken for bad.
    bad: dict[str, str] = field(default_factory=dict)
    #: One line per failed rank (``rank 3 on nodeB: killed by SIGKILL``), for the log.
    ranks: list[str] = field(default_factory=list)


def _rank_host(record: dict[str, Any], plan: LaunchPlan, matcher: HostMatcher) -> str | None:
    for name in (record.get("node"), record.get("host")):
        host = matcher.match(name)
        if host is not None:
            return host
    # All ranks on this machine (simulated hosts): the launcher places ranks in blocks of
    # processes-per-host, so the rank number says which host of the plan it stood for.
    rank = record.get("rank")
    per_host = plan.topology.ngpu_per_host
    if plan.local_only and isinstance(rank, int) and per_host > 0 and rank // per_host < len(plan.hosts):
        return plan.hosts[rank // per_host]
    return None


def _describe(record: dict[str, Any], host: str | None) -> str:
    where = f"rank {record.get('rank')} on {host or record.get('host') or '?'}"
    if record.get("signal"):
        how = f"killed by {record['signal']}"
        if record.get("stopped_by"):
            how += f" (after the launcher's {record['stopped_by']})"
    else:
        how = f"exit code {record.get('exit_code')}"
    return f"{where}: {how}"


def diagnose(plan: LaunchPlan, host_hits: Iterable[HostHit], records: Sequence[dict[str, Any]]
             ) -> Diagnosis:
    """The bad hosts of a failed attempt (see the module doc) and a line per failed rank."""
    matcher = HostMatcher(plan.hosts)
    out = Diagnosis()
    for hit in host_hits:
        host = matcher.match(hit.host)
        if host is None:
            log.info("a bad-node pattern names %s, which is not a host of this launch: %s",
                     hit.host, hit.line)
            continue
        out.bad.setdefault(host, f"output matched {hit.pattern!r}: {hit.line!r}")
    killed: dict[str, str] = {}
    for record in records:
        host = _rank_host(record, plan, matcher)
        if record.get("exit_code") not in (0, None) or record.get("signal"):
            out.ranks.append(_describe(record, host))
        for hit in record.get("patterns") or []:
            named = matcher.match(hit.get("host")) if hit.get("host") else host
            if named is None:
                continue
            index = hit.get("pattern")
            pattern = (plan.bad_node_patterns[index] if isinstance(index, int)
                       and 0 <= index < len(plan.bad_node_patterns) else "?")
            out.bad.setdefault(named, f"rank {record.get('rank')} printed a line matching "
                                      f"{pattern!r}: {hit.get('line')!r}")
        if record.get("signal") in NODE_SIGNALS and not record.get("stopped_by") and host:
            killed.setdefault(host, f"rank {record.get('rank')} was killed by {record['signal']}")
    if killed and set(killed) != set(plan.hosts):
        for host, why in killed.items():
            out.bad.setdefault(host, why)
    elif killed:
        log.info("ranks were killed on every host (%s): that points at the program, not a node",
                 ", ".join(killed.values()))
    return out


def failover_plan(plan: LaunchPlan, failed_hosts: Iterable[str]) -> LaunchPlan:
    """The next plan for ``plan`` with each of ``failed_hosts`` replaced by a spare.

    Failed hosts are compared with the launch's hosts on the short name; names that are not
    hosts of the launch are ignored. The new hosts keep the job's node order (so the first
    host, which holds rank 0 and the rendezvous, is where the launcher puts rank 0); srun
    gets ``--nodelist`` and ``--exclude``, mpiexec a new node file. Raises
    :class:`LaunchError` when no failed host belongs to the launch or there are not enough
    spares left.
    """
    if plan.request is None:
        raise LaunchError("this launch plan was not made by plan_launch: it cannot be rebuilt")
    wanted = {_key(h) for h in failed_hosts if h}
    bad = [h for h in plan.hosts if _key(h) in wanted]
    if not bad:
        raise LaunchError(f"none of the failed hosts ({', '.join(sorted(wanted)) or 'none'}) "
                          "is a host of this launch")
    if len(bad) > len(plan.spares):
        raise LaunchError(f"{len(bad)} host{'s' if len(bad) > 1 else ''} failed "
                          f"({', '.join(bad)}) but {len(plan.spares) or 'no'} spare"
                          f"{'s' if len(plan.spares) != 1 else ''} left")
    spares = list(plan.spares)
    replaced = dict(plan.replaced)
    for host in bad:
        replaced[host] = spares.pop(0)
    order = {h: i for i, h in enumerate(plan.hostlist.hosts)}
    hosts = sorted((replaced.get(h, h) for h in plan.hosts), key=lambda h: order.get(h, len(order)))
    new = build_plan(plan.request, plan.hostlist, plan.topology, hosts, spares=spares,
                     excluded=[*plan.excluded, *bad], attempt=plan.attempt + 1)
    new.replaced = replaced
    return new
