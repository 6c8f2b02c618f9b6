"""The transfer at scale and with faults, on simulated nodes with real mpiexec.

- one node whose extraction is slow does not pace the others: the broadcast goes on while it
  extracts from its spill file, and the others finish first;
- 16 nodes, one with a /tmp that fills up, one rank SIGKILLed and one SIGSTOPped beyond the
  timeout, all in one run: the others finish, the run ends ``partial`` with
  ``min_success_fraction`` and the failed-hosts file names exactly those three nodes;
- a rank stopped before MPI starts holds no one: the other ranks' sentinels end them.

The assertions are on what the run recorded (statuses, per-node timelines, files), never on
wall-clock durations; the subprocess timeouts only prove that nothing hangs.
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
from simnodes import worker_pids

pytestmark = [pytest.mark.simnodes, pytest.mark.slow]


def many_files(path: Path, count: int, size: int, top: str = "env") -> Path:
    """A tar of ``count`` small files: extraction costs far more CPU than receiving."""
    with tarfile.open(path, "w") as tf:
        for i in range(count):
            info = tarfile.TarInfo(f"{top}/d{i % 64:02d}/f{i:05d}")
            data = os.urandom(size)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def config(tmp_path: Path, **transfer) -> Path:
    path = tmp_path / "cfg.yaml"
    transfer.setdefault("dst", "/tmp/env")  # the trees and staging entries the checks look at
    path.write_text("transfer:\n" + "".join(f"  {k}: {json.dumps(v)}\n"
                                             for k, v in transfer.items()))
    return path


def worker(cfg: Path, run_dir: Path) -> list[str]:
    return [sys.executable, "-m", "ezpz.transfer", "--config-file", str(cfg), "--run-dir",
            str(run_dir)]


def tree_files(node, top: str = "env") -> int:
    return sum(1 for k, v in node.tmp.items() if k.startswith(top + "/") and v["type"] == "file"
               and not k.startswith(f"{top}/.ezpz/"))


def debris(node) -> list[str]:
    return sorted(k for k in node.tmp if any(d in k for d in
                                             ("ezpz-staging", "ezpz-spill", "ezpz-partial")))


# --------------------------------------------------------------------------------------
# a slow node
# --------------------------------------------------------------------------------------
def test_slow_node_does_not_pace_the_others(simnodes_ok, tmp_path):
    # node2's extraction reads at most 1 MB/s (the test-only EZPZ_TEST_SLOW_EXTRACT); its
    # receiving is not slowed. (A CPU limit on the whole process would not do: the kernel's
    # CPU quota pauses every thread of the node once it is used up, the receiver too, and
    # then the node cannot receive either.)
    src = many_files(tmp_path / "env.tar", 20000, 200)
    cfg = config(tmp_path, src=str(src), chunk_size="256KiB", timeout=120)
    out = tmp_path / "out"
    out.mkdir()
    env = simnodes.sim_env(out, capture=True)
    env["EZPZ_TEST_SLOW_EXTRACT"] = "node2:1"
    cmd = [simnodes.mpiexec_path(), "-n", "4", simnodes.SIMNODE, *worker(cfg, tmp_path / "run")]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        output, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    nodes = simnodes.collect(out, 4)
    assert proc.returncode == 0, output + "\n".join(n.output[-2000:] for n in nodes)
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    by_host = {p["host"]: p for p in results["per_node"]}
    slow = by_host.pop("node2")
    assert slow["status"] == "ok" and all(p["status"] == "ok" for p in by_host.values())
    # the slow node had received everything while much was still to be extracted: what it
    # could not keep in its receive buffers went to its spill file; the broadcast went on
    assert slow["spilled"] >= results["archive"]["bytes"] // 4, slow
    assert slow["timeline"]["stream_end"] < slow["timeline"]["extract_end"]
    # the broadcast (rank 0's end of the stream) and every other node's install were done
    # before the slow node finished extracting
    assert by_host["node0"]["timeline"]["stream_end"] < slow["timeline"]["extract_end"]
    for host, p in by_host.items():
        # on 2 shared cores another node's extraction may fall behind the broadcast too (and
        # spill): never as far as the slow one
        assert p["spilled"] < slow["spilled"], (host, p)
        assert p["timeline"]["done"] < slow["timeline"]["extract_end"], (host, p, slow)
    for node in nodes:
        assert tree_files(node) == 20000, node.host
        assert debris(node) == [], sorted(node.tmp)[:10]


def _in_flight(proc: subprocess.Popen, cfg: Path, n: int) -> dict[int, int]:
    """Wait until every rank is up and node1 has extracted something; return the pids."""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        pids = worker_pids(cfg)
        if len(pids) == n:
            tmp = f"/proc/{pids[1]}/root/tmp"
            try:
                staging = [e for e in os.listdir(tmp) if "ezpz-staging" in e]
                if staging and os.listdir(os.path.join(tmp, staging[0])):
                    return pids
            except OSError:
                pass
        time.sleep(0.01)
    proc.kill()
    raise AssertionError("the transfer was never seen in flight:\n" + (proc.communicate()[0]
                                                                      or ""))


def test_sixteen_nodes_full_tmp_killed_rank_and_stopped_node(simnodes_ok, tmp_path):
    n, full, killed, stopped = 16, 12, 5, 9
    src = many_files(tmp_path / "env.tar", 4000, 2000)
    cfg = config(tmp_path, src=str(src), chunk_size="64KiB", timeout=10,
                 min_success_fraction=0.8)
    out = tmp_path / "out"
    out.mkdir()
    env = simnodes.sim_env(out, capture=True, small_tmp=f"node{full}:256k")
    cmd = [simnodes.mpiexec_path(), "-disable-auto-cleanup", "-n", str(n), simnodes.SIMNODE,
           *worker(cfg, tmp_path / "run")]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    pids = _in_flight(proc, cfg, n)
    os.kill(pids[killed], signal.SIGKILL)
    os.kill(pids[stopped], signal.SIGSTOP)
    output, _ = proc.communicate(timeout=300)  # liveness: the launcher returns
    nodes = simnodes.collect(out, n)
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    expected = [f"node{full}", f"node{killed}", f"node{stopped}"]
    expected.sort(key=lambda h: int(h[4:]))
    assert results["status"] == "partial" and results["exit_code"] == 0, output
    assert results["failed_hosts"] == expected
    errors = {p["host"]: p["error"] for p in results["per_node"] if p["error"]}
    assert "No space left on device" in errors[f"node{full}"]
    for node in nodes:
        if node.rank == killed:
            assert node.rc == 128 + signal.SIGKILL
        elif node.rank == stopped:  # its sentinel ended it: SIGTERM, run after SIGCONT
            assert node.rc == 128 + signal.SIGTERM, node.output
            assert "no sign of life from the worker" in node.output
            assert "received signal 15; removing staging" in node.output
        else:
            assert node.rc == 0, node.output
        # nobody leaves staging or spill files, not even the killed rank (its sentinel)
        assert debris(node) == [], (node.rank, sorted(node.tmp)[:10])
        if node.rank in (killed, stopped, full):
            assert "env" not in node.tmp and "env.failed-hosts" not in node.tmp
            continue
        assert tree_files(node) == 4000, node.rank
    listed = "".join(h + "\n" for h in expected).encode()
    for node in nodes:
        if node.rank not in (killed, stopped, full):
            assert node.tmp["env.failed-hosts"]["sha256"] == hashlib.sha256(listed).hexdigest()


# --------------------------------------------------------------------------------------
# a rank stopped before MPI starts
# --------------------------------------------------------------------------------------
def test_rank_stopped_at_start_holds_no_one(simnodes_ok, tmp_path):
    src = many_files(tmp_path / "env.tar", 10, 100)
    cfg = config(tmp_path, src=str(src), timeout=3)
    out = tmp_path / "out"
    out.mkdir()
    env = simnodes.sim_env(out, capture=True)
    argv = worker(cfg, tmp_path / "run")
    stop_first = ["/bin/sh", "-c", 'kill -STOP $$; exec "$@"', "sh", *argv]
    cmd = [simnodes.mpiexec_path(), "-n", "1", simnodes.SIMNODE, *argv, ":",
           "-n", "1", simnodes.SIMNODE, *stop_first, ":", "-n", "1", simnodes.SIMNODE, *argv]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        output, _ = proc.communicate(timeout=120)  # liveness: the launcher returns
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    nodes = simnodes.collect(out, 3)
    # MPI start-up waited for rank 1: a sentinel ended its rank, and hydra then ended the
    # rest (the stopped rank too); nobody waited for rank 1 to be continued
    ended = [n for n in (nodes[0], nodes[2]) if n.rc == 128 + signal.SIGKILL]
    assert ended, (output, [n.output for n in nodes])
    # (transfer.timeout=3, but a sentinel never takes less than 5 s of silence)
    assert any("did not get through start-up within 5s" in n.output for n in ended), \
        [n.output for n in ended]
    for node in nodes:
        assert node.rc in (None, 128 + signal.SIGKILL), (node.rank, node.rc, node.output)
        assert not node.tmp or set(node.tmp) <= {".env.ezpz-lock"}, node.tmp
    assert not (tmp_path / "run" / "results.json").exists()
