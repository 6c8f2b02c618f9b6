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
    (whl,) = out.glob("*.whl")
    return whl


def test_the_wheel_is_named_for_the_free_distribution_name(wheel):
    # "ezpz" and "ezpz-ai" on PyPI are other projects: the wheel must never claim them
    assert wheel.name.startswith("ezpz_hpc-"), wheel.name
    meta = next(n for n in zipfile.ZipFile(wheel).namelist() if n.endswith(".dist-info/METADATA"))
    text = zipfile.ZipFile(wheel).read(meta).decode()
    assert "\nName: ezpz-hpc\n" in text


@pytest.mark.slow
def test_the_wheel_installs_and_runs_in_a_fresh_venv(wheel, tmp_path):
    """A fresh venv gets the wheel (no index, no network); its dependencies are this venv's
    site-packages, made visible with a path file (not the editable ezpz of this clone)."""
    import sysconfig

    names = zipfile.ZipFile(wheel).namelist()
    assert any(n.startswith("ezpz/extract/_fastx") and n.endswith(".so") for n in names), \
        "the wheel lacks the C module ezpz.extract._fastx"
    venv = tmp_path / "fresh venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    vpy = venv / "bin" / "python"
    purelib = Path(subprocess.run([str(vpy), "-c", "import sysconfig; print(sysconfig.get_path("
                                  "'purelib'))"], capture_output=True, text=True,
                                  check=True).stdout.strip())
    (purelib / "zz_deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    p = subprocess.run([sys.executable, "-m", "pip", "--python", str(vpy), "install", "-q",
                        "--no-deps", "--no-index", str(wheel)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    run = subprocess.run([str(venv / "bin" / "ezpz-tar-env"), "--version"], capture_output=True,
                         text=True, cwd=tmp_path, env=env)
    assert run.returncode == 0, run.stderr
    from ezpz import __version__

    assert run.stdout.strip() == f"ezpz-tar-env {__version__} (ezpz-hpc)"
    run = subprocess.run([str(venv / "bin" / "ezpz-yeet-env"), "--help"], capture_output=True,
                         text=True, cwd=tmp_path, env=env)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("ezpz-yeet-env: ") and "Config groups" in run.stdout
    code = ("import ezpz, ezpz.extract._fastx as f; print(ezpz.__file__); print(f.__file__)")
    run = subprocess.run([str(vpy), "-c", code], capture_output=True, text=True, cwd=tmp_path,
                         env=env)
    assert run.returncode == 0, run.stderr
    ezpz_file, fastx_file = run.stdout.splitlines()
    assert ezpz_file.startswith(str(purelib)) and fastx_file.startswith(str(purelib)), run.stdout
    assert not list(tmp_path.glob("outputs")), "--version and --help write nothing"


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
