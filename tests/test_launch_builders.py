"""Launch argv builders against stored expected output, GPU/host resolution, CPU_BIND.

The expected commands live in tests/expected/launch_commands.json, one entry per
machine x launcher x number of hosts, plus each machine x launcher with the rank wrapper and
srun after a failover (--nodelist/--exclude). After an intended change, regenerate them with

    EZPZ_REGEN_EXPECTED=1 python -m pytest tests/test_launch_builders.py

and review the diff.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from ezpz.cli.common import compose, to_settings
from ezpz.config import LauncherConfig, MachineConfig
from ezpz.errors import ConfigError, LaunchError
from ezpz.launch import (
    Topology,
    build_argv,
    plan_launch,
    rank_wrapper_argv,
    resolve_cpu_bind,
    resolve_topology,
    torchrun_argv,
)
from ezpz.launch.hosts import HostList

EXPECTED = Path(__file__).parent / "expected" / "launch_commands.json"
REGEN = os.environ.get("EZPZ_REGEN_EXPECTED") == "1"
REGEN_LINE = "EZPZ_REGEN_EXPECTED=1 python -m pytest tests/test_launch_builders.py"
MACHINES = ["local", "aurora", "sunspot", "polaris", "slurm"]
LAUNCHERS = ["mpiexec", "torchrun", "srun"]
HOSTS = {
    "aurora": ["x4711c1s2b0n0.hostmgmt2711.cm.aurora.alcf.anl.gov",
               "x4711c1s3b0n0.hostmgmt2711.cm.aurora.alcf.anl.gov"],
    "sunspot": ["x1921c7s1b0n0-hsn0.hsn.cm.sunspot.alcf.anl.gov",
                "x1921c7s2b0n0-hsn0.hsn.cm.sunspot.alcf.anl.gov"],
    "polaris": ["x3006c0s13b1n0.hsn.cm.polaris.alcf.anl.gov",
                "x3006c0s19b0n0.hsn.cm.polaris.alcf.anl.gov"],
    "local": ["node-a", "node-b"],
    "slurm": ["nid001", "nid002"],
}
# Hostile values: they must reach the argv unchanged (no shell anywhere).
HOSTFILE = "/lus/my jobs/it's \"nodes\".txt"
CMD = ["python3", "train.py", "--msg", "a'; echo x", "$HOME", "*"]
WRAP = rank_wrapper_argv("/opt/my env/bin/python", "/opt/my env/lib/ezpz/launch/rankwrap.py")


def _machine(name: str) -> MachineConfig:
    return to_settings(compose("launch", [f"machine={name}"])).machine


def _launcher(name: str) -> LauncherConfig:
    return to_settings(compose("launch", [f"launcher={name}"])).launcher


def _build(machine: str, launcher: str, nhosts: int, **kw) -> list[str]:
    m = _machine(machine)
    gpus = m.gpus_per_node if m.gpus_per_node is not None else 0
    topo = resolve_topology(ngpus=None, nhosts=nhosts, ngpu_per_host=None,
                            hosts_available=2, gpus_per_host=gpus)
    return build_argv(m, _launcher(launcher), topo, CMD, hosts=HOSTS[machine][:nhosts],
                      hostfile=HOSTFILE, cpu_bind=resolve_cpu_bind(m, {}), rdzv_id="4242.pbs",
                      **kw)


def _all() -> dict[str, list[str]]:
    out = {f"{m}-{lch}-{n}": _build(m, lch, n)
           for m in MACHINES for lch in LAUNCHERS for n in (1, 2)}
    out.update({f"{m}-{lch}-2-wrapped": _build(m, lch, 2, rank_wrap=WRAP)
                for m in MACHINES for lch in LAUNCHERS})
    # after a failover: nid002 was replaced by nid003
    for lch in ("srun", "torchrun"):
        out[f"slurm-{lch}-2-failover"] = _build("slurm", lch, 2, nodelist=["nid001", "nid003"],
                                                exclude=["nid002"])
    return out


def test_builders_match_expected_file():
    got = _all()
    if REGEN:
        lines = [f' "_regenerate": {json.dumps(REGEN_LINE)}']
        lines += [f" {json.dumps(k)}: {json.dumps(v)}" for k, v in got.items()]
        EXPECTED.write_text("{\n" + ",\n".join(lines) + "\n}\n")
    expected = json.loads(EXPECTED.read_text())
    expected.pop("_regenerate")
    assert sorted(expected) == sorted(got)
    for key in got:
        assert got[key] == expected[key], f"{key}: regenerate with EZPZ_REGEN_EXPECTED=1 if intended"


def test_expected_file_has_the_documented_shapes():
    """Spot checks on the stored file itself, so a bad regeneration cannot pass unnoticed."""
    e = json.loads(EXPECTED.read_text())
    assert e["aurora-mpiexec-2"][:6] == ["mpiexec", "--envall", "--np=24", "--ppn=12",
                                         f"--hostfile={HOSTFILE}",
                                         "--cpu-bind=verbose,list:2-4:10-12:18-20:26-28:34-36:"
                                         "42-44:54-56:62-64:70-72:78-80:86-88:94-96"]
    # PALS passes each rank's output on in whole lines
    assert e["aurora-mpiexec-2"][6:8] == ["--line-buffer", "--no-vni"]
    assert e["polaris-mpiexec-1"][:8] == ["mpiexec", "--envall", "--np=4", "--ppn=4",
                                          f"--hostfile={HOSTFILE}", "--cpu-bind=depth",
                                          "--line-buffer", "--depth=8"]
    assert "--line-buffer" not in e["local-mpiexec-2"], "MPICH hydra has no --line-buffer"
    assert e["local-mpiexec-2"][:7] == ["mpiexec", "-n", "2", "-ppn", "1", "-f", HOSTFILE]
    assert e["slurm-srun-2"][:4] == ["srun", "-N", "2", "--ntasks-per-node=1"]
    assert "--mpi=pmi2" in e["slurm-srun-2"]
    tr = e["sunspot-torchrun-2"]
    assert tr[:5] == ["mpiexec", "--envall", "--np=2", "--ppn=1", f"--hostfile={HOSTFILE}"]
    assert not any(a.startswith("--cpu-bind") for a in tr), "one torchrun per node is never bound"
    i = tr.index("torchrun")
    assert tr[i:i + 7] == ["torchrun", "--nnodes=2", "--nproc-per-node=12", "--rdzv-backend=c10d",
                           f"--rdzv-endpoint={HOSTS['sunspot'][0]}:29500", "--rdzv-id=4242.pbs",
                           "--no-python"]
    assert e["slurm-torchrun-1"][0] == "srun"
    for key, argv in e.items():
        if key != "_regenerate":
            assert argv[-len(CMD):] == CMD, key
    # the rank wrapper runs right before the command (mpiexec, srun) or each torchrun worker
    assert e["aurora-mpiexec-2-wrapped"][-len(CMD) - 4:-len(CMD)] == WRAP
    assert e["slurm-srun-2-wrapped"][5:9] == WRAP
    tw = e["aurora-torchrun-2-wrapped"]
    assert tw[tw.index("--no-python") + 1:] == [*WRAP, *CMD]
    # after a failover srun is pinned to the new hosts and told to avoid the bad one
    assert e["slurm-srun-2-failover"][5:7] == ["--nodelist=nid001,nid003", "--exclude=nid002"]
    ft = e["slurm-torchrun-2-failover"]
    assert ft[5:7] == ["--nodelist=nid001,nid003", "--exclude=nid002"]
    assert "--rdzv-endpoint=nid001:29500" in ft


def test_wrap_and_extra_args_are_placed_per_process():
    m = _machine("aurora")
    lch = LauncherConfig(name="mpiexec", wrap=["/opt/w w/simnode.sh", "--x"], extra_args=["--pmi=pmix"],
                         verbose=True)
    topo = Topology(1, 12, 1, 12)
    argv = build_argv(m, lch, topo, ["hostname"], hosts=["x4"], hostfile="/h f")
    assert argv == ["mpiexec", "--envall", "--np=12", "--ppn=12", "--hostfile=/h f", "--verbose",
                    "--line-buffer", "--no-vni", "--pmi=pmix", "/opt/w w/simnode.sh", "--x",
                    "hostname"]
    # the rank wrapper goes right before launcher.wrap (outside a container, say)
    wrapped = build_argv(m, lch, topo, ["hostname"], hosts=["x4"], hostfile="/h f", rank_wrap=WRAP)
    assert wrapped[-7:] == [*WRAP, "/opt/w w/simnode.sh", "--x", "hostname"]
    # under torchrun the wrapper wraps each worker; a .py script is run with its interpreter
    tw = build_argv(m, LauncherConfig(name="torchrun"), topo, ["train.py", "--lr", "1"],
                    hosts=["x4"], hostfile="/h", rank_wrap=WRAP)
    assert tw[tw.index("--no-python") + 1:] == [*WRAP, WRAP[0], "train.py", "--lr", "1"]
    tr = build_argv(m, LauncherConfig(name="torchrun", wrap=["W"]), topo, ["train.py"],
                    hosts=["x4"], hostfile="/h")
    # wrap goes in front of each node's torchrun; a .py script is given to torchrun as is
    i = tr.index("W")
    assert tr[i + 1] == "torchrun" and tr[-1] == "train.py" and "--no-python" not in tr


def test_hydra_without_hostfile_uses_hosts():
    argv = build_argv(_machine("local"), LauncherConfig(), Topology(1, 2, 1, 0), ["true"],
                      hosts=["localhost"], hostfile=None)
    assert argv == ["mpiexec", "-n", "2", "-ppn", "2", "-hosts", "localhost", "true"]


@pytest.mark.parametrize("bad, message", [
    (dict(mpiexec_flavor="openmpi"), "machine.mpiexec_flavor: 'openmpi' is not a flavour"),
    (dict(node_starter="ssh"), "machine.node_starter: 'ssh' is not supported"),
])
def test_bad_machine_values_are_refused_by_the_schema(bad, message):
    # checked when the config is converted, before any run directory or command exists
    with pytest.raises(ConfigError, match=message):
        MachineConfig(**bad)


def test_pals_needs_a_hostfile_and_command_must_not_be_empty():
    with pytest.raises(LaunchError, match="PALS mpiexec needs a hostfile"):
        build_argv(_machine("aurora"), LauncherConfig(), Topology(1, 1, 1, 12), ["x"],
                   hosts=["h"], hostfile=None)
    with pytest.raises(LaunchError, match="no command to launch"):
        build_argv(_machine("aurora"), LauncherConfig(), Topology(1, 1, 1, 12), [],
                   hosts=["h"], hostfile="/h")


def test_torchrun_argv_module_and_script():
    topo = Topology(2, 1, 2, 0)
    assert torchrun_argv(topo, ["python", "-m", "ezpz.transfer"], endpoint_host="h0", port=1,
                         rdzv_id="j")[-4:] == ["--no-python", "python", "-m", "ezpz.transfer"]
    assert "--no-python" not in torchrun_argv(topo, ["a.py"], endpoint_host="h0", port=1,
                                              rdzv_id="j")


# --------------------------------------------------------------------------------------
# GPU / host resolution: all eight combinations of ngpus / nhosts / ngpu_per_host
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("given, expected", [
    ((None, None, None), (2, 12)),
    ((24, None, None), (2, 12)),
    ((8, None, None), (1, 8)),       # as few hosts as hold them
    ((18, None, None), (2, 9)),
    ((None, 1, None), (1, 12)),
    ((None, None, 4), (2, 4)),
    ((8, 2, None), (2, 4)),
    ((8, None, 4), (2, 4)),
    ((None, 2, 6), (2, 6)),
    ((12, 2, 6), (2, 6)),
])
def test_resolve_topology_combinations(given, expected):
    n, h, p = given
    topo = resolve_topology(ngpus=n, nhosts=h, ngpu_per_host=p, hosts_available=2, gpus_per_host=12)
    assert (topo.nhosts, topo.ngpu_per_host) == expected
    assert topo.ngpus == expected[0] * expected[1]
    assert topo.available == 24


@pytest.mark.parametrize("given, message", [
    ((13, None, None), "launcher.ngpus=13 cannot be spread evenly over 2 hosts"),
    ((7, 2, None), "launcher.ngpus=7 is not divisible by launcher.nhosts=2"),
    ((10, None, 4), "launcher.ngpus=10 is not divisible by launcher.ngpu_per_host=4"),
    ((12, 2, 4), r"launcher.ngpus=12 != launcher.nhosts=2 x launcher.ngpu_per_host=4"),
    ((48, None, None), r"launcher.ngpus=48 is more than the 24 GPUs available \(2 hosts x 12 per host\)"),
    ((None, 3, None), "3 hosts requested but the job has 2"),
    ((None, None, 16), "16 GPUs per host requested but the machine has 12 per host"),
    ((36, 3, 12), "launcher.ngpus=36 is more than the 24 GPUs available"),
    ((0, None, None), "launcher.ngpus: must be at least 1, got 0"),
])
def test_resolve_topology_errors(given, message):
    n, h, p = given
    with pytest.raises(LaunchError, match=message):
        resolve_topology(ngpus=n, nhosts=h, ngpu_per_host=p, hosts_available=2, gpus_per_host=12)


def test_resolve_topology_without_gpus_is_one_process_per_host_by_default():
    t = resolve_topology(ngpus=None, nhosts=None, ngpu_per_host=None, hosts_available=3,
                         gpus_per_host=0)
    assert (t.nhosts, t.ngpu_per_host) == (3, 1)
    t = resolve_topology(ngpus=None, nhosts=None, ngpu_per_host=5, hosts_available=3,
                         gpus_per_host=0)
    assert (t.nhosts, t.ngpu_per_host) == (3, 5)
    t = resolve_topology(ngpus=2, nhosts=None, ngpu_per_host=None, hosts_available=3,
                         gpus_per_host=0)
    assert (t.nhosts, t.ngpu_per_host) == (2, 1)


def test_describe_line():
    t = resolve_topology(ngpus=8, nhosts=None, ngpu_per_host=None, hosts_available=2,
                         gpus_per_host=12)
    assert t.describe() == "Using [8/24] GPUs [1 hosts] x [8 GPU/host]"


def test_cpu_bind_env_overrides_machine():
    m = _machine("aurora")
    assert resolve_cpu_bind(m, {}) == m.cpu_bind
    assert resolve_cpu_bind(m, {"CPU_BIND": "depth"}) == "depth"
    assert resolve_cpu_bind(m, {"CPU_BIND": "--cpu-bind=list:1-8"}) == "list:1-8"
    assert resolve_cpu_bind(MachineConfig(), {}) is None


# --------------------------------------------------------------------------------------
# plan_launch: hosts → hostfile → argv, with the log line
# --------------------------------------------------------------------------------------
def test_plan_uses_the_job_hostfile_and_logs_topology(tmp_path, caplog):
    hf = tmp_path / "my nodes 'x'"
    hf.write_text("x4711c1s2b0n0\nx4711c1s3b0n0\n")
    m = _machine("aurora")
    with caplog.at_level("INFO", logger="ezpz"):
        import logging
        logging.getLogger("ezpz").addHandler(caplog.handler)
        try:
            plan = plan_launch(m, LauncherConfig(ngpus=12), ["hostname"],
                               environ={"PBS_NODEFILE": str(hf), "CPU_BIND": "depth"},
                               workdir=str(tmp_path / "run"))
        finally:
            logging.getLogger("ezpz").removeHandler(caplog.handler)
    assert "Using [12/24] GPUs [1 hosts] x [12 GPU/host]" in caplog.text
    assert "using 12 of the 24 available GPUs" in caplog.text
    assert "CPU_BIND from the environment overrides machine.cpu_bind: depth" in caplog.text
    # one of two hosts used: a trimmed hostfile in the run dir
    assert plan.hostfile == str(tmp_path / "run" / "hostfile")
    assert Path(plan.hostfile).read_text() == "x4711c1s2b0n0\n"
    assert f"--hostfile={plan.hostfile}" in plan.argv and "--cpu-bind=depth" in plan.argv
    assert plan.env == {"ZE_FLAT_DEVICE_HIERARCHY": "FLAT"}
    assert r"\|CCL_WARN\| did not find MPI-launcher specific variables, switch to ATL/OFI" \
        in plan.filters


def test_plan_keeps_an_exact_hostfile(tmp_path):
    hf = tmp_path / "nodes"
    hf.write_text("x4711c1s2b0n0\nx4711c1s3b0n0\n")
    plan = plan_launch(_machine("aurora"), LauncherConfig(hostfile=str(hf)), ["x"], environ={},
                       workdir=str(tmp_path / "run"))
    assert plan.hostfile == str(hf) and not (tmp_path / "run").exists()
    assert "--np=24" in plan.argv


def test_plan_one_per_host_on_local_aliases(tmp_path):
    hf = tmp_path / "nodefile"
    hf.write_text("localhost\n127.0.0.1\nlocalhost\n")
    plan = plan_launch(_machine("local"), LauncherConfig(ngpus=99), ["x"], one_per_host=True,
                       environ={"PBS_NODEFILE": str(hf)}, workdir=str(tmp_path / "run"))
    assert plan.argv[1:7] == ["-n", "2", "-ppn", "1", "-hosts", "localhost"]
    assert plan.argv[-1] == "x" and plan.hostfile is None


def test_plan_real_remote_hosts_on_hydra_get_a_file(tmp_path):
    hf = tmp_path / "nodefile"
    hf.write_text("node-a\nnode-a\nnode-b\n")  # one line per slot
    plan = plan_launch(_machine("local"), LauncherConfig(), ["x"], one_per_host=True,
                       environ={"HOSTFILE": str(hf)}, workdir=str(tmp_path / "run"))
    assert plan.argv[5:7] == ["-f", str(tmp_path / "run" / "hostfile")]
    assert (tmp_path / "run" / "hostfile").read_text() == "node-a\nnode-b\n"


def test_plan_slurm_hosts_and_torchrun_endpoint(tmp_path):
    m = _machine("slurm")
    plan = plan_launch(m, LauncherConfig(name="torchrun"), ["python", "-m", "x"], one_per_host=True,
                       environ={"SLURM_JOB_NODELIST": "nid[007-008]", "SLURM_JOB_ID": "99"})
    assert plan.argv[:5] == ["srun", "-N", "2", "--ntasks-per-node=1", "--mpi=pmi2"]
    assert "--rdzv-endpoint=nid007:29500" in plan.argv and "--rdzv-id=99" in plan.argv
    assert plan.hostfile is None


def test_plan_errors_before_anything_is_written(tmp_path):
    with pytest.raises(LaunchError, match=r"launcher.hostfile: '.*missing' does not exist"):
        plan_launch(_machine("aurora"), LauncherConfig(hostfile=str(tmp_path / "missing")), ["x"],
                    environ={}, workdir=str(tmp_path / "run"))
    with pytest.raises(LaunchError, match="3 hosts requested but the job has 1"):
        plan_launch(_machine("aurora"), LauncherConfig(nhosts=3), ["x"],
                    hostlist=HostList(["x4"], "test", None), workdir=str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()
