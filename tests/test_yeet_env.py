"""ezpz-yeet-env: original flags, checks before anything starts, dry runs, and (once the
per-node worker is installed) delivery onto two simulated nodes through mpiexec and torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import simnodes
from ezpz.cli.common import compose, to_settings
from ezpz.cli.yeet_env import hydra_quote, translate_compat
from ezpz.errors import ConfigError
from ezpz.jobenv import resolve_backend

PY = sys.executable
HOSTILE = ["/a b/it's \"x\".tar.zst", "a'; echo x", "back\\slash\\", "${oops}", "x=1,2", "é"]


@pytest.mark.parametrize("value", HOSTILE)
def test_hydra_quote_round_trips(value):
    s = to_settings(compose("yeet", [f"transfer.src={hydra_quote(value)}"]))
    assert s.transfer.src == value


def test_translate_original_flags():
    got = translate_compat(["--src", "/e nv.tar.zst", "--dst=/tmp/e", "--d", "--chunk_size",
                            "64MiB", "--overwrite", "machine=local"])
    assert got == ["transfer.src='/e nv.tar.zst'", "transfer.dst='/tmp/e'",
                   "transfer.decompress=true", "transfer.chunk_size='64MiB'",
                   "transfer.overwrite=true", "machine=local"]
    s = to_settings(compose("yeet", got))
    assert (s.transfer.src, s.transfer.dst, s.transfer.chunk_bytes, s.transfer.overwrite) == \
        ("/e nv.tar.zst", "/tmp/e", 64 * 1024**2, True)
    with pytest.raises(ConfigError, match="--src needs a value"):
        translate_compat(["--src"])


def test_backend_resolution():
    assert resolve_backend("auto", "mpiexec") == "mpi"
    assert resolve_backend("torch", "srun") == "torch"
    assert resolve_backend("auto", "torchrun") == "torch"
    with pytest.raises(ConfigError, match="transfer.backend=mpi cannot be used with launcher=torchrun"):
        resolve_backend("mpi", "torchrun")
    # without a launcher (a worker started by hand): what started this process decides
    assert resolve_backend("auto", environ={"TORCHELASTIC_RUN_ID": "1"}) == "torch"
    assert resolve_backend("auto", environ={"LOCAL_RANK": "0", "WORLD_SIZE": "2"}) == "torch"
    assert resolve_backend("auto", environ={"LOCAL_RANK": "0", "WORLD_SIZE": "2",
                                            "PMI_RANK": "0"}) == "mpi"
    assert resolve_backend("auto", environ={}) == "mpi"
    with pytest.raises(ConfigError, match="transfer.backend: 'nccl' is not a backend"):
        resolve_backend("nccl", "mpiexec")


def _yeet(*args, cwd, env=None, module="ezpz.cli.yeet_env", timeout=300):
    return subprocess.run([PY, "-m", module, *args], cwd=cwd, capture_output=True, text=True,
                          env=env, timeout=timeout)


@pytest.fixture
def nodefile(tmp_path) -> Path:
    """A fake PBS node file: two names of this machine, one line per slot."""
    p = tmp_path / "pbs nodefile"
    p.write_text("localhost\nlocalhost\n127.0.0.1\n127.0.0.1\n")
    return p


@pytest.fixture
def archive(tmp_path) -> Path:
    p = tmp_path / "some env.tar.zst"
    p.write_bytes(b"\x28\xb5\x2f\xfd" + b"\0" * 64)
    return p


def _pbs_env(nodefile: Path, **extra) -> dict[str, str]:
    env = {**os.environ, "PBS_NODEFILE": str(nodefile), "PBS_JOBID": "77.fake", **extra}
    env.pop("EZPZ_LOG_LEVEL", None)
    return env


@pytest.mark.parametrize("args, message", [
    (["transfer.src=/no/such/env.tar.zst"],
     "error: transfer.src: '/no/such/env.tar.zst' does not exist (give an archive made by "
     "ezpz-tar-env, an environment directory to pack, or nothing to pack the running environment)"),
    (["--src", "/no/such/env.tar.zst"], "error: transfer.src: '/no/such/env.tar.zst' does not exist"),
    (["launcher=torchrun", "transfer.backend=mpi", "ARCHIVE"],
     "error: transfer.backend=mpi cannot be used with launcher=torchrun"),
    (["launcher.hostfile=/no/such/nodes", "ARCHIVE"],
     "error: launcher.hostfile: '/no/such/nodes' does not exist"),
    (["launcher.nhosts=3", "ARCHIVE"], "error: 3 hosts requested but the job has 2"),
    (["--src"], "error: --src needs a value"),
    (["transfer.chunk_size=abc", "ARCHIVE"], "error: transfer.chunk_size: 'abc' is not a size"),
])
def test_bad_input_is_one_line_exit_2_and_nothing_is_written(tmp_path, nodefile, archive, args,
                                                             message):
    args = [f"transfer.src={hydra_quote(str(archive))}" if a == "ARCHIVE" else a for a in args]
    p = _yeet("machine=local", *args, cwd=tmp_path, env=_pbs_env(nodefile))
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), p.stderr
    assert not (tmp_path / "outputs").exists()


def _run_dir(cwd: Path) -> Path:
    dirs = sorted((cwd / "outputs" / "yeet").glob("*/*"))
    assert len(dirs) == 1, dirs
    return dirs[0]


@pytest.mark.parametrize("module", ["ezpz.cli.yeet_env", "ezpz.utils.yeet_tarball"])
def test_dry_run_prints_one_process_per_node_and_saves_the_resolved_config(tmp_path, nodefile,
                                                                         archive, module):
    p = _yeet("machine=local", "--src", str(archive), "--dst", "/tmp/e e", "--overwrite",
              "launcher.dry_run=true", "launcher.ngpus=8", cwd=tmp_path, env=_pbs_env(nodefile),
              module=module)
    assert p.returncode == 0, p.stderr
    run_dir = _run_dir(tmp_path).resolve()
    spec_file = run_dir / "worker-spec.json"
    argv = p.stdout.strip().splitlines()[-1].split(" ")
    assert argv[0].endswith("mpiexec")
    spec = json.loads(spec_file.read_text())
    # the run id ends the run directory's name and is the spec's and the worker's
    assert run_dir.name.endswith("-" + spec["run_id"]) and len(spec["run_id"]) == 8
    # hydra keeps the other ranks running when one ends: the workers finish without it
    assert argv[1:] == ["-n", "2", "-ppn", "1", "-hosts", "localhost", "-disable-auto-cleanup",
                        PY, "-m", "ezpz.transfer",
                        "--spec", str(spec_file), "--run-dir", str(run_dir),
                        "--run-id", spec["run_id"]]
    assert spec["src"] == str(archive.resolve())
    assert spec["dst"] == "/tmp/e e" and spec["overwrite"] is True
    assert spec["backend"] == "mpi"
    assert not (run_dir / "results.json").exists()


def test_dry_run_torchrun_uses_the_torch_backend(tmp_path, nodefile, archive):
    p = _yeet("machine=local", "launcher=torchrun", f"transfer.src={hydra_quote(str(archive))}",
              "launcher.dry_run=true", cwd=tmp_path, env=_pbs_env(nodefile))
    assert p.returncode == 0, p.stderr
    run_dir = _run_dir(tmp_path).resolve()
    argv = p.stdout.strip().splitlines()[-1].split(" ")
    i = next(k for k, a in enumerate(argv) if a.endswith("torchrun"))
    assert argv[1:i] == ["-n", "2", "-ppn", "1", "-hosts", "localhost"]
    # every "host" is this machine: agents advertise loopback, gloo uses it
    assert argv[i + 1:i + 8] == ["--nnodes=2", "--nproc-per-node=1", "--rdzv-backend=c10d",
                                 "--rdzv-endpoint=localhost:29500", "--rdzv-id=77",
                                 "--local-addr=127.0.0.1", "--no-python"]
    assert argv[i + 8:i + 11] == [PY, "-m", "ezpz.transfer"]
    assert "environment: GLOO_SOCKET_IFNAME=lo" in p.stderr
    spec = json.loads((run_dir / "worker-spec.json").read_text())
    assert spec["backend"] == "torch"


def test_torch_backend_under_srun_gets_a_rendezvous_on_the_first_node(tmp_path, archive):
    env = {**os.environ, "SLURM_JOB_ID": "5", "SLURM_JOB_NODELIST": "sim[1-3]"}
    for var in ("PBS_NODEFILE", "HOSTFILE", "PBS_JOBID", "EZPZ_LOG_LEVEL"):
        env.pop(var, None)
    p = _yeet("machine=slurm", "launcher=srun", "transfer.backend=torch", "launcher.rdzv_port=29777",
              f"transfer.src={hydra_quote(str(archive))}", "launcher.dry_run=true", cwd=tmp_path,
              env=env)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip().splitlines()[-1].startswith(
        f"srun -N 3 --ntasks-per-node=1 --mpi=pmi2 {PY} -m ezpz.transfer --spec ")
    assert "environment: MASTER_ADDR=sim1 MASTER_PORT=29777" in p.stderr


def test_dry_run_with_a_directory_says_it_would_pack_it(tmp_path, nodefile):
    env_dir = tmp_path / "myenv"
    (env_dir / "bin").mkdir(parents=True)
    p = _yeet("machine=local", f"transfer.src={env_dir}", "launcher.dry_run=true", cwd=tmp_path,
              env=_pbs_env(nodefile))
    assert p.returncode == 0, p.stderr
    assert f"dry run: would pack {env_dir} into" in p.stderr
    assert not list(tmp_path.glob("*.tar*")), "a dry run packs nothing"


# --------------------------------------------------------------------------------------
# end to end on two simulated nodes (needs the per-node worker, ezpz.transfer)
# --------------------------------------------------------------------------------------
PROBE = "import sys, ezpz_probe; print(ezpz_probe.VALUE, sys.prefix)"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def probe_archive(tmp_path_factory) -> Path:
    """A real small venv with a module of its own, packed by ezpz.pack.pack."""
    import sysconfig

    from ezpz import pack as tar_env

    root = tmp_path_factory.mktemp("probe")
    venv = root / "ezpzprobe"
    subprocess.run([PY, "-m", "venv", "--without-pip", str(venv)], check=True)
    purelib = sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)})
    Path(purelib, "ezpz_probe.py").write_text("VALUE = 'delivered'\n")
    out = root / "ezpzprobe.tar.zst"
    tar_env.pack(prefix=str(venv), path=str(out))
    return out


@pytest.mark.simnodes
@pytest.mark.parametrize("launcher", ["mpiexec", "torchrun"])
def test_yeet_env_delivers_a_working_env_to_two_simulated_nodes(simnodes_ok, tmp_path, nodefile,
                                                                probe_archive, launcher):
    from ezpz.ownership import user_name

    # the default dst: the environment's name in the per-user directory of each node's /tmp
    dst = f"/tmp/ezpz-{user_name()}/ezpzprobe"
    out = tmp_path / "nodes"
    out.mkdir()
    env = simnodes.sim_env(out, run_in_node=[[f"{dst}/bin/python", "-c", PROBE]],
                           base=_pbs_env(nodefile))
    p = _yeet("machine=local", f"launcher={launcher}",
              f"transfer.src={hydra_quote(str(probe_archive))}",
              f"launcher.wrap=[{hydra_quote(simnodes.SIMNODE)}]", "transfer.timeout=120",
              f"launcher.rdzv_port={_free_port()}",
              cwd=tmp_path, env=env, timeout=240)
    nodes = simnodes.collect(out, 2)
    detail = p.stdout + p.stderr + "\n".join(str(n.check) for n in nodes)
    assert p.returncode == 0, detail
    assert [n.host for n in nodes] == ["node0", "node1"], detail
    for node in nodes:
        assert node.rc == 0, detail
        assert node.tmp.get(f"ezpz-{user_name()}") == {"type": "dir", "mode": 0o700}, detail
        assert node.tmp.get(f"ezpz-{user_name()}/ezpzprobe", {}).get("type") == "dir", detail
        assert not [k for k in node.tmp if ".ezpz-" in k], "no lock or staging left behind"
        run = node.runs[0]
        assert run["rc"] == 0 and run["stdout"].split() == ["delivered", dst], run
    results = json.loads((_run_dir(tmp_path) / "results.json").read_text())
    assert results["status"] == "ok" and results["exit_code"] == 0
    spec = json.loads((_run_dir(tmp_path) / "worker-spec.json").read_text())
    assert spec["backend"] == ("torch" if launcher == "torchrun" else "mpi")
    assert f"source {dst}/bin/activate" in p.stdout


def test_finish_reports_failed_nodes_and_exits_with_the_worker_status(tmp_path, capsys):
    from ezpz.cli.yeet_env import _finish

    (tmp_path / "results.json").write_text(json.dumps({
        "status": "failed", "exit_code": 1, "dst": "/tmp/e", "failed_hosts": ["node1"]}))
    import logging
    logger = logging.getLogger("ezpz")
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda r: records.append(r.getMessage())  # type: ignore[method-assign]
    logger.addHandler(handler)
    try:
        assert _finish(tmp_path, 1, None) == 1
    finally:
        logger.removeHandler(handler)
    assert "failed on 1 node(s): node1" in records
    assert "activate" not in capsys.readouterr().out


def test_finish_prints_the_activation_hint(tmp_path, capsys):
    from ezpz.cli.yeet_env import _finish

    (tmp_path / "results.json").write_text(json.dumps(
        {"status": "ok", "exit_code": 0, "dst": "/tmp/my env", "kind": "conda"}))
    assert _finish(tmp_path, 0, None) == 0
    assert capsys.readouterr().out.strip() == \
        "activate the delivered environment on each node with: conda activate '/tmp/my env'"


def test_finish_without_results_is_a_failure(tmp_path):
    from ezpz.cli.yeet_env import _finish

    assert _finish(tmp_path, 0, None) == 1
    assert _finish(tmp_path, 9, None) == 9
    (tmp_path / "results.json").write_text("{not json")
    assert _finish(tmp_path, 0, None) == 1


def test_the_workers_config_is_resolved_once_on_the_launching_host(tmp_path, nodefile, archive):
    # ${now:...} and ${hydra:...} are decided here; every node reads the same values
    p = _yeet("machine=local", f"transfer.src={hydra_quote(str(archive))}",
              "transfer.dst=/tmp/env-${now:%Y}-${hydra:job.name}", "launcher.dry_run=true",
              cwd=tmp_path, env=_pbs_env(nodefile))
    assert p.returncode == 0, p.stderr
    text = (_run_dir(tmp_path) / "worker-spec.json").read_text()
    assert "${" not in text
    spec = json.loads(text)
    assert spec["dst"].startswith("/tmp/env-20")
