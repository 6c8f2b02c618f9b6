"""The pieces behind the decoupled broadcast, the status exchange and the sentinel:
the backlog and its spill file, mail frames, the summary of many nodes, progress."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from ezpz.config import Status
from ezpz.extract import Aborted
from ezpz.transfer import progress
from ezpz.transfer.backlog import Backlog
from ezpz.transfer.results import LIST_FAILED, TABLE_ROWS, summary, to_json
from ezpz.transfer.spec import NodeStatus, TransferResult
from ezpz.transfer.wire import FRAME, MAX_MESSAGE, Assembler, Control, Flag, Kind, frames


# --------------------------------------------------------------------------------------
# backlog
# --------------------------------------------------------------------------------------
def _chunks(n: int, size: int) -> list[bytes]:
    return [os.urandom(size) for _ in range(n)]


def test_backlog_spills_beyond_its_cap_and_reads_back_in_order(tmp_path):
    bl = Backlog(cap=2, spill_dir=str(tmp_path), spill_name="env")
    released: list[int] = []
    data = _chunks(10, 5000)
    for i, c in enumerate(data):  # the reader has not read anything yet: nothing blocks
        bl.put(c, release=lambda i=i: released.append(i))
    bl.close_input()
    # two chunks wait in their buffers; the other eight were written out and released
    assert released == list(range(2, 10))
    assert bl.spilled == 8 * 5000 and bl.peak == 10 * 5000
    assert os.listdir(tmp_path) == []  # the spill file was unlinked at once
    out = io.BytesIO()
    buf = bytearray(777)
    while n := bl.readinto(buf):
        out.write(buf[:n])
    assert out.getvalue() == b"".join(data)
    assert sorted(released) == list(range(10)) and bl.consumed == 50000
    bl.close()


def test_backlog_gives_the_spill_space_back_when_the_reader_catches_up(tmp_path):
    bl = Backlog(cap=1, spill_dir=str(tmp_path))
    for c in _chunks(4, 4096):
        bl.put(c, release=lambda: None)
    assert bl._fd is not None and os.fstat(bl._fd).st_size == 3 * 4096
    buf = bytearray(4096)
    for _ in range(4):
        assert bl.readinto(buf) == 4096
    bl.put(b"x" * 10, release=lambda: None)  # in memory again: the reader caught up
    assert bl.readinto(buf) == 10
    assert os.fstat(bl._fd).st_size == 0
    bl.close()


def test_backlog_without_a_spill_place_waits_for_the_reader(tmp_path, caplog):
    bl = Backlog(cap=1, spill_dir=str(tmp_path / "missing"))
    bl.put(b"a" * 100, release=lambda: None)
    with caplog.at_level(logging.WARNING, logger="ezpz.transfer.backlog"), \
            pytest.raises(TimeoutError, match="did not keep up"):
        bl.put(b"b" * 100, release=lambda: None, timeout=0.3)
    assert "cannot spill received data" in caplog.text
    assert "receiving at the pace of the extraction" in caplog.text
    # once the reader frees the buffer, the producer goes on
    got = []
    reader = threading.Thread(target=lambda: got.append(bl.read(100)))
    reader.start()
    bl.put(b"c" * 100, release=lambda: None, timeout=5)
    reader.join(5)
    assert got == [b"a" * 100]


def test_backlog_abort_releases_every_buffer_and_stops_the_reader(tmp_path):
    bl = Backlog(cap=3, spill_dir=str(tmp_path))
    released = []
    for i in range(3):
        bl.put(b"z" * 10, release=lambda i=i: released.append(i))
    bl.abort()
    assert sorted(released) == [0, 1, 2]
    with pytest.raises(Aborted):
        bl.readinto(bytearray(10))
    bl.put(b"late", release=lambda: released.append(9))  # after an abort: handed back at once
    assert released[-1] == 9


def test_spill_refuses_a_planted_name(tmp_path, monkeypatch):
    # the name is unique per process and random; a symlink planted under it is refused
    import ezpz.transfer.backlog as backlog

    monkeypatch.setattr(backlog.secrets, "token_hex", lambda n: "feedbeef")
    target = tmp_path / "elsewhere"
    os.symlink(target, tmp_path / f".env.ezpz-spill-{os.getpid()}-feedbeef")
    bl = Backlog(cap=1, spill_dir=str(tmp_path), spill_name="env")
    bl.put(b"a", release=lambda: None)
    with pytest.raises(TimeoutError):
        bl.put(b"b", release=lambda: None, timeout=0.2)  # not spilled: waits instead
    assert not target.exists()


# --------------------------------------------------------------------------------------
# wire
# --------------------------------------------------------------------------------------
def test_control_block_carries_the_offset():
    raw = Control(123, Flag.DATA, offset=(5 << 40) + 7).encode()
    got = Control.decode(raw)
    assert (got.nbytes, got.flag, got.offset) == (123, Flag.DATA, (5 << 40) + 7)
    assert Control.decode(Control(0, Flag.END, digest="ab" * 16, offset=9).encode()).digest \
        == "ab" * 16


def test_mail_frames_reassemble_long_messages_from_several_senders():
    big = {"failed": [f"host{i:05d}.example" for i in range(2000)]}
    asm = Assembler()
    a = frames(Kind.FINAL, 3, 1, big)
    b = frames(Kind.STATUS, 4, 1, {"host": "x"})
    assert len(a) > 5 and all(len(f) == FRAME for f in a)
    got = [asm.add(f) for f in [a[0], b[0], *a[1:]]]
    assert got[1] == (4, Kind.STATUS, {"host": "x"})
    assert got[-1] == (3, Kind.FINAL, big)
    assert all(g is None for g in got[2:-1]) and got[0] is None


def test_mail_frames_that_make_no_sense_are_dropped():
    asm = Assembler()
    good = frames(Kind.PROGRESS, 1, 7, {"recv": 1})[0]
    bad_kind = bytearray(good)
    bad_kind[0:4] = (999).to_bytes(4, "little")
    assert asm.add(bad_kind) is None
    huge = bytearray(good)
    huge[12:16] = (MAX_MESSAGE + 1).to_bytes(4, "little")
    assert asm.add(huge) is None
    parts = frames(Kind.FINAL, 2, 8, {"x": "y" * 10000})
    assert asm.add(parts[1]) is None  # a middle part without its start
    not_json = bytearray(good)
    not_json[20:22] = b"\xff\xfe"
    assert asm.add(not_json) is None
    assert asm.add(good) == (1, Kind.PROGRESS, {"recv": 1})  # and the next good one is fine


# --------------------------------------------------------------------------------------
# results
# --------------------------------------------------------------------------------------
def _result(n: int, failed: int = 0, status: Status = Status.ok, total: float = 10.0
            ) -> TransferResult:
    nodes = [NodeStatus(host=f"x{i:04d}", seconds=5 + i / 1000, mb_s=50.0, rss_mb=120 + i % 7,
                        spilled=(1 << 20) if i == 17 else 0) for i in range(n)]
    for i in range(failed):
        nodes[n - 1 - i * 3].fail(f"no space on x{n - 1 - i * 3:04d}")
    return TransferResult(status=status, exit_code=0 if status is not Status.failed else 1,
                          dst="/tmp/env", nodes=n, ranks=n, backend="mpi",
                          archive={"path": "/lus/env.tar.zst", "bytes": 500_000_000,
                                   "codec": "zstd"},
                          phases={"broadcast": 4.0, "total": total}, per_node=nodes,
                          kind="venv")


def test_summary_of_4096_nodes_is_a_few_lines():
    res = _result(4096, failed=30, status=Status.partial)
    text = summary(res)
    lines = text.splitlines()
    assert len(lines) < 12 + LIST_FAILED
    assert "transfer partial: /lus/env.tar.zst" in lines[0] and "50.0 MB/s" in lines[0]
    assert "nodes: 30 failed, 4066 ok" in text
    assert "fastest: x0000 5.00s" in text and "slowest: x4094 9.09s" in text
    assert "spilled (extraction behind the broadcast): 1 node(s), most 1.0 MiB (x0017)" in text
    assert "failed (30):" in text and "  x4008: no space on x4008" in text  # node order
    assert "x4095" not in text
    assert f"... and {30 - LIST_FAILED} more (every node is in results.json)" in text
    assert "x2000" not in text
    assert len(to_json(res)["per_node"]) == 4096


def test_summary_keeps_a_row_per_node_up_to_the_table_size():
    text = summary(_result(TABLE_ROWS, failed=1))
    assert sum(line.startswith("x0") for line in text.splitlines()) == TABLE_ROWS
    row = next(line for line in text.splitlines() if line.startswith("x0031"))
    assert " failed " in row and " - " in row and "no space on x0031" in row


@pytest.mark.parametrize("status", [Status.failed, Status.skipped])
def test_no_rate_for_a_failed_or_skipped_run(status):
    res = _result(3, failed=1 if status is Status.failed else 0, status=status)
    first = summary(res).splitlines()[0]
    assert "MB/s" not in first and first.startswith(f"transfer {status}:")
    assert to_json(res)["throughput_mb_s"] is None
    assert to_json(_result(3))["throughput_mb_s"] == 50.0


# --------------------------------------------------------------------------------------
# progress
# --------------------------------------------------------------------------------------
def test_progress_follows_the_slowest_node_still_at_work():
    d = progress.Display(1000, [0, 1, 2], how="off")
    d.update(0, 1000, 900)
    d.update(1, 600, 100)
    d.update(2, 800, 700)
    assert d.slowest() == (600, 100)
    d.update(1, 500, 50)  # figures never go back
    assert d.slowest() == (600, 100)
    d.finished(1)  # failed or lost: it no longer paces the run
    assert d.slowest() == (800, 700)
    assert "received 800 B, extracted 700 B of 1000 B (70%)" in d.line()


def test_progress_bar_redraws_in_place_and_log_lines_otherwise(caplog, monkeypatch):
    out = io.StringIO()
    d = progress.Display(1 << 20, [0], how="bar", out=out)
    d.update(0, 1 << 19, 1 << 18)
    d.show(force=True)
    assert out.getvalue().endswith("\r") and "[######" in out.getvalue()
    d.close()
    assert out.getvalue().endswith("\r") and "\n" not in out.getvalue()
    monkeypatch.setattr(progress, "LOG_EVERY", 0.0)
    d = progress.Display(100, [0], how="log")
    with caplog.at_level(logging.INFO, logger="ezpz.transfer.progress"):
        d.update(0, 50, 25)
        d.show()
    assert "progress: slowest node: received 50 B, extracted 25 B of 100 B (25%)" in caplog.text


def test_progress_mode_from_the_environment(monkeypatch):
    monkeypatch.setenv("EZPZ_PROGRESS", "bar")
    assert progress.mode() == "bar"
    monkeypatch.setenv("EZPZ_PROGRESS", "nonsense")
    assert progress.mode() in ("bar", "log")
    monkeypatch.setenv("EZPZ_PROGRESS", "off")
    assert progress.mode() == "off"


def test_a_leader_reports_progress_at_most_every_few_seconds():
    r = progress.Reporter(every=0.2)
    assert r.due() and not r.due()
    time.sleep(0.25)
    assert r.due()


# --------------------------------------------------------------------------------------
# the sentinel (in a child process: a test process has threads, so it refuses to fork)
# --------------------------------------------------------------------------------------
SENTINEL_CHILD = textwrap.dedent("""
    import os, sys, time
    from ezpz.transfer import sentinel
    path, how = sys.argv[1], sys.argv[2]
    s = sentinel.start(float(sys.argv[3]), "test rank", grace=1.0)
    assert s is not None
    os.mkdir(path)
    s.watch([path])
    s.started()
    print(s.pid, flush=True)
    if how == "die":
        os._exit(3)
    if how == "done":
        s.done()
        sys.exit(0)
    time.sleep(60)  # "stop": the test stops this process
""")


def _sentinel_child(tmp_path: Path, how: str, timeout: float = 2.0
                    ) -> tuple[subprocess.Popen, int, Path]:
    path = tmp_path / "staging"
    proc = subprocess.Popen([sys.executable, "-c", SENTINEL_CHILD, str(path), how, str(timeout)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    pid = int(proc.stdout.readline())
    return proc, pid, path


def _gone(pid: int, seconds: float = 15) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                if fh.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return True
        except OSError:
            return True
        time.sleep(0.05)
    return False


def test_sentinel_removes_what_a_dead_rank_left(tmp_path):
    proc, pid, path = _sentinel_child(tmp_path, "die")
    assert proc.wait(10) == 3
    assert _gone(pid)
    assert not path.exists()


def test_sentinel_keeps_what_a_rank_finished(tmp_path):
    proc, pid, path = _sentinel_child(tmp_path, "done")
    assert proc.wait(10) == 0
    assert _gone(pid)
    assert path.is_dir()


def test_sentinel_ends_a_stopped_rank_and_cleans_up(tmp_path):
    proc, pid, path = _sentinel_child(tmp_path, "stop", timeout=1.0)
    deadline = time.monotonic() + 5
    while Path(f"/proc/{pid}/comm").read_text().strip() != "ezpz-sentinel":
        assert time.monotonic() < deadline, "the sentinel does not name itself"
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        rc = proc.wait(30)  # SIGTERM + SIGCONT from the sentinel: default action, it ends
    finally:
        if proc.poll() is None:
            proc.kill()
    assert rc == -signal.SIGTERM
    assert _gone(pid) and not path.exists()
    err = proc.stderr.read() if proc.stderr else ""
    assert "ezpz-transfer: test rank: no sign of life from the worker" in err
    assert "for 5s: it is stopped or stuck; ending it" in err  # never less than 5 s


def test_sentinel_is_not_started_beside_running_threads():
    from ezpz.transfer import sentinel

    assert threading.active_count() >= 1
    stop = threading.Event()
    t = threading.Thread(target=stop.wait)
    t.start()
    try:
        assert sentinel.start(10, "x") is None
    finally:
        stop.set()
        t.join()


def test_results_json_records_the_timeline_and_spill(tmp_path):
    from ezpz.transfer.results import write_results

    res = _result(2)
    res.per_node[0].timeline = {"stream_end": 1.5, "extract_end": 2.5, "done": 3.0}
    path = write_results(res, str(tmp_path))
    saved = json.loads(Path(path).read_text())
    assert saved["per_node"][0]["timeline"] == {"stream_end": 1.5, "extract_end": 2.5,
                                                "done": 3.0}
    assert saved["per_node"][0]["spilled"] == 0
    assert NodeStatus.from_wire({**saved["per_node"][0], "unknown": 1}).timeline["done"] == 3.0


def test_backlog_does_not_spill_into_the_space_the_extraction_needs(tmp_path, caplog):
    # free space next to dst minus the chunk would fall below what the extraction still
    # needs: the receiver waits instead of filling the disk
    bl = Backlog(cap=1, spill_dir=str(tmp_path), reserve=lambda b: 1 << 62)
    bl.put(b"a" * 100, release=lambda: None)
    with caplog.at_level(logging.WARNING, logger="ezpz.transfer.backlog"), \
            pytest.raises(TimeoutError):
        bl.put(b"b" * 100, release=lambda: None, timeout=0.2)
    assert "not spilling received data to" in caplog.text
    assert "the extraction still needs about" in caplog.text
    assert bl.spilled == 0 and bl._fd is None
    roomy = Backlog(cap=1, spill_dir=str(tmp_path), reserve=lambda b: 0)
    roomy.put(b"a" * 100, release=lambda: None)
    roomy.put(b"b" * 100, release=lambda: None, timeout=0.2)
    assert roomy.spilled == 100


def test_extraction_priority_setting_tolerates_bad_values(monkeypatch):
    from ezpz.transfer import stream

    monkeypatch.setenv("EZPZ_EXTRACT_NICE", "lots")
    assert stream._nice_setting() == 10
    monkeypatch.setenv("EZPZ_EXTRACT_NICE", "0")
    assert stream._nice_setting() == 0


def test_process_start_time_is_when_the_process_started(tmp_path):
    """The timeline's ``start``: a child started between two clock readings reports a start
    between them (to the kernel's 10 ms tick)."""
    import subprocess
    import sys
    import time

    before = time.time()
    out = subprocess.run([sys.executable, "-c", "import time; time.sleep(0.3); "
                          "from ezpz.fsutil import process_start_time as p; print(p())"],
                         capture_output=True, text=True, check=True).stdout
    after = time.time()
    started = float(out)
    assert before - 0.02 <= started <= after - 0.3 + 0.02, (before, started, after)


@pytest.mark.parametrize("value, host, want", [
    ("node2:1", "node2", 1e6), ("node2:0.5", "node2", 5e5), ("a:b:2", "a:b", 2e6),
    ("node2:1", "node1", None), ("node2:0", "node2", None), ("node2:-1", "node2", None),
    ("node2:inf", "node2", None), ("node2:nan", "node2", None), ("node2", "node2", None),
    ("", "node2", None),
])
def test_the_test_only_slow_extraction_setting(monkeypatch, value, host, want):
    from ezpz.transfer.backlog import slow_extract_rate

    monkeypatch.setenv("EZPZ_TEST_SLOW_EXTRACT", value)
    assert slow_extract_rate(host) == want


def test_a_paced_stream_reads_everything_in_order():
    import io

    from ezpz.transfer.backlog import Paced

    data = bytes(range(256)) * 1000
    paced = io.BufferedReader(Paced(io.BytesIO(data), rate=1e9))
    assert paced.read() == data
