"""ezpz-launch inside real allocations of the throwaway Slurm cluster (tests/slurm_cluster.py):
GPU counts from the allocation, a plain DDP script under srun, SIGTERM grace under srun, and
spare-node failover with --nodelist/--exclude. Each Slurm node has 2 stand-in GPUs."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import simnodes
from test_launch_reliability import CHECKPOINT, DDP, NODE_FAULT, _alive, _free_port, _wait_for

pytestmark = pytest.mark.slurm

BIN = Path(sys.executable).parent
PY = sys.executable
LAUNCH = [str(BIN / "ezpz-launch"), "machine=slurm"]

PROBE = ("import json, os; print(json.dumps({'rank': int(os.environ['RANK']), "
         "'world': int(os.environ['WORLD_SIZE']), 'local': int(os.environ['LOCAL_RANK']), "
         "'local_world': int(os.environ['LOCAL_WORLD_SIZE']), "
         "'node': os.environ['SLURMD_NODENAME'], 'gpus': os.environ.get('SLURM_GPUS_ON_NODE')}))")


def _json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def _base_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("MASTER_", "EZPZ_"))}


def test_gpu_counts_come_from_the_allocation(slurm_cluster, tmp_path):
    # --gpus-per-node: two ranks per node, each with the DDP variables of its place
    p = slurm_cluster.salloc(2, [*LAUNCH, "--", PY, "-c", PROBE], cwd=tmp_path, env=_base_env(),
                             salloc_args=["--gpus-per-node=2", "--ntasks-per-node=2"])
    assert p.returncode == 0, slurm_cluster.explain(p)
    assert "Using [4/4] GPUs [2 hosts] x [2 GPU/host] (hosts from SLURM_JOB_NODELIST=sim[1-2]; " \
           "GPUs per host from SLURM_GPUS_PER_NODE)" in p.stderr
    assert "srun -N 2 --ntasks-per-node=2 --mpi=pmi2" in p.stderr
    seen = sorted(_json_lines(p.stdout), key=lambda s: s["rank"])
    assert [(s["rank"], s["world"], s["local"], s["local_world"], s["node"], s["gpus"])
            for s in seen] == [(0, 4, 0, 2, "sim1", "2"), (1, 4, 1, 2, "sim1", "2"),
                               (2, 4, 0, 2, "sim2", "2"), (3, 4, 1, 2, "sim2", "2")]
    # --gres=gpu:1 sets no variable in the allocation's shell: the job's gres says it
    p = slurm_cluster.salloc(2, [*LAUNCH, "launcher.dry_run=true", "--", "hostname"],
                             cwd=tmp_path, env=_base_env(), salloc_args=["--gres=gpu:1"])
    assert p.returncode == 0, slurm_cluster.explain(p)
    assert re.search(r"Using \[2/2\] GPUs \[2 hosts\] x \[1 GPU/host\] .*GPUs per host from the "
                     r"gres of Slurm job \d+", p.stderr), p.stderr
    assert p.stdout.strip().splitlines()[-1].startswith("srun -N 2 --ntasks-per-node=1 ")
    # no GPUs asked for: one process per node and no claim of GPUs
    p = slurm_cluster.salloc(2, [*LAUNCH, "launcher.dry_run=true", "--", "hostname"],
                             cwd=tmp_path, env=_base_env())
    assert p.returncode == 0, slurm_cluster.explain(p)
    assert "Using 2 processes [2 hosts] x [1 per host] (no GPUs)" in p.stderr
    assert "GPUs [" not in p.stderr


@pytest.mark.simnodes
def test_plain_ddp_trains_across_two_simulated_nodes_under_srun(slurm_cluster, tmp_path,
                                                                simnodes_ok):
    script = tmp_path / "ddp.py"
    script.write_text(DDP)
    out = tmp_path / "sim"
    out.mkdir()
    env = simnodes.sim_env(out, check=False, base=_base_env())
    argv = [*LAUNCH, f"launcher.rdzv_port={_free_port()}",
            f"launcher.wrap=['{simnodes.SIMNODE}']", "--", PY, str(script), str(tmp_path)]
    p = slurm_cluster.salloc(2, argv, cwd=tmp_path, env=env, timeout=240)
    assert p.returncode == 0, slurm_cluster.explain(p)
    assert "MASTER_ADDR=sim1" in p.stderr
    seen = [json.loads((tmp_path / f"ddp.{r}.json").read_text()) for r in (0, 1)]
    assert [(s["rank"], s["world"], s["host"]) for s in seen] == [(0, 2, "sim1"), (1, 2, "sim2")]
    assert all(s["same"] for s in seen) and all(s["last"] < s["first"] for s in seen)


def test_sigterm_under_srun_gives_the_tasks_their_grace(slurm_cluster, tmp_path):
    """srun answers SIGTERM by killing its tasks at once; ezpz passes the signal to the
    tasks (scancel --signal) and they finish their handler."""
    script = tmp_path / "ckpt.py"
    script.write_text(CHECKPOINT)
    state = tmp_path / "state"
    state.mkdir()
    cmd = ["salloc", "-N", "2", "--quiet", "--", *LAUNCH, "--", PY, str(script), str(state),
           "save"]
    proc = subprocess.Popen(cmd, env=slurm_cluster.env(base=_base_env()), cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        assert _wait_for(lambda: len(list(state.glob("pid.*"))) == 2 or proc.poll() is not None,
                         120), "the tasks did not start"
        assert proc.poll() is None, proc.communicate()[0]
        children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True,
                                  text=True).stdout.split()
        assert len(children) == 1, children
        pids = [int(p.read_text()) for p in state.glob("pid.*")]
        os.kill(int(children[0]), signal.SIGTERM)   # what a preemption does to the launcher
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            slurm_cluster.cancel_all()
    assert proc.returncode == 143, out
    assert re.search(r"received SIGTERM: passing it to the tasks of Slurm step \d+\.\d+ "
                     r"\(scancel --signal\)", out), out
    assert sorted(p.name for p in state.glob("saved.*")) == ["saved.0", "saved.1"], out
    assert _wait_for(lambda: not any(_alive(pid) for pid in pids), 10)


def test_a_bad_node_is_swapped_for_a_spare_under_srun(slurm_cluster, tmp_path):
    script = tmp_path / "fault.py"
    # the Slurm node is the task's "host" here (no simulated hostnames)
    script.write_text(NODE_FAULT.replace("socket.gethostname()", "os.environ['SLURMD_NODENAME']"))
    argv = [*LAUNCH, "launcher.spares=1", "launcher.retry_delay=0", "--", PY, str(script),
            str(tmp_path), "sim2", "kill"]
    p = slurm_cluster.salloc(3, argv, cwd=tmp_path, env=_base_env(), timeout=180)
    assert p.returncode == 0, slurm_cluster.explain(p)
    assert "replacing sim2 with spare sim3 (rank 1 was killed by SIGKILL)" in p.stderr
    assert "srun -N 2 --ntasks-per-node=1 --mpi=pmi2 --nodelist=sim1,sim3 --exclude=sim2" \
        in p.stderr
    assert sorted((tmp_path / "runs").read_text().split("\n")[:-1]) == \
        ["0 sim1", "0 sim1", "1 sim2", "1 sim3"]
    (run,) = tmp_path.glob("outputs/launch/*/*")
    record = json.loads((run / "launch.json").read_text())
    assert record["hosts"] == {"used": ["sim1", "sim3"], "replaced": {"sim2": "sim3"},
                               "spares_left": []}
