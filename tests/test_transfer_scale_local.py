"""Lost nodes and many nodes, over LocalComm (ranks as threads; see test_transfer_local.py).

- a node killed mid-stream is left out; the others finish and the run is partial;
- a node stopped mid-stream is left out; when it wakes up it fails cleanly;
- rank 0 lost: every other node gives up within the timeout and cleans up;
- 200 nodes: rank 0 holds every node's status and receives O(1) mail per node, every other
  node receives O(1) mail whatever the number of nodes; the console shows a summary;
- 50 nodes, 7 of them failing: the failed-hosts file lists exactly those.
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
import time
from pathlib import Path

import pytest

from ezpz.config import Backend, Status
from ezpz.transfer import WorkerSpec, run_transfer
from ezpz.transfer.comm.local import Killed, LocalWorld
from test_transfer_local import Exited, _fatal, _staging_left, _tree, make_archive


def start_job(world: LocalWorld, spec_for_host, run_dir: Path
              ) -> tuple[dict[int, object], list[threading.Thread]]:
    out: dict[int, object] = {}

    def rank(r: int) -> None:
        try:
            out[r] = run_transfer(spec_for_host(world.hosts[r]),
                                  run_dir=str(run_dir) if r == 0 else None,
                                  comm=world.comm(r), fatal=_fatal)
        except BaseException as exc:  # noqa: BLE001 - the test looks at it
            out[r] = exc

    threads = [threading.Thread(target=rank, args=(r,), daemon=True) for r in range(world.size)]
    for t in threads:
        t.start()
    return out, threads


def join(threads: list[threading.Thread], skip: set[int] = frozenset(), timeout: float = 120
         ) -> None:
    deadline = time.monotonic() + timeout
    for r, t in enumerate(threads):
        if r in skip:
            continue
        t.join(max(0.1, deadline - time.monotonic()))
        assert not t.is_alive(), f"rank {r} did not finish"


@pytest.fixture
def job(tmp_path):
    files = {f"f{i}.txt": os.urandom(3000 + i) for i in range(40)}
    archive = make_archive(tmp_path / "env.tar", files)
    base = WorkerSpec(src=str(archive), dst=str(tmp_path / "nodes" / "X" / "env"),
                      backend=Backend.mpi, chunk_bytes=4096, depth=2, timeout=2.0)

    def spec_for(host: str, **changes) -> WorkerSpec:
        return dataclasses.replace(base, dst=str(tmp_path / "nodes" / host / "env"), **changes)

    return files, spec_for, tmp_path


def test_killed_node_is_left_out_and_the_run_is_partial(job):
    files, spec_for, tmp = job
    world = LocalWorld(["a", "b", "c", "d"], timeout=2.0)
    world.kill(2, at=3)  # node c dies inside its third data broadcast

    def spec(host: str) -> WorkerSpec:
        return spec_for(host, min_success_fraction=0.75)

    out, threads = start_job(world, spec, tmp / "run")
    join(threads)
    assert isinstance(out[2], Killed)
    result = out[0]
    assert result.status is Status.partial and result.exit_code == 0, out
    assert result.failed_hosts == ["c"]
    lost = result.per_node[2]
    assert "no answer within 2s after the broadcast stalled for 2s" in lost.error
    for host in "abd":
        assert _tree(tmp / "nodes" / host / "env") == files
        assert (tmp / "nodes" / host / "env.failed-hosts").read_text() == "c\n"
    saved = json.loads((tmp / "run" / "results.json").read_text())
    assert saved["status"] == "partial" and saved["failed_hosts"] == ["c"]
    assert [p["host"] for p in saved["per_node"]] == ["a", "b", "c", "d"]


def test_stopped_node_is_left_out_and_fails_cleanly_when_it_wakes(job):
    files, spec_for, tmp = job
    world = LocalWorld(["a", "b", "c"], timeout=2.0)
    world.freeze(1, at=2)  # node b stops inside its second data broadcast

    def spec(host: str) -> WorkerSpec:
        return spec_for(host, min_success_nodes=2)

    out, threads = start_job(world, spec, tmp / "run")
    join(threads, skip={1})
    result = out[0]
    assert result.status is Status.partial and result.failed_hosts == ["b"], out
    assert _tree(tmp / "nodes" / "c" / "env") == files
    world.thaw(1)  # it wakes up long after it was left out
    join(threads)
    assert out[1] is None  # a partial run: every rank exits 0, the failure is reported
    assert not (tmp / "nodes" / "b" / "env").exists()
    assert _staging_left(tmp / "nodes" / "b") == []


def test_lost_root_fails_every_node_within_the_timeout(job):
    files, spec_for, tmp = job
    world = LocalWorld(["a", "b", "c"], timeout=1.0)
    world.kill(0, at=3)

    def spec(host: str) -> WorkerSpec:
        return spec_for(host, timeout=1.0)

    out, threads = start_job(world, spec, tmp / "run")
    join(threads)
    assert isinstance(out[0], Killed)
    for r, host in ((1, "b"), (2, "c")):
        assert isinstance(out[r], Exited) and out[r].code == 1, out
        assert not (tmp / "nodes" / host / "env").exists()
        assert _staging_left(tmp / "nodes" / host) == []
    assert not (tmp / "run" / "results.json").exists()


@pytest.mark.slow
def test_two_hundred_nodes_cost_rank_0_o_n_and_the_others_o_1(job, capsys):
    files, spec_for, tmp = job
    n = 200
    small = make_archive(tmp / "small.tar", {"a.txt": b"a" * 100, "b.txt": b"b" * 50})

    def spec(host: str) -> WorkerSpec:
        return dataclasses.replace(spec_for(host), src=str(small), timeout=60.0)

    world = LocalWorld([f"n{i:03d}" for i in range(n)], timeout=60.0)
    out, threads = start_job(world, spec, tmp / "run")
    join(threads, timeout=300)
    result = out[0]
    assert result.status is Status.ok and result.nodes == n, [
        o for o in out.values() if o is not None][:3]
    saved = json.loads((tmp / "run" / "results.json").read_text())
    assert len(saved["per_node"]) == n and saved["failed_hosts"] == []
    # mail: rank 0 gets a few frames per node; every other node a few frames in all
    others = [world.frames_in[r] for r in range(1, n)]
    assert max(others) <= 4, max(others)
    assert world.frames_in[0] <= 6 * n, world.frames_in[0]
    printed = capsys.readouterr().out
    assert f"nodes: {n} ok" in printed and "fastest: " in printed and "slowest: " in printed
    assert "n137  ok" not in printed  # no row per node
    assert len(printed.strip().splitlines()) < 12


def test_failed_hosts_of_a_large_partial_run_are_exact(job):
    files, spec_for, tmp = job
    hosts = [f"h{i:02d}" for i in range(50)]
    bad = {"h03", "h11", "h12", "h29", "h40", "h41", "h49"}
    for h in bad:
        (tmp / "nodes" / h).mkdir(parents=True)
        (tmp / "nodes" / h / "env").write_text("in the way")

    def spec(host: str) -> WorkerSpec:
        return spec_for(host, min_success_fraction=0.8, timeout=60.0)

    world = LocalWorld(hosts, timeout=60.0)
    out, threads = start_job(world, spec, tmp / "run")
    join(threads, timeout=300)
    result = out[0]
    assert result.status is Status.partial, out[0]
    assert result.failed_hosts == sorted(bad)
    for h in hosts:
        listed = tmp / "nodes" / h / "env.failed-hosts"
        if h in bad:
            assert not listed.exists() and (tmp / "nodes" / h / "env").read_text() == "in the way"
        else:
            assert listed.read_text() == "".join(f"{b}\n" for b in sorted(bad))
