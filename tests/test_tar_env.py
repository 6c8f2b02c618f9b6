"""ezpz-tar-env: real venvs and conda-like envs packed, extracted with GNU tar and compared."""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ezpz.config import ArchiveSpec, EnvSpec, TarEnvConfig
from ezpz.errors import ArchiveError, ConfigError
from ezpz.formats import prefix as prefixes
from ezpz.formats.manifest import MANIFEST_RELPATH, iter_members, read_manifest
from ezpz.formats.prefix import find_prefix_files
from ezpz.pack import packer as tar_env
from ezpz.pack import tree as packtree
from ezpz.pack import writer

CODECS = ["zstd", "gzip", "none"]
PY = sys.executable
CLI = [PY, "-m", "ezpz.cli.tar_env"]
#: Run a command as root without the capabilities that bypass file permissions.
NO_DAC = ["setpriv", "--inh-caps=-all", "--bounding-set=-dac_override,-dac_read_search", "--"]


def _no_dac(argv: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return argv
    if not shutil.which("setpriv"):
        pytest.skip("setpriv (util-linux) is needed to drop root's permission bypass")
    return NO_DAC + argv


def make_venv(where: Path) -> Path:
    """A real venv plus files that exercise every member kind."""
    subprocess.run([PY, "-m", "venv", "--without-pip", str(where)], check=True)
    prefix = str(where).encode()
    sp = next((where / "lib").glob("python*/site-packages"))
    (sp / "pkg").mkdir()
    (sp / "pkg" / "__init__.py").write_text("X = 1\n")
    (sp / "pkg" / "paths.txt").write_bytes(b"root=" + prefix + b"/share\n")  # text, has prefix
    (sp / "pkg" / "blob.bin").write_bytes(b"\x7fELF\0\0" + prefix + b"\0tail")  # binary
    (sp / "pkg" / "plain.bin").write_bytes(bytes(range(256)) * 4)  # binary, no prefix
    tool = where / "bin" / "tool"
    tool.write_bytes(b"#!" + prefix + b"/bin/python\nprint('hi')\n")
    tool.chmod(0o755)
    private = sp / "pkg" / "private.cfg"
    private.write_text("secret\n")
    private.chmod(0o600)
    # A large file with the prefix straddling a read-chunk boundary.
    big = bytearray(os.urandom(prefixes.CHUNK + 4096))
    at = prefixes.CHUNK - 5
    big[at:at + len(prefix)] = prefix
    (sp / "pkg" / "big.dat").write_bytes(bytes(big))
    (sp / "pkg" / "__pycache__").mkdir()
    (sp / "pkg" / "__pycache__" / "m.cpython-311.pyc").write_bytes(b"\x00\x01" + prefix)
    (where / "share" / "empty" / "nested").mkdir(parents=True)
    (sp / "pkg" / "rel-link").symlink_to("paths.txt")
    (sp / "pkg" / "abs-link").symlink_to(where / "bin" / "tool")
    (sp / "pkg" / "dangling").symlink_to("does-not-exist")
    deep = sp / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    (deep / ("long-name-" * 8 + ".txt")).write_text("deep\n")
    os.link(sp / "pkg" / "__init__.py", sp / "pkg" / "hardlink.py")
    return where


def make_conda(where: Path) -> Path:
    """A conda-like env: conda-meta/ plus files embedding the prefix as text and binary."""
    prefix = str(where).encode()
    (where / "conda-meta").mkdir(parents=True)
    (where / "conda-meta" / "history").write_text("==> 2024 <==\n")
    (where / "conda-meta" / "python-3.11.7-h1.json").write_text("{}\n")
    (where / "bin").mkdir()
    script = where / "bin" / "pip"
    script.write_bytes(b"#!" + prefix + b"/bin/python3.11\nimport sys\n")
    script.chmod(0o755)
    (where / "lib").mkdir()
    lib = where / "lib" / "libfoo.so"
    lib.write_bytes(b"\x7fELF\x02\x01\0\0" + prefix + b"/lib\0" + os.urandom(64))
    lib.chmod(0o755)
    (where / "lib" / "libfoo.so.1").symlink_to("libfoo.so")
    (where / "etc" / "empty").mkdir(parents=True)
    (where / "share").mkdir()
    (where / "share" / "readme").write_text("nothing here\n")
    return where


def expected_prefix_files(root: Path) -> dict[str, str]:
    """Brute force, independent of the library: every regular file holding the prefix."""
    needle = str(root).encode()
    out = {}
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            p = Path(dirpath) / name
            if p.is_symlink() or not p.is_file():
                continue
            data = p.read_bytes()
            if needle in data:
                out[p.relative_to(root).as_posix()] = "binary" if b"\0" in data else "text"
    return out


def snapshot(root: Path) -> dict[str, tuple]:
    """Everything a round trip must preserve, keyed by relative path."""
    out = {}
    for dirpath, dirs, names in os.walk(root):
        for name in dirs + names:
            p = Path(dirpath) / name
            rel = p.relative_to(root).as_posix()
            st = p.lstat()
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode))
            else:
                out[rel] = ("file", stat.S_IMODE(st.st_mode), p.read_bytes(), int(st.st_mtime))
    return out


def gnu_extract(path: Path, dest: Path) -> None:
    dest.mkdir()
    subprocess.run(["tar", "-xf", str(path), "-C", str(dest)], check=True)


@pytest.fixture
def venv(tmp_path) -> Path:
    return make_venv(tmp_path / "envs" / "myvenv")


@pytest.fixture
def conda(tmp_path) -> Path:
    return make_conda(tmp_path / "envs" / "mycondaenv")


# --------------------------------------------------------------------------------------
# round trips
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("codec", CODECS)
def test_venv_round_trip(venv, tmp_path, codec):
    out = tar_env.pack(prefix=str(venv), codec=codec)
    assert out == venv.parent / f"myvenv{ {'zstd': '.tar.zst', 'gzip': '.tar.gz', 'none': '.tar'}[codec]}"
    from ezpz.formats.codecs import detect_file

    assert detect_file(out) == codec
    first, _ = next(iter_members(out))
    assert first.name == f"myvenv/{MANIFEST_RELPATH}"
    gnu_extract(out, tmp_path / "x")
    got = tmp_path / "x" / "myvenv"
    manifest_file = got / MANIFEST_RELPATH
    assert manifest_file.is_file()
    manifest_file.unlink()
    (got / ".ezpz").rmdir()
    assert snapshot(got) == snapshot(venv)
    m = read_manifest(out)
    assert (m.kind, m.name, m.prefix, m.codec) == ("venv", "myvenv", str(venv), codec)
    assert m.python_version == ".".join(map(str, sys.version_info[:3]))
    assert m.python_implementation == "CPython"
    # compiled files hold the prefix too, but relocation never rewrites them: not listed
    listed = {k: v for k, v in expected_prefix_files(venv).items() if not k.endswith(".pyc")}
    assert any(k.endswith(".pyc") for k in expected_prefix_files(venv))
    assert {p.path: p.mode for p in m.prefix_files} == listed
    files = [p for p in snapshot(venv).values() if p[0] == "file"]
    assert m.files == len(files)
    assert m.total_bytes == sum(len(p[2]) for p in files)
    assert m.symlinks == sum(1 for p in snapshot(venv).values() if p[0] == "link")
    assert m.dirs == 1 + sum(1 for p in snapshot(venv).values() if p[0] == "dir")
    assert m.created_host and m.created_time and m.ezpz_version


@pytest.mark.parametrize("codec", CODECS)
def test_conda_like_round_trip(conda, tmp_path, codec):
    out = tar_env.pack(prefix=str(conda), codec=codec, path=str(tmp_path / f"c.{codec}"))
    gnu_extract(out, tmp_path / "x")
    got = tmp_path / "x" / "mycondaenv"
    (got / MANIFEST_RELPATH).unlink()
    (got / ".ezpz").rmdir()
    assert snapshot(got) == snapshot(conda)
    m = read_manifest(out)
    assert m.kind == "conda" and m.python_version == "3.11.7"
    assert {p.path: p.mode for p in m.prefix_files} == {"bin/pip": "text",
                                                        "lib/libfoo.so": "binary"}


def test_manifest_lists_exactly_the_prefix_files(venv):
    expected = expected_prefix_files(venv)
    major, minor = sys.version_info[:2]
    assert expected[f"lib/python{major}.{minor}/site-packages/pkg/big.dat"] == "binary"
    assert {p.path: p.mode for p in find_prefix_files(venv, str(venv))} == expected
    some = sorted(expected)[:2] + ["bin/python"]  # a symlink is never a prefix file
    assert [p.path for p in find_prefix_files(venv, str(venv), some)] == sorted(expected)[:2]


def test_plain_directory_is_packed_as_data(tmp_path):
    d = tmp_path / "data"
    (d / "sub").mkdir(parents=True)
    (d / "sub" / "f").write_text(str(d))
    out = tar_env.pack(prefix=str(d))
    m = read_manifest(out)
    assert m.kind == "data" and m.prefix_files == [] and m.python_version is None
    assert m.files == 1 and m.dirs == 2


def test_excludes(venv):
    out = tar_env.pack(prefix=str(venv), exclude=["**/__pycache__", "*.bin"])
    names = [i.name for i, _ in iter_members(out)]
    assert not any("__pycache__" in n or n.endswith(".bin") for n in names)
    assert any(n.endswith("pkg/paths.txt") for n in names)
    assert read_manifest(out).excludes == ["**/__pycache__", "*.bin"]


def test_repacking_an_unpacked_env_keeps_one_manifest(venv, tmp_path):
    out = tar_env.pack(prefix=str(venv))
    gnu_extract(out, tmp_path / "x")
    again = tar_env.pack(prefix=str(tmp_path / "x" / "myvenv"), path=str(tmp_path / "again.tar"),
                         codec="none")
    names = [i.name for i, _ in iter_members(again)]
    assert names.count(f"myvenv/{MANIFEST_RELPATH}") == 1
    assert read_manifest(again).prefix == str(tmp_path / "x" / "myvenv")


def test_manifest_larger_than_the_reserve_is_copied_in_front(tmp_path):
    root = tmp_path / "many"
    root.mkdir()
    for _ in range(300):  # random names: the compressed manifest cannot fit in 4 KiB
        (root / (os.urandom(12).hex() + ".txt")).write_text(f"{root}\n")
    tree = packtree.walk_tree(str(root), "many")
    from ezpz.formats.manifest import Manifest

    for codec in CODECS:
        fh = open(tmp_path / f"a.{codec}", "w+b")
        spilled = []

        def spill(codec=codec, spilled=spilled):
            spilled.append(open(tmp_path / f"b.{codec}", "xb"))
            return spilled[-1]

        manifest, stats, _ = writer.write_archive(
            fh, codec, None, 0, tree.entries, 4096,
            lambda s: Manifest(kind="data", name="many", prefix=str(root),
                               prefix_files=s.prefix_files),
            prefix=str(root).encode(), spill=spill)
        fh.close()
        spilled[0].close()
        assert len(stats.prefix_files) == 300
        m = read_manifest(tmp_path / f"b.{codec}")
        assert len(m.prefix_files) == 300
        assert sum(1 for _ in iter_members(tmp_path / f"b.{codec}")) == 302


# --------------------------------------------------------------------------------------
# reuse, overwrite, atomic write
# --------------------------------------------------------------------------------------
def test_reuse_and_overwrite(venv, caplog):
    out = tar_env.pack(prefix=str(venv))
    ino = out.stat().st_ino
    assert tar_env.pack(prefix=str(venv)) == out
    assert out.stat().st_ino == ino  # reused, not rewritten
    assert tar_env.pack(prefix=str(venv), overwrite=True) == out
    assert out.stat().st_ino != ino
    ino = out.stat().st_ino
    (venv / "bin" / "new-tool").write_text("x\n")  # the env changed: rebuilt
    tar_env.pack(prefix=str(venv))
    assert out.stat().st_ino != ino
    assert any(n.endswith("bin/new-tool") for n in (i.name for i, _ in iter_members(out)))
    ino = out.stat().st_ino
    tar_env.pack(prefix=str(venv), level=5)  # different settings: rebuilt
    assert out.stat().st_ino != ino
    assert not [p for p in out.parent.iterdir() if ".tmp" in p.name]


def test_reuse_is_logged_and_cli_prints_the_path_last(venv, tmp_path):
    out = tmp_path / "v.tar.zst"
    args = CLI + [f"env.prefix={venv}", f"archive.path={out}"]
    p1 = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path)
    assert p1.returncode == 0, p1.stderr
    assert p1.stdout.strip().splitlines()[-1] == str(out)
    assert "wrote" in p1.stderr and "files contain the prefix" in p1.stderr
    p2 = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path)
    assert p2.returncode == 0 and p2.stdout.strip().splitlines()[-1] == str(out)
    assert "up to date" in p2.stderr and "reusing" in p2.stderr


def _slow_env(tmp_path: Path) -> Path:
    """A data dir that zstd level 19 on one thread needs seconds for."""
    env = tmp_path / "slow"
    env.mkdir()
    words = [os.urandom(4).hex() for _ in range(4000)]
    import random

    rnd = random.Random(1)
    for i in range(4):
        (env / f"f{i}.txt").write_text(" ".join(rnd.choice(words) for _ in range(400_000)))
    return env


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT])
def test_interrupted_run_leaves_no_archive(tmp_path, sig):
    env = _slow_env(tmp_path)
    outdir = tmp_path / "out"
    outdir.mkdir()
    out = outdir / "slow.tar.zst"
    proc = subprocess.Popen(CLI + [f"env.prefix={env}", f"archive.path={out}",
                                   "archive.level=19", "archive.threads=1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path)
    deadline = time.monotonic() + 60
    while not any(outdir.iterdir()):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.01)
    time.sleep(0.2)
    assert proc.poll() is None, "the packer finished before it could be interrupted"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert not out.exists()
    if sig != signal.SIGKILL:  # a catchable signal also removes the temporary file
        assert list(outdir.iterdir()) == []
        assert (b"not written" in err) or (b"interrupted" in err)


# --------------------------------------------------------------------------------------
# bad input: one line, nothing written
# --------------------------------------------------------------------------------------
def test_nonexistent_prefix(tmp_path):
    with pytest.raises(ConfigError, match=r"env.prefix: .*nope does not exist"):
        tar_env.pack(prefix=str(tmp_path / "nope"))
    assert list(tmp_path.iterdir()) == []


def test_prefix_is_a_file(tmp_path):
    f = tmp_path / "afile"
    f.write_text("x")
    with pytest.raises(ConfigError, match="env.prefix: .*afile is not a directory"):
        tar_env.pack(prefix=str(f))
    assert list(tmp_path.iterdir()) == [f]


def test_output_directory_missing(venv, tmp_path):
    with pytest.raises(ConfigError, match=r"archive.path: directory .*missing does not exist"):
        tar_env.pack(prefix=str(venv), path=str(tmp_path / "missing" / "a.tar.zst"))
    assert not (tmp_path / "missing").exists()


def test_output_directory_not_writable(venv, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    p = subprocess.run(_no_dac(CLI + [f"env.prefix={venv}", f"archive.path={ro}/a.tar.zst"]),
                       capture_output=True, text=True, cwd=tmp_path)
    assert p.returncode == 2, p.stderr
    assert p.stderr.strip().splitlines()[-1] == \
        f"error: archive.path: directory {ro} is not writable; choose another archive.path"
    assert list(ro.iterdir()) == []


def test_output_inside_the_env(venv):
    with pytest.raises(ConfigError, match="inside the environment"):
        tar_env.pack(prefix=str(venv), path=str(venv / "self.tar.zst"))
    assert not (venv / "self.tar.zst").exists()


@pytest.mark.parametrize("override,message", [
    ("archive.codec=lz4", "error: archive.codec: 'lz4' is not a codec (choose zstd, gzip or none)"),
    ("archive.level=30", "error: archive.level: 30 is out of range for zstd (1..22)"),
])
def test_bad_codec_and_level_cli(venv, tmp_path, override, message):
    p = subprocess.run(CLI + [f"env.prefix={venv}", override], capture_output=True, text=True,
                       cwd=tmp_path)
    assert p.returncode == 2
    assert p.stderr.strip().splitlines()[-1] == message
    assert not list(venv.parent.glob("*.tar*"))


def test_bad_codec_and_level_library(venv):
    with pytest.raises(ConfigError, match="archive.codec: 'bz2' is not a codec"):
        tar_env.pack(prefix=str(venv), codec="bz2")
    with pytest.raises(ConfigError, match=r"archive.level: 12 is out of range for gzip \(1..9\)"):
        tar_env.pack(prefix=str(venv), codec="gzip", level=12)
    with pytest.raises(ConfigError, match="unknown option"):
        tar_env.pack(prefix=str(venv), colour="red")
    assert not list(venv.parent.glob("*.tar*"))


def test_foreign_file_is_not_overwritten(venv, tmp_path):
    """archive.path is replaced only when it holds an ezpz archive of the user's, whatever
    overwrite says."""
    foreign = tmp_path / "mine.tar.zst"
    foreign.write_bytes(b"precious data, not an archive")
    for overwrite in (False, True):
        with pytest.raises(ConfigError, match=r"archive.path: .*mine.tar.zst exists and is not "
                                              r"an ezpz archive of yours \(it holds no ezpz "
                                              r"manifest\); ezpz never replaces it, whatever "
                                              r"overwrite says"):
            tar_env.pack(prefix=str(venv), path=str(foreign), overwrite=overwrite)
    assert foreign.read_bytes() == b"precious data, not an archive"
    # A real tar that is not ours is foreign too.
    plain = tmp_path / "plain.tar"
    subprocess.run(["tar", "-cf", str(plain), "-C", str(venv.parent), "myvenv"], check=True)
    assert read_manifest(plain) is None
    before = plain.read_bytes()
    with pytest.raises(ConfigError, match="is not an ezpz archive"):
        tar_env.pack(prefix=str(venv), path=str(plain), codec="none", overwrite=True)
    assert plain.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["envs", "mine.tar.zst", "plain.tar"]


def test_unreadable_files_are_named_or_skipped(venv, tmp_path):
    sp = next((venv / "lib").glob("python*/site-packages"))
    secret = sp / "pkg" / "secret.txt"
    secret.write_text("x")
    secret.chmod(0)
    out = tmp_path / "u.tar.zst"
    code = ("import sys; from ezpz.cli.tar_env import main; sys.exit(main(sys.argv[1:]))")
    base = [PY, "-c", code, f"env.prefix={venv}", f"archive.path={out}"]
    # Others may read the env but not the secret: the unprivileged run sees exactly that.
    p = subprocess.run(_no_dac(base), capture_output=True, text=True, cwd=tmp_path)
    assert p.returncode == 1, p.stderr
    last = p.stderr.strip().splitlines()[-1]
    assert last == (f"error: 1 unreadable path(s) in the environment: {secret}; fix their "
                    "permissions or pass skip_unreadable=true to leave them out")
    assert not out.exists() and list(tmp_path.glob(".u.tar*")) == []
    p = subprocess.run(_no_dac(base + ["skip_unreadable=true"]), capture_output=True, text=True,
                       cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "skipping 1 unreadable path(s)" in p.stderr
    names = [i.name for i, _ in iter_members(out)]
    assert not any(n.endswith("secret.txt") for n in names)
    assert any(n.endswith("pkg/paths.txt") for n in names)


def test_disk_full_leaves_nothing(venv, tmp_path):
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare to mount a small private tmpfs")
    big = venv / "big-random.dat"
    big.write_bytes(os.urandom(3 * 1024 * 1024))
    small = tmp_path / "small"
    small.mkdir()
    code = (
        "import os, subprocess, sys\n"
        "d = sys.argv[1]\n"
        "subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', d], check=True)\n"
        "from ezpz.cli.tar_env import main\n"
        "rc = main([f'env.prefix={sys.argv[2]}', f'archive.path={d}/full.tar.zst'])\n"
        "print('LEFT', sorted(os.listdir(d)))\n"
        "sys.exit(rc)\n")
    p = subprocess.run(["unshare", "-m", "--propagation", "private", PY, "-c", code, str(small),
                        str(venv)], capture_output=True, text=True, cwd=tmp_path)
    if "mount" in p.stderr and "permission denied" in p.stderr.lower():
        pytest.skip("mounting a tmpfs is not permitted here")
    assert p.returncode == 1, p.stderr
    assert "LEFT []" in p.stdout
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {small}/full.tar.zst: writing failed (No space left on device)")
    assert "temporary file was removed" in last


def test_read_manifest_rejects_garbage(tmp_path):
    junk = tmp_path / "junk.tar.zst"
    junk.write_bytes(b"\x28\xb5\x2f\xfd" + os.urandom(200))
    with pytest.raises(ArchiveError, match="junk.tar.zst"):
        read_manifest(junk)
    text = tmp_path / "t.txt"
    text.write_text("hello")
    with pytest.raises(ArchiveError, match="not a tar archive ezpz can read"):
        read_manifest(text)
    with pytest.raises(ArchiveError, match="cannot read"):
        read_manifest(tmp_path / "missing.tar.zst")


# --------------------------------------------------------------------------------------
# interpreter outside the venv
# --------------------------------------------------------------------------------------
def _venv_with_outside_python(tmp_path: Path) -> tuple[Path, Path]:
    venv = make_venv(tmp_path / "envs" / "uvenv")
    fake = tmp_path / "pythons" / "cpython-3.11"
    (fake / "bin").mkdir(parents=True)
    (fake / "lib" / "python3.11").mkdir(parents=True)
    (fake / "lib" / "python3.11" / "os.py").write_text("# stdlib\n")
    (fake / "bin" / "python3.11").write_bytes(b"\x7fELF fake interpreter")
    (fake / "bin" / "python3.11").chmod(0o755)
    (fake / "bin" / "python3").symlink_to("python3.11")
    cfg = (venv / "pyvenv.cfg").read_text().splitlines()
    cfg = [f"home = {fake / 'bin'}" if line.startswith("home") else line for line in cfg]
    (venv / "pyvenv.cfg").write_text("\n".join(cfg) + "\n")
    for name in ("python", "python3"):
        (venv / "bin" / name).unlink()
        (venv / "bin" / name).symlink_to(fake / "bin" / "python3.11")
    return venv, fake


def test_outside_interpreter_warns_and_bundles(tmp_path, caplog):
    venv, fake = _venv_with_outside_python(tmp_path)
    out = tar_env.pack(prefix=str(venv), path=str(tmp_path / "a.tar.zst"))
    assert "Pass env.bundle_python=true" in caplog.text and str(fake) in caplog.text
    assert read_manifest(out).bundled_python_prefix is None
    out = tar_env.pack(TarEnvConfig(env=EnvSpec(prefix=str(venv), bundle_python=True),
                                    archive=ArchiveSpec(path=str(tmp_path / "b.tar.zst"))))
    m = read_manifest(out)
    assert m.bundled_python_prefix == str(fake)
    members = {i.name: (i, d) for i, d in iter_members(out)}
    assert members["uvenv/.ezpz/python/lib/python3.11/os.py"][1] == b"# stdlib\n"
    assert members["uvenv/.ezpz/python/bin/python3"][0].linkname == "python3.11"
    assert stat.S_IMODE(members["uvenv/.ezpz/python/bin/python3.11"][0].mode) == 0o755
    # Bundled files are not the env's prefix files.
    assert not any(p.path.startswith(".ezpz/") for p in m.prefix_files)


def test_bundling_a_system_python_is_refused(venv, monkeypatch, tmp_path):
    monkeypatch.setattr(tar_env, "python_facts",
                        lambda prefix, kind: tar_env.PythonFacts("3.11.7", "CPython", "/usr"))
    with pytest.raises(ConfigError, match="env.bundle_python: the venv's interpreter is the "
                                          "system Python under /usr"):
        tar_env.pack(prefix=str(venv), bundle_python=True)
    assert not list(venv.parent.glob("*.tar*"))


# --------------------------------------------------------------------------------------
# API shape
# --------------------------------------------------------------------------------------
def test_default_archive_path_and_wrappers(venv, tmp_path):
    assert tar_env.default_archive_path(venv, "gzip") == venv.parent / "myvenv.tar.gz"
    assert tar_env.default_archive_path(venv, "none") == venv.parent / "myvenv.tar"
    out = tar_env.make_tarfile(tmp_path / "w.tar.gz", venv)
    assert out == tmp_path / "w.tar.gz" and read_manifest(out).codec == "gzip"
    assert tar_env.create_tarball(venv) == venv.parent / "myvenv.tar.zst"
    assert tar_env.check_for_tarball(venv) == venv.parent / "myvenv.tar.zst"


def test_cli_help_and_config(tmp_path):
    p = subprocess.run(CLI + ["--help"], capture_output=True, text=True, cwd=tmp_path)
    assert p.returncode == 0 and "ezpz-tar-env" in p.stdout and "archive:" in p.stdout
