"""transfer.threads: checked in the schema, carried by the worker spec, resolved per node."""

from __future__ import annotations

import dataclasses
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from ezpz.config import EXTRACT_THREADS_AUTO, Backend, Status, TransferConfig
from ezpz.errors import ConfigError
from ezpz.extract.decode import resolve_threads
from ezpz.transfer import WorkerSpec, spec_for
from trees import tree


def test_the_spec_carries_threads_and_auto_stays_auto(tmp_path):
    src = tmp_path / "env.tar.zst"
    src.write_bytes(b"x")
    for given, carried in (("auto", 0), ("3", 3), (1, 1)):
        spec = spec_for(TransferConfig(src=str(src), threads=given))
        assert spec.threads == carried
        again = WorkerSpec.from_json(spec.to_json())
        assert again == spec
        assert again.settings["threads"] == str(given).lower()  # as the user gave it


@pytest.mark.parametrize("value", [-1, 300, "4", True, 2.0, None])
def test_a_spec_with_a_bad_thread_count_is_refused(tmp_path, value):
    spec = spec_for(TransferConfig(src=str(tmp_path / "a.tar.zst")))
    data = spec.to_json()
    data["threads"] = value
    with pytest.raises(ConfigError, match=r"spec: field 'threads' has a bad value"):
        WorkerSpec.from_json(data)


def test_auto_is_the_cores_of_the_affinity_mask_capped():
    assert resolve_threads(5) == 5
    assert resolve_threads(0) == min(len(os.sched_getaffinity(0)), EXTRACT_THREADS_AUTO)
    if not shutil.which("taskset"):
        pytest.skip("taskset (util-linux) is not installed")
    code = "from ezpz.extract.decode import resolve_threads; print(resolve_threads(0))"
    out = subprocess.run(["taskset", "-c", "0", sys.executable, "-c", code],
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "1"


def test_decoding_gets_half_the_threads_from_four_on():
    from ezpz.extract.decode import decode_threads

    assert [decode_threads(n) for n in (1, 2, 3, 4, 5, 8, 16)] == [1, 1, 1, 2, 2, 4, 8]


# --------------------------------------------------------------------------------------
# the transfer at every thread count (ranks as threads over LocalComm)
# --------------------------------------------------------------------------------------
def _snapshot(root: Path, mtime: bool = True) -> dict[str, tuple]:
    """The tree, less what records the run (the marker, and .ezpz/'s mtime)."""
    out = tree(root, mtime=mtime)
    out.pop(".ezpz/installed.json", None)
    if ".ezpz" in out:
        out[".ezpz"] = out[".ezpz"][:2]
    return out


@pytest.fixture(scope="module")
def framed_env(tmp_path_factory) -> Path:
    """A real venv with data across many zstd frames, packed by ezpz-tar-env."""
    from ezpz.pack import pack, sinks

    work = tmp_path_factory.mktemp("framed")
    env = work / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)
    rnd = os.urandom(1 << 20)
    (env / "big.bin").write_bytes(rnd * 3 + bytes(500_000))
    for i in range(300):
        sub = env / "pkg" / f"d{i % 7}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"m{i}.py").write_bytes(f"# {env}\n".encode() + rnd[i * 999:i * 999 + i * 40])
        os.utime(sub / f"m{i}.py", (1_600_000_000 + i, 1_600_000_000 + i))
    (env / "pkg" / "exe").write_text("#!/bin/sh\n")
    (env / "pkg" / "exe").chmod(0o750)
    (env / "pkg" / "link").symlink_to("exe")
    old = sinks.FRAME_BYTES
    sinks.FRAME_BYTES = 64 * 1024
    try:
        return pack(prefix=str(env), path=str(work / "env.tar.zst"))
    finally:
        sinks.FRAME_BYTES = old


@pytest.mark.parametrize("threads", [1, 2, 4, 7, 0])
def test_a_framed_archive_lands_the_same_at_every_thread_count(framed_env, tmp_path, threads,
                                                              monkeypatch):
    from ezpz.extract import decode
    from ezpz.formats.manifest import read_manifest
    from test_transfer_local import run_job

    frames = []
    real = decode._decode_frame
    monkeypatch.setattr(decode, "_decode_frame", lambda f, n: frames.append(n) or real(f, n))

    assert len(read_manifest(framed_env).frames) > 20
    base = WorkerSpec(src=str(framed_env), dst=str(tmp_path / "ref" / "env"),
                      backend=Backend.mpi, chunk_bytes=100_000, depth=2, timeout=60.0)
    want_spec = dataclasses.replace(base, threads=1, relocate=False)
    run_job(["a"], lambda h: want_spec, tmp_path / "r0", timeout=60)
    want = _snapshot(tmp_path / "ref" / "env")
    spec = dataclasses.replace(base, threads=threads, relocate=False,
                               dst=str(tmp_path / "n" / "env"))
    out = run_job(["a", "b"], lambda h: dataclasses.replace(spec, dst=str(tmp_path / h / "env")),
                  tmp_path / "run", timeout=60)
    assert out[0].status is Status.ok, out
    for host in "ab":
        assert _snapshot(tmp_path / host / "env") == want
    # from 4 threads on, the frames were decoded on their own (2 nodes: every frame twice)
    parallel = decode.decode_threads(decode.resolve_threads(threads)) > 1
    assert (len(frames) == 2 * (len(read_manifest(framed_env).frames) + 1)) == parallel


@pytest.fixture(scope="module")
def plain_archives(framed_env, tmp_path_factory) -> dict[str, Path]:
    """The same venv as archives users make themselves, with no manifest: GNU tar piped to
    the zstd tool, and tar -czf."""
    import shutil

    # a long original prefix: binary files keep their length when relocated, so the nodes'
    # dsts must not be longer
    work = tmp_path_factory.mktemp("plain") / ("long-prefix-" * 12)
    env = work / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)
    shutil.copytree(framed_env.parent / "env" / "pkg", env / "pkg", symlinks=True)
    shutil.copy2(framed_env.parent / "env" / "big.bin", env / "big.bin")
    for i in range(50):  # text files that hold this env's own prefix
        (env / "pkg" / f"p{i}.py").write_text(f"# {env}\nX = {i}\n")
    out = {"tar-zstd": work / "env.tar.zst", "tar-gz": work / "env.tar.gz"}
    tar = subprocess.run(["tar", "-C", str(work), "-cf", "-", "env"], check=True,
                         capture_output=True).stdout
    out["tar-zstd"].write_bytes(subprocess.run(["zstd", "-q", "-3", "-c"], input=tar,
                                               check=True, capture_output=True).stdout)
    subprocess.run(["tar", "-C", str(work), "-czf", str(out["tar-gz"]), "env"], check=True)
    return out


@pytest.mark.parametrize("threads", [7, 0])
@pytest.mark.parametrize("kind", ["tar-zstd", "tar-gz"])
def test_plain_archives_land_and_relocate_the_same_at_every_thread_count(
        plain_archives, tmp_path, kind, threads):
    """Plain archives (no manifest, relocated from the files the extraction noted) give the
    same trees at any thread count as at one thread, on every node."""
    from test_transfer_local import run_job

    src = plain_archives[kind]
    spec = WorkerSpec(src=str(src), dst=str(tmp_path / "x" / "env"), backend=Backend.mpi,
                      chunk_bytes=100_000, depth=2, timeout=60.0, relocate=True,
                      overwrite=True)

    def run(n: int, name: str) -> dict[str, dict]:
        out = run_job(["a", "b"], lambda h: dataclasses.replace(
            spec, threads=n, dst=str(tmp_path / h / "env")), tmp_path / name, timeout=60)
        assert out[0].status is Status.ok, out
        # relocation rewrites files (their mtimes are its own): types, modes and contents
        return {h: _snapshot(tmp_path / h / "env", mtime=False) for h in "ab"}

    want = run(1, "one")
    assert str(src.parent / "env") not in (tmp_path / "a" / "env" / "bin" /
                                           "activate").read_text()  # relocated
    assert str(tmp_path / "a" / "env") in (tmp_path / "a" / "env" / "bin" /
                                           "activate").read_text()
    assert run(threads, "many") == want
    assert str(tmp_path / "b" / "env") in (tmp_path / "b" / "env" / "pkg" / "p7.py").read_text()


# --------------------------------------------------------------------------------------
# the writer pool: file data written on several threads, the tree the same
# --------------------------------------------------------------------------------------
def test_writing_gets_the_other_half_from_four_on():
    from ezpz.extract.decode import decode_threads, write_threads

    assert [write_threads(n) for n in (1, 2, 3, 4, 5, 8, 16, 32, 256)] == \
        [1, 1, 1, 2, 3, 4, 8, 16, 16]
    assert all(decode_threads(n) + write_threads(n) == n for n in (4, 5, 8, 16, 32))


def _pool_archive() -> bytes:
    """Large files spanning many decoded blocks beside small ones, paths written twice
    (file over file, symlink over file, file over symlink), hardlinks to a large file
    still being written, modes the umask would drop, and distinct mtimes."""
    from tarbuild import end, member

    rnd = os.urandom(1 << 20)
    big = [rnd[i:] + rnd[:i] for i in range(0, 12 * 4099, 4099)]  # 1 MiB each, all distinct
    parts = [member("t/", typ=b"5", mode=0o755)]
    for i in range(6):
        data = b"".join(big[i:i + 3 + i % 3]) + b"tail%d" % i  # 3 to 5 MiB, not aligned
        parts.append(member(f"t/big{i}.bin", data, mode=0o640 + i % 2, mtime=1_600_000_000 + i))
        for k in range(40):
            parts.append(member(f"t/small/{i}/{k}.py", b"# %d %d\n" % (i, k) * (k + 1),
                                mtime=1_650_000_000 + k))
    parts += [member(f"t/small/{i}/", typ=b"5", mtime=1_500_000_000 + i) for i in range(6)]
    parts.append(member("t/small/", typ=b"5", mode=0o750))
    parts.append(member("t/hard", typ=b"1", link=b"t/big5.bin"))
    parts.append(member("t/big2.bin", big[8] * 2, mode=0o600))  # a large file again
    parts.append(member("t/big3.bin", typ=b"2", link=b"big0.bin"))  # a symlink over it
    parts.append(member("t/big3.bin", big[7] * 3, mode=0o4755))  # and a file over that
    parts.append(member("t/ro.bin", big[6] * 2, mode=0o400))
    parts.append(member("t/dup", b"first"))  # still waiting in a batch when
    parts.append(member("t/dup", b"second"))  # the next member replaces it
    return b"".join(parts) + end()


@pytest.fixture(scope="module")
def pool_archive(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("pool") / "a.tar"
    p.write_bytes(_pool_archive())
    return p


def _extract(src: Path, dst: Path, writers: int, **kw: object):
    import io

    from ezpz.extract import SafeExtractor

    dst.mkdir(parents=True)
    with open(src, "rb") as fh:
        return SafeExtractor(str(dst), writers=writers, **kw).run(io.BufferedReader(fh))


@pytest.mark.parametrize("writers", [2, 4, 8])
def test_the_writer_pool_gives_the_tree_one_writer_gives(pool_archive, tmp_path, writers):
    ref = _extract(pool_archive, tmp_path / "one", 1)
    rep = _extract(pool_archive, tmp_path / "many", writers)
    want = _snapshot(tmp_path / "one")
    got = _snapshot(tmp_path / "many")
    assert got == want
    assert rep.fast_members == ref.fast_members > 200  # every small file by the C writer
    t = tmp_path / "many" / "t"
    assert (t / "big3.bin").read_bytes()[:16] != (t / "big0.bin").read_bytes()[:16]
    assert not (t / "big3.bin").is_symlink() and stat.S_IMODE((t / "big3.bin").stat().st_mode) \
        == 0o755  # setuid dropped, the last member won
    assert os.path.samefile(t / "hard", t / "big5.bin")
    assert (t / "hard").stat().st_size == 5 * (1 << 20) + len(b"tail5")
    assert stat.S_IMODE((t / "ro.bin").stat().st_mode) == 0o400
    assert (t / "dup").read_bytes() == b"second"
    assert (t / "big1.bin").stat().st_mtime == 1_600_000_001
    assert stat.S_IMODE((t / "small").stat().st_mode) == 0o750


_FAIL_SCRIPT = r"""
import io, json, os, resource, signal, sys, threading
from ezpz.errors import ArchiveError
from ezpz.extract import SafeExtractor
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)       # writes past the limit fail with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (2 << 20, 2 << 20))
before = sorted(os.listdir("/proc/self/fd"))
threads = threading.active_count()
try:
    with open(sys.argv[1], "rb") as fh:
        SafeExtractor(sys.argv[2], writers=int(sys.argv[3])).run(io.BufferedReader(fh))
    out = {"error": None}
except ArchiveError as exc:
    out = {"error": str(exc)}
out["fds_left"] = sorted(set(os.listdir("/proc/self/fd")) - set(before))
out["threads_left"] = threading.active_count() - threads
print(json.dumps(out))
"""


@pytest.mark.parametrize("writers", [1, 4])
def test_a_failed_write_in_the_pool_names_the_member_and_leaves_no_descriptor(
        pool_archive, tmp_path, writers):
    import json

    dst = tmp_path / "d"
    dst.mkdir()
    p = subprocess.run([sys.executable, "-c", _FAIL_SCRIPT, str(pool_archive), str(dst),
                        str(writers)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["error"] is not None and "cannot write member 't/big0.bin' into" in out["error"]
    assert "File too large" in out["error"]
    assert out["fds_left"] == [] and out["threads_left"] == 0
    # nothing past the failing member was written
    assert not (dst / "t" / "big1.bin").exists()


def _fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("writers", [1, 4])
def test_an_archive_cut_inside_a_large_file_is_refused_and_leaves_no_descriptor(
        pool_archive, tmp_path, writers):
    import threading

    from ezpz.errors import ArchiveError

    data = pool_archive.read_bytes()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[:2 << 20])  # inside t/big0.bin (3 MiB and a tail)
    before, threads = _fds(), threading.active_count()
    with pytest.raises(ArchiveError, match=r"truncated archive \(member 't/big0.bin' has "):
        _extract(cut, tmp_path / "d", writers)
    assert _fds() - before == set()
    assert threading.active_count() == threads


@pytest.mark.parametrize("writers", [1, 4])
def test_a_symlink_at_a_large_files_path_is_replaced_never_written_through(
        pool_archive, tmp_path, writers):
    outside = tmp_path / "outside"
    outside.write_bytes(b"keep")
    dst = tmp_path / "d"
    (dst / "t").mkdir(parents=True)
    (dst / "t" / "big4.bin").symlink_to(outside)
    from ezpz.extract import SafeExtractor

    with open(pool_archive, "rb") as fh:
        SafeExtractor(str(dst), writers=writers).run(fh)
    assert outside.read_bytes() == b"keep"
    assert not (dst / "t" / "big4.bin").is_symlink()
    assert (dst / "t" / "big4.bin").stat().st_size > 3 << 20
