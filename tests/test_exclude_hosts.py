"""launcher.exclude_hosts: leave out the hosts a partial transfer listed in <dst>.failed-hosts."""

from __future__ import annotations

import pytest

from ezpz.config import LauncherConfig, MachineConfig
from ezpz.errors import LaunchError
from ezpz.launch import plan_launch
from ezpz.launch.hosts import HostList, exclude_hosts

HOSTS = ["x4000c0s0b0n0.hostmgmt.cm.aurora.alcf.anl.gov", "x4000c0s1b0n0.hostmgmt.cm.aurora.alcf.anl.gov",
         "x4000c0s2b0n0.hostmgmt.cm.aurora.alcf.anl.gov"]


def test_excluded_hosts_are_compared_on_the_short_name(tmp_path):
    failed = tmp_path / "env.failed-hosts"
    failed.write_text("x4000c0s1b0n0-hsn0\n")
    out = exclude_hosts(HostList(list(HOSTS), "PBS_NODEFILE=f", "f", list(HOSTS)), failed)
    assert out.hosts == [HOSTS[0], HOSTS[2]]
    assert "minus" in out.source


def test_empty_file_excludes_nothing_missing_file_is_an_error(tmp_path):
    hl = HostList(list(HOSTS), "PBS_NODEFILE=f", "f", list(HOSTS))
    (tmp_path / "empty").write_text("")
    assert exclude_hosts(hl, tmp_path / "empty").hosts == HOSTS
    with pytest.raises(LaunchError, match=r"launcher.exclude_hosts: '.*nope' does not exist"):
        exclude_hosts(hl, tmp_path / "nope")


def test_excluding_every_host_is_an_error(tmp_path):
    hl = HostList(["a", "b"], "hostfile", None, ["a", "b"])
    (tmp_path / "all").write_text("a\nb\n")
    with pytest.raises(LaunchError, match="excludes every host"):
        exclude_hosts(hl, tmp_path / "all")


def test_plan_uses_a_trimmed_hostfile_for_pals(tmp_path):
    nodefile = tmp_path / "nodefile"
    nodefile.write_text("".join(h + "\n" for h in HOSTS for _ in range(2)))
    failed = tmp_path / "env.failed-hosts"
    failed.write_text(HOSTS[0].split(".")[0] + "\n")
    machine = MachineConfig(name="aurora", gpus_per_node=12, mpiexec_flavor="pals",
                            mpiexec="mpiexec")
    launcher = LauncherConfig(hostfile=str(nodefile), exclude_hosts=str(failed))
    plan = plan_launch(machine, launcher, ["true"], one_per_host=True, workdir=str(tmp_path / "run"),
                       environ={})
    assert plan.hosts == HOSTS[1:]
    assert "--np=2" in plan.argv
    written = (tmp_path / "run" / "hostfile").read_text().split()
    assert written == HOSTS[1:]


def test_srun_names_the_remaining_nodes(tmp_path):
    failed = tmp_path / "f"
    failed.write_text("sim2\n")
    machine = MachineConfig(name="slurm", gpus_per_node=0)
    launcher = LauncherConfig(name="srun", exclude_hosts=str(failed))
    plan = plan_launch(machine, launcher, ["true"], one_per_host=True,
                       environ={"SLURM_JOB_NODELIST": "sim[1-3]", "SLURM_JOB_ID": "7"})
    assert plan.argv[:6] == ["srun", "-N", "2", "--ntasks-per-node=1", "--mpi=pmi2",
                             "--nodelist=sim1,sim3"]
