"""Hostile archives through the whole worker on simulated nodes (real mpiexec).

Every archive is built here with tarfile. A refused archive fails on every node with the
member named; nothing is created outside dst (escapes would land in the node's private /tmp,
next to dst, where the node check sees them), dst is not installed and no staging is left.
"""

from __future__ import annotations

import hashlib
import tarfile
from pathlib import Path

import pytest
import zstandard

from tarbuild import with_tarfile
from test_transfer import run

pytestmark = pytest.mark.simnodes

VICTIM = b"original victim\n"


def build(path: Path, members: list[dict], codec: str = "none") -> Path:
    """A GNU-format tar (or .tar.zst) of ``members`` (see tarbuild.with_tarfile)."""
    raw = with_tarfile(members, tarfile.GNU_FORMAT)
    if codec == "zstd":
        raw = zstandard.ZstdCompressor(level=3, write_checksum=True).compress(raw)
    path.write_bytes(raw)
    return path


BASE = [dict(name="venv", type=tarfile.DIRTYPE, mode=0o755),
        dict(name="venv/ok.txt", data=b"fine\n")]

# case -> (hostile members appended to BASE, expected reason)
HOSTILE = {
    "absolute": ([dict(name="/tmp/abs-escape", data=b"x")], "absolute path"),
    "dotdot": ([dict(name="../dotdot-escape", data=b"x")], "'..' component"),
    "hidden-dotdot": ([dict(name="venv/a/../../../hidden-escape", data=b"x")],
                      "'..' component"),
    "symlink-then-write": ([dict(name="venv/etc", type=tarfile.SYMTYPE, linkname="/tmp"),
                            dict(name="venv/etc/passwd", data=b"root::0:0::/:/bin/sh\n")],
                           "written through symlink 'venv/etc'"),
    "relative-symlink-then-write": (
        [dict(name="venv/up", type=tarfile.SYMTYPE, linkname="../.."),
         dict(name="venv/up/passwd", data=b"pwned\n")], "points outside"),
    "hardlink-absolute": ([dict(name="venv/h", type=tarfile.LNKTYPE, linkname="/tmp/victim"),
                           dict(name="venv/h", data=b"pwned\n")], "hardlink to absolute path"),
    "hardlink-dotdot": ([dict(name="venv/h", type=tarfile.LNKTYPE, linkname="../victim"),
                         dict(name="venv/h", data=b"pwned\n")], "escapes the destination"),
    "chardev": ([dict(name="venv/null", type=tarfile.CHRTYPE)], "device node"),
    "blockdev": ([dict(name="venv/sda", type=tarfile.BLKTYPE)], "device node"),
    "fifo": ([dict(name="venv/pipe", type=tarfile.FIFOTYPE)], "FIFO"),
    "path-max": ([dict(name="venv/" + "/".join(["d" * 200] * 21), data=b"x")], "PATH_MAX"),
}


def _node_state_clean(node, victim_sha: str) -> None:
    """Only the untouched victim remains in the node's /tmp."""
    assert set(node.tmp) <= {"victim"}, node.tmp
    assert node.tmp["victim"]["sha256"] == victim_sha, "a file outside dst was modified"


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_archive_refused_on_every_node(run_nodes, python, tmp_path, case):
    extra, reason = HOSTILE[case]
    src = build(tmp_path / "venv.tar", BASE + extra)
    root = tmp_path / "nodes"
    for k in range(2):  # a file outside dst on every node, for the hardlink cases to target
        (root / f"node{k}").mkdir(parents=True)
        (root / f"node{k}" / "victim").write_bytes(VICTIM)
    res, results = run(run_nodes, python, 2, tmp_path, src=str(src), shared_root=str(root),
                       timeout=60)
    member = extra[-1]["name"]
    named = repr(member) if len(member) < 300 else repr(member[:160] + "...")[:-1]
    assert res.returncode != 0
    assert results["status"] == "failed"
    assert results["failed_hosts"] == ["node0", "node1"]
    for p in results["per_node"]:
        assert reason in p["error"] and named in p["error"], p["error"]
        assert "\n" not in p["error"]
    sha = hashlib.sha256(VICTIM).hexdigest()
    for n in res.nodes:
        assert n.rc == 1, n.output
        assert named in n.output
        _node_state_clean(n, sha)


def test_setuid_setgid_bits_are_dropped(run_nodes, python, tmp_path):
    src = build(tmp_path / "venv.tar", BASE + [
        dict(name="venv/bin", type=tarfile.DIRTYPE, mode=0o755),
        dict(name="venv/bin/suid", data=b"#!/bin/sh\n", mode=0o4755),
        dict(name="venv/bin/sgid", data=b"#!/bin/sh\n", mode=0o2750),
        dict(name="venv/shared", type=tarfile.DIRTYPE, mode=0o2775)])
    res, results = run(run_nodes, python, 2, tmp_path, src=str(src), timeout=60)
    assert res.returncode == 0, "\n".join(n.output for n in res.nodes)
    for n in res.nodes:
        assert n.tmp["venv/bin/suid"]["mode"] == 0o755
        assert n.tmp["venv/bin/sgid"]["mode"] == 0o750
        assert n.tmp["venv/shared"]["mode"] == 0o775


def test_legitimate_absolute_symlinks_inside_an_env_still_work(run_nodes, python, tmp_path):
    src = build(tmp_path / "venv.tar", BASE + [
        dict(name="venv/bin", type=tarfile.DIRTYPE, mode=0o755),
        dict(name="venv/bin/python", type=tarfile.SYMTYPE, linkname="/usr/bin/python3"),
        dict(name="venv/lib", type=tarfile.DIRTYPE, mode=0o755),
        dict(name="venv/lib64", type=tarfile.SYMTYPE, linkname="lib"),
        dict(name="venv/lib64/through-internal-link.txt", data=b"inside\n"),
        dict(name="venv/bin/py", type=tarfile.LNKTYPE, linkname="venv/ok.txt")], codec="zstd")
    res, results = run(run_nodes, python, 2, tmp_path, src=str(src), timeout=60)
    assert res.returncode == 0, "\n".join(n.output for n in res.nodes)
    for n in res.nodes:
        assert n.tmp["venv/bin/python"] == {"type": "symlink", "target": "/usr/bin/python3",
                                            "mode": 0o777}
        assert n.tmp["venv/lib64"]["target"] == "lib"
        assert n.tmp["venv/lib/through-internal-link.txt"]["type"] == "file"
        assert n.tmp["venv/bin/py"]["sha256"] == n.tmp["venv/ok.txt"]["sha256"]
        assert not [k for k in n.tmp if "ezpz-staging" in k]


def test_tar_bomb_refused_before_it_is_written(run_nodes, python, tmp_path):
    """Highly compressible members that declare more than the node's free space."""
    bomb = bytes(24 << 20)  # 24 MiB of zeros: a few KiB compressed
    src = build(tmp_path / "venv.tar.zst", BASE + [dict(name="venv/bomb1", data=bomb),
                                                   dict(name="venv/bomb2", data=bomb)],
                codec="zstd")
    assert src.stat().st_size < 1 << 20
    res, results = run(run_nodes, python, 2, tmp_path, src=str(src), tmp_size="32m", timeout=60)
    assert res.returncode != 0
    for p in results["per_node"]:
        assert "'venv/bomb2' declares 24.0 MiB" in p["error"], p["error"]
        assert "free in /tmp" in p["error"] and "transfer.dst" in p["error"]
    for n in res.nodes:
        assert n.rc == 1
        assert set(n.tmp) == set(), n.tmp
