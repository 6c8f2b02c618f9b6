"""Node discovery and machine detection.

Host discovery (hostfile, PBS, Slurm ranges, localhost) lives here with machine detection:
both read the scheduler environment.
"""

from __future__ import annotations

import ipaddress
import itertools
import os
import re
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..errors import LaunchError
from ..log import get_logger

log = get_logger(__name__)

#: Where PBS keeps a job's node file when PBS_NODEFILE is not exported (``<dir>/$PBS_JOBID``).
PBS_AUX_DIR = "/var/spool/pbs/aux"

#: Machines with a preset under conf/machine/ that ``machine=auto`` can pick.
KNOWN_MACHINES = ("local", "aurora", "sunspot", "polaris", "slurm")


def short_hostname(name: str) -> str:
    """``x1921c7s1b0n0-hsn0.hsn.cm.sunspot.alcf.anl.gov`` → ``x1921c7s1b0n0``.

    IP addresses are returned unchanged.
    """
    try:
        return str(ipaddress.ip_address(name.strip()))
    except ValueError:
        pass
    short = name.strip().split(".", 1)[0]
    if short.endswith("-hsn0"):
        short = short[: -len("-hsn0")]
    return short


#: Cray EX/XC compute node names: x<cabinet>c<chassis>s<slot>b<board>n<node>.
_CRAY_NODE = re.compile(r"^x\d{4}c\d+s\d+b\d+n\d+$")
#: ALCF machines by the first digit of their cabinet number.
_CRAY_MACHINES = {"4": "aurora", "1": "sunspot", "3": "polaris"}


def detect_machine(hostname: str | None = None, environ: dict[str, str] | None = None) -> str:
    """Pick a machine preset from the hostname and the scheduler environment.

    Aurora compute nodes are ``x4…``, Sunspot ``x1…`` (and its ``uan…`` login nodes),
    Polaris ``x3…``. On any other host inside a Slurm allocation: ``slurm``. Else ``local``.
    On a login node, PBS's ``PBS_O_HOST`` (the submitting host) is looked at too. Compute
    nodes are recognised by the Cray node-name pattern (``x4711c1s2b0n0``), so an ordinary
    host that merely starts with ``x1`` is not taken for an ALCF machine.
    """
    env = os.environ if environ is None else environ
    names = [hostname if hostname is not None else socket.gethostname()]
    for var in ("PBS_O_HOST",):
        if env.get(var):
            names.append(env[var])
    for name in names:
        short = short_hostname(name).lower()
        if _CRAY_NODE.match(short) and short[1] in _CRAY_MACHINES:
            return _CRAY_MACHINES[short[1]]
        if short.startswith("uan-") or short.startswith("uan0"):
            return "sunspot"
        lowered = name.lower()
        for machine in ("aurora", "sunspot", "polaris"):
            if machine in lowered:
                return machine
    if env.get("SLURM_JOB_ID") or env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST"):
        return "slurm"
    return "local"



# --------------------------------------------------------------------------------------
# host discovery
# --------------------------------------------------------------------------------------
@dataclass
class HostList:
    """The job's nodes, in order, one entry per node (names as the scheduler gave them)."""

    hosts: list[str]
    #: Where they came from, for messages: ``launcher.hostfile=...``, ``PBS_NODEFILE=...``,
    #: ``SLURM_JOB_NODELIST=...`` or ``localhost``.
    source: str
    #: The file they were read from (None for Slurm and localhost).
    hostfile: str | None = None
    #: The file's lines (after blank/comment removal), to tell whether it can be used as is.
    lines: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.hosts)


def unique_hosts(names: Sequence[str]) -> list[str]:
    """Drop repeats (PBS lists a host once per slot), keeping the first spelling and the order.

    Hosts are compared on their short name with ``-hsn0`` stripped, so ``x1-hsn0.hsn.cm...``
    and ``x1.hostmgmt...`` are one node.
    """
    seen: set[str] = set()
    out: list[str] = []
    for name in names:
        key = short_hostname(name).lower()
        if key and key not in seen:
            seen.add(key)
            out.append(name.strip())
    return out


def read_hostfile(path: str | os.PathLike[str], origin: str = "hostfile") -> list[str]:
    """Host names from a node file, one per line (blank lines and ``#`` comments skipped).

    Raises :class:`LaunchError` naming ``origin`` and the path when the file is missing,
    unreadable or empty.
    """
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise LaunchError(f"{origin}: {str(path)!r} does not exist") from None
    except IsADirectoryError:
        raise LaunchError(f"{origin}: {str(path)!r} is a directory, not a node file") from None
    except (PermissionError, OSError) as exc:
        raise LaunchError(f"{origin}: cannot read {str(path)!r} ({exc.strerror or exc})") from None
    lines = [line.split("#", 1)[0].strip() for line in text.splitlines()]
    names = [line.split()[0] for line in lines if line]
    if not names:
        raise LaunchError(f"{origin}: {str(path)!r} is empty (no host names)")
    return names


def exclude_hosts(hostlist: HostList, path: str | os.PathLike[str]) -> HostList:
    """``hostlist`` without the hosts named in ``path`` (one per line, e.g. the
    ``<dst>.failed-hosts`` file a partial transfer leaves), compared on the short name.

    A missing or unreadable file is an error; an empty one excludes nothing. Excluding every
    host is an error.
    """
    origin = "launcher.exclude_hosts"
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise LaunchError(f"{origin}: {str(path)!r} does not exist") from None
    except (PermissionError, IsADirectoryError, OSError) as exc:
        raise LaunchError(f"{origin}: cannot read {str(path)!r} ({exc.strerror or exc})") from None
    names = [line.split("#", 1)[0].strip() for line in text.splitlines()]
    drop = {short_hostname(n).lower() for n in names if n}
    kept = [h for h in hostlist.hosts if short_hostname(h).lower() not in drop]
    if not kept:
        raise LaunchError(f"{origin}: {str(path)!r} excludes every host of {hostlist.source}")
    return replace(hostlist, hosts=kept, source=f"{hostlist.source} minus {str(path)!r}")


_BRACKET = re.compile(r"\[([^\[\]]*)\]")


def _expand_ranges(body: str, text: str) -> list[str]:
    """``001-003,010`` → ['001', '002', '003', '010'] (zero padding kept)."""
    out: list[str] = []
    for part in body.split(","):
        part = part.strip()
        if not part:
            raise LaunchError(f"Slurm node list {text!r}: empty range in [{body}]")
        lo, sep, hi = part.partition("-")
        if not lo.isdigit() or (sep and not hi.isdigit()):
            raise LaunchError(f"Slurm node list {text!r}: bad range {part!r}")
        if not sep:
            out.append(lo)
            continue
        start, stop = int(lo), int(hi)
        if stop < start:
            raise LaunchError(f"Slurm node list {text!r}: range {part!r} goes backwards")
        width = len(lo)
        out.extend(str(i).zfill(width) for i in range(start, stop + 1))
    return out


def _split_top_level(text: str) -> list[str]:
    parts: list[str] = []
    cur: list[str] = []
    depth = 0
    for ch in text:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise LaunchError(f"Slurm node list {text!r}: unbalanced ']'")
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if depth != 0:
        raise LaunchError(f"Slurm node list {text!r}: unbalanced '['")
    parts.append("".join(cur))
    return [p.strip() for p in parts if p.strip()]


def expand_nodelist(text: str) -> list[str]:
    """Expand Slurm's compressed host list.

    ``nid[001-003,010],login01`` → nid001 nid002 nid003 nid010 login01; several bracket
    groups in one name (``r[1-2]n[01-02]``) expand as a product; zero padding is kept.
    """
    hosts: list[str] = []
    for item in _split_top_level(text.strip()):
        pieces: list[list[str]] = []
        pos = 0
        for m in _BRACKET.finditer(item):
            pieces.append([item[pos:m.start()]])
            pieces.append(_expand_ranges(m.group(1), text))
            pos = m.end()
        tail = item[pos:]
        if "[" in tail or "]" in tail:
            raise LaunchError(f"Slurm node list {text!r}: cannot parse {item!r}")
        pieces.append([tail])
        hosts.extend("".join(combo) for combo in itertools.product(*pieces))
    return hosts


def discover_hosts(hostfile: str | None = None, environ: Mapping[str, str] | None = None,
                   pbs_aux_dir: str = PBS_AUX_DIR, *, warn: bool = True) -> HostList:
    """The job's nodes. Looks, in order, at:

    1. ``hostfile`` (``launcher.hostfile=...``);
    2. ``PBS_NODEFILE``, then ``HOSTFILE`` in the environment;
    3. ``<pbs_aux_dir>/$PBS_JOBID`` when ``PBS_JOBID`` is set;
    4. ``SLURM_JOB_NODELIST``, then ``SLURM_NODELIST`` (compressed ranges expanded);
    5. this host alone (``localhost``), with a warning.

    A named file that is missing, unreadable or empty is an error naming where it looked.
    """
    env = os.environ if environ is None else environ
    candidates: list[tuple[str, str]] = []
    if hostfile:
        candidates.append(("launcher.hostfile", hostfile))
    for var in ("PBS_NODEFILE", "HOSTFILE"):
        if env.get(var):
            candidates.append((var, env[var]))
    if candidates:
        origin, path = candidates[0]
        lines = read_hostfile(path, origin)
        return HostList(unique_hosts(lines), f"{origin}={path}", str(path), lines)
    jobid = env.get("PBS_JOBID")
    if jobid:
        path = os.path.join(pbs_aux_dir, jobid)
        lines = read_hostfile(path, f"PBS_JOBID={jobid} (node file {path})")
        return HostList(unique_hosts(lines), f"PBS node file {path}", path, lines)
    for var in ("SLURM_JOB_NODELIST", "SLURM_NODELIST"):
        if env.get(var):
            hosts = unique_hosts(expand_nodelist(env[var]))
            if not hosts:
                raise LaunchError(f"{var}={env[var]!r} names no hosts")
            return HostList(hosts, f"{var}={env[var]}")
    if warn:
        log.warning("no hostfile, PBS_NODEFILE, HOSTFILE, PBS_JOBID or SLURM_JOB_NODELIST: "
                    "running on this host only (set launcher.hostfile=... for more)")
    return HostList(["localhost"], "localhost")


_LOCALHOST_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}


def _own_names() -> set[str]:
    names = set(_LOCALHOST_NAMES)
    for name in (socket.gethostname(), socket.getfqdn()):
        if name:
            names.add(name.lower())
            names.add(short_hostname(name).lower())
    return names


def is_local_host(name: str, own: set[str] | None = None) -> bool:
    """Whether ``name`` is this machine: localhost, a loopback address or its own hostname."""
    name = name.strip().lower()
    try:
        if ipaddress.ip_address(name).is_loopback:
            return True
    except ValueError:
        pass
    if name in _LOCALHOST_NAMES:
        return True
    own = _own_names() if own is None else own
    return name in own or short_hostname(name).lower() in own


def all_local(hosts: Sequence[str], own: set[str] | None = None) -> bool:
    """Whether every host is an alias of this machine (then nothing needs ssh)."""
    own = _own_names() if own is None else own
    return bool(hosts) and all(is_local_host(h, own) for h in hosts)
