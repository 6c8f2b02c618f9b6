"""Relocation of real environments: a venv made in the test, packed, unpacked elsewhere with
its original directory renamed away, then run from the new place; a conda-like tree with the
prefix in text and padded binary files; every refusal leaves the tree exactly as it was.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from ezpz.errors import RelocateError
from ezpz.formats.manifest import Manifest, PrefixFile
from ezpz.relocate import activation_hint, detect_env, relocate
from trees import tree as snapshot

PKG = "ezpzdemo"


# ---------------------------------------------------------------------------------------------
# helpers


def build_wheel(outdir: Path) -> Path:
    """A tiny pure-Python wheel with a console script, written as a zip (no build backend)."""
    dist = f"{PKG}-1.0.dist-info"
    files = {
        f"{PKG}/__init__.py": "import sys\n\ndef main():\n    print('ezpzdemo runs in', sys.prefix)\n"
                              "    return 0\n",
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {PKG}\nVersion: 1.0\n",
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                         "Tag: py3-none-any\n",
        f"{dist}/entry_points.txt": f"[console_scripts]\n{PKG} = {PKG}:main\n",
    }
    record = []
    for name, text in files.items():
        data = text.encode()
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
    record.append(f"{dist}/RECORD,,")
    files[f"{dist}/RECORD"] = "\n".join(record) + "\n"
    path = outdir / f"{PKG}-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for name, text in files.items():
            zf.writestr(name, text)
    return path


def run(argv, **kw) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONHOME",
                                                            "PYTHONPATH")}
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, env=env, **kw)


def pack_plain(prefix: Path, archive: Path) -> None:
    """What plain `tar` would make: the tree under its directory name, no manifest."""
    with tarfile.open(archive, "w") as tf:
        tf.add(prefix, arcname=prefix.name)


def unpack(archive: Path, dest: Path) -> Path:
    """Unpack the archive's single top directory so that it becomes ``dest``."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    scratch = dest.parent / (dest.name + ".unpack")
    with tarfile.open(archive) as tf:
        tf.extractall(scratch, filter="tar")
    (top,) = list(scratch.iterdir())
    top.rename(dest)
    scratch.rmdir()
    return dest


def make_manifest(prefix: Path, kind: str = "venv") -> Manifest:
    """The manifest tar-env records: every file holding the prefix, text or binary."""
    needle = str(prefix).encode()
    files = []
    for dirpath, _dirs, names in os.walk(prefix):
        for name in names:
            p = Path(dirpath) / name
            if p.is_symlink() or name.endswith(".pyc"):
                continue
            data = p.read_bytes()
            if needle in data:
                files.append(PrefixFile(p.relative_to(prefix).as_posix(),
                                        "binary" if b"\0" in data else "text"))
    return Manifest(kind=kind, name=prefix.name, prefix=str(prefix), prefix_files=files)


def files_holding(root: Path, needle: str) -> list[str]:
    hits = []
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            p = Path(dirpath) / name
            if p.is_symlink() or name.endswith(".pyc"):
                continue
            if needle.encode() in p.read_bytes():
                hits.append(str(p.relative_to(root)))
    return hits


def check_venv_works(env: Path, old: Path) -> None:
    """The relocated venv runs from ``env`` and names nothing under ``old``."""
    assert not old.exists(), "the original must be gone for this check to mean anything"
    p = run([env / "bin" / "python", "-c", f"import sys, {PKG}; print(sys.prefix)"])
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == str(env)
    p = run([env / "bin" / PKG])
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == f"ezpzdemo runs in {env}"
    p = run([env / "bin" / "pip", "--version"])
    assert p.returncode == 0, p.stderr
    assert f"from {env}/lib/" in p.stdout
    p = run(["sh", "-c", '. "$1/bin/activate"; echo "$VIRTUAL_ENV"; command -v python', "sh",
             str(env)])
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == [str(env), f"{env}/bin/python"]
    for script in ("activate", "activate.csh", "activate.fish"):
        text = (env / "bin" / script).read_text()
        assert str(env) in text and str(old) not in text, script
    assert files_holding(env, str(old)) == []


# ---------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def packed_venv(tmp_path_factory) -> dict:
    """A real venv with a console-script package, packed twice (plain tar, and with a manifest
    as tar-env writes it); then its directory is renamed away for good.

    Its path is longer than 127 bytes, so pip wrote the ``'''exec'`` trampoline into every
    script: relocating to a short path must turn those into plain shebangs.
    """
    base = tmp_path_factory.mktemp("venv")
    wheel = build_wheel(base)
    old = base / ("original-location-" + "x" * 100) / "env"
    old.parent.mkdir()
    p = run([sys.executable, "-m", "venv", old])
    assert p.returncode == 0, p.stderr
    p = run([old / "bin" / "python", "-m", "pip", "install", "--no-index", "--no-deps",
             "--disable-pip-version-check", "-q", wheel])
    assert p.returncode == 0, p.stderr
    assert (old / "bin" / PKG).read_bytes().startswith(b"#!/bin/sh\n'''exec' ")
    from ezpz.pack import pack

    packed = pack(prefix=str(old), path=str(base / "env.tar.zst"))  # as users make it
    plain = base / "plain.tar"
    pack_plain(old, plain)
    manifest = make_manifest(old)
    (old / ".ezpz").mkdir()
    (old / ".ezpz" / "manifest.json").write_text(manifest.to_json())
    with_manifest = base / "manifest.tar"
    pack_plain(old, with_manifest)
    old.parent.rename(base / "renamed-away")
    return {"old": old, "plain": plain, "manifest": with_manifest, "packed": packed}


def conda_tree(root: Path, old: str) -> dict[str, bytes]:
    """A conda-like env: prefix in text files, a padded binary, conda-meta path records."""
    o = old.encode()
    files = {
        "bin/tool": b"#!" + o + b"/bin/python3.11 -E\nimport sys\nprint(sys.argv)\n",
        "etc/conf.d/site.cfg": b"prefix = " + o + b"\nlibdir = " + o + b"/lib\nother = "
                               + o + b"2/lib\n",
        "lib/libdemo.so": (b"\x7fELF\x02\x01\x01" + b"\0" * 9
                           + o + b"/lib\0"                        # run path
                           + b"\x01\x02" + o + b"/share/demo:" + o + b"/etc\0"  # two in one string
                           + o + b"/padded" + b"\0" * 40          # placeholder-padded string
                           + b"tail\xff\0"),
        "conda-meta/demo-1.0-0.json": json.dumps({
            "name": "demo", "files": ["bin/tool", "lib/libdemo.so"],
            "extracted_package_dir": old + "/pkgs/demo-1.0-0",
            "paths_data": {"paths": [{"_path": "bin/tool", "file_mode": "text",
                                      "prefix_placeholder": old + "/placeholder_placehold"}]},
        }, indent=2).encode(),
        "conda-meta/history": b"==> 2024-01-01 00:00:00 <==\n# cmd: conda create -p " + o + b"\n",
        "share/readme.txt": b"no prefix here\n",
    }
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    os.chmod(root / "bin/tool", 0o755)
    os.chmod(root / "lib/libdemo.so", 0o555)
    return files


def conda_manifest(old: str) -> Manifest:
    return Manifest(kind="conda", name="cenv", prefix=old, prefix_files=[
        PrefixFile("bin/tool", "text"), PrefixFile("etc/conf.d/site.cfg", "text"),
        PrefixFile("lib/libdemo.so", "binary"), PrefixFile("conda-meta/demo-1.0-0.json", "text"),
        PrefixFile("conda-meta/history", "text")])


# ---------------------------------------------------------------------------------------------
# venv


def test_venv_with_manifest_relocated_from_staging(packed_venv, tmp_path):
    """As the transfer worker does it: unpack into staging, relocate to dst, rename to dst."""
    old = packed_venv["old"]
    stage = unpack(packed_venv["manifest"], tmp_path / "stage" / "env")
    dst = tmp_path / "node" / "env"
    report = relocate(stage, new_prefix=dst)
    assert (report.kind, report.old_prefix, report.new_prefix) == ("venv", str(old), str(dst))
    assert report.scanned is False and report.files_rewritten >= 8
    dst.parent.mkdir()
    stage.rename(dst)
    check_venv_works(dst, old)
    # Short path: pip's trampoline became a plain shebang.
    assert (dst / "bin" / PKG).read_bytes().startswith(f"#!{dst}/bin/python".encode())
    assert Manifest.load(dst).prefix == str(dst)

    # Copied again by other means: the CLI relocates it using the updated manifest.
    moved = tmp_path / "moved" / "env2"
    moved.parent.mkdir()
    dst.rename(moved)
    p = run([sys.executable, "-m", "ezpz.relocate", moved])
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines()[-1] == f"source {moved}/bin/activate"
    check_venv_works(moved, dst)


def test_venv_plain_tar_detected_and_scanned_into_path_with_space(packed_venv, tmp_path):
    old = packed_venv["old"]
    dst = unpack(packed_venv["plain"], tmp_path / "with space" / "env")
    assert detect_env(dst) == ("venv", str(old))
    report = relocate(dst)
    assert report.scanned is True and report.old_prefix == str(old)
    # A space cannot sit in a plain shebang: the trampoline is written.
    head = (dst / "bin" / PKG).read_bytes().split(b"\n")[:3]
    assert head == [b"#!/bin/sh", f"'''exec' '{dst}/bin/python' \"$0\" \"$@\"".encode(), b"' '''"]
    check_venv_works(dst, old)
    # Nothing left behind, and relocating in place again changes nothing.
    assert not [p for p in dst.rglob("*") if ".ezpz-relocate" in p.name]
    before = snapshot(dst)
    assert relocate(dst, old_prefix=str(dst)).files_rewritten == 0
    assert snapshot(dst) == before


def test_venv_home_left_alone_when_interpreter_exists(packed_venv, tmp_path):
    dst = unpack(packed_venv["plain"], tmp_path / "env")
    home_before = [line for line in (dst / "pyvenv.cfg").read_text().splitlines() if line.startswith("home")]
    relocate(dst)
    cfg = (dst / "pyvenv.cfg").read_text().splitlines()
    assert [line for line in cfg if line.startswith("home")] == home_before
    assert os.path.isdir(home_before[0].split("=", 1)[1].strip())
    assert any(line.startswith("command") and line.endswith(f" {dst}") for line in cfg)


# ---------------------------------------------------------------------------------------------
# conda


def expected_conda(old: str, new: str) -> dict[str, bytes]:
    """What relocation must produce, written out by hand (conda's padding rule)."""
    o, n = old.encode(), new.encode()
    pad = len(o) - len(n)
    return {
        "bin/tool": b"#!" + n + b"/bin/python3.11 -E\nimport sys\nprint(sys.argv)\n",
        "etc/conf.d/site.cfg": b"prefix = " + n + b"\nlibdir = " + n + b"/lib\nother = "
                               + o + b"2/lib\n",
        "lib/libdemo.so": (b"\x7fELF\x02\x01\x01" + b"\0" * 9
                           + n + b"/lib" + b"\0" * pad + b"\0"
                           + b"\x01\x02" + n + b"/share/demo:" + n + b"/etc" + b"\0" * (2 * pad)
                           + b"\0"
                           + n + b"/padded" + b"\0" * pad + b"\0" * 40
                           + b"tail\xff\0"),
        "conda-meta/demo-1.0-0.json": json.dumps({
            "name": "demo", "files": ["bin/tool", "lib/libdemo.so"],
            "extracted_package_dir": new + "/pkgs/demo-1.0-0",
            "paths_data": {"paths": [{"_path": "bin/tool", "file_mode": "text",
                                      "prefix_placeholder": old + "/placeholder_placehold"}]},
        }, indent=2).encode(),
        "conda-meta/history": b"==> 2024-01-01 00:00:00 <==\n# cmd: conda create -p " + n + b"\n",
        "share/readme.txt": b"no prefix here\n",
    }


@pytest.mark.parametrize("with_manifest", [True, False], ids=["manifest", "scan"])
def test_conda_relocated_byte_correctly(tmp_path, with_manifest):
    old = str(tmp_path / "build" / "a-fairly-long-conda-prefix" / "envs" / "cenv")
    stage = tmp_path / "stage"
    conda_tree(stage, old)
    assert detect_env(stage) == ("conda", old)
    new = str(tmp_path / "n" / "cenv")
    report = relocate(stage, new_prefix=new,
                      manifest=conda_manifest(old) if with_manifest else None)
    assert (report.kind, report.scanned, report.files_rewritten) == ("conda", not with_manifest, 5)
    for rel, data in expected_conda(old, new).items():
        assert (stage / rel).read_bytes() == data, rel
    assert os.stat(stage / "lib/libdemo.so").st_mode & 0o777 == 0o555
    assert os.stat(stage / "bin/tool").st_mode & 0o777 == 0o755
    assert activation_hint(report.kind, new) == f"conda activate {new}"


def test_conda_binary_too_long_prefix_refused_and_nothing_changed(tmp_path):
    old = str(tmp_path / "short")
    stage = tmp_path / "stage"
    conda_tree(stage, old)
    before = snapshot(stage)
    new = str(tmp_path / "a-much-longer-destination-than-before" / "cenv")
    with pytest.raises(RelocateError) as err:
        relocate(stage, new_prefix=new, manifest=conda_manifest(old))
    msg = str(err.value)
    assert msg.startswith("cannot relocate lib/libdemo.so: it is a binary file holding the old "
                          f"prefix '{old}'")
    assert "longer; choose a destination path no longer than the old prefix" in msg
    assert "\n" not in msg
    assert snapshot(stage) == before

    # The same through the CLI (no manifest: detected, scanned): one line, exit 1.
    p = run([sys.executable, "-m", "ezpz.relocate", stage, "--prefix", new])
    assert p.returncode == 1
    errors = [line for line in p.stderr.splitlines() if not line.startswith("[")]  # log lines
    assert len(errors) == 1 and "Traceback" not in p.stderr
    assert errors[0].startswith("error: cannot relocate lib/libdemo.so: it is a binary")
    assert snapshot(stage) == before


# ---------------------------------------------------------------------------------------------
# refusals leave the tree as it was


@pytest.mark.parametrize("new_name, what", [("it's", "a single quote"), ("a$b", "'$'"),
                                            ('q"x', "a double quote"), ("a`b", "a backquote")])
def test_hostile_new_prefix_refused(tmp_path, new_name, what):
    old = str(tmp_path / "old-prefix-long-enough")
    stage = tmp_path / "stage"
    conda_tree(stage, old)
    before = snapshot(stage)
    new = str(tmp_path / new_name)
    with pytest.raises(RelocateError, match=re.escape(f"the path contains {what}, which activate")):
        relocate(stage, new_prefix=new, manifest=conda_manifest(old))
    assert snapshot(stage) == before


def test_manifest_errors_refused_before_any_change(tmp_path):
    old = str(tmp_path / "old-prefix-long-enough")
    stage = tmp_path / "stage"
    conda_tree(stage, old)
    before = snapshot(stage)
    new = str(tmp_path / "new")

    m = conda_manifest(old)
    m.prefix_files.append(PrefixFile("lib/missing.so", "binary"))
    with pytest.raises(RelocateError, match=r"lib/missing.so is listed in the manifest but missing"):
        relocate(stage, new_prefix=new, manifest=m)
    assert snapshot(stage) == before

    m = conda_manifest(old)
    m.prefix_files.insert(0, PrefixFile("../outside.txt", "text"))
    with pytest.raises(RelocateError, match=r"manifest path '../outside.txt' is not a path inside"):
        relocate(stage, new_prefix=new, manifest=m)
    assert snapshot(stage) == before

    m = conda_manifest(old)
    m.prefix_files.append(PrefixFile("share/readme.txt", "weird"))
    with pytest.raises(RelocateError, match=r"unknown file mode 'weird'"):
        relocate(stage, new_prefix=new, manifest=m)
    assert snapshot(stage) == before

    # A file that cannot be written (read-only directory): every staged file is removed again.
    if os.geteuid() != 0:
        os.chmod(stage / "etc" / "conf.d", 0o555)
        try:
            with pytest.raises(RelocateError, match=r"writing its new version failed"):
                relocate(stage, new_prefix=new, manifest=conda_manifest(old))
        finally:
            os.chmod(stage / "etc" / "conf.d", 0o755)
        assert snapshot(stage) == before


def test_symlink_escape_refused(tmp_path):
    old = str(tmp_path / "old-prefix-long-enough")
    stage = tmp_path / "stage"
    conda_tree(stage, old)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim.txt").write_text(f"{old}\n")
    os.symlink(outside, stage / "escape")
    before, victim = snapshot(stage), (outside / "victim.txt").read_bytes()
    m = conda_manifest(old)
    m.prefix_files.append(PrefixFile("escape/victim.txt", "text"))
    with pytest.raises(RelocateError, match=r"escape/victim.txt lies outside the environment"):
        relocate(stage, new_prefix=str(tmp_path / "new"), manifest=m)
    assert snapshot(stage) == before and (outside / "victim.txt").read_bytes() == victim


def test_no_prefix_found(tmp_path):
    stage = tmp_path / "cenv"
    (stage / "conda-meta").mkdir(parents=True)
    assert detect_env(stage) == ("conda", None)
    with pytest.raises(RelocateError, match=r"no manifest and no old prefix found .* pass --from"):
        relocate(stage)
    p = run([sys.executable, "-m", "ezpz.relocate", stage])
    assert p.returncode == 1 and p.stderr.startswith("error: cannot relocate")


def test_data_tree_and_cli_usage(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f.txt").write_text("x")
    assert detect_env(tmp_path / "d") == ("data", None)
    report = relocate(tmp_path / "d")
    assert (report.kind, report.files_rewritten) == ("data", 0)
    p = run([sys.executable, "-m", "ezpz.relocate", tmp_path / "nope"])
    assert p.returncode == 2
    assert p.stderr.strip() == f"error: {tmp_path / 'nope'}: not a directory (PATH must be an " \
                               "unpacked environment)"
    p = run([sys.executable, "-m", "ezpz.relocate"])
    assert p.returncode == 2 and "PATH" in p.stderr


def test_activation_hint_quotes():
    assert activation_hint("venv", "/tmp/env") == "source /tmp/env/bin/activate"
    assert activation_hint("conda", "/tmp/env") == "conda activate /tmp/env"
    assert activation_hint("venv", "/tmp/my env") == "source '/tmp/my env/bin/activate'"


def test_long_new_prefix_shebangs(tmp_path):
    """Past 127 bytes a Python script gets pip's trampoline and still runs; any other
    interpreter keeps a plain shebang (the trampoline is only valid Python)."""
    old = "/opt/ezpz-gone/env"
    stage = tmp_path / "stage"
    (stage / "conda-meta").mkdir(parents=True)
    (stage / "bin").mkdir()
    (stage / "bin" / "hello").write_bytes(f"#!{old}/bin/python3 -s\nimport sys\n"
                                          "print('hello', sys.argv[1:])\n".encode())
    (stage / "bin" / "tool.sh").write_bytes(f"#!{old}/bin/bash\necho hi\n".encode())
    (stage / "bin" / "plain").write_bytes(b"#!/usr/bin/env python3\nprint(1)\n")
    new = tmp_path / ("long-" + "y" * 130) / "env"
    report = relocate(stage, new_prefix=new, old_prefix=old)
    assert report.files_rewritten == 2
    assert (stage / "bin" / "hello").read_bytes() == (
        f"#!/bin/sh\n'''exec' {new}/bin/python3 -s \"$0\" \"$@\"\n' '''\nimport sys\n"
        "print('hello', sys.argv[1:])\n").encode()
    assert (stage / "bin" / "tool.sh").read_bytes() == f"#!{new}/bin/bash\necho hi\n".encode()
    assert (stage / "bin" / "plain").read_bytes() == b"#!/usr/bin/env python3\nprint(1)\n"
    # The trampoline runs: point the new prefix's python at this interpreter.
    stage.rename(tmp_path / "moved")
    new.parent.mkdir()
    os.symlink(tmp_path / "moved", new)
    os.symlink(sys.executable, new / "bin" / "python3")
    os.chmod(new / "bin" / "hello", 0o755)
    p = run([new / "bin" / "hello", "a b"])
    assert p.returncode == 0, p.stderr
    assert p.stdout == "hello ['a b']\n"


def test_root_old_prefix_refused(tmp_path):
    (tmp_path / "conda-meta").mkdir()
    with pytest.raises(RelocateError, match=r"old prefix '/' is not an absolute path below /"):
        relocate(tmp_path, old_prefix="/")


# ---------------------------------------------------------------------------------------------
# on simulated nodes: each node unpacks into a staging directory in its private /tmp,
# relocates to /tmp/env and renames, as the transfer worker's last steps do

NODE_UNPACK = """
import os, sys, tarfile
from ezpz.relocate import activation_hint, relocate
os.makedirs('/tmp/.stage')
with tarfile.open(sys.argv[1]) as tf:
    tf.extractall('/tmp/.stage', filter='tar')
report = relocate('/tmp/.stage/env', new_prefix='/tmp/env')
os.rename('/tmp/.stage/env', '/tmp/env')
print(activation_hint(report.kind, '/tmp/env'))
"""

NODE_GREP = """
import os, sys
root, old = sys.argv[1], sys.argv[2].encode()
for d, _, names in os.walk(root):
    for n in names:
        p = os.path.join(d, n)
        if not os.path.islink(p) and not n.endswith('.pyc') and old in open(p, 'rb').read():
            print(p)
"""


@pytest.mark.simnodes
@pytest.mark.parametrize("how", ["worker", "by-hand"])
def test_venv_delivered_to_two_nodes_runs_there(packed_venv, run_nodes, how, tmp_path):
    """Through the transfer worker (tar-env archive, broadcast, relocation in staging), and by
    hand (python -m ezpz.relocate's library call on a tree extracted elsewhere)."""
    old = packed_venv["old"]
    assert not old.exists()
    py = "/tmp/env/bin/python"
    if how == "worker":
        argv = [sys.executable, "-m", "ezpz.transfer", f"transfer.src={packed_venv['packed']}",
                "transfer.dst=/tmp/env", f"hydra.run.dir={tmp_path / 'run'}"]
    else:
        argv = [sys.executable, "-c", NODE_UNPACK, str(packed_venv["manifest"])]
    run = run_nodes(2, argv,
                    run_in_node=[[py, "-c", f"import sys, {PKG}; print(sys.prefix)"],
                                 [f"/tmp/env/bin/{PKG}"],
                                 ["/tmp/env/bin/pip", "--version"],
                                 ["sh", "-c", '. "$1/bin/activate"; echo "$VIRTUAL_ENV"', "sh",
                                  "/tmp/env"],
                                 [sys.executable, "-c", NODE_GREP, "/tmp/env", str(old)]])
    assert run.returncode == 0, run.output
    assert sorted(n.host for n in run.nodes) == ["node0", "node1"]
    for node in run.nodes:
        assert node.rc == 0, node.output
        if how == "by-hand":
            assert node.output.strip().splitlines()[-1] == "source /tmp/env/bin/activate"
        prefix, script, pip, activate, grep = node.runs
        assert all(r["rc"] == 0 for r in node.runs), node.runs
        assert prefix["stdout"].strip() == "/tmp/env"
        assert script["stdout"].strip() == "ezpzdemo runs in /tmp/env"
        assert "from /tmp/env/lib/" in pip["stdout"]
        assert activate["stdout"].strip() == "/tmp/env"
        assert grep["stdout"] == ""
        assert not [k for k in node.tmp if k.startswith(".stage/")]


def test_cli_unreadable_tree_is_one_line(tmp_path):
    """Root reads anything: the CLI runs as an unprivileged user (setpriv)."""
    import shutil
    import tempfile

    if not shutil.which("setpriv") or os.geteuid() != 0:
        pytest.skip("needs root and setpriv (util-linux) to run as another user")
    work = Path(tempfile.mkdtemp(prefix="ezpz-reloc-"))
    try:
        work.chmod(0o755)
        env = work / "env"
        (env / "bin").mkdir(parents=True)
        (env / "pyvenv.cfg").write_text(f"home = /usr/bin\ncommand = python -m venv {env}\n")
        (env / "bin" / "activate").write_text(f'VIRTUAL_ENV="{env}"\n')
        env.chmod(0o777)
        (env / "pyvenv.cfg").chmod(0o666)
        (env / "bin").chmod(0o000)
        p = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                            sys.executable, "-m", "ezpz.relocate", str(env), "--prefix",
                            "/opt/newenv"], capture_output=True, text=True, cwd=work)
        assert p.returncode == 1, p.stderr
        errors = [line for line in p.stderr.splitlines() if not line.startswith("[")]  # not logs
        assert errors == [f"error: cannot relocate {env}: {env / 'bin'}: Permission denied"]
        assert "Traceback" not in p.stderr
        (env / "bin").chmod(0o755)
        assert (env / "bin" / "activate").read_text() == f'VIRTUAL_ENV="{env}"\n'
    finally:
        (work / "env" / "bin").chmod(0o755)
        shutil.rmtree(work)
