"""ezpz-tar-env and environments that still read from outside themselves: a venv made with
--system-site-packages (warned; env.include_system_site=true packs the base's packages and
the delivered venv works without them), editable installs (refused unless
env.allow_editable=true), and what env.bundle_python=true leaves out of the interpreter."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
from pathlib import Path

import pytest

from ezpz import pack as tar_env
from ezpz.config import ArchiveSpec, EnvSpec, TarEnvConfig
from ezpz.errors import ConfigError
from ezpz.pack import outside
from test_relocate import run, unpack

PY = sys.executable
VER = f"python{sys.version_info.major}.{sys.version_info.minor}"


def members(archive: Path) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(archive) as tf:
        return {m.name: m for m in tf.getmembers()}


def read_member(archive: Path, name: str) -> str:
    with tarfile.open(archive) as tf:
        fh = tf.extractfile(name)
        assert fh is not None
        return fh.read().decode()


# --------------------------------------------------------------------------------------
# editable installs
# --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def editable_venv(tmp_path_factory) -> tuple[Path, Path]:
    return make_editable_venv(tmp_path_factory.mktemp("editable"))


def make_editable_venv(root: Path) -> tuple[Path, Path]:
    """A venv with a real ``pip install -e`` of a tiny local project (no index, no build
    isolation: pip and setuptools come from this venv through a path file removed after)."""
    proj = root / "src" / "tinyproj"
    (proj / "tinyproj").mkdir(parents=True)
    (proj / "tinyproj" / "__init__.py").write_text("WHERE = __file__\n")
    (proj / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n\n'
        '[project]\nname = "tinyproj"\nversion = "0.1"\n\n'
        '[tool.setuptools]\npackages = ["tinyproj"]\n')
    venv = root / "envs" / "devenv"
    subprocess.run([PY, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next((venv / "lib").glob("python*/site-packages"))
    deps = site / "zz_deps.pth"
    deps.write_text(sysconfig.get_path("purelib") + "\n")
    p = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps",
                        "--no-index", "--no-build-isolation", "-e", str(proj)],
                       capture_output=True, text=True, cwd=root)
    assert p.returncode == 0, p.stdout + p.stderr
    deps.unlink()
    check = run([venv / "bin" / "python", "-c", "import tinyproj; print(tinyproj.WHERE)"])
    assert check.stdout.strip() == str(proj / "tinyproj" / "__init__.py"), check.stderr
    return venv, proj


def test_editable_installs_are_found_with_their_source(editable_venv):
    venv, proj = editable_venv
    (found,) = outside.find_editables(venv)
    assert (found.name, found.source) == ("tinyproj", os.path.realpath(proj))


def test_an_editable_install_is_refused_in_one_line_and_nothing_is_written(editable_venv,
                                                                          tmp_path):
    venv, proj = editable_venv
    out = tmp_path / "devenv.tar.zst"
    with pytest.raises(ConfigError) as err:
        tar_env.pack(prefix=str(venv), path=str(out))
    assert str(err.value) == (
        f"env.allow_editable: tinyproj is an editable install from {os.path.realpath(proj)}: "
        "nodes would import it from there, not from the archive; reinstall it without -e "
        "(pip install <dir>) or pass env.allow_editable=true to pack it anyway")
    assert list(tmp_path.iterdir()) == []
    # the command line: one line, exit 2, before any run directory exists
    p = subprocess.run([PY, "-m", "ezpz.cli.tar_env", f"env.prefix={venv}",
                        f"archive.path={out}"], capture_output=True, text=True, cwd=tmp_path)
    assert p.returncode == 2, p.stderr
    assert p.stderr.strip().splitlines() == [f"error: {err.value}"]
    assert list(tmp_path.iterdir()) == []


def test_allow_editable_packs_it_with_a_warning(editable_venv, tmp_path, caplog):
    venv, proj = editable_venv
    out = tmp_path / "devenv.tar.zst"
    with caplog.at_level(logging.WARNING, logger="ezpz"):
        tar_env.pack(TarEnvConfig(env=EnvSpec(prefix=str(venv), allow_editable=True),
                                  archive=ArchiveSpec(path=str(out))))
    assert out.is_file()
    assert (f"packing the editable install tinyproj anyway (env.allow_editable=true): nodes "
            f"will import it from {os.path.realpath(proj)} (the shared filesystem)") in caplog.text


def test_path_files_and_egg_links_pointing_outside_count_as_editable(tmp_path):
    venv = tmp_path / "env"
    subprocess.run([PY, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next((venv / "lib").glob("python*/site-packages"))
    src_a, src_b = tmp_path / "checkout-a", tmp_path / "checkout-b"
    src_a.mkdir()
    src_b.mkdir()
    (site / "develop.pth").write_text(f"# a comment\n{src_a}\nimport sys\n")
    (site / "oldproj.egg-link").write_text(f"{src_b}\n.\n")
    (site / "inside.pth").write_text("pkg_inside\n")  # relative: inside the env, fine
    (site / "pkg_inside").mkdir()
    found = {(e.name, e.source, e.how) for e in outside.find_editables(venv)}
    assert found == {("develop", str(src_a), ".pth"), ("oldproj", str(src_b), ".egg-link")}


# --------------------------------------------------------------------------------------
# --system-site-packages
# --------------------------------------------------------------------------------------
def _base_with_a_package(tmp_path: Path) -> Path:
    from test_relocate_bundled import LIBPY, copy_interpreter

    if not (sysconfig.get_config_var("Py_ENABLE_SHARED") and LIBPY and shutil.which("readelf")):
        pytest.skip("needs a shared-libpython CPython and readelf")
    base = copy_interpreter(tmp_path / "site" / "py", "$ORIGIN/../lib")
    sp = base / "lib" / VER / "site-packages"
    (sp / "ezpz_base_probe.py").write_text("VALUE = 'from the base'\n")
    return base


def test_system_site_venv_warns_and_include_system_site_packs_the_base(tmp_path, caplog):
    base = _base_with_a_package(tmp_path)
    venv = tmp_path / "proj" / "sysenv"
    p = run([base / "bin" / VER, "-m", "venv", "--without-pip", "--system-site-packages", venv])
    assert p.returncode == 0, p.stderr
    base_site = str(base / "lib" / VER / "site-packages")
    with caplog.at_level(logging.INFO, logger="ezpz"):
        plain = tar_env.pack(prefix=str(venv), path=str(tmp_path / "plain.tar"), codec="none")
    assert (f"{venv} was made with --system-site-packages: nodes will still import the base's "
            f"packages from {base_site} (the shared filesystem). Pass "
            "env.include_system_site=true to pack them into the archive.") in caplog.text
    assert not any("/.ezpz/system-site/" in n for n in members(plain))

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="ezpz"):
        archive = tar_env.pack(TarEnvConfig(
            env=EnvSpec(prefix=str(venv), include_system_site=True, bundle_python=True),
            archive=ArchiveSpec(path=str(tmp_path / "full.tar"), codec="none")))
    assert "was made with --system-site-packages" not in caplog.text
    names = members(archive)
    assert "sysenv/.ezpz/system-site/0/ezpz_base_probe.py" in names
    assert "include-system-site-packages = false" in read_member(archive, "sysenv/pyvenv.cfg")
    assert f"sysenv/lib/{VER}/site-packages/_ezpz_system_site.pth" in names
    # the source tree is untouched
    assert "include-system-site-packages = true" in (venv / "pyvenv.cfg").read_text()

    # delivered elsewhere, with the base and the original venv gone, it still imports the
    # base's package: from its own copy, after the venv's own site-packages
    from ezpz.relocate import relocate

    stage = unpack(archive, tmp_path / "stage" / "sysenv")
    dst = tmp_path / "node" / "sysenv"
    relocate(stage, new_prefix=dst)
    dst.parent.mkdir()
    stage.rename(dst)
    (tmp_path / "site").rename(tmp_path / "site-gone")
    (tmp_path / "proj").rename(tmp_path / "proj-gone")
    probe = ("import sys, ezpz_base_probe as m; print(m.VALUE); print(m.__file__); "
             "print('\\n'.join(sys.path))")
    p = run([dst / "bin" / "python", "-c", probe])
    assert p.returncode == 0, p.stderr
    value, where, *path = p.stdout.splitlines()
    assert value == "from the base"
    assert where == str(dst / ".ezpz" / "system-site" / "0" / "ezpz_base_probe.py")
    own = str(dst / "lib" / VER / "site-packages")
    assert path.index(own) < path.index(str(dst / ".ezpz" / "system-site" / "0"))
    assert not any("site-gone" in d or "proj-gone" in d for d in path), path


def test_include_system_site_on_an_ordinary_venv_changes_nothing(tmp_path, caplog):
    venv = tmp_path / "env"
    subprocess.run([PY, "-m", "venv", "--without-pip", str(venv)], check=True)
    with caplog.at_level(logging.INFO, logger="ezpz"):
        archive = tar_env.pack(TarEnvConfig(env=EnvSpec(prefix=str(venv),
                                                        include_system_site=True),
                                            archive=ArchiveSpec(path=str(tmp_path / "e.tar"),
                                                                codec="none")))
    assert "env.include_system_site=true has no effect" in caplog.text
    assert not any("system-site" in n or "_ezpz_system_site" in n for n in members(archive))


# --------------------------------------------------------------------------------------
# env.bundle_python: only what the interpreter needs
# --------------------------------------------------------------------------------------
def test_bundle_python_leaves_out_the_bases_packages_tests_and_build_files(tmp_path, caplog):
    from test_tar_env import _venv_with_outside_python

    venv, fake = _venv_with_outside_python(tmp_path)
    lib = fake / "lib" / "python3.11"
    for rel, size in {"site-packages/torch/big.so": 300_000, "test/test_os.py": 50_000,
                      "json/tests/test_json.py": 1_000, "idlelib/idle_test/t.py": 100,
                      "config-3.11-x86_64-linux-gnu/libpython3.11.a": 200_000,
                      "__pycache__/os.cpython-311.pyc": 700, "json/__init__.py": 900,
                      "lib-dynload/_json.so": 5_000}.items():
        (lib / rel).parent.mkdir(parents=True, exist_ok=True)
        (lib / rel).write_bytes(b"x" * size)
    (fake / "include" / "python3.11").mkdir(parents=True)
    (fake / "include" / "python3.11" / "Python.h").write_text("/* header */\n")
    (fake / "lib" / "libpython3.11.so.1.0").write_bytes(b"\x7fELF lib")
    with caplog.at_level(logging.INFO, logger="ezpz"):
        archive = tar_env.pack(TarEnvConfig(env=EnvSpec(prefix=str(venv), bundle_python=True),
                                            archive=ArchiveSpec(path=str(tmp_path / "b.tar"),
                                                                codec="none")))
    bundled = {n.split("/.ezpz/python/", 1)[1] for n in members(archive) if "/.ezpz/python/" in n}
    assert {"bin/python3.11", "lib/libpython3.11.so.1.0", "lib/python3.11/os.py",
            "lib/python3.11/json/__init__.py", "lib/python3.11/lib-dynload/_json.so",
            "lib/python3.11/__pycache__/os.cpython-311.pyc",
            "lib/python3.11/site-packages"} <= bundled
    for left_out in ("site-packages/torch", "test", "json/tests", "idlelib/idle_test",
                     "config-3.11-x86_64-linux-gnu"):
        assert not any(b.startswith(f"lib/python3.11/{left_out}") for b in bundled), left_out
    assert not any(b.startswith("include") for b in bundled)
    assert (f"bundling 6.5 KiB of the interpreter at {fake} (left out: its site-packages and "
            "test suite, 341.8 KiB") in caplog.text
