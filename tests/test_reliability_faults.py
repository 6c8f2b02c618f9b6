"""Faults during a transfer, on simulated nodes with real mpiexec.

A rank SIGKILLed mid-transfer (non-root: the others go on without it; root: the others give
up within ``transfer.timeout``), SIGTERM to the launcher, a node's /tmp filling up
mid-extraction, the up-front space check from the manifest, keep_archive. In each case the
launcher exits non-zero (the subprocess timeout only proves that nothing hangs), and no node
keeps a partial dst or a staging directory (a killed rank's sentinel removes its own). (The root's source failing mid-read is
tests/test_transfer.py::test_root_read_failing_midway_stops_every_rank.)
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

import simnodes
from test_transfer import cfgfile, run

pytestmark = pytest.mark.simnodes

BIG = 512 << 20  # sparse: cheap to create and to read; the transfer is stopped long before


def staging_bytes(pid: int) -> int:
    """Bytes already in a staging file in that process's node /tmp (0 when none yet)."""
    tmp = f"/proc/{pid}/root/tmp"
    try:
        return max((os.stat(os.path.join(tmp, e)).st_size for e in os.listdir(tmp)
                    if "ezpz-staging" in e), default=0)
    except OSError:
        return 0


def start(tmp_path: Path, n: int, *, mpiexec_args=(), timeout: float = 2, **transfer):
    """Start the worker on n simulated nodes; returns (Popen, config file, output dir)."""
    src = tmp_path / "big.bin"
    with open(src, "wb") as fh:
        fh.truncate(BIG)
    cfg = cfgfile(tmp_path, src=str(src), decompress=False, chunk_size="64KiB",
                  timeout=timeout, **transfer)
    out = tmp_path / "nodes-out"
    out.mkdir()
    env = simnodes.sim_env(out, capture=True, shared_root=str(tmp_path / "nodes"))
    cmd = [simnodes.mpiexec_path(), *mpiexec_args, "-n", str(n), simnodes.SIMNODE,
           sys.executable, "-m", "ezpz.transfer", "--config-file", str(cfg),
           "--run-dir", str(tmp_path / "run")]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    return proc, cfg, out


def mid_transfer(proc, cfg: Path, n: int) -> dict[int, int]:
    """Wait until node1 has received data and every rank is up; return the pids."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        pids = simnodes.worker_pids(cfg)
        if len(pids) == n and staging_bytes(pids[1]) > 0:
            return pids
        time.sleep(0.002)
    proc.kill()
    raise AssertionError("the transfer was never seen in flight")


def leftovers(node) -> list[str]:
    return sorted(k for k in node.tmp if k != ".big.bin.ezpz-lock")


# MPICH's hydra SIGKILLs every rank when one dies; -disable-auto-cleanup leaves the
# survivors running, so that they have to notice on their own.
NO_CLEANUP = ["-disable-auto-cleanup"]


def wait_clean(node_dir: Path, seconds: float = 10) -> list[str]:
    """The transfer's leftovers in a node's /tmp once its sentinel had time to act."""
    deadline = time.monotonic() + seconds
    while True:
        left = sorted(e for e in os.listdir(node_dir) if "ezpz-staging" in e
                      or "ezpz-spill" in e or "ezpz-partial" in e)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


@pytest.mark.parametrize("victim", [1, 0], ids=["non-root", "root"])
def test_rank_sigkilled_mid_transfer(run_nodes, python, tmp_path, victim):
    proc, cfg, out = start(tmp_path, 3, mpiexec_args=NO_CLEANUP)
    pids = mid_transfer(proc, cfg, 3)
    os.kill(pids[0], signal.SIGSTOP)  # freeze the stream so the kill lands mid-transfer
    os.kill(pids[victim], signal.SIGKILL)
    if victim != 0:
        os.kill(pids[0], signal.SIGCONT)
    output, _ = proc.communicate(timeout=120)  # liveness: the launcher returns
    assert proc.returncode != 0, output
    nodes = simnodes.collect(out, 3)
    for node in nodes:
        if node.rank == victim:
            assert node.rc == 128 + signal.SIGKILL
            continue
        assert node.rc == 1, node.output
        if victim == 0:  # rank 0 cannot be replaced: the others give up and clean up
            assert ("timed out after 2s" in node.output  # waiting for the next chunk
                    or "waiting for rank 0 to repair the broadcast (after 2s" in node.output
                    or "communication failed" in node.output), node.output
            assert leftovers(node) == [], node.tmp  # no partial dst, no staging
        else:  # the others go on without node1, install, and the run fails on node1
            assert node.tmp["big.bin"]["size"] == BIG, node.tmp
            assert [k for k in node.tmp if "ezpz-staging" in k] == [], node.tmp
    if victim != 0:
        assert "left out of the broadcast (no answer): node1" in nodes[0].output
        assert "node1  failed" in nodes[0].output and "no answer within" in nodes[0].output
    # the killed rank could not clean up; its sentinel did
    assert wait_clean(tmp_path / "nodes" / f"node{victim}") == []
    small = tmp_path / "small.bin"
    small.write_bytes(b"payload")
    res, results = run(run_nodes, python, 3, tmp_path, src=str(small), dst="/tmp/big.bin",
                       decompress=False, shared_root=str(tmp_path / "nodes"), timeout=60,
                       overwrite=True)
    assert res.returncode == 0, res.output
    for node in res.nodes:
        assert leftovers(node) == [".big.bin.ezpz-installed.json", "big.bin"], node.tmp
        assert node.tmp["big.bin"]["size"] == 7


def test_sigterm_to_the_launcher_cleans_every_node(tmp_path):
    # (with hydra's auto-cleanup, the first rank to exit gets the others SIGKILLed, which
    # nothing can clean up after: the next transfer into dst removes what they left)
    # (a long timeout: a loaded machine's stall must not start a recovery in this test)
    proc, cfg, out = start(tmp_path, 3, mpiexec_args=NO_CLEANUP, timeout=60)
    mid_transfer(proc, cfg, 3)
    proc.send_signal(signal.SIGTERM)  # a cancelled job, Ctrl-C on ezpz-yeet-env
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode != 0, output
    for node in simnodes.collect(out, 3):
        assert node.rc == 128 + signal.SIGTERM, node.output
        assert "received signal 15; removing staging and exiting" in node.output
        assert leftovers(node) == [], node.tmp


def _tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w") as tf:
        for name, data in members:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    return path


def test_tmp_filling_up_mid_extraction(run_nodes, python, tmp_path):
    # 3000 small files declare ~300 KB (the up-front checks pass) but take a page each
    src = _tar(tmp_path / "venv.tar", [(f"venv/f{i:04d}", b"x" * 100) for i in range(3000)])
    res, results = run(run_nodes, python, 2, tmp_path, src=str(src), tmp_size="2m",
                       timeout=60)
    assert res.returncode != 0
    for p in results["per_node"]:
        assert "No space left on device" in p["error"] and "member 'venv/f" in p["error"]
        assert "free space or choose another transfer.dst" in p["error"]
    for node in res.nodes:
        assert node.rc == 1
        assert set(node.tmp) == set(), sorted(node.tmp)[:5]


def test_up_front_space_check_from_the_manifest(run_nodes, python, tmp_path):
    manifest = {"kind": "data", "name": "venv", "prefix": "/nowhere", "total_bytes": 1 << 40}
    src = _tar(tmp_path / "venv.tar", [("venv/.ezpz/manifest.json", json.dumps(manifest).encode()),
                                       ("venv/a", b"a")])
    res, results = run(run_nodes, python, 2, tmp_path, src=str(src), tmp_size="8m", timeout=60)
    assert res.returncode != 0
    for p, host in zip(results["per_node"], ["node0", "node1"]):
        assert p["error"].startswith(f"not enough space in /tmp on {host}: need 1.0 TiB"), p
        assert "free space or choose another transfer.dst" in p["error"]
    assert results["phases"]["broadcast"] == 0  # refused before any data was sent
    for node in res.nodes:
        assert node.rc == 1 and set(node.tmp) == set(), node.tmp


def test_keep_archive_only_on_success(run_nodes, python, tmp_path):
    src = _tar(tmp_path / "venv.tar", [("venv/a", b"a" * 5000), ("venv/b", b"b")])
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    res, results = run(run_nodes, python, 2, tmp_path, src=str(src), keep_archive=True,
                       chunk_size="4KiB", timeout=60)
    assert res.returncode == 0, res.output
    for node in res.nodes:
        assert node.tmp["venv.tar"]["sha256"] == digest
        assert node.tmp["venv/a"]["size"] == 5000
        assert not [k for k in node.tmp if "ezpz-partial" in k or "ezpz-staging" in k]
    bad = tmp_path / "bad" / "venv.tar"
    bad.parent.mkdir()
    bad.write_bytes(src.read_bytes()[:3000])
    res, results = run(run_nodes, python, 2, tmp_path, src=str(bad), keep_archive=True,
                       chunk_size="1KiB", timeout=60)
    assert res.returncode != 0
    for node in res.nodes:
        assert set(node.tmp) == set(), node.tmp  # no partial archive copy, no lock
