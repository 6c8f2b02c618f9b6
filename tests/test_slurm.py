"""ezpz inside real allocations of a throwaway 3-node Slurm cluster (tests/slurm_cluster.py).

Each Slurm node is a ``slurmd -N simK`` on this machine; wrapped in tests/simnode.sh a task
gets the node's name as hostname and a private /tmp, as on a real cluster.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

import simnodes
import slurm_cluster as cluster_mod
from ezpz.ownership import user_name
from slurm_cluster import ClusterError, SlurmCluster

pytestmark = pytest.mark.slurm

BIN = Path(sys.executable).parent

MPI_PROBE = r"""
import json, os, socket
from mpi4py import MPI
comm = MPI.COMM_WORLD
before = sorted(os.listdir("/tmp"))
with open(f"/tmp/mark.{comm.rank}", "w") as fh:
    fh.write(socket.gethostname())
comm.Barrier()   # every rank has written its file before anyone looks
after = sorted(os.listdir("/tmp"))
hosts = comm.allgather(socket.gethostname())
print(json.dumps({"rank": comm.rank, "size": comm.size, "host": socket.gethostname(),
                  "node": os.environ.get("SLURMD_NODENAME"), "hosts": hosts,
                  "before": before, "after": after}))
"""

ALLOC_PROBE = r"""
import json, os
from ezpz.launch.hosts import detect_machine
print(json.dumps({"nodelist": os.environ.get("SLURM_JOB_NODELIST"),
                  "nnodes": os.environ.get("SLURM_JOB_NUM_NODES"),
                  "machine": detect_machine()}))
"""

DISCOVERY_PROBE = r"""
import json
from ezpz.launch.hosts import discover_hosts
found = discover_hosts()
print(json.dumps({"hosts": found.hosts, "source": found.source}))
"""


@pytest.fixture
def simnodes_root():
    ok, why = simnodes.namespaces_available()
    if not ok:
        pytest.skip(why)


def last_json(text: str) -> dict:
    return json.loads(text.strip().splitlines()[-1])


def test_sinfo_shows_three_idle_nodes(slurm_cluster):
    p = slurm_cluster.run(["sinfo", "-h", "-N", "-o", "%N %T %c"])
    assert p.returncode == 0, slurm_cluster.explain(p)
    rows = sorted(line.split() for line in p.stdout.splitlines())
    assert rows == [["sim1", "idle", "2"], ["sim2", "idle", "2"], ["sim3", "idle", "2"]], \
        slurm_cluster.explain(p)


@pytest.mark.simnodes
def test_srun_pmi2_forms_one_mpi_world_of_isolated_nodes(slurm_cluster, simnodes_root,
                                                         tmp_path):
    """srun --mpi=pmi2 (no mpiexec) wires mpi4py + the MPICH wheel into one 3-rank world."""
    out = tmp_path / "nodes"
    out.mkdir()
    env = simnodes.sim_env(out, capture=True)
    p = slurm_cluster.run(["srun", "-N3", "--ntasks-per-node=1", "--mpi=pmi2",
                           simnodes.SIMNODE, sys.executable, "-c", MPI_PROBE], env=env)
    nodes = simnodes.collect(out, 3)
    assert p.returncode == 0, slurm_cluster.explain(p) + "".join(n.output for n in nodes)
    seen = [last_json(n.output) for n in nodes]
    assert [s["rank"] for s in seen] == [0, 1, 2]
    assert all(s["size"] == 3 for s in seen)
    # each task runs on its own Slurm node and has that node's hostname
    assert [s["node"] for s in seen] == ["sim1", "sim2", "sim3"]
    assert [s["host"] for s in seen] == ["sim1", "sim2", "sim3"]
    assert all(s["hosts"] == ["sim1", "sim2", "sim3"] for s in seen)
    for s in seen:
        assert s["before"] == [], "a node's /tmp must start empty"
        assert s["after"] == [f"mark.{s['rank']}"], "a node must not see other nodes' files"
    # the check ran inside each node, before its private /tmp vanished
    assert [n.host for n in nodes] == ["sim1", "sim2", "sim3"]
    assert [list(n.tmp) for n in nodes] == [["mark.0"], ["mark.1"], ["mark.2"]]


@pytest.mark.simnodes
def test_srun_reports_a_failing_node(slurm_cluster, simnodes_root, tmp_path):
    """The harness can make one node fail: its /tmp is read-only (EZPZ_SIM_TMP_RO)."""
    out = tmp_path / "nodes"
    out.mkdir()
    env = simnodes.sim_env(out, capture=True, readonly_node="sim2")
    code = "open('/tmp/x', 'w').write('hi')"
    p = slurm_cluster.run(["srun", "-N3", "--ntasks-per-node=1", simnodes.SIMNODE,
                           sys.executable, "-c", code], env=env)
    nodes = simnodes.collect(out, 3)
    assert p.returncode != 0, slurm_cluster.explain(p)
    assert [n.rc == 0 for n in nodes] == [True, False, True], [n.output for n in nodes]
    assert "Read-only file system" in nodes[1].output


def test_allocation_nodelist_and_machine_detection(slurm_cluster, tmp_path):
    p = slurm_cluster.salloc(2, [sys.executable, "-c", ALLOC_PROBE])
    assert p.returncode == 0, slurm_cluster.explain(p)
    seen = last_json(p.stdout)
    assert seen == {"nodelist": "sim[1-2]", "nnodes": "2", "machine": "slurm"}


def test_machine_auto_resolves_to_slurm_inside_an_allocation(slurm_cluster, tmp_path):
    """The installed CLI, run inside an allocation, composes the ``slurm`` preset."""
    argv = [str(BIN / "ezpz-launch"), "--cfg", "job", "launcher=srun"]
    inside = slurm_cluster.salloc(1, argv, env={**os.environ, "HOME": str(tmp_path)})
    assert inside.returncode == 0, slurm_cluster.explain(inside)
    assert "name: slurm" in inside.stdout
    assert "srun_mpi: pmi2" in inside.stdout
    # the same command outside any allocation (and on this host) picks the local preset
    outside = slurm_cluster.run(argv)
    assert outside.returncode == 0, slurm_cluster.explain(outside)
    assert "name: local" in outside.stdout


def test_host_discovery_expands_the_allocation_nodelist(slurm_cluster):
    p = slurm_cluster.salloc(2, [sys.executable, "-c", DISCOVERY_PROBE])
    assert p.returncode == 0, slurm_cluster.explain(p)
    seen = last_json(p.stdout)
    assert seen == {"hosts": ["sim1", "sim2"], "source": "SLURM_JOB_NODELIST=sim[1-2]"}
    p = slurm_cluster.salloc(3, [sys.executable, "-c", DISCOVERY_PROBE])
    assert p.returncode == 0, slurm_cluster.explain(p)
    assert last_json(p.stdout)["hosts"] == ["sim1", "sim2", "sim3"]


def test_node_names_resolve_to_loopback_while_the_cluster_runs(slurm_cluster):
    import socket

    assert [socket.gethostbyname(n) for n in slurm_cluster.nodes] == ["127.0.0.1"] * 3


def test_a_cluster_that_cannot_start_says_why_and_leaves_nothing_running(
        slurm_cluster, tmp_path, monkeypatch):
    """A slurmd whose port is taken: start() fails naming it, shows its log, ends the rest."""
    import socket

    busy = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    real = cluster_mod.free_ports

    def with_busy_port(n):
        ports = real(n)
        ports[2] = busy.getsockname()[1]   # sim2's port
        return ports

    monkeypatch.setattr(cluster_mod, "free_ports", with_busy_port)
    broken = SlurmCluster(tmp_path / "broken")
    started = []
    spawn = broken._spawn

    def record(name, argv):
        proc = spawn(name, argv)
        started.append(proc)
        return proc

    monkeypatch.setattr(broken, "_spawn", record)
    try:
        with pytest.raises(ClusterError) as err:
            broken.start(timeout=30)
    finally:
        busy.close()
    text = str(err.value)
    assert "slurmd.sim2 exited" in text
    assert "Address already in use" in text        # from sim2's own log
    assert "slurmd.sim2.out" in text or "slurmd.sim2.log" in text
    assert len(started) == 5                       # munged, slurmctld, 3 slurmd
    assert all(p.poll() is not None for p in started), "start() must end what it started"
    assert broken.running_pids() == []
    assert str(broken.root) not in Path("/etc/hosts").read_text()
    # the session's cluster is untouched
    assert sorted(slurm_cluster.node_states().items()) == [
        ("sim1", "idle"), ("sim2", "idle"), ("sim3", "idle")]


# --------------------------------------------------------------------------------------
# ezpz-launch and ezpz-yeet-env inside allocations
# --------------------------------------------------------------------------------------
LAUNCH_PROBE = r"""
import json, os, socket
from mpi4py import MPI
comm = MPI.COMM_WORLD
print(json.dumps({"rank": comm.rank, "size": comm.size, "procid": os.environ["SLURM_PROCID"],
                  "node": os.environ["SLURMD_NODENAME"], "host": socket.gethostname()}),
      flush=True)
"""

# run with the delivered interpreter; argv[1] is the env's original prefix
ENV_PROBE = ("import sys, ezpz_probe; activate = open(sys.prefix + '/bin/activate').read(); "
             "print(ezpz_probe.VALUE, sys.prefix, sys.argv[1] in activate, sys.prefix in activate)")


def json_lines(text: str) -> list[dict]:
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{") and line.endswith("}"):
            out.append(json.loads(line))
    return out


def wrap_override(*argv: str) -> str:
    return "launcher.wrap=[" + ",".join(f"'{a}'" for a in argv) + "]"


@pytest.mark.simnodes
def test_ezpz_launch_runs_once_per_node_with_the_right_ranks(slurm_cluster, simnodes_root,
                                                              tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text(LAUNCH_PROBE)
    argv = [str(BIN / "ezpz-launch"), "machine=slurm", "launcher=srun",
            wrap_override(simnodes.SIMNODE), "--", sys.executable, str(probe)]
    p = slurm_cluster.salloc(3, argv, cwd=tmp_path)
    assert p.returncode == 0, slurm_cluster.explain(p)
    seen = sorted(json_lines(p.stdout), key=lambda s: s["rank"])
    assert [(s["rank"], s["size"], s["procid"]) for s in seen] == \
        [(0, 3, "0"), (1, 3, "1"), (2, 3, "2")], slurm_cluster.explain(p)
    assert [(s["node"], s["host"]) for s in seen] == \
        [("sim1", "sim1"), ("sim2", "sim2"), ("sim3", "sim3")]

    # launcher.nhosts limits the nodes used inside the larger allocation
    p = slurm_cluster.salloc(3, [*argv[:3], "launcher.nhosts=2", *argv[3:]], cwd=tmp_path)
    assert p.returncode == 0, slurm_cluster.explain(p)
    seen = sorted(json_lines(p.stdout), key=lambda s: s["rank"])
    assert [(s["rank"], s["size"], s["node"]) for s in seen] == [(0, 2, "sim1"), (1, 2, "sim2")]


def test_ezpz_launch_dry_run_prints_the_srun_command_for_the_allocation(slurm_cluster,
                                                                        tmp_path):
    argv = [str(BIN / "ezpz-launch"), "launcher=srun", "launcher.dry_run=true", "--",
            "hostname"]
    p = slurm_cluster.salloc(3, argv, cwd=tmp_path)
    assert p.returncode == 0, slurm_cluster.explain(p)
    # every task runs under ezpz's rank wrapper (whole lines, DDP variables)
    import shlex

    from ezpz.launch.plan import RANK_WRAPPER

    wrapper = shlex.join([sys.executable, "-S", str(RANK_WRAPPER), "--"])
    assert p.stdout.strip().splitlines()[-1] == \
        f"srun -N 3 --ntasks-per-node=1 --mpi=pmi2 {wrapper} hostname"
    p = slurm_cluster.salloc(3, [*argv[:-2], "launcher.rank_wrapper=false", "--", "hostname"],
                             cwd=tmp_path)
    assert p.returncode == 0, slurm_cluster.explain(p)
    assert p.stdout.strip().splitlines()[-1] == \
        "srun -N 3 --ntasks-per-node=1 --mpi=pmi2 hostname"


@pytest.fixture(scope="session")
def probe_archive(tmp_path_factory) -> Path:
    """A real (small) venv with a module of its own, packed by ezpz.pack.pack."""
    import subprocess
    import sysconfig

    from ezpz.pack import pack

    root = tmp_path_factory.mktemp("probe-env")
    venv = root / "ezpzprobe"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    purelib = sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)})
    Path(purelib, "ezpz_probe.py").write_text("VALUE = 'delivered'\n")
    archive = root / "ezpzprobe.tar.zst"
    pack(prefix=str(venv), path=str(archive))
    assert archive.is_file()
    return archive


def yeet_argv(archive: Path, *overrides: str) -> list[str]:
    return [str(BIN / "ezpz-yeet-env"), "machine=slurm", "launcher=srun",
            f"transfer.src={archive}", wrap_override(simnodes.SIMNODE), *overrides]


def yeet_env(out: Path, **kw) -> dict[str, str]:
    """simnode.sh's settings, with this venv first on PATH as in an activated job env."""
    env = simnodes.sim_env(out, **kw)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


#: Where the probe environment lands by default, relative to a node's /tmp.
PROBE_REL = f"ezpz-{user_name()}/ezpzprobe"


@pytest.mark.simnodes
@pytest.mark.parametrize("backend", ["mpi", "torch"])
def test_yeet_env_delivers_a_working_env_into_every_nodes_tmp(slurm_cluster, simnodes_root,
                                                              probe_archive, backend, tmp_path):
    dst = f"/tmp/{PROBE_REL}"  # the default: the per-user directory of each node's /tmp
    out = tmp_path / "nodes"
    out.mkdir()
    old_prefix = str(probe_archive.parent / "ezpzprobe")
    env = yeet_env(out, run_in_node=[[f"{dst}/bin/python", "-c", ENV_PROBE, old_prefix]])
    # a port free right now, so that nothing else on the machine collides with the rendezvous
    port = cluster_mod.free_ports(1)[0]
    p = slurm_cluster.salloc(3, yeet_argv(probe_archive, f"transfer.backend={backend}",
                                          f"launcher.rdzv_port={port}"),
                             env=env, cwd=tmp_path, timeout=240)
    nodes = simnodes.collect(out, 3)
    detail = slurm_cluster.explain(p) + "\n".join(str(n.check) for n in nodes)
    assert p.returncode == 0, detail
    assert [n.host for n in nodes] == ["sim1", "sim2", "sim3"], detail
    for node in nodes:
        assert node.rc == 0, detail
        assert node.tmp.get(PROBE_REL, {}).get("type") == "dir", detail
        run = node.runs[0]
        assert run["rc"] == 0, run
        # the environment works from the node's own /tmp, relocated to its new prefix
        assert run["stdout"].split() == ["delivered", dst, "False", "True"], run


@pytest.mark.simnodes
def test_yeet_env_fails_naming_the_node_whose_tmp_is_read_only(slurm_cluster, simnodes_root,
                                                               probe_archive, tmp_path):
    out = tmp_path / "nodes"
    out.mkdir()
    env = yeet_env(out, readonly_node="sim2")
    # one attempt: a retry on sim2 alone would be its rank 0 and record over sim1's check
    p = slurm_cluster.salloc(3, yeet_argv(probe_archive, "transfer.timeout=60",
                                          "transfer.retries=0"), env=env,
                             cwd=tmp_path, timeout=240)
    nodes = simnodes.collect(out, 3)
    assert p.returncode != 0, slurm_cluster.explain(p)
    # ezpz names the node itself (srun's own "srun: error: sim2: ..." lines do not count)
    ours = [line for line in (p.stdout + p.stderr).splitlines()
            if "sim2" in line and not line.lstrip().startswith("srun:")]
    assert ours, slurm_cluster.explain(p)
    # the healthy nodes got the environment, the read-only one has nothing
    assert PROBE_REL in nodes[0].tmp and PROBE_REL in nodes[2].tmp, [n.tmp for n in nodes]
    assert nodes[1].tmp == {} or PROBE_REL not in nodes[1].tmp


def test_a_command_that_times_out_leaves_no_allocation_behind(slurm_cluster):
    p = slurm_cluster.salloc(1, ["sleep", "97.25"], timeout=3)
    assert p.returncode == -9 and "timed out" in p.stderr
    q = slurm_cluster.run(["squeue", "-h", "-o", "%i %T"])
    assert q.returncode == 0 and q.stdout.strip() == "", slurm_cluster.explain(q)
    # nothing of the command is left running either
    import subprocess
    left = subprocess.run(["pgrep", "-f", "-x", "sleep 97.25"], capture_output=True, text=True)
    assert left.stdout.strip() == ""
