"""The job scripts in examples/: each is valid shell with its scheduler's header and one
ezpz-launch line; the Slurm one runs with sbatch in the throwaway Slurm cluster and every
node's rank runs with the delivered interpreter."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import simnodes

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
BIN = Path(sys.executable).parent


@pytest.mark.parametrize("name, header", [("aurora.pbs", "#PBS"), ("polaris.pbs", "#PBS"),
                                          ("slurm.sbatch", "#SBATCH")])
def test_job_scripts_are_valid_shell_with_one_ezpz_launch_line(name, header):
    script = EXAMPLES / name
    assert os.access(script, os.X_OK)
    p = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    text = script.read_text()
    assert text.startswith("#!/bin/bash")
    assert re.search(rf"^{header} ", text, re.M)
    launches = [line for line in text.splitlines() if line.startswith("ezpz-launch ")]
    assert launches == [line for line in launches if "transfer.src=" in line and
                        line.endswith("-- python train.py")] and len(launches) == 1
    if name == "aurora.pbs":
        assert "module load frameworks" in text and "filesystems=home:flare" in text
    if name == "polaris.pbs":
        assert "module use /soft/modulefiles\nmodule load conda\nconda activate" in text
        assert "system=polaris" in text


@pytest.fixture(scope="module")
def probe_archive(tmp_path_factory) -> Path:
    from ezpz.pack import pack

    root = tmp_path_factory.mktemp("example-env")
    venv = root / "exampleenv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    archive = root / "exampleenv.tar.zst"
    pack(prefix=str(venv), path=str(archive))
    return archive


@pytest.mark.slurm
@pytest.mark.simnodes
def test_the_slurm_job_script_runs_with_sbatch(slurm_cluster, simnodes_ok, probe_archive,
                                               tmp_path):
    """``sbatch examples/slurm.sbatch`` as written: the batch step runs ezpz-launch, which
    delivers the archive with srun (each task a simulated node whose /tmp is kept between
    job steps) and then runs train.py on both nodes."""
    work = tmp_path / "job"
    work.mkdir()
    shutil.copy(EXAMPLES / "train.py", work / "train.py")
    nodes_root = tmp_path / "node-tmp"
    nodes_root.mkdir()
    out = tmp_path / "sim"
    out.mkdir()
    env = simnodes.sim_env(out, shared_root=str(nodes_root), check=False)
    env.update({"PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
                "ENV_ARCHIVE": str(probe_archive)})
    output = work / "job.out"
    cmd = ["sbatch", "--wait", "--export=ALL", f"--chdir={work}", f"--output={output}",
           str(EXAMPLES / "slurm.sbatch"), "machine=slurm",
           f"launcher.wrap=['{simnodes.SIMNODE}']", "transfer.timeout=120"]
    p = slurm_cluster.run(cmd, env=env, timeout=300, cwd=work)
    text = output.read_text() if output.exists() else ""
    assert p.returncode == 0, slurm_cluster.explain(p) + text
    ranks = sorted((json.loads(line) for line in text.splitlines()
                    if line.startswith("{") and line.endswith("}")), key=lambda r: r["host"])
    from ezpz.ownership import user_name

    dst = f"/tmp/ezpz-{user_name()}/exampleenv"  # the per-user default
    assert [r["host"] for r in ranks] == ["sim1", "sim2"], text
    for r in ranks:
        assert (r["executable"], r["prefix"], r["virtual_env"]) == (f"{dst}/bin/python", dst,
                                                                     dst), text
    # the environment was delivered into each node's own /tmp
    for node in ("sim1", "sim2"):
        assert (nodes_root / node / f"ezpz-{user_name()}" / "exampleenv" / "pyvenv.cfg"
                ).is_file(), node
    assert "transfer ok" in text
