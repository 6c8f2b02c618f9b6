"""Run commands as N MPI ranks, each rank a simulated node (see simnode.sh).

``run_simnodes(3, [python, "-m", "ezpz.transfer", ...])`` starts the venv's ``mpiexec`` with
every rank wrapped in its own mount/UTS namespace with a private ``/tmp`` and collects, per
rank: exit code, output and what ``nodecheck.py`` saw inside the node before it exited.
``sim_env(...)`` gives the environment for the same wrapping when another program (e.g.
``ezpz-yeet-env launcher.wrap=[SIMNODE]``) builds the mpiexec command itself.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
SIMNODE = str(HERE / "simnode.sh")
NODECHECK = str(HERE / "nodecheck.py")


def mpiexec_path() -> str:
    """The venv's mpiexec (MPICH wheel), else the first on PATH."""
    cand = Path(sys.executable).parent / "mpiexec"
    if cand.exists():
        return str(cand)
    found = shutil.which("mpiexec")
    if not found:
        raise RuntimeError("no mpiexec: install the 'local' extra (pip install .[local])")
    return found


def namespaces_available() -> tuple[bool, str]:
    """Whether simulated nodes can run here, and why not."""
    if os.geteuid() != 0:
        return False, "simulated nodes need root (unshare -m -u and mount)"
    if not shutil.which("unshare"):
        return False, "unshare (util-linux) is not installed"
    p = subprocess.run(["unshare", "-m", "-u", "--propagation", "private", "true"],
                       capture_output=True, text=True)
    if p.returncode != 0:
        return False, f"unshare is not permitted here: {p.stderr.strip()}"
    return True, ""


@dataclass
class NodeResult:
    rank: int
    rc: int | None
    output: str
    check: dict | None

    @property
    def host(self) -> str | None:
        return self.check["host"] if self.check else None

    @property
    def tmp(self) -> dict:
        return self.check["tmp"] if self.check else {}

    @property
    def runs(self) -> list[dict]:
        return self.check["runs"] if self.check else []


@dataclass
class SimRun:
    returncode: int
    output: str
    nodes: list[NodeResult] = field(default_factory=list)


def sim_env(outdir: str | os.PathLike[str], *, ppn: int = 1, run_in_node: Sequence[Sequence[str]] = (),
            capture: bool = False, tmp_size: str | None = None, shared_root: str | None = None,
            readonly_node: str | None = None, check: bool = True,
            base: dict[str, str] | None = None, small_tmp: str | None = None
            ) -> dict[str, str]:
    """Environment variables that configure simnode.sh (``small_tmp``: ``node:size``)."""
    env = dict(os.environ if base is None else base)
    env.update({
        "EZPZ_SIM_OUT": str(outdir),
        "EZPZ_SIM_PPN": str(ppn),
        "EZPZ_SIM_PYTHON": sys.executable,
        "EZPZ_SIM_RUN": json.dumps([list(a) for a in run_in_node]),
        "EZPZ_SIM_CAPTURE": "1" if capture else "0",
    })
    if check:
        env["EZPZ_SIM_CHECK"] = NODECHECK
    if tmp_size:
        env["EZPZ_SIM_TMP_SIZE"] = tmp_size
    if shared_root:
        env["EZPZ_SIM_ROOT"] = str(shared_root)
    if readonly_node:
        env["EZPZ_SIM_TMP_RO"] = readonly_node
    if small_tmp:
        env["EZPZ_SIM_TMP_AT"] = small_tmp
    return env


def collect(outdir: str | os.PathLike[str], n: int) -> list[NodeResult]:
    out = Path(outdir)
    nodes = []
    for rank in range(n):
        rc_file, out_file, chk_file = out / f"rc.{rank}", out / f"out.{rank}", out / f"check.{rank}"
        rc = int(rc_file.read_text().strip()) if rc_file.exists() else None
        text = out_file.read_text(errors="replace") if out_file.exists() else ""
        check = None
        if chk_file.exists():
            raw = chk_file.read_text(errors="replace").strip()
            try:
                check = json.loads(raw.splitlines()[-1]) if raw else None
            except json.JSONDecodeError:
                check = {"host": None, "tmp": {}, "runs": [], "error": raw}
        nodes.append(NodeResult(rank, rc, text, check))
    return nodes


def run_simnodes(n: int, argv: Sequence[str], *, ppn: int = 1, timeout: float = 180,
                 run_in_node: Sequence[Sequence[str]] = (), env: dict[str, str] | None = None,
                 tmp_size: str | None = None, shared_root: str | None = None,
                 readonly_node: str | None = None, capture: bool = True,
                 outdir: str | None = None, small_tmp: str | None = None,
                 mpiexec_args: Sequence[str] = (), check: bool = True) -> SimRun:
    """Run ``argv`` on ``n`` ranks (``ppn`` ranks per simulated node) and collect each node."""
    own = outdir is None
    outdir = outdir or tempfile.mkdtemp(prefix="ezpz-sim-", dir=os.environ.get("EZPZ_SIM_DIR"))
    try:
        full_env = sim_env(outdir, ppn=ppn, run_in_node=run_in_node, capture=capture,
                           tmp_size=tmp_size, shared_root=shared_root,
                           readonly_node=readonly_node, base=env, small_tmp=small_tmp,
                           check=check)
        cmd = [mpiexec_path(), *mpiexec_args, "-n", str(n), SIMNODE, *argv]
        try:
            p = subprocess.run(cmd, env=full_env, capture_output=True, text=True, timeout=timeout)
            rc, output = p.returncode, p.stdout + p.stderr
        except subprocess.TimeoutExpired as exc:
            out = exc.stdout or b""
            rc, output = -9, (out.decode(errors="replace") if isinstance(out, bytes) else out) + \
                "\n[simnodes] TIMEOUT"
        return SimRun(rc, output, collect(outdir, n))
    finally:
        if own:
            shutil.rmtree(outdir, ignore_errors=True)


def worker_pids(marker: str | os.PathLike[str]) -> dict[int, int]:
    """PMI rank -> pid of the running ``python -m ezpz.transfer`` workers whose command line
    holds ``marker`` (a config or spec file, a run directory), not their sentinels."""
    out = {}
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            if argv[1:3] != [b"-m", b"ezpz.transfer"] or os.fsencode(marker) not in argv:
                continue
            if (proc / "comm").read_text().strip() == "ezpz-sentinel":  # the rank's guard
                continue
            env = dict(x.split(b"=", 1) for x in (proc / "environ").read_bytes().split(b"\0")
                       if b"=" in x)
            out[int(env[b"PMI_RANK"])] = int(proc.name)
        except (OSError, KeyError, ValueError, IndexError):
            continue
    return out
