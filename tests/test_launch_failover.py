"""Which node failed an attempt, and the next plan with a spare in its place (no processes run:
plans are built from node files and Slurm variables; rank records are written as the rank
wrapper writes them). Slurm GPU counts from the allocation's variables."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ezpz.config import LauncherConfig, MachineConfig
from ezpz.errors import LaunchError
from ezpz.launch import (
    HostList,
    diagnose,
    failover_plan,
    next_attempt,
    plan_launch,
    resolve_topology,
    slurm_gpus_per_node,
)
from ezpz.launch.failover import read_rank_records
from ezpz.launch.output import HostHit

AURORA = MachineConfig(name="aurora", gpus_per_node=12, mpiexec_flavor="pals",
                       mpiexec="mpiexec", bad_node_patterns=["^GPU lost$"])
NODES = [f"x4000c0s{i}b0n0" for i in range(4)]


def _aurora_plan(tmp_path: Path, spares: int = 2, **kw) -> object:
    nodefile = tmp_path / "nodefile"
    nodefile.write_text("".join(f"{h}\n" for h in NODES))
    return plan_launch(AURORA, LauncherConfig(spares=spares, **kw), ["python3", "train.py"],
                       environ={"PBS_NODEFILE": str(nodefile), "PBS_JOBID": "1.pbs"},
                       workdir=str(tmp_path / "run"), wrap_ranks=True)


def test_failover_under_pals_writes_a_node_file_per_attempt(tmp_path):
    plan = _aurora_plan(tmp_path)
    assert plan.hosts == NODES[:2] and plan.spares == NODES[2:]
    assert (tmp_path / "run" / "hostfile").read_text() == "".join(f"{h}\n" for h in NODES[:2])
    assert plan.env["EZPZ_RANK_DIR"] == str(tmp_path / "run" / "ranks" / "attempt-1")
    assert plan.env["MASTER_ADDR"] == NODES[0] and plan.env["EZPZ_WORLD_SIZE"] == "24"
    new = failover_plan(plan, [NODES[1] + ".hsn.cm.aurora.alcf.anl.gov"])  # any spelling
    assert (new.hosts, new.spares, new.replaced, new.attempt) == (
        [NODES[0], NODES[2]], [NODES[3]], {NODES[1]: NODES[2]}, 2)
    written = tmp_path / "run" / "hostfile.attempt2"
    assert written.read_text() == f"{NODES[0]}\n{NODES[2]}\n"
    assert f"--hostfile={written}" in new.argv and "--np=24" in new.argv
    assert new.env["EZPZ_RANK_DIR"].endswith("attempt-2")
    # replacing the first host: rank 0 (and MASTER_ADDR) move to the first host in job order
    third = failover_plan(new, [NODES[0]])
    assert third.hosts == [NODES[2], NODES[3]] and third.env["MASTER_ADDR"] == NODES[2]
    assert third.replaced == {NODES[1]: NODES[2], NODES[0]: NODES[3]} and third.spares == []
    with pytest.raises(LaunchError, match=r"1 host failed \(x4000c0s2b0n0\) but no spares left"):
        failover_plan(third, [NODES[2]])
    with pytest.raises(LaunchError, match="none of the failed hosts .* is a host of this launch"):
        failover_plan(third, ["elsewhere"])


def test_failover_under_srun_pins_the_nodes_and_excludes_the_bad_one():
    env = {"SLURM_JOB_ID": "9", "SLURM_JOB_NODELIST": "nid[001-004]", "SLURM_GPUS_ON_NODE": "4"}
    plan = plan_launch(MachineConfig(name="slurm"), LauncherConfig(name="srun", spares=1),
                       ["train"], environ=env, wrap_ranks=True)
    assert plan.argv[:5] == ["srun", "-N", "3", "--ntasks-per-node=4", "--mpi=pmi2"]
    assert not any(a.startswith(("--nodelist", "--exclude")) for a in plan.argv)
    new = failover_plan(plan, ["nid002"])
    assert new.argv[5:7] == ["--nodelist=nid001,nid003,nid004", "--exclude=nid002"]
    retry = next_attempt(new)  # a plain retry keeps the hosts and the exclusions
    assert retry.argv[5:7] == new.argv[5:7] and retry.attempt == 3 and retry.replaced == new.replaced


def test_failover_under_torchrun_moves_the_rendezvous_with_the_first_host(tmp_path):
    plan = _aurora_plan(tmp_path, name="torchrun")
    assert f"--rdzv-endpoint={NODES[0]}:29500" in plan.argv
    assert "MASTER_ADDR" not in plan.env, "torchrun sets the DDP variables itself"
    new = failover_plan(plan, [NODES[0]])
    assert new.hosts == [NODES[1], NODES[2]]
    assert f"--rdzv-endpoint={NODES[1]}:29500" in new.argv and "--np=2" in new.argv
    assert (tmp_path / "run" / "hostfile.attempt2").read_text() == f"{NODES[1]}\n{NODES[2]}\n"


def _record(d: Path, rank: int, host: str, **kw) -> None:
    d.mkdir(parents=True, exist_ok=True)
    data = {"rank": rank, "host": host, "node": None, "exit_code": None, "signal": None,
            "stopped_by": None, "patterns": []}
    data.update(kw)
    (d / f"rank-{rank}.json").write_text(json.dumps(data))


def test_what_counts_as_a_bad_node(tmp_path):
    plan = _aurora_plan(tmp_path, spares=2, nhosts=2)
    ranks = Path(plan.rank_dir)
    # a rank killed by SIGKILL it did not get from the launcher: its node
    _record(ranks, 13, NODES[1], signal="SIGKILL")
    _record(ranks, 2, NODES[0], signal="SIGTERM", stopped_by="SIGTERM")  # a victim
    diag = diagnose(plan, [], read_rank_records(plan.rank_dir))
    assert diag.bad == {NODES[1]: "rank 13 was killed by SIGKILL"}
    assert diag.ranks == [f"rank 2 on {NODES[0]}: killed by SIGTERM (after the launcher's "
                          "SIGTERM)", f"rank 13 on {NODES[1]}: killed by SIGKILL"]
    # SIGKILL on every host points at the program
    _record(ranks, 2, NODES[0], signal="SIGKILL")
    assert diagnose(plan, [], read_rank_records(plan.rank_dir)).bad == {}
    # an exit code alone blames nobody
    for f in ranks.iterdir():
        f.unlink()
    _record(ranks, 13, NODES[1], exit_code=1)
    assert diagnose(plan, [], read_rank_records(plan.rank_dir)).bad == {}
    # a rank's own line matching a pattern without a host group: that rank's node
    _record(ranks, 13, NODES[1], exit_code=1,
            patterns=[{"pattern": 0, "host": None, "line": "GPU lost"}])
    assert diagnose(plan, [], read_rank_records(plan.rank_dir)).bad == {
        NODES[1]: "rank 13 printed a line matching '^GPU lost$': 'GPU lost'"}


def test_hosts_named_by_the_launchers_output(tmp_path):
    plan = _aurora_plan(tmp_path)
    hits = [HostHit(f"{NODES[1]}.hsn.cm.aurora.alcf.anl.gov", "shepherd", "x: shepherd died"),
            HostHit("x9999c0s0b0n0", "shepherd", "not in this job")]
    assert list(diagnose(plan, hits, []).bad) == [NODES[1]]
    # an address is matched against the hosts' addresses
    local = plan_launch(MachineConfig(), LauncherConfig(), ["x"],
                        hostlist=HostList(["localhost"], "test"), environ={})
    assert list(diagnose(local, [HostHit("127.0.0.1", "gloo", "closed")], []).bad) == \
        ["localhost"]


def test_read_rank_records_skips_what_it_cannot_read(tmp_path):
    _record(tmp_path, 3, "a", exit_code=2)
    (tmp_path / "rank-1.json").write_text("{not json")
    (tmp_path / "rank-2.json").write_text("[1, 2]")
    assert [r["rank"] for r in read_rank_records(str(tmp_path))] == [3]
    assert read_rank_records(None) == [] and read_rank_records(str(tmp_path / "none")) == []


# --------------------------------------------------------------------------------------
# GPUs from a Slurm allocation
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("env, expected", [
    ({"SLURM_GPUS_ON_NODE": "4"}, (4, "SLURM_GPUS_ON_NODE")),
    ({"SLURM_GPUS_PER_NODE": "a100:8"}, (8, "SLURM_GPUS_PER_NODE")),
    ({"SLURM_GPUS_PER_NODE": "gpu:h100:2,gpu:a100:2"}, (4, "SLURM_GPUS_PER_NODE")),
    ({"SLURM_TRES_PER_NODE": "gres/gpu:6,gres/nic:1"}, (6, "SLURM_TRES_PER_NODE")),
    ({"SLURM_JOB_GPUS": "0,1,2"}, (3, "SLURM_JOB_GPUS")),
    ({"SLURM_GPUS_ON_NODE": "2", "SLURM_GPUS_PER_NODE": "8"}, (2, "SLURM_GPUS_ON_NODE")),
])
def test_slurm_gpu_variables(env, expected):
    assert slurm_gpus_per_node({"SLURM_JOB_ID": "1", **env}) == expected


def test_slurm_gpus_outside_an_allocation_and_machine_value_wins():
    assert slurm_gpus_per_node({"SLURM_GPUS_ON_NODE": "4"}) is None  # no SLURM_JOB_ID
    plan = plan_launch(MachineConfig(name="slurm", gpus_per_node=1), LauncherConfig(name="srun"),
                       ["x"], environ={"SLURM_JOB_ID": "1", "SLURM_JOB_NODELIST": "n[1-2]",
                                       "SLURM_GPUS_ON_NODE": "4"})
    assert plan.topology.ngpu_per_host == 1


def test_describe_never_claims_gpus_that_are_not_there():
    cpu = resolve_topology(ngpus=None, nhosts=None, ngpu_per_host=None, hosts_available=2,
                           gpus_per_host=0)
    assert cpu.describe() == "Using 2 processes [2 hosts] x [1 per host] (no GPUs)"
    gpu = resolve_topology(ngpus=None, nhosts=None, ngpu_per_host=None, hosts_available=2,
                           gpus_per_host=4)
    assert gpu.describe() == "Using [8/8] GPUs [2 hosts] x [4 GPU/host]"
