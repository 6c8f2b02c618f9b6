"""A venv whose interpreter lives outside it, packed with that interpreter under
``.ezpz/python`` (``bundle_python=true``): after relocation it runs with the original
interpreter's directory renamed away, loading its stdlib and libpython from the bundle.

The "outside interpreter" is a copy of this machine's base Python made in the test (stdlib
hard-linked, site-packages and tests left out, ``_sysconfigdata`` and ``python-config``
rewritten to the copy's prefix as an install there would have them).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
from pathlib import Path

import pytest

from ezpz.formats.manifest import BUNDLED_PYTHON_RELPATH, Manifest
from ezpz.relocate import relocate
from test_relocate import files_holding, make_manifest, run, unpack

BASE = Path(sys.base_prefix)
VER = f"python{sys.version_info.major}.{sys.version_info.minor}"
LIBPY = sysconfig.get_config_var("INSTSONAME") or ""
_SKIP_STDLIB = {"site-packages", "test", "idlelib", "tkinter", "turtledemo", "lib2to3",
                "ensurepip", "__pycache__", "unittest", "pydoc_data"}

pytestmark = pytest.mark.skipif(
    not (sysconfig.get_config_var("Py_ENABLE_SHARED") and LIBPY
         and (BASE / "lib" / LIBPY).exists() and shutil.which("readelf")
         and sys.platform.startswith("linux")),
    reason="needs a Linux shared-libpython CPython and readelf")


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def runpath(binary: Path) -> str:
    out = subprocess.run(["readelf", "-d", str(binary)], capture_output=True, text=True).stdout
    for line in out.splitlines():
        if "RUNPATH" in line or "RPATH" in line:
            return line.rsplit("[", 1)[1].rstrip("]")
    return ""


def set_runpath(binary: Path, new: str) -> None:
    """Replace the binary's run path string in place (NUL-padded; it may only shrink)."""
    old = runpath(binary).encode()
    assert old and len(new) <= len(old), (old, new)
    data = binary.read_bytes()
    needle = b"\0" + old + b"\0"
    assert data.count(needle) == 1
    data = data.replace(needle, b"\0" + new.encode() + b"\0" * (len(old) - len(new) + 1))
    binary.write_bytes(data)


def copy_interpreter(dest: Path, runpath_value: str, prefix_text: str | None = None) -> Path:
    """An interpreter tree at ``dest`` built from this machine's base Python."""
    prefix_text = prefix_text or str(dest)
    (dest / "bin").mkdir(parents=True)
    exe = dest / "bin" / VER
    shutil.copy2(Path(sys.base_prefix) / "bin" / VER, exe)
    set_runpath(exe, runpath_value)
    os.symlink(VER, dest / "bin" / "python3")
    os.symlink(VER, dest / "bin" / "python")
    config = (BASE / "bin" / f"{VER}-config")
    if config.is_file():
        (dest / "bin" / f"{VER}-config").write_text(
            config.read_text().replace(str(BASE), prefix_text))
        os.chmod(dest / "bin" / f"{VER}-config", 0o755)
    (dest / "lib").mkdir()
    _link_or_copy(str(BASE / "lib" / LIBPY), str(dest / "lib" / LIBPY))
    src_std = BASE / "lib" / VER
    shutil.copytree(src_std, dest / "lib" / VER, symlinks=True, copy_function=_link_or_copy,
                    ignore=lambda d, names: [n for n in names if n in _SKIP_STDLIB
                                             or n.startswith("config-")])
    (dest / "lib" / VER / "site-packages").mkdir()
    for sc in src_std.glob("_sysconfigdata*.py"):
        target = dest / "lib" / VER / sc.name
        target.unlink()
        target.write_text(sc.read_text().replace(str(BASE), prefix_text))
    return dest


def bundle(env: Path, interpreter: Path) -> None:
    shutil.copytree(interpreter, env / BUNDLED_PYTHON_RELPATH, symlinks=True,
                    copy_function=_link_or_copy)


PROBE = ("import sys, sysconfig, json\n"
         "maps = sorted({l.split()[-1] for l in open('/proc/self/maps') if '/' in l})\n"
         "print(json.dumps({'prefix': sys.prefix, 'base': sys.base_prefix, 'exe': sys.executable,"
         " 'cfg': sysconfig.get_config_var('prefix'), 'json': json.__file__, 'maps': maps}))\n")


def probe(python: Path) -> dict:
    import json
    p = run([python, "-c", PROBE])
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def test_bundled_interpreter_runs_with_original_renamed_away(tmp_path):
    outside = copy_interpreter(tmp_path / "site" / "py", "$ORIGIN/../lib")
    old = tmp_path / "proj" / "env"
    p = run([outside / "bin" / VER, "-m", "venv", "--without-pip", old])
    assert p.returncode == 0, p.stderr
    assert os.readlink(old / "bin" / VER) == str(outside / "bin" / VER)
    bundle(old, outside)
    manifest = make_manifest(old)
    manifest.bundled_python_prefix = str(outside)
    (old / ".ezpz").mkdir(exist_ok=True)
    (old / ".ezpz" / "manifest.json").write_text(manifest.to_json())
    archive = tmp_path / "env.tar"
    with tarfile.open(archive, "w") as tf:
        tf.add(old, arcname="env")
    (tmp_path / "site").rename(tmp_path / "site-renamed-away")
    (tmp_path / "proj").rename(tmp_path / "proj-renamed-away")

    stage = unpack(archive, tmp_path / "stage" / "env")
    dst = tmp_path / "node" / "env"
    report = relocate(stage, new_prefix=dst)
    assert report.links_repointed >= 1 and not report.scanned
    dst.parent.mkdir()
    stage.rename(dst)

    bundled = dst / BUNDLED_PYTHON_RELPATH
    assert os.readlink(dst / "bin" / VER) == f"../{BUNDLED_PYTHON_RELPATH}/bin/{VER}"
    cfg = dict(line.split(" = ", 1) for line in (dst / "pyvenv.cfg").read_text().splitlines()
               if " = " in line)
    assert cfg["home"] == f"{bundled}/bin"
    assert cfg["executable"] == f"{bundled}/bin/{VER}"
    got = probe(dst / "bin" / "python")
    assert got["prefix"] == str(dst)
    assert got["base"] == str(bundled)
    assert got["cfg"] == str(bundled)  # _sysconfigdata rewritten
    assert got["json"].startswith(f"{bundled}/lib/{VER}/")
    libs = [m for m in got["maps"] if os.path.basename(m).startswith("libpython")]
    assert libs == [f"{bundled}/lib/{LIBPY}"]
    assert not [m for m in got["maps"] if m.startswith((str(outside), str(BASE) + "/"))]
    if (bundled / "bin" / f"{VER}-config").exists():
        p = run([bundled / "bin" / f"{VER}-config", "--prefix"])
        assert p.stdout.strip() == str(bundled)
    assert files_holding(dst, str(outside)) == []
    assert files_holding(dst, str(old)) == []


def test_bundled_interpreter_absolute_run_path_made_relative(tmp_path):
    """An interpreter linked with an absolute run path (as pyenv builds it) must load the
    bundled libpython, not the one at its old location."""
    fake = "/opt/ezpz-gone/py"  # never exists: nothing may depend on it
    assert not os.path.exists(fake)
    old_env = "/opt/ezpz-gone/env"
    stage = tmp_path / "stage"
    interp = copy_interpreter(stage / BUNDLED_PYTHON_RELPATH, f"{fake}/lib", prefix_text=fake)
    (stage / "bin").mkdir()
    os.symlink(f"{fake}/bin/{VER}", stage / "bin" / "python")
    os.symlink("python", stage / "bin" / "python3")
    (stage / "pyvenv.cfg").write_text(f"home = {fake}/bin\ninclude-system-site-packages = false\n"
                                      f"executable = {fake}/bin/{VER}\n"
                                      f"command = {fake}/bin/{VER} -m venv {old_env}\n")
    (stage / "lib" / VER / "site-packages").mkdir(parents=True)
    exe = interp / "bin" / VER
    assert runpath(exe) == f"{fake}/lib"
    size = exe.stat().st_size
    m = Manifest(kind="venv", name="env", prefix=old_env, bundled_python_prefix=fake)
    dst = tmp_path / "dst"
    relocate(stage, new_prefix=dst, manifest=m)
    assert runpath(exe) == "$ORIGIN/../lib" and exe.stat().st_size == size
    stage.rename(dst)
    got = probe(dst / "bin" / "python")
    assert got["prefix"] == str(dst) and got["base"] == str(dst / BUNDLED_PYTHON_RELPATH)
    libs = [x for x in got["maps"] if os.path.basename(x).startswith("libpython")]
    assert libs == [f"{dst}/{BUNDLED_PYTHON_RELPATH}/lib/{LIBPY}"]
