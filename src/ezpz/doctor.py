"""``ezpz-doctor``: what would go wrong on this machine before a job finds out, each check in
one line with its fix.

- ``mpi``: mpi4py's MPI library against the ``mpiexec`` a launch would use (a PALS machine
  must not use the MPICH wheel's library or mpiexec; an Open MPI library under MPICH's
  hydra, or the other way round, never forms one job);
- ``tmp``: the free space where ``transfer.dst`` would land against what the archive's
  manifest says it unpacks to (with ``transfer.src``);
- ``interpreter``: the environment to pack (``env.prefix``, default this one) reads its
  interpreter or the base's packages from outside itself;
- ``editable``: editable installs in that environment;
- ``torch``: torch, torch.distributed and the machine's backend (gloo / nccl / xccl / ccl);
- ``hosts``: the job's nodes as a launch would find them;
- ``master_addr``: ``MASTER_ADDR`` (or the first host, which ezpz-launch would give the ranks)
  resolves.

:func:`run_checks` takes the schema dataclasses and returns one :class:`Check` per line.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from .config import LauncherConfig, MachineConfig, TarEnvConfig, TransferConfig, format_size
from .errors import ArchiveError, EzpzError

OK, WARN, FAIL, SKIP = "ok", "warn", "FAIL", "skip"


@dataclass
class Check:
    """One line of the report: the check, how it came out, what was found and the fix."""

    name: str
    status: str
    message: str

    @property
    def failed(self) -> bool:
        return self.status == FAIL

    def line(self) -> str:
        return f"{self.status:<4}  {self.name:<11}  {self.message}"


# --------------------------------------------------------------------------------------
# mpi
# --------------------------------------------------------------------------------------
_MPI_PROBE = """
import json, sys
try:
    import mpi4py
    mpi4py.rc.initialize = False
    mpi4py.rc.finalize = False
    from mpi4py import MPI
except Exception as exc:
    print(json.dumps({"error": f"{type(exc).__name__}: {exc}".splitlines()[0]}))
    sys.exit(0)
libs = sorted({l.split()[-1] for l in open("/proc/self/maps") if "libmpi" in l.split()[-1]})
print(json.dumps({"mpi4py": mpi4py.__version__, "library": MPI.Get_library_version(),
                  "libs": libs}))
"""


def mpi_family(text: str) -> str | None:
    """``cray``, ``openmpi``, ``intel``, ``mpich`` (hydra) or ``pals`` from an MPI library's
    version string or an ``mpiexec --version`` output; None when it cannot tell."""
    low = text.lower()
    if "cray mpich" in low or "cray-mpich" in low:
        return "cray"
    if "open mpi" in low or "openrte" in low or "open-mpi" in low:
        return "openmpi"
    if "intel(r) mpi" in low:
        return "intel"
    if "pals" in low:
        return "pals"
    if "mpich" in low or "hydra" in low:
        return "mpich"
    return None


#: Which mpiexec starts which library's ranks as one job.
_COMPATIBLE = {("mpich", "mpich"), ("intel", "mpich"), ("intel", "intel"),
               ("cray", "pals"), ("cray", "cray"), ("openmpi", "openmpi")}


def _inside(path: str, root: str) -> bool:
    path, root = os.path.realpath(path), os.path.realpath(root)
    return path == root or path.startswith(root.rstrip("/") + "/")


def check_mpi(machine: MachineConfig, environ: Mapping[str, str]) -> Check:
    from .launch.plan import find_executable

    try:
        p = subprocess.run([sys.executable, "-c", _MPI_PROBE], capture_output=True, text=True,
                           timeout=60, env=dict(environ))
        probe = json.loads(p.stdout.strip().splitlines()[-1])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        probe = {"error": "the mpi4py probe did not answer"}
    if "error" in probe:
        return Check("mpi", FAIL, f"mpi4py cannot be imported ({probe['error']}): use the "
                                  "site's mpi4py (e.g. module load frameworks / conda) or pip "
                                  "install 'ezpz-hpc[local]' on a workstation")
    lib_text = str(probe.get("library", ""))
    lib_family = mpi_family(lib_text)
    lib_path = (probe.get("libs") or ["(unknown)"])[0]
    first = " ".join(lib_text.strip().splitlines()[0].split()) if lib_text.strip() \
        else "unknown MPI"
    pals = machine.mpiexec_flavor == "pals"
    if pals and _inside(lib_path, sys.prefix):
        return Check("mpi", FAIL, f"mpi4py loads {lib_path} ({first}) from this Python "
                                  f"environment, not the system's Cray MPICH: on "
                                  f"{machine.name} use the site's mpi4py (module load) and "
                                  "pip uninstall mpich")
    path_env = environ.get("PATH", "")
    name = machine.mpiexec
    exe = shutil.which(name, path=path_env) if os.sep not in name else name
    if exe is None and not pals:
        sibling = find_executable(name)
        exe = sibling if os.sep in sibling else None
    if exe is None or not os.path.exists(exe):
        return Check("mpi", FAIL, f"no {name} found (machine.mpiexec={name}, PATH): load the "
                                  "site's MPI module, or set machine.mpiexec to its path")
    if pals and _inside(exe, sys.prefix):
        return Check("mpi", FAIL, f"the mpiexec on PATH is {exe}, from this Python environment "
                                  f"(the MPICH wheel), not the system's PALS mpiexec: on "
                                  f"{machine.name} pip uninstall mpich and load the site's MPI")
    try:
        v = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30,
                           env=dict(environ))
        exe_text = v.stdout + v.stderr
    except (OSError, subprocess.SubprocessError) as exc:
        return Check("mpi", FAIL, f"{exe} --version failed ({exc}): check the MPI module")
    exe_family = mpi_family(exe_text)
    if pals and exe_family in (None, "pals"):
        exe_family = "pals"
    if lib_family and exe_family and (lib_family, exe_family) not in _COMPATIBLE:
        return Check("mpi", FAIL, f"mpi4py uses {first} ({lib_path}) but {exe} is "
                                  f"{_describe_family(exe_family)}: their ranks never form one "
                                  "job; put the matching mpiexec first on PATH (or set "
                                  "machine.mpiexec), or rebuild mpi4py against this MPI")
    return Check("mpi", OK, f"mpi4py {probe.get('mpi4py')} uses {first} ({lib_path}); "
                            f"mpiexec: {exe} ({_describe_family(exe_family)})")


def _describe_family(family: str | None) -> str:
    return {"mpich": "MPICH's hydra", "openmpi": "Open MPI's", "intel": "Intel MPI's",
            "pals": "Cray PALS", "cray": "Cray MPICH's", None: "of an unknown MPI"}[family]


# --------------------------------------------------------------------------------------
# tmp space
# --------------------------------------------------------------------------------------
def check_tmp(transfer: TransferConfig) -> Check:
    from .formats.manifest import read_manifest
    from .fsutil import free_bytes
    from .transfer import default_dst

    if not transfer.src:
        return Check("tmp", SKIP, "give transfer.src=ARCHIVE to compare the node's free space "
                                  "with what the archive unpacks to")
    src = os.path.abspath(os.path.expanduser(transfer.src))
    if not os.path.isfile(src):
        return Check("tmp", FAIL, f"transfer.src: {src} is not a file (give an archive made by "
                                  "ezpz-tar-env)")
    try:
        manifest = read_manifest(src)
    except (ArchiveError, OSError) as exc:
        return Check("tmp", FAIL, f"transfer.src: cannot read {src}: {exc}")
    dst = os.path.abspath(transfer.dst or default_dst(src, transfer.decompress))
    if manifest is None:
        return Check("tmp", WARN, f"{src} has no ezpz manifest: its unpacked size is unknown "
                                  "(pack it with ezpz-tar-env to check)")
    need = manifest.total_bytes + (os.path.getsize(src) if transfer.keep_archive else 0)
    where = dst
    while not os.path.exists(where) and where != os.path.dirname(where):
        where = os.path.dirname(where)
    free = free_bytes(where)
    if free is None:
        return Check("tmp", WARN, f"cannot tell the free space at {where}")
    what = (f"{format_size(free)} free at {where} for {dst}; {os.path.basename(src)} "
            f"unpacks to {format_size(need)}")
    if free < need:
        return Check("tmp", FAIL, f"{what}: free space there or choose transfer.dst on a "
                                  "larger node-local disk")
    return Check("tmp", OK, what)


# --------------------------------------------------------------------------------------
# the environment to pack
# --------------------------------------------------------------------------------------
def _env_prefix(tar_env: TarEnvConfig) -> Path:
    return Path(os.path.abspath(os.path.expanduser(tar_env.env.prefix or sys.prefix)))


def check_interpreter(tar_env: TarEnvConfig) -> Check:
    from .envkind import detect_kind
    from .pack.outside import base_site_dirs, system_site_enabled
    from .pack.packer import SYSTEM_PREFIXES, python_facts

    prefix = _env_prefix(tar_env)
    if not prefix.is_dir():
        return Check("interpreter", FAIL, f"env.prefix: {prefix} is not a directory")
    kind = str(detect_kind(prefix))
    if kind != "venv":
        return Check("interpreter", OK if kind == "conda" else SKIP,
                     f"{prefix} is a {kind} environment" + (" (it carries its interpreter)"
                                                            if kind == "conda" else ""))
    facts = python_facts(prefix, kind)
    problems = []
    if system_site_enabled(prefix):
        dirs = ", ".join(base_site_dirs(prefix, facts.base_prefix)) or "the base"
        problems.append(f"it imports the base's packages from {dirs} "
                        "(--system-site-packages): pack with env.include_system_site=true")
    base = facts.base_prefix
    if base and not _inside(base, str(prefix)) and os.path.realpath(base) not in SYSTEM_PREFIXES:
        problems.append(f"its interpreter and standard library live at {base}: pack with "
                        "env.bundle_python=true")
    if problems:
        return Check("interpreter", FAIL, f"{prefix}: nodes would read the shared filesystem: "
                     + "; ".join(problems))
    return Check("interpreter", OK, f"{prefix}: interpreter {facts.version or '?'} from "
                                    f"{base or '?'} (part of the node image), no base packages")


def check_editable(tar_env: TarEnvConfig) -> Check:
    from .pack.outside import find_editables

    prefix = _env_prefix(tar_env)
    found = find_editables(prefix) if prefix.is_dir() else []
    if not found:
        return Check("editable", OK, f"no editable installs in {prefix}")
    more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
    return Check("editable", FAIL, f"{found[0].name} is an editable install from "
                                   f"{found[0].source}{more}: nodes would import it from there; "
                                   "reinstall it without -e (pip install <dir>)")


# --------------------------------------------------------------------------------------
# torch
# --------------------------------------------------------------------------------------
def _backends(dist: object) -> dict[str, bool]:
    import importlib.util

    out = {}
    for name in ("gloo", "nccl", "xccl", "mpi"):
        probe = getattr(dist, f"is_{name}_available", None)
        try:
            out[name] = bool(probe()) if callable(probe) else False
        except Exception:  # noqa: BLE001 - a backend probe that fails means no backend
            out[name] = False
    out["ccl"] = importlib.util.find_spec("oneccl_bindings_for_pytorch") is not None
    return out


def check_torch(machine: MachineConfig) -> Check:
    try:
        import torch
        import torch.distributed as dist
    except ImportError as exc:
        return Check("torch", WARN, f"torch is not installed ({exc}): launcher=torchrun, "
                                    "transfer.backend=torch and DDP need it (pip install "
                                    "'ezpz-hpc[torch]', or the site's module)")
    if not dist.is_available():
        return Check("torch", FAIL, f"torch {torch.__version__} was built without "
                                    "torch.distributed: install a build with it")
    have = _backends(dist)
    listed = ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in have.items())
    want = machine.dist_backend
    # xccl falls back to ccl (oneccl_bindings_for_pytorch) where torch has no xccl
    if not (have.get(want, False) or (want == "xccl" and have["ccl"])):
        return Check("torch", FAIL, f"torch {torch.__version__}: {listed}; "
                                    f"machine.dist_backend={want} is not available: install "
                                    f"the torch build for {machine.device} with {want}, or "
                                    "set machine.dist_backend to one that is")
    return Check("torch", OK, f"torch {torch.__version__}: {listed} "
                              f"(machine.dist_backend={want})")


# --------------------------------------------------------------------------------------
# hosts and MASTER_ADDR
# --------------------------------------------------------------------------------------
def check_hosts(launcher: LauncherConfig, environ: Mapping[str, str]) -> tuple[Check, str | None]:
    from .launch.hosts import discover_hosts

    try:
        found = discover_hosts(launcher.hostfile, environ, warn=False)
    except EzpzError as exc:
        return Check("hosts", FAIL, str(exc)), None
    first = found.hosts[0] if found.hosts else None
    shown = ", ".join(found.hosts[:4]) + (f" (+{len(found) - 4} more)" if len(found) > 4 else "")
    if found.source == "localhost":
        return Check("hosts", WARN, "no job found (no hostfile, PBS_NODEFILE, HOSTFILE or "
                                    "Slurm allocation): a launch here uses this host alone; "
                                    "run inside a job or give launcher.hostfile=FILE"), first
    return Check("hosts", OK, f"{len(found)} host{'s' if len(found) != 1 else ''} from "
                              f"{found.source}: {shown}"), first


def check_master_addr(first_host: str | None, environ: Mapping[str, str]) -> Check:
    addr = environ.get("MASTER_ADDR")
    if addr:
        what = f"MASTER_ADDR={addr}"
        fix = ("unset it (ezpz-launch then gives the ranks the first host) or set it to a name "
               "the nodes resolve")
    elif first_host is not None:
        addr = first_host
        what = f"{addr} (the first host: the ranks' MASTER_ADDR under ezpz-launch)"
        fix = "check the host names of the job (launcher.hostfile or the scheduler's)"
    else:
        return Check("master_addr", SKIP, "no MASTER_ADDR and no hosts to take it from")
    try:
        infos = socket.getaddrinfo(addr, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError) as exc:
        return Check("master_addr", FAIL, f"{what} does not resolve ({exc}): {fix}")
    ips = sorted({str(i[4][0]) for i in infos})
    return Check("master_addr", OK, f"{what} resolves to {', '.join(ips[:3])}")


# --------------------------------------------------------------------------------------
# all of them
# --------------------------------------------------------------------------------------
def run_checks(machine: MachineConfig, launcher: LauncherConfig, transfer: TransferConfig,
               tar_env: TarEnvConfig, environ: Mapping[str, str] | None = None) -> list[Check]:
    env = os.environ if environ is None else environ
    hosts, first = check_hosts(launcher, env)
    steps: list[Callable[[], Check]] = [
        lambda: check_mpi(machine, env), lambda: check_tmp(transfer),
        lambda: check_interpreter(tar_env), lambda: check_editable(tar_env),
        lambda: check_torch(machine), lambda: hosts, lambda: check_master_addr(first, env)]
    out = []
    for step in steps:
        try:
            out.append(step())
        except EzpzError as exc:
            out.append(Check(getattr(step, "__name__", "check"), FAIL, str(exc)))
    return out


def summary(checks: list[Check]) -> str:
    counts = {s: sum(c.status == s for c in checks) for s in (OK, WARN, FAIL, SKIP)}
    failed = ", ".join(c.name for c in checks if c.failed)
    text = (f"{len(checks)} checks: {counts[OK]} ok, {counts[WARN]} warnings, "
            f"{counts[FAIL]} failed, {counts[SKIP]} skipped")
    return text + (f" ({failed})" if failed else "")


__all__ = ["Check", "check_editable", "check_hosts", "check_interpreter", "check_master_addr",
           "check_mpi", "check_tmp", "check_torch", "mpi_family", "run_checks", "summary"]
