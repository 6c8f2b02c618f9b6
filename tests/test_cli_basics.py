"""What every command answers before it does anything: --version (ezpz's, not Hydra's), a bare
--info, and flags that never swallow the override after them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import ezpz
from ezpz.cli.common import split_argv

PY = sys.executable
COMMANDS = {
    "ezpz-tar-env": "ezpz.cli.tar_env",
    "ezpz-yeet-env": "ezpz.cli.yeet_env",
    "ezpz-launch": "ezpz.cli.launch",
    "ezpz-report": "ezpz.cli.report",
    "ezpz-doctor": "ezpz.cli.doctor",
    "python -m ezpz.transfer": "ezpz.transfer",
}


def _run(module: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PBS_", "SLURM_"))}
    return subprocess.run([PY, "-m", module, *args], cwd=cwd, capture_output=True, text=True,
                          env=env, timeout=120)


def test_the_version_is_this_distributions():
    from importlib.metadata import distribution

    dist = distribution(ezpz.DIST_NAME)
    assert ezpz.DIST_NAME == "ezpz-hpc"
    assert ezpz.__version__ == dist.version
    # the distribution really is this package: its files hold ezpz/__init__.py (an editable
    # install lists its finder instead), and its scripts are ezpz's commands
    scripts = {ep.name for ep in dist.entry_points if ep.group == "console_scripts"}
    assert {"ezpz-tar-env", "ezpz-yeet-env", "ezpz-launch", "ezpz-report",
            "ezpz-doctor"} <= scripts


@pytest.mark.parametrize("prog", sorted(COMMANDS))
def test_version_prints_ezpz_and_writes_nothing(prog, tmp_path):
    p = _run(COMMANDS[prog], "--version", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == f"{prog} {ezpz.__version__} (ezpz-hpc)"
    assert "Hydra" not in p.stdout
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("prog", sorted(COMMANDS))
def test_bare_info_works_and_writes_nothing(prog, tmp_path):
    p = _run(COMMANDS[prog], "--info", cwd=tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.strip(), p.stderr
    assert "usage:" not in p.stdout + p.stderr and "error" not in p.stderr.lower()
    assert list(tmp_path.iterdir()) == []


def test_info_before_an_override_leaves_the_override_alone(tmp_path):
    split = split_argv(["--info", "machine=polaris", "--cfg", "job", "-i", "defaults"])
    assert split.overrides == ["machine=polaris"]
    assert split.flags == ["--info", "--cfg", "job", "-i", "defaults"]
    p = _run("ezpz.cli.yeet_env", "--info", "config", "machine=polaris", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "name: polaris" in p.stdout
