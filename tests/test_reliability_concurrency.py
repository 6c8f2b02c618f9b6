"""Concurrent transfers and re-runs into the same dst, on simulated nodes with real mpiexec.

The nodes' /tmp are directories of the test (shared_root), so that two separate runs see the
same node and the test can hold files open in them.
"""

from __future__ import annotations

import fcntl
import io
import os
import random
import signal
import tarfile
import threading
import time
from pathlib import Path

import pytest

from test_transfer import run

pytestmark = pytest.mark.simnodes

LOCK = ".venv.ezpz-lock"


def env_tar(path: Path, tag: str, nfiles: int = 40, size: int = 40_000) -> Path:
    """A tar with top directory venv/: ``tag.txt`` names the archive, f* are random."""
    rnd = random.Random(tag)
    with tarfile.open(path, "w") as tf:
        for name, data in [("venv/ok.txt", f"{tag}\n".encode()), (f"venv/{tag}.txt", b"x")] + \
                [(f"venv/{tag}/f{i:03d}", rnd.randbytes(size)) for i in range(nfiles)]:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    return path


def node_tree(root: Path) -> set[str]:
    out = set()
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            out.add(os.path.relpath(os.path.join(dirpath, name), root))
    return out


def pids_of(cfg: Path) -> list[int]:
    out = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv[1:3] == [b"-m", b"ezpz.transfer"] and str(cfg).encode() in argv:
            out.append(int(proc.name))
    return out


def holds_open(pid: int, suffix: str) -> bool:
    try:
        return any(os.readlink(f"/proc/{pid}/fd/{fd}").endswith(suffix)
                   for fd in os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return False


def test_two_transfers_into_one_dst_at_once(run_nodes, python, tmp_path):
    """A is frozen while it holds the lock mid-extraction; B (overwrite=true) waits on the
    lock, then replaces A's finished tree: never a mixed tree, no staging left."""
    root = tmp_path / "nodes"
    a = env_tar(tmp_path / "a" / "venv.tar", "AAA") if (tmp_path / "a").mkdir() is None else None
    b = env_tar(tmp_path / "b" / "venv.tar", "BBB") if (tmp_path / "b").mkdir() is None else None
    (tmp_path / "ra").mkdir()
    (tmp_path / "rb").mkdir()
    results: dict[str, object] = {}

    def go(key, src, where):
        results[key] = run(run_nodes, python, 1, where, src=str(src), overwrite=True,
                           chunk_size="8KiB", shared_root=str(root), timeout=90)

    ta = threading.Thread(target=go, args=("a", a, tmp_path / "ra"))
    ta.start()
    cfg_a = tmp_path / "ra" / "cfg.yaml"
    staging = root / "node0"
    deadline = time.monotonic() + 60
    frozen = None
    while time.monotonic() < deadline and frozen is None:
        pids = pids_of(cfg_a)
        if pids and staging.exists() and any("ezpz-staging" in e for e in os.listdir(staging)):
            os.kill(pids[0], signal.SIGSTOP)
            frozen = pids[0]
        time.sleep(0.001)
    assert frozen is not None, "A was never seen extracting"
    try:
        assert not (root / "node0" / "venv").exists()
        tb = threading.Thread(target=go, args=("b", b, tmp_path / "rb"))
        tb.start()
        cfg_b = tmp_path / "rb" / "cfg.yaml"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any(holds_open(p, LOCK) for p in pids_of(cfg_b)):
            time.sleep(0.01)
        assert any(holds_open(p, LOCK) for p in pids_of(cfg_b)), "B never reached the lock"
        time.sleep(0.3)
        assert not (root / "node0" / "venv").exists(), "B went past A's lock"
    finally:
        os.kill(frozen, signal.SIGCONT)
    ta.join(120)
    tb.join(120)
    (res_a, out_a), (res_b, out_b) = results["a"], results["b"]
    assert res_a.returncode == 0 and res_b.returncode == 0, res_a.output + res_b.output
    assert out_a["status"] == "ok" and out_b["status"] == "ok"
    tree = node_tree(root / "node0" / "venv")
    assert (root / "node0" / "venv" / "ok.txt").read_text() == "BBB\n"
    assert "BBB.txt" in tree and "AAA.txt" not in tree and "AAA" not in tree
    assert len([t for t in tree if t.startswith("BBB/")]) == 40
    assert sorted(os.listdir(root / "node0")) == ["venv"]  # the lock went with its holder
    assert set(res_b.nodes[0].tmp) == {"venv"} | {f"venv/{t}" for t in tree}


def test_a_transfer_that_cannot_get_the_lock_fails_clearly(run_nodes, python, tmp_path):
    root = tmp_path / "nodes"
    src = env_tar(tmp_path / "venv.tar", "OLD", nfiles=2)
    res, _ = run(run_nodes, python, 2, tmp_path, src=str(src), shared_root=str(root))
    assert res.returncode == 0
    new = env_tar(tmp_path / "new" / "venv.tar", "NEW", nfiles=2) \
        if (tmp_path / "new").mkdir() is None else None
    with open(root / "node1" / LOCK, "w") as fh:  # another transfer holds node1's lock
        fcntl.flock(fh, fcntl.LOCK_EX)
        res, results = run(run_nodes, python, 2, tmp_path, src=str(new), overwrite=True,
                           shared_root=str(root), extra=["transfer.timeout=2"])
    assert res.returncode != 0
    assert results["failed_hosts"] == ["node1"]
    err = results["per_node"][1]["error"]
    assert err.startswith("another transfer into /tmp/venv is still running (lock "
                          "/tmp/.venv.ezpz-lock held for 1s)"), err
    assert (root / "node1" / "venv" / "ok.txt").read_text() == "OLD\n"  # untouched
    assert (root / "node0" / "venv" / "ok.txt").read_text() == "NEW\n"
    for node in res.nodes:
        assert not [k for k in node.tmp if "ezpz-staging" in k or "ezpz-old" in k]


def test_overwrite_replaces_atomically_while_a_file_is_open(run_nodes, python, tmp_path):
    root = tmp_path / "nodes"
    old = env_tar(tmp_path / "venv.tar", "OLD", nfiles=3)
    res, _ = run(run_nodes, python, 2, tmp_path, src=str(old), shared_root=str(root))
    assert res.returncode == 0
    new = env_tar(tmp_path / "new" / "venv.tar", "NEW", nfiles=3) \
        if (tmp_path / "new").mkdir() is None else None
    held = open(root / "node1" / "venv" / "ok.txt")  # a process using the old env
    seen_missing = []
    stop = threading.Event()

    def watch():  # dst must never be absent, not even for an instant
        marker = root / "node1" / "venv" / ".ezpz" / "installed.json"
        while not stop.is_set():
            if not marker.exists():
                seen_missing.append(time.monotonic())

    w = threading.Thread(target=watch, daemon=True)
    w.start()
    try:
        res, results = run(run_nodes, python, 2, tmp_path, src=str(new), overwrite=True,
                           shared_root=str(root))
    finally:
        stop.set()
        w.join()
    assert res.returncode == 0, res.output
    assert held.read() == "OLD\n"  # the open file keeps working
    held.close()
    assert not seen_missing, "dst was missing during the replacement"
    for k in ("node0", "node1"):
        assert (root / k / "venv" / "ok.txt").read_text() == "NEW\n"
        assert not (root / k / "venv" / "OLD.txt").exists()
        assert sorted(os.listdir(root / k)) == ["venv"]


def test_rerun_skips_and_overwrite_delivers_again(run_nodes, python, tmp_path):
    root = tmp_path / "nodes"
    src = env_tar(tmp_path / "venv.tar", "SAME", nfiles=2)
    res, results = run(run_nodes, python, 2, tmp_path, src=str(src), shared_root=str(root))
    assert res.returncode == 0 and results["status"] == "ok"
    for k in ("node0", "node1"):
        (root / k / "venv" / "stray").write_text("changed since delivery")
    res, results = run(run_nodes, python, 2, tmp_path, src=str(src), shared_root=str(root))
    assert results["status"] == "skipped" and res.returncode == 0
    assert (root / "node0" / "venv" / "stray").exists()  # skipped: untouched
    res, results = run(run_nodes, python, 2, tmp_path, src=str(src), overwrite=True,
                       shared_root=str(root))
    assert res.returncode == 0 and results["status"] == "ok"
    assert {p["status"] for p in results["per_node"]} == {"ok"}
    for k in ("node0", "node1"):
        assert not (root / k / "venv" / "stray").exists()  # delivered again
        assert (root / k / "venv" / "ok.txt").read_text() == "SAME\n"
