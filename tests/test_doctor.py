"""ezpz-doctor: every check in one line with its fix, exit 1 when one fails. Each broken
condition is built for real (a venv with --system-site-packages, a real editable install, an
Open MPI mpiexec first on PATH, a PALS machine with the MPICH wheel, a node whose /tmp is too
small, a MASTER_ADDR that does not resolve, a missing hostfile, a backend torch lacks)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PY = sys.executable
SYSTEM_PYTHON = shutil.which("python3", path="/usr/bin")


def doctor(*args: str, cwd: Path, env: dict[str, str] | None = None
           ) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("PBS_", "SLURM_", "MASTER_", "EZPZ_"))}
    return subprocess.run([PY, "-m", "ezpz.cli.doctor", "machine=local", *args], cwd=cwd,
                          capture_output=True, text=True, env={**base, **(env or {})},
                          timeout=180)


def lines(p: subprocess.CompletedProcess) -> dict[str, str]:
    """The report: check name -> "status  message"."""
    out = {}
    for line in p.stdout.splitlines():
        m = re.match(r"^(ok|warn|FAIL|skip)\s+(\w+)\s+(.*)$", line)
        if m:
            out[m.group(2)] = f"{m.group(1)}  {m.group(3)}"
    return out


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> list[str]:
    """Overrides under which every check passes here: a venv of the system's Python (part of
    the node image), a host file naming this machine."""
    if SYSTEM_PYTHON is None:
        pytest.skip("needs the system's python3 for an environment that reads nothing outside")
    root = tmp_path_factory.mktemp("doctor")
    venv = root / "sysvenv"
    p = subprocess.run([SYSTEM_PYTHON, "-m", "venv", "--without-pip", str(venv)],
                       capture_output=True, text=True)
    if p.returncode != 0:
        pytest.skip(f"the system's python3 cannot make a venv: {p.stderr.strip()}")
    hosts = root / "hosts"
    hosts.write_text("localhost\n")
    return [f"env.prefix={venv}", f"launcher.hostfile={hosts}"]


def test_a_clean_machine_passes_every_check_and_writes_nothing(clean, tmp_path):
    p = doctor(*clean, cwd=tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    got = lines(p)
    assert list(got) == ["mpi", "tmp", "interpreter", "editable", "torch", "hosts",
                         "master_addr"]
    assert got["mpi"].startswith("ok  mpi4py ") and "MPICH's hydra" in got["mpi"]
    assert got["tmp"].startswith("skip  give transfer.src=ARCHIVE")
    assert got["torch"].startswith("ok  torch ") and "gloo yes" in got["torch"]
    assert got["hosts"].startswith("ok  1 host from launcher.hostfile=")
    assert got["master_addr"].startswith("ok  localhost (the first host")
    assert p.stdout.strip().splitlines()[-1] == \
        "7 checks: 6 ok, 0 warnings, 0 failed, 1 skipped"
    assert list(tmp_path.iterdir()) == []


def test_an_open_mpi_mpiexec_first_on_path_does_not_match_mpi4py(clean, tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "mpiexec").write_text("#!/bin/sh\necho 'mpiexec (OpenRTE) 4.1.5'\n")
    (fake / "mpiexec").chmod(0o755)
    p = doctor(*clean, cwd=tmp_path, env={"PATH": f"{fake}:{os.environ['PATH']}"})
    assert p.returncode == 1
    line = lines(p)["mpi"]
    assert re.match(rf"FAIL  mpi4py uses MPICH Version: \S+ \(\S+libmpi\S*\) but {fake}/mpiexec "
                    r"is Open MPI's: their ranks never form one job; put the matching mpiexec "
                    r"first on PATH", line), line


def test_a_pals_machine_must_not_use_the_mpich_wheel(clean, tmp_path):
    p = doctor(*clean, "machine=polaris", "machine.dist_backend=gloo", cwd=tmp_path)
    assert p.returncode == 1
    line = lines(p)["mpi"]
    assert re.match(r"FAIL  mpi4py loads \S+libmpi\S* \(MPICH Version: \S+\) from this Python "
                    r"environment, not the system's Cray MPICH: on polaris use the site's "
                    r"mpi4py \(module load\) and pip uninstall mpich$", line), line


def test_no_mpiexec(clean, tmp_path):
    p = doctor(*clean, "machine.mpiexec=no-such-mpiexec", cwd=tmp_path)
    assert p.returncode == 1
    assert lines(p)["mpi"] == ("FAIL  no no-such-mpiexec found (machine.mpiexec=no-such-mpiexec,"
                               " PATH): load the site's MPI module, or set machine.mpiexec to "
                               "its path")


def test_system_site_packages_and_an_outside_interpreter(clean, tmp_path):
    venv = tmp_path / "sitevenv"
    subprocess.run([SYSTEM_PYTHON, "-m", "venv", "--without-pip", "--system-site-packages",
                    str(venv)], check=True)
    args = [a for a in clean if not a.startswith("env.prefix=")]
    p = doctor(*args, f"env.prefix={venv}", cwd=tmp_path)
    assert p.returncode == 1
    line = lines(p)["interpreter"]
    assert line.startswith(f"FAIL  {venv}: nodes would read the shared filesystem: it imports "
                           "the base's packages from /usr/")
    assert line.endswith("(--system-site-packages): pack with env.include_system_site=true")
    # this venv's interpreter lives outside it (not the system's): bundle it
    import sysconfig

    base = sys.base_prefix
    if os.path.realpath(base) in ("/", "/usr", "/usr/local") or not sysconfig.get_config_var(
            "Py_ENABLE_SHARED"):
        return
    outside = tmp_path / "outvenv"
    subprocess.run([PY, "-m", "venv", "--without-pip", str(outside)], check=True)
    p = doctor(*args, f"env.prefix={outside}", cwd=tmp_path)
    assert p.returncode == 1
    assert lines(p)["interpreter"] == (
        f"FAIL  {outside}: nodes would read the shared filesystem: its interpreter and standard "
        f"library live at {base}: pack with env.bundle_python=true")


def test_an_editable_install(clean, tmp_path):
    from test_pack_outside import make_editable_venv

    venv, proj = make_editable_venv(tmp_path)
    p = doctor(*clean, f"env.prefix={venv}", cwd=tmp_path)
    assert p.returncode == 1
    assert lines(p)["editable"] == (
        f"FAIL  tinyproj is an editable install from {os.path.realpath(proj)}: nodes would "
        "import it from there; reinstall it without -e (pip install <dir>)")


def test_a_backend_torch_lacks(clean, tmp_path):
    p = doctor(*clean, "machine.dist_backend=nccl", cwd=tmp_path)
    assert p.returncode == 1
    line = lines(p)["torch"]
    assert re.match(r"FAIL  torch \S+: gloo yes, nccl no, .*; machine.dist_backend=nccl is not "
                    r"available: install the torch build for cpu with nccl, or set "
                    r"machine.dist_backend to one that is$", line), line


def test_hosts_that_cannot_be_found(clean, tmp_path):
    args = [a for a in clean if not a.startswith("launcher.hostfile=")]
    p = doctor(*args, "launcher.hostfile=/no/such/nodes", cwd=tmp_path)
    assert p.returncode == 1
    got = lines(p)
    assert got["hosts"].startswith("FAIL  launcher.hostfile: '/no/such/nodes' does not exist")
    assert got["master_addr"].startswith("skip  ")
    q = doctor(*args, cwd=tmp_path, env={"PBS_NODEFILE": str(tmp_path / "gone")})
    assert q.returncode == 1
    assert lines(q)["hosts"].startswith(f"FAIL  PBS_NODEFILE: '{tmp_path / 'gone'}' does not "
                                        "exist")


def test_a_master_addr_that_does_not_resolve(clean, tmp_path):
    p = doctor(*clean, cwd=tmp_path, env={"MASTER_ADDR": "no-such-host.invalid"})
    assert p.returncode == 1
    line = lines(p)["master_addr"]
    assert line.startswith("FAIL  MASTER_ADDR=no-such-host.invalid does not resolve (")
    assert line.endswith("unset it (ezpz-launch then gives the ranks the first host) or set it "
                         "to a name the nodes resolve")


@pytest.fixture(scope="module")
def big_archive(tmp_path_factory) -> Path:
    """An archive whose files add up to 3 MiB (zeros: it stays small itself)."""
    from ezpz.pack import pack

    root = tmp_path_factory.mktemp("big")
    env = root / "bigenv"
    (env / "data").mkdir(parents=True)
    (env / "data" / "zeros.bin").write_bytes(bytes(3 << 20))
    return Path(pack(prefix=str(env), path=str(root / "bigenv.tar.zst")))


@pytest.mark.simnodes
@pytest.mark.parametrize("tmp_size, ok", [("1m", False), ("64m", True)])
def test_a_node_whose_tmp_cannot_take_the_archive(run_nodes, clean, big_archive, tmp_size, ok):
    res = run_nodes(1, [PY, "-m", "ezpz.cli.doctor", "machine=local", *clean,
                        f"transfer.src={big_archive}"], tmp_size=tmp_size)
    (node,) = res.nodes
    line = lines(subprocess.CompletedProcess([], 0, node.output, ""))["tmp"]
    if ok:
        assert node.rc == 0, node.output
        assert re.match(r"ok  \S+ MiB free at /tmp for /tmp/ezpz-\S+/bigenv; bigenv.tar.zst unpacks to "
                        r"3.0 MiB$", line), line
        return
    assert node.rc == 1, node.output
    assert re.match(r"FAIL  \S+ [KM]iB free at /tmp for /tmp/ezpz-\S+/bigenv; bigenv.tar.zst unpacks to "
                    r"3.0 MiB: free space there or choose transfer.dst on a larger node-local "
                    r"disk$", line), line
