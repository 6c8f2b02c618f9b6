"""The built wheel carries the config tree: a non-editable install finds its configs."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    p = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                        "-q", "-w", str(out), str(ROOT)], capture_output=True, text=True)
    if p.returncode != 0 and "No module named" in p.stderr and "setuptools" in p.stderr:
        pytest.skip("setuptools is not installed in this environment")
    assert p.returncode == 0, p.stderr
    (whl,) = out.glob("ezpz-*.whl")
    return whl


def test_wheel_contains_every_config(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {n for n in names if n.startswith("ezpz/conf/") and n.endswith(".yaml")}
    expected = {f"ezpz/conf/{p.relative_to(ROOT / 'conf')}" for p in (ROOT / "conf").rglob("*.yaml")}
    assert expected and shipped == expected
    assert "ezpz/conf/__init__.py" in names


def test_installed_wheel_composes_from_its_own_configs(wheel, tmp_path):
    target = tmp_path / "site"
    p = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target",
                        str(target), str(wheel)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    env = dict(os.environ, PYTHONPATH=str(target))
    code = ("import sys, ezpz; print(ezpz.__file__, file=sys.stderr); "
            "from ezpz.cli.yeet_env import main; sys.exit(main())")
    run = subprocess.run([sys.executable, "-c", code, "--cfg", "job", "machine=polaris"],
                         capture_output=True, text=True, cwd=tmp_path, env=env)
    assert run.returncode == 0, run.stderr
    assert str(target) in run.stderr, "the installed copy, not the source tree, must be used"
    assert "name: polaris" in run.stdout and "dist_backend: nccl" in run.stdout


def test_wheel_ships_the_launch_package_with_its_rank_wrapper(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for module in ("__init__", "hosts", "topology", "argv", "plan", "output", "failover", "run",
                   "rankwrap"):
        assert f"ezpz/launch/{module}.py" in names, module
    assert "ezpz/hosts.py" not in names and "ezpz/launch.py" not in names
