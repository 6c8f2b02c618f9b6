"""The original ezpz API kept as thin layers: ezpz.pbs and ezpz.dist.setup_torch_DDP."""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
import sys
import textwrap

import pytest

from ezpz import pbs
from ezpz.errors import LaunchError

AURORA = ["x4711c1s2b0n0.hostmgmt2711.cm.aurora.alcf.anl.gov",
          "x4711c1s3b0n0.hostmgmt2711.cm.aurora.alcf.anl.gov"]


@pytest.fixture
def aurora_job(tmp_path, monkeypatch):
    """A fake Aurora PBS job: a node file (one line per host) and PBS_O_HOST naming Aurora."""
    nodefile = tmp_path / "pbs nodefile"
    nodefile.write_text("".join(h + "\n" for h in AURORA))
    monkeypatch.setenv("PBS_NODEFILE", str(nodefile))
    monkeypatch.setenv("PBS_O_HOST", AURORA[0])
    monkeypatch.setenv("PBS_JOBID", "8899.aurora-pbs")
    monkeypatch.delenv("CPU_BIND", raising=False)
    return nodefile


def test_get_pbs_launch_cmd_every_gpu(aurora_job):
    cmd = shlex.split(pbs.build_launch_cmd())
    assert cmd[0].endswith("mpiexec")
    assert cmd[1:6] == ["--envall", "--np=24", "--ppn=12", f"--hostfile={aurora_job}",
                        "--cpu-bind=verbose,list:2-4:10-12:18-20:26-28:34-36:42-44:54-56:62-64:"
                        "70-72:78-80:86-88:94-96"]
    assert cmd[6:] == ["--line-buffer", "--no-vni"]


def test_get_pbs_launch_cmd_subset(aurora_job, monkeypatch, tmp_path):
    (tmp_path / "t").mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp_path / "t"))
    monkeypatch.setenv("CPU_BIND", "depth")
    cmd = shlex.split(pbs.get_pbs_launch_cmd(ngpus=6, nhosts=1))
    assert cmd[1:4] == ["--envall", "--np=6", "--ppn=6"]
    # one of the two hosts: a trimmed node file of its own in TMPDIR, never the job's one
    (written,) = (tmp_path / "t").glob("ezpz-hostfile-*")
    assert cmd[4] == f"--hostfile={written}"
    assert written.read_text() == AURORA[0] + "\n"
    assert "--cpu-bind=depth" in cmd


def test_get_pbs_launch_cmd_errors(aurora_job):
    with pytest.raises(LaunchError, match="launcher.ngpus=7 is not divisible by launcher.nhosts=2"):
        pbs.get_pbs_launch_cmd(ngpus=7, nhosts=2)
    with pytest.raises(LaunchError, match="launcher.hostfile: '/no/such' does not exist"):
        pbs.get_pbs_launch_cmd(hostfile="/no/such")


def test_pbs_nodefile_and_hosts(aurora_job):
    assert pbs.get_pbs_nodefile() == str(aurora_job)
    assert pbs.get_pbs_jobid() == "8899.aurora-pbs"
    assert pbs.get_hosts() == AURORA


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


DDP = textwrap.dedent("""
    import sys, torch, torch.distributed as dist
    from ezpz.dist import setup_torch_DDP
    n = setup_torch_DDP(backend="gloo", timeout=60)
    again = setup_torch_DDP(rank=5, world_size=9)   # already initialized: a no-op
    t = torch.tensor([dist.get_rank() + 1])
    dist.all_reduce(t)
    with open(f"{sys.argv[1]}/out.{dist.get_rank()}", "w") as fh:
        fh.write(f"rank={dist.get_rank()} size={n} again={again} sum={int(t)} backend={dist.get_backend()}")
    dist.destroy_process_group()
""")


def test_setup_torch_ddp_under_real_mpiexec(tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(DDP)
    mpiexec = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_ADDR", "RANK", "WORLD_SIZE")}
    env["MASTER_PORT"] = str(_free_port())
    p = subprocess.run([mpiexec, "-n", "2", sys.executable, str(script), str(tmp_path)], capture_output=True,
                       text=True, env=env, timeout=240)
    assert p.returncode == 0, p.stdout + p.stderr
    assert [(tmp_path / f"out.{r}").read_text() for r in (0, 1)] == [
        "rank=0 size=2 again=2 sum=3 backend=gloo", "rank=1 size=2 again=2 sum=3 backend=gloo"]


def test_setup_torch_ddp_rejects_bad_rank():
    p = subprocess.run([sys.executable, "-c", "from ezpz.dist import setup_torch_DDP; "
                        "setup_torch_DDP(rank=3, world_size=2, backend='gloo')"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode != 0
    assert "setup_torch_DDP: rank 3 is not in [0, 2)" in p.stderr
