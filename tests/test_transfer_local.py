"""The transfer's orchestration over LocalComm: ranks as threads of this process.

Every phase runs for real (plan, lock, staging, the broadcast loop, extraction, install,
status exchange); only the communicator is in-process. Each simulated node gets its own dst
(the threads share one filesystem), so what one node wrote is checked on its own directory.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import tarfile
import threading
from pathlib import Path

import pytest

from ezpz.config import Backend, Status
from ezpz.errors import ConfigError, TransferError
from ezpz.transfer import WorkerSpec, run_transfer
from ezpz.transfer.comm.local import LocalWorld


class Exited(BaseException):
    """What the worker's fatal exit raises here instead of ending the process."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def _fatal(code: int) -> None:
    raise Exited(code)


def make_archive(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as tf:
        info = tarfile.TarInfo("env")
        info.type = tarfile.DIRTYPE
        info.mode = 0o755
        tf.addfile(info)
        for name, data in files.items():
            info = tarfile.TarInfo(f"env/{name}")
            info.size = len(data)
            info.mode = 0o644
            tf.addfile(info, io.BytesIO(data))
    return path


def run_job(hosts: list[str], spec_for_host, run_dir: Path, *, timeout: float = 10.0,
            only: set[int] | None = None) -> dict[int, object]:
    """Run one rank per entry of ``hosts`` as threads; returns rank -> result or exception."""
    world = LocalWorld(hosts, timeout=timeout)
    out: dict[int, object] = {}

    def rank(r: int) -> None:
        try:
            out[r] = run_transfer(spec_for_host(hosts[r]), run_dir=str(run_dir) if r == 0 else None,
                                  comm=world.comm(r), fatal=_fatal)
        except BaseException as exc:  # noqa: BLE001 - the test looks at it
            out[r] = exc

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(len(hosts))
               if only is None or r in only]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
        assert not t.is_alive(), "a rank did not finish"
    return out


@pytest.fixture
def job(tmp_path):
    files = {f"f{i}.txt": os.urandom(3000 + i) for i in range(20)}
    archive = make_archive(tmp_path / "env.tar", files)
    base = WorkerSpec(src=str(archive), dst=str(tmp_path / "nodes" / "X" / "env"),
                      backend=Backend.mpi, chunk_bytes=4096, depth=2, timeout=10.0)

    def spec_for(host: str, **changes) -> WorkerSpec:
        return dataclasses.replace(base, dst=str(tmp_path / "nodes" / host / "env"), **changes)

    return files, spec_for, tmp_path


def _tree(dst: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in dst.iterdir() if p.is_file()}


def _staging_left(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if ".ezpz-staging-" in p.name] if parent.is_dir() else []


def test_all_nodes_ok_with_two_ranks_on_one_node(job):
    files, spec_for, tmp = job
    hosts = ["a", "a", "b", "c"]
    out = run_job(hosts, spec_for, tmp / "run")
    result = out[0]
    assert result.status is Status.ok and result.exit_code == 0, out
    assert [n.host for n in result.per_node] == ["a", "b", "c"]
    assert all(out[r] is None for r in (1, 2, 3)), out
    for host in "abc":
        assert _tree(tmp / "nodes" / host / "env") == files
    saved = json.loads((tmp / "run" / "results.json").read_text())
    assert saved["status"] == "ok" and saved["nodes"] == 3 and saved["ranks"] == 4


def test_one_node_fails_and_the_run_fails_everywhere(job):
    files, spec_for, tmp = job
    (tmp / "nodes" / "b").mkdir(parents=True)
    (tmp / "nodes" / "b" / "env").write_text("a file where the env should go")
    out = run_job(["a", "b", "c"], spec_for, tmp / "run")
    result = out[0]
    assert result.status is Status.failed and result.exit_code == 1
    failed = {n.host: n.error for n in result.per_node if n.status is Status.failed}
    assert list(failed) == ["b"] and "exists and is not a directory" in failed["b"]
    assert isinstance(out[1], TransferError) and "exists and is not a directory" in str(out[1])
    assert isinstance(out[2], TransferError) and "b" in str(out[2])
    # the good nodes installed; the bad one kept what it had and left no staging behind
    assert _tree(tmp / "nodes" / "c" / "env") == files
    assert (tmp / "nodes" / "b" / "env").read_text() == "a file where the env should go"
    assert _staging_left(tmp / "nodes" / "b") == []


def test_partial_success_lists_the_failed_host(job):
    files, spec_for, tmp = job
    (tmp / "nodes" / "c").mkdir(parents=True)
    (tmp / "nodes" / "c" / "env").write_text("in the way")

    def spec(host: str) -> WorkerSpec:
        return spec_for(host, min_success_fraction=0.5)

    out = run_job(["a", "b", "c"], spec, tmp / "run")
    result = out[0]
    assert result.status is Status.partial and result.exit_code == 0
    assert result.failed_hosts == ["c"]
    for host in "ab":
        listed = tmp / "nodes" / host / "env.failed-hosts"
        assert listed.read_text() == "c\n"
    assert not (tmp / "nodes" / "c" / "env.failed-hosts").exists()


def test_root_read_failing_midway_aborts_every_node(job, monkeypatch):
    files, spec_for, tmp = job
    from ezpz.transfer import stream

    real_open = stream.open_source

    class Failing(io.RawIOBase):
        def __init__(self, path: str) -> None:
            self.fh = real_open(path)
            self.done = 0

        def readinto(self, b):
            if self.done > 20000:
                raise OSError(5, "Input/output error")
            n = self.fh.readinto(b)
            self.done += n
            return n

        def close(self) -> None:
            self.fh.close()
            super().close()

    monkeypatch.setattr(stream, "open_source", Failing)
    out = run_job(["a", "b"], spec_for, tmp / "run")
    result = out[0]
    assert result.status is Status.failed
    errors = {n.host: n.error for n in result.per_node}
    assert "Input/output error" in errors["a"]
    assert "rank 0 aborted the transfer" in errors["b"] and "Input/output error" in errors["b"]
    for host in "ab":
        assert not (tmp / "nodes" / host / "env").exists()
        assert _staging_left(tmp / "nodes" / host) == []


def test_a_missing_rank_times_out_and_the_others_clean_up(job):
    files, spec_for, tmp = job

    def spec(host: str) -> WorkerSpec:
        return spec_for(host, timeout=1.0)

    # rank 2 (node c) never starts: the others give up within the timeout and exit non-zero
    out = run_job(["a", "b", "c"], spec, tmp / "run", timeout=1.0, only={0, 1})
    for r in (0, 1):
        assert isinstance(out[r], Exited) and out[r].code == 1, out
    for host in "ab":
        assert not (tmp / "nodes" / host / "env").exists()
        assert _staging_left(tmp / "nodes" / host) == []
    assert not (tmp / "run" / "results.json").exists()


def test_bad_src_is_the_same_usage_error_on_every_rank(job):
    files, spec_for, tmp = job

    def spec(host: str) -> WorkerSpec:
        return dataclasses.replace(spec_for(host), src=str(tmp / "missing.tar"))

    out = run_job(["a", "a", "b"], spec, tmp / "run")
    for r in range(3):
        assert isinstance(out[r], ConfigError), out
        assert "transfer.src: cannot read" in str(out[r])
    assert not (tmp / "nodes").exists()


def test_plain_venv_archive_relocated_from_the_extractions_hints(tmp_path, caplog):
    """No manifest: the files holding the old prefix are found while extracting, and only
    those are rewritten on every node (no second pass over the tree)."""
    import logging

    old = "/build/envs/env"
    files = {"pyvenv.cfg": b"home = /usr/bin\ncommand = /usr/bin/python3 -m venv " + old.encode()
             + b"\n", "bin/activate": b"VIRTUAL_ENV='" + old.encode() + b"'\nexport VIRTUAL_ENV\n",
             "lib/data.txt": os.urandom(5000), "lib/other.txt": b"no prefix\n"}
    archive = make_archive(tmp_path / "venv.tar", files)
    base = WorkerSpec(src=str(archive), dst="", backend=Backend.mpi, chunk_bytes=4096, depth=2,
                      timeout=30.0)
    caplog.set_level(logging.INFO, logger="ezpz")
    out = run_job(["a", "b"], lambda h: dataclasses.replace(
        base, dst=str(tmp_path / "nodes" / h / "env")), tmp_path / "run")
    assert out[0].status is Status.ok, out
    for host in "ab":
        dst = tmp_path / "nodes" / host / "env"
        assert (dst / "bin" / "activate").read_bytes() == \
            b"VIRTUAL_ENV='" + str(dst).encode() + b"'\nexport VIRTUAL_ENV\n"
        assert (dst / "lib" / "data.txt").read_bytes() == files["lib/data.txt"]
    for node in out[0].per_node:  # the timeline the benchmark splits start-up and teardown by
        tl = node.timeline
        assert tl["comm"] <= tl["stream_end"] <= tl["extract_end"] <= tl["done"], tl
    msgs = [r.getMessage() for r in caplog.records]
    assert sum("(files found while extracting)" in m for m in msgs) == 2, msgs
    assert not any("scanning every file" in m for m in msgs)


def test_a_slow_extraction_spills_only_where_other_nodes_wait(job, monkeypatch):
    """Behind the stream, a leader spills (the broadcast goes on for the others); rank 0 alone
    never does: nobody waits for its broadcast, and a copy through /tmp would only cost."""
    files, spec_for, tmp = job
    monkeypatch.setenv("EZPZ_TEST_SLOW_EXTRACT", "b:0.05")  # 50 kB/s: far behind the stream
    two = run_job(["a", "b"], spec_for, tmp / "two")[0]
    assert two.status is Status.ok, two
    spilled = {n.host: n.spilled for n in two.per_node}
    assert spilled["b"] > 0, spilled
    monkeypatch.setenv("EZPZ_TEST_SLOW_EXTRACT", "c:0.05")
    alone = run_job(["c"], spec_for, tmp / "one")[0]
    assert alone.status is Status.ok, alone
    assert [n.spilled for n in alone.per_node] == [0]
    assert _tree(tmp / "nodes" / "c" / "env") == _tree(tmp / "nodes" / "b" / "env")
