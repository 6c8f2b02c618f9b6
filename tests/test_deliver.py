"""Delivery as ezpz-yeet-env runs it (ezpz.deliver): a run id that names the run directory and
that the worker checks, two runs in the same second apart, a retry on the failed node alone,
and spares that receive the environment too.

Hosts of a node file are simulated nodes here: MPICH's hydra reaches "nodeA", "nodeB", ...
through tests/fakessh.sh (a UTS namespace named after the host) and every rank runs under
tests/simnode.sh with EZPZ_SIM_KEEP_HOSTNAME=1, its /tmp bound to ``<root>/<host>``, so a
node keeps its /tmp from one attempt to the next and the test can look at it afterwards.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

import simnodes
from ezpz.cli.common import compose, to_settings
from ezpz.cli.yeet_env import hydra_quote
from ezpz.deliver import _failed_plan_hosts, _merge, delivery_launcher

PY = sys.executable
HERE = Path(__file__).resolve().parent
FAKESSH = str(HERE / "fakessh.sh")
#: Run inside every simulated node after its rank: a blocker file at /tmp/venv goes away, so a
#: node that failed because of it succeeds on the next attempt (a directory is left alone).
UNBLOCK = [PY, "-c", "import os; p = '/tmp/venv'; os.path.isfile(p) and os.unlink(p)"]


def small_tar(path: Path, text: str = "ok\n", top: str = "venv") -> Path:
    with tarfile.open(path, "w") as tf:
        data = text.encode()
        ti = tarfile.TarInfo(f"{top}/ok.txt")
        ti.size = len(data)
        tf.addfile(ti, io.BytesIO(data))
    return path


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "PBS_", "MASTER_", "EZPZ_"))}
    env.update(extra)
    return env


def _yeet(*args: str, cwd: Path, env: dict[str, str], timeout: float = 240
          ) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", "ezpz.cli.yeet_env", *args], cwd=cwd, capture_output=True,
                          text=True, env=env, timeout=timeout)


def _run_dir(cwd: Path) -> Path:
    (run,) = cwd.glob("outputs/yeet/*/*")
    return run


# --------------------------------------------------------------------------------------
# run ids and run directories
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("config", ["yeet", "launch", "tar_env"])
def test_every_run_and_sweep_directory_ends_with_the_run_id(config):
    from importlib import resources

    import yaml
    from omegaconf import OmegaConf

    from ezpz.cli import common

    cfg = common.compose(config, [])
    raw = yaml.safe_load((resources.files("ezpz.conf") / f"{config}.yaml").read_text())
    for key in ("run", "sweep"):
        assert raw["hydra"][key]["dir"].endswith("${now:%H-%M-%S}-${ezpz_run_id:}"), key
    # two runs: two ids, so two directories even in the same second
    common._run_id["id"] = "aaaa0001"
    first = OmegaConf.create({"d": "x/${ezpz_run_id:}"}).d
    common._run_id["id"] = "aaaa0002"
    second = OmegaConf.create({"d": "x/${ezpz_run_id:}"}).d
    assert (first, second) == ("x/aaaa0001", "x/aaaa0002")
    assert cfg is not None


def test_the_worker_refuses_a_spec_another_run_wrote(tmp_path):
    from ezpz.transfer import WorkerSpec, spec_for

    archive = small_tar(tmp_path / "venv.tar")
    settings = to_settings(compose("yeet", [f"transfer.src={archive}"]))
    spec = spec_for(settings.transfer, launcher="mpiexec")
    from dataclasses import replace

    spec_file = tmp_path / "worker-spec.json"
    replace(spec, run_id="1111aaaa").write(str(spec_file))
    run_dir = tmp_path / "run"
    p = subprocess.run([PY, "-m", "ezpz.transfer", "--spec", str(spec_file), "--run-dir",
                        str(run_dir), "--run-id", "2222bbbb"], capture_output=True, text=True,
                       env=_env(), timeout=120)
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert lines == [f"error: --spec {spec_file} was written by run 1111aaaa, not by run 2222bbbb "
                     "that started this worker: two runs share one run directory; give each "
                     "run its own (hydra.run.dir=...)"], p.stderr
    assert not run_dir.exists()
    assert WorkerSpec.read(str(spec_file)).run_id == "1111aaaa"
    # --run-id without --spec is a usage error too
    q = subprocess.run([PY, "-m", "ezpz.transfer", "--run-id", "x"], capture_output=True,
                       text=True, env=_env(), timeout=120)
    assert q.returncode == 2 and q.stderr.strip().splitlines() == [
        "error: --run-id goes with --spec (use --spec FILE [--run-dir DIR] [--run-id ID], or "
        "--config-file FILE [--run-dir DIR] [key=value ...])"]


@pytest.mark.simnodes
@pytest.mark.slow
def test_two_runs_in_the_same_second_deliver_each_to_its_own_dst(simnodes_ok, tmp_path):
    """Two ezpz-yeet-env runs started together, from one directory, with run directories of
    the same second (``hydra.run.dir`` given with seconds only, as the default has them),
    each with its own archive and dst: each run's nodes get its own archive."""
    nodes = tmp_path / "nodes"
    nodes.write_text("localhost\n127.0.0.1\n")
    procs, outs = [], []
    for name in ("alpha", "beta"):
        archive = small_tar(tmp_path / f"{name}.tar", text=f"{name}\n", top=name)
        out = tmp_path / f"sim-{name}"
        out.mkdir()
        outs.append(out)
        probe = [PY, "-c", f"print(open('/tmp/{name}-dst/ok.txt').read().strip())"]
        env = simnodes.sim_env(out, run_in_node=[probe], base=_env())
        args = ["machine=local", f"launcher.hostfile={nodes}",
                f"transfer.src={hydra_quote(str(archive))}", f"transfer.dst=/tmp/{name}-dst",
                f"launcher.wrap=[{hydra_quote(simnodes.SIMNODE)}]", "transfer.timeout=200",
                "hydra.run.dir=outputs/yeet/same/12-00-00-${ezpz_run_id:}"]
        procs.append(subprocess.Popen([PY, "-m", "ezpz.cli.yeet_env", *args], cwd=tmp_path,
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    results = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, results):
        assert p.returncode == 0, out + err
    run_dirs = sorted((tmp_path / "outputs" / "yeet" / "same").iterdir())
    assert len(run_dirs) == 2, run_dirs
    for name, out in zip(("alpha", "beta"), outs):
        (rd,) = [d for d in run_dirs if json.loads((d / "results.json").read_text())["dst"]
                 == f"/tmp/{name}-dst"]
        spec = json.loads((rd / "worker-spec.json").read_text())
        assert spec["src"].endswith(f"{name}.tar") and rd.name == f"12-00-00-{spec['run_id']}"
        for node in simnodes.collect(out, 2):
            assert node.rc == 0 and node.runs[0]["stdout"].strip() == name, node.check


# --------------------------------------------------------------------------------------
# delivery retry and spares
# --------------------------------------------------------------------------------------
def test_failed_hosts_are_mapped_to_the_plans_hosts():
    hosts = ["x1000c0s0b0n0.hostmgmt", "x1000c0s0b0n1.hostmgmt", "x1000c0s1b0n0.hostmgmt"]
    ok = {"status": "failed", "exit_code": 1, "failed_hosts": ["x1000c0s0b0n1"]}
    assert _failed_plan_hosts(ok, hosts) == ["x1000c0s0b0n1.hostmgmt"]
    # no results, or a host the plan does not know: every host again (holders skip)
    assert _failed_plan_hosts(None, hosts) == hosts
    assert _failed_plan_hosts({"exit_code": 1, "failed_hosts": ["elsewhere"]}, hosts) == hosts
    assert _failed_plan_hosts({"exit_code": 1, "failed_hosts": []}, hosts) == hosts
    assert _failed_plan_hosts({"exit_code": 0, "failed_hosts": []}, hosts) == []
    merged = _merge({"per_node": [{"host": "a", "status": "ok"}, {"host": "b", "status": "failed"}],
                     "kind": None},
                    {"per_node": [{"host": "b", "status": "ok"}], "kind": "venv"})
    assert merged["per_node"] == [{"host": "a", "status": "ok"}, {"host": "b", "status": "ok"}]
    assert merged["kind"] == "venv"


def test_the_delivery_launcher_takes_the_spares_and_never_reruns_the_job():
    s = to_settings(compose("yeet", ["launcher.spares=2", "launcher.nhosts=3",
                                     "launcher.retries=4", "launcher.idle_timeout=60"]))
    dl = delivery_launcher(s.launcher)
    assert (dl.nhosts, dl.spares, dl.retries, dl.idle_timeout) == (5, 0, 0, None)
    s = to_settings(compose("yeet", ["launcher.spares=1"]))
    assert delivery_launcher(s.launcher).nhosts is None  # every host, spares included


def _fake_host_args(tmp_path: Path, hosts: list[str], unblock: bool = True
                    ) -> tuple[list[str], dict[str, str], Path]:
    hf = tmp_path / "nodefile"
    hf.write_text("".join(f"{h}\n" for h in hosts))
    root = tmp_path / "root"
    root.mkdir()
    out = tmp_path / "sim"
    out.mkdir()
    args = [f"launcher.hostfile={hf}",
            f"launcher.extra_args=['-launcher','ssh','-launcher-exec','{FAKESSH}']",
            f"launcher.wrap=[{hydra_quote(simnodes.SIMNODE)}]", "transfer.timeout=120",
            "transfer.dst=/tmp/venv"]
    env = simnodes.sim_env(out, run_in_node=[UNBLOCK] if unblock else [], shared_root=str(root),
                           base=_env(EZPZ_FAKESSH_LOG=str(tmp_path / "ssh.log"),
                                     EZPZ_SIM_KEEP_HOSTNAME="1"))
    return args, env, root


@pytest.mark.simnodes
@pytest.mark.parametrize("retries", [1, 0])
def test_a_node_that_failed_is_delivered_again_alone(simnodes_ok, tmp_path, retries):
    args, env, root = _fake_host_args(tmp_path, ["nodeA", "nodeB"])
    src = small_tar(tmp_path / "venv.tar")
    (root / "nodeB").mkdir()
    (root / "nodeB" / "venv").write_text("in the way on the first attempt")
    p = _yeet("machine=local", f"transfer.src={src}", f"transfer.retries={retries}", *args,
              cwd=tmp_path, env=env)
    ssh = (tmp_path / "ssh.log").read_text().split()
    results = json.loads((_run_dir(tmp_path) / "results.json").read_text())
    if retries == 0:
        assert p.returncode == 1, p.stderr
        assert sorted(ssh) == ["nodeA", "nodeB"] and "delivery attempt 2" not in p.stderr
        assert results["failed_hosts"] == ["nodeB"] and results["status"] == "failed"
        assert (root / "nodeA" / "venv" / "ok.txt").read_text() == "ok\n"
        assert not (root / "nodeB" / "venv").exists()  # the check removed the blocker
        return
    assert p.returncode == 0, p.stdout + p.stderr
    # the first attempt on both hosts, the second on nodeB alone
    assert sorted(ssh[:2]) == ["nodeA", "nodeB"] and ssh[2:] == ["nodeB"], ssh
    assert "delivery attempt 2 of 2 on the 1 host without the environment: nodeB" in p.stderr
    for host in ("nodeA", "nodeB"):
        assert (root / host / "venv" / "ok.txt").read_text() == "ok\n"
    assert results["status"] == "ok" and results["exit_code"] == 0
    assert results["failed_hosts"] == []
    assert [(r["host"], r["status"]) for r in results["per_node"]] == [("nodeA", "ok"),
                                                                        ("nodeB", "ok")]
    first, second = results["delivery_attempts"]
    assert (first["hosts"], first["status"], first["failed_hosts"]) == (
        ["nodeA", "nodeB"], "failed", ["nodeB"])
    assert (second["hosts"], second["status"], second["run_dir"]) == (["nodeB"], "ok",
                                                                      "delivery-2")
    assert (_run_dir(tmp_path) / "delivery-2" / "results.json").exists()
    assert "activate the delivered environment" in p.stdout


@pytest.mark.simnodes
def test_spares_receive_the_environment_too(simnodes_ok, tmp_path):
    args, env, root = _fake_host_args(tmp_path, ["nodeA", "nodeB", "nodeC"])
    src = small_tar(tmp_path / "venv.tar")
    p = _yeet("machine=local", f"transfer.src={src}", "launcher.spares=1", *args, cwd=tmp_path,
              env=env)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "delivering to the 1 spare host too, so that a failover lands on a ready node: " \
           "nodeC" in p.stderr
    for host in ("nodeA", "nodeB", "nodeC"):
        assert (root / host / "venv" / "ok.txt").read_text() == "ok\n", host
    spec = json.loads((_run_dir(tmp_path) / "worker-spec.json").read_text())
    assert spec["min_success_nodes"] == 2  # the job's own hosts must hold it


# --------------------------------------------------------------------------------------
# ezpz-launch transfer.src=... -- cmd
# --------------------------------------------------------------------------------------
def test_the_node_local_environment_comes_first():
    from ezpz.deliver import delivered_command, node_local_env

    assert node_local_env("/tmp/e", "venv", {"PATH": "/usr/bin:/bin"}) == {
        "PATH": "/tmp/e/bin:/usr/bin:/bin", "VIRTUAL_ENV": "/tmp/e"}
    assert node_local_env("/tmp/c", "conda", {}) == {
        "PATH": "/tmp/c/bin", "CONDA_PREFIX": "/tmp/c", "CONDA_DEFAULT_ENV": "/tmp/c"}
    for name in ("python", "python3", "python3.11"):
        assert delivered_command([name, "train.py"], "/tmp/e") == [f"/tmp/e/bin/{name}",
                                                                   "train.py"]
    # a path, or another program, is left as given (PATH finds programs of the env)
    for cmd in (["/usr/bin/python3", "x.py"], ["./python", "x"], ["torchrun", "x.py"],
                ["pythonista"]):
        assert delivered_command(cmd, "/tmp/e") == cmd


PROBE = ("import json, os, socket, sys; print(json.dumps({'host': socket.gethostname(), "
         "'exe': sys.executable, 'prefix': sys.prefix, 've': os.environ.get('VIRTUAL_ENV'), "
         "'path0': os.environ['PATH'].split(os.pathsep)[0]}))")


@pytest.fixture(scope="module")
def venv_archive(tmp_path_factory) -> Path:
    from ezpz.pack import pack

    root = tmp_path_factory.mktemp("launch-env")
    subprocess.run([PY, "-m", "venv", "--without-pip", str(root / "venv")], check=True)
    return Path(pack(prefix=str(root / "venv"), path=str(root / "venv.tar.zst")))


@pytest.mark.simnodes
def test_one_line_launch_delivers_then_runs_on_ready_nodes_with_a_spare(simnodes_ok, tmp_path,
                                                                        venv_archive):
    """nodeB cannot take the environment (retries=0): the spare nodeC holds it, so the job
    runs on nodeA and nodeC, each rank with the delivered interpreter first."""
    args, env, root = _fake_host_args(tmp_path, ["nodeA", "nodeB", "nodeC"], unblock=False)
    (root / "nodeB").mkdir()
    (root / "nodeB" / "venv").write_text("in the way")
    p = subprocess.run([PY, "-m", "ezpz.cli.launch", "machine=local",
                        f"transfer.src={venv_archive}", "transfer.retries=0",
                        "launcher.spares=1", *args, "--", "python", "-c", PROBE],
                       cwd=tmp_path, capture_output=True, text=True, env=env, timeout=240)
    assert p.returncode == 0, p.stdout + p.stderr
    ranks = sorted((json.loads(line) for line in p.stdout.splitlines()
                    if line.startswith("{")), key=lambda r: r["host"])
    assert [r["host"] for r in ranks] == ["nodeA", "nodeC"], p.stdout + p.stderr
    for r in ranks:
        assert (r["exe"], r["prefix"], r["ve"], r["path0"]) == (
            "/tmp/venv/bin/python", "/tmp/venv", "/tmp/venv", "/tmp/venv/bin"), r
    assert "the job runs on nodeA, nodeC (nodeB replaced by spares that hold the " \
           "environment)" in p.stderr
    (run,) = tmp_path.glob("outputs/launch/*/*")
    results = json.loads((run / "delivery" / "results.json").read_text())
    assert results["status"] == "partial" and results["failed_hosts"] == ["nodeB"]


@pytest.mark.simnodes
def test_one_line_launch_stops_when_the_delivery_fails(simnodes_ok, tmp_path, venv_archive):
    args, env, root = _fake_host_args(tmp_path, ["nodeA", "nodeB"], unblock=False)
    (root / "nodeB").mkdir()
    (root / "nodeB" / "venv").write_text("in the way")
    marker = tmp_path / "ran"
    p = subprocess.run([PY, "-m", "ezpz.cli.launch", "machine=local",
                        f"transfer.src={venv_archive}", *args, "--", "python", "-c",
                        f"open({str(marker)!r}, 'w')"],
                       cwd=tmp_path, capture_output=True, text=True, env=env, timeout=240)
    assert p.returncode == 1, p.stderr
    assert "not starting the command" in p.stderr and not marker.exists()
    ssh = (tmp_path / "ssh.log").read_text().split()
    assert sorted(ssh) == ["nodeA", "nodeB", "nodeB"], ssh  # delivered, retried on nodeB only


@pytest.mark.parametrize("args, message", [
    (["transfer.src=/no/such/env.tar.zst"], "error: transfer.src: '/no/such/env.tar.zst' "
                                            "does not exist"),
    (["transfer.src=ARCHIVE", "transfer.retries=-1"],
     "error: transfer.retries: must be 0 or more, got -1"),
    (["transfer.src=ARCHIVE", "launcher=torchrun", "transfer.backend=mpi"],
     "error: transfer.backend=mpi cannot be used with launcher=torchrun"),
])
def test_one_line_launch_refuses_bad_input_before_anything_runs(tmp_path, args, message):
    archive = small_tar(tmp_path / "venv.tar")
    args = [a.replace("ARCHIVE", str(archive)) for a in args]
    p = subprocess.run([PY, "-m", "ezpz.cli.launch", "machine=local", *args, "--", "hostname"],
                       cwd=tmp_path, capture_output=True, text=True, env=_env(), timeout=120)
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), p.stderr
    assert not (tmp_path / "outputs").exists()


def test_a_delivery_stopped_by_a_signal_is_not_retried(tmp_path):
    """SIGTERM to ezpz-yeet-env (a qdel, a preemption) while its workers run: the delivery
    ends with 128 + SIGTERM and no second attempt starts."""
    import signal
    import time

    src = small_tar(tmp_path / "venv.tar")
    nodes = tmp_path / "nodes"
    nodes.write_text("localhost\n127.0.0.1\n")
    # every rank waits (sh -c 'sleep 60' ignores the worker's command after it)
    wrap = "launcher.wrap=['sh','-c','sleep 60','hold']"
    proc = subprocess.Popen([PY, "-m", "ezpz.cli.yeet_env", "machine=local",
                             f"launcher.hostfile={nodes}", f"transfer.src={src}", wrap,
                             "launcher.grace=5"], cwd=tmp_path, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not list(tmp_path.glob("outputs/yeet/*/*/*.json")):
        time.sleep(0.1)
    time.sleep(1.0)  # the launcher has started mpiexec
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "the delivery was stopped by SIGTERM: not retrying" in err
    assert "delivery attempt 2" not in err
    assert not list(_run_dir(tmp_path).glob("delivery-*"))


@pytest.mark.simnodes
def test_one_line_launch_without_a_ready_spare_does_not_start(simnodes_ok, tmp_path,
                                                              venv_archive):
    """A partial delivery the user allowed (min_success_nodes=1) leaves nodeB without the
    environment and there is no spare: the command is not started, in one line."""
    args, env, root = _fake_host_args(tmp_path, ["nodeA", "nodeB"], unblock=False)
    (root / "nodeB").mkdir()
    (root / "nodeB" / "venv").write_text("in the way")
    marker = tmp_path / "ran"
    p = subprocess.run([PY, "-m", "ezpz.cli.launch", "machine=local",
                        f"transfer.src={venv_archive}", "transfer.retries=0",
                        "transfer.min_success_nodes=1", *args, "--", "python", "-c",
                        f"open({str(marker)!r}, 'w')"],
                       cwd=tmp_path, capture_output=True, text=True, env=env, timeout=240)
    assert p.returncode == 1, p.stderr
    assert p.stderr.strip().splitlines()[-1] == (
        "error: /tmp/venv is missing on 1 of the job's 2 hosts (nodeB) and no spare holds it: "
        "see the delivery's results.json; launcher.spares=N holds hosts back to take their "
        "place")
    assert not marker.exists()


@pytest.mark.parametrize("tty, given, want", [(True, None, "bar"), (False, None, "log"),
                                              (True, "off", "off"), (False, "bar", "bar")])
def test_the_ranks_show_progress_as_this_terminal_allows(monkeypatch, tty, given, want):
    """A rank's output is a pipe: the delivery tells rank 0 whether to draw a bar."""
    from types import SimpleNamespace

    from ezpz.deliver import _progress_env

    class Err(io.StringIO):
        def isatty(self) -> bool:
            return tty

    monkeypatch.setattr("sys.stderr", Err())
    if given is None:
        monkeypatch.delenv("EZPZ_PROGRESS", raising=False)
    else:
        monkeypatch.setenv("EZPZ_PROGRESS", given)
    plan = SimpleNamespace(env={})
    _progress_env(plan)
    assert plan.env == {"EZPZ_PROGRESS": want}
