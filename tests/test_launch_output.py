"""Output never lost: hidden lines are kept whole in a file and counted; the rank wrapper passes
whole lines (labelled on request), sets the DDP variables, forwards signals once and records
how a failed rank ended."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from ezpz.launch import OutputPump, compile_patterns, run_command
from ezpz.launch.plan import RANK_WRAPPER
from ezpz.launch.rankwrap import set_ddp_env

PY = sys.executable
WRAP = [PY, "-S", str(RANK_WRAPPER), "--"]


def _pump(tmp_path: Path, filters: list[str], **kw) -> tuple[OutputPump, io.StringIO]:
    out = io.StringIO()
    return OutputPump(out, compile_patterns(filters), filtered_log=str(tmp_path / "f.log"),
                      **kw), out


def test_hidden_lines_are_kept_whole_and_counted(tmp_path):
    pump, out = _pump(tmp_path, [r"^NOISE \d+$", r"\|CCL_WARN\| did not find"])
    for raw in [b"real 1\n", b"NOISE 1\n", b"x |CCL_WARN| did not find MPI launcher\n",
                b"NOISE 2 is not noise\n", b"NOISE 3"]:
        pump.handle(raw)
    pump.close()
    assert out.getvalue() == "real 1\nNOISE 2 is not noise\n"
    assert (tmp_path / "f.log").read_bytes() == (
        b"NOISE 1\nx |CCL_WARN| did not find MPI launcher\nNOISE 3\n")
    assert pump.hidden == 3
    assert pump.summary() == (f"hid 3 output lines matching the output filters; they are in "
                              f"{tmp_path / 'f.log'} (launcher.filters=[] or EZPZ_LOG_LEVEL=DEBUG "
                              "shows everything)")


def test_no_file_until_a_line_is_hidden_and_labels_do_not_defeat_anchors(tmp_path):
    pump, out = _pump(tmp_path, [r"^\s*dispatch key: XPU$"], labels=True)
    pump.handle(b"0: hello\n")
    assert not (tmp_path / "f.log").exists() and pump.summary() is None
    pump.handle(b"12:   dispatch key: XPU\n")
    pump.handle(b"3: dispatch key: XPU and more\n")
    pump.close()
    assert out.getvalue() == "0: hello\n3: dispatch key: XPU and more\n"
    assert (tmp_path / "f.log").read_text() == "12:   dispatch key: XPU\n"  # as it came, label too


def test_a_filtered_file_that_cannot_be_written_shows_the_lines_instead(tmp_path):
    blocked = tmp_path / "dir"
    blocked.mkdir()
    out = io.StringIO()
    pump = OutputPump(out, compile_patterns(["^NOISE$"]), filtered_log=str(blocked))
    pump.handle(b"NOISE\n")
    pump.handle(b"NOISE\n")
    assert out.getvalue() == "NOISE\nNOISE\n", "a line is never lost"


def test_host_patterns_in_the_launchers_output(tmp_path):
    pump, _ = _pump(tmp_path, [], host_patterns=compile_patterns(
        [r"^(?P<host>x\d+c\d+s\d+b\d+n\d+)\S*: shepherd died from signal 9\b", "no host group"]))
    pump.handle(b"x4001c0s1b0n0.hsn.cm.aurora.alcf.anl.gov: shepherd died from signal 9\n")
    pump.handle(b"no host group here\n")
    assert [(h.host, h.line[:13]) for h in pump.host_hits] == [("x4001c0s1b0n0", "x4001c0s1b0n0")]


def test_bytes_that_are_not_utf8_are_kept_as_they_came(tmp_path):
    pump, out = _pump(tmp_path, ["^noise"])
    pump.handle(b"noise \xff\xfe raw\n")
    pump.handle(b"shown \xff\n")
    pump.close()
    assert (tmp_path / "f.log").read_bytes() == b"noise \xff\xfe raw\n"
    assert out.getvalue() == "shown \ufffd\n"


def test_a_line_longer_than_the_buffers_arrives_whole_in_pieces(tmp_path, monkeypatch):
    """3 MiB without a newline through the rank wrapper and the launcher: nothing is lost."""
    monkeypatch.delenv("EZPZ_LOG_LEVEL", raising=False)
    out = io.StringIO()
    code = "import sys; sys.stdout.write('a' * (3 << 20)); sys.stdout.write('\\nafter\\n')"
    assert run_command([*WRAP, PY, "-c", code], out=out) == 0
    text = out.getvalue()
    assert text.endswith("\nafter\n")
    assert text[:-len("after\n")].replace("\n", "") == "a" * (3 << 20)


def test_run_command_writes_hidden_lines_to_its_file(tmp_path, monkeypatch):
    monkeypatch.delenv("EZPZ_LOG_LEVEL", raising=False)
    out = io.StringIO()
    log = tmp_path / "hidden.log"
    rc = run_command([PY, "-c", "print('keep'); print('drop me'); print('keep too')"],
                     ["^drop me$"], out=out, filtered_log=str(log))
    assert rc == 0 and out.getvalue() == "keep\nkeep too\n" and log.read_text() == "drop me\n"


# --------------------------------------------------------------------------------------
# the rank wrapper
# --------------------------------------------------------------------------------------
GLUE = textwrap.dedent("""
    import os, sys
    tag = sys.argv[1]
    for i in range(int(sys.argv[2])):
        sys.stdout.write(f"{tag} {i:05d} ")   # two writes per line: glued without the wrapper
        sys.stdout.flush()
        sys.stdout.write("x" * (i % 50) + " end\\n")
        sys.stdout.flush()
    sys.stdout.write("no newline at the end")
""")


def test_concurrent_ranks_sharing_one_pipe_keep_whole_lines(tmp_path):
    """Four wrapped writers on one pipe (as torchrun's workers share the agent's stdout)."""
    script = tmp_path / "glue.py"
    script.write_text(GLUE)
    read_fd, write_fd = os.pipe()
    procs = [subprocess.Popen([*WRAP, PY, str(script), f"rank{r}", "1500"], stdout=write_fd,
                              stderr=write_fd) for r in range(4)]
    os.close(write_fd)
    data = b""
    with os.fdopen(read_fd, "rb") as fh:
        data = fh.read()
    assert [p.wait(timeout=60) for p in procs] == [0, 0, 0, 0]
    lines = data.decode().splitlines()
    body = [ln for ln in lines if not ln.startswith("no newline")]
    assert len(body) == 6000
    for line in body:
        tag, num, rest = line.split(" ", 2)
        assert tag in {"rank0", "rank1", "rank2", "rank3"} and rest == "x" * (int(num) % 50) + " end"
    assert lines.count("no newline at the end") == 4  # the last line got its newline


def test_labels_exit_codes_and_signal_deaths_pass_through(tmp_path):
    env = {**os.environ, "EZPZ_RANK_LABEL": "1", "PMI_RANK": "5"}
    p = subprocess.run([*WRAP, PY, "-c", "import sys; print('a'); print('b', file=sys.stderr); "
                        "sys.exit(3)"], env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 3 and p.stdout == "5: a\n5: b\n"
    p = subprocess.run([*WRAP, PY, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGBUS)"],
                       capture_output=True, timeout=60)
    assert p.returncode == -signal.SIGBUS
    p = subprocess.run([*WRAP, str(tmp_path / "no such program")], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 127 and "cannot run" in p.stderr and "no such program" in p.stderr
    p = subprocess.run([PY, "-S", str(RANK_WRAPPER)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "usage:" in p.stderr


def test_a_failed_rank_leaves_a_record_and_a_good_one_does_not(tmp_path):
    records = tmp_path / "ranks"
    env = {**os.environ, "EZPZ_RANK_DIR": str(records), "SLURM_PROCID": "2",
           "EZPZ_BAD_NODE_PATTERNS": json.dumps(["^GPU (?P<host>\\w+) lost$", "^ECC error$"])}
    assert subprocess.run([*WRAP, "true"], env=env, timeout=60).returncode == 0
    assert not records.exists()
    p = subprocess.run([*WRAP, "sh", "-c", "echo GPU nodeX lost; echo ECC error; exit 4"],
                       env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 4 and p.stdout == "GPU nodeX lost\nECC error\n"
    rec = json.loads((records / "rank-2.json").read_text())
    assert (rec["rank"], rec["exit_code"], rec["signal"], rec["stopped_by"]) == (2, 4, None, None)
    assert rec["patterns"] == [{"pattern": 0, "host": "nodeX", "line": "GPU nodeX lost"},
                               {"pattern": 1, "host": None, "line": "ECC error"}]
    assert [p.name for p in records.iterdir()] == ["rank-2.json"], "no temporary file left"


@pytest.mark.parametrize("env, expected", [
    # MPICH hydra
    ({"PMI_RANK": "5", "PMI_SIZE": "8", "MPI_LOCALRANKID": "1", "MPI_LOCALNRANKS": "4"},
     ("5", "8", "1", "4")),
    # Cray PALS
    ({"PALS_RANKID": "13", "PALS_LOCAL_RANKID": "1", "EZPZ_WORLD_SIZE": "24",
      "EZPZ_LOCAL_WORLD_SIZE": "12"}, ("13", "24", "1", "12")),
    # Slurm
    ({"SLURM_PROCID": "3", "SLURM_NTASKS": "4", "SLURM_LOCALID": "1",
      "SLURM_NTASKS_PER_NODE": "2"}, ("3", "4", "1", "2")),
    # only the rank and ezpz's sizes: the local rank follows from block placement
    ({"PMI_RANK": "7", "EZPZ_WORLD_SIZE": "8", "EZPZ_LOCAL_WORLD_SIZE": "4"},
     ("7", "8", "3", "4")),
])
def test_ddp_variables_from_each_launcher(env, expected):
    env = {**env, "RANK": "99"}  # a stale value from the user's shell is replaced
    set_ddp_env(env)
    assert (env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"], env["LOCAL_WORLD_SIZE"]) == expected


def test_ddp_variables_are_torchruns_under_torchrun():
    env = {"TORCHELASTIC_RUN_ID": "x", "RANK": "3", "WORLD_SIZE": "4", "PMI_RANK": "0",
           "PMI_SIZE": "2"}
    set_ddp_env(env)
    assert (env["RANK"], env["WORLD_SIZE"]) == ("3", "4")


HANDLER = textwrap.dedent("""
    import os, signal, sys, time
    out = sys.argv[1]
    got = []
    def handler(signum, frame):
        got.append(signum)
        with open(out, "a") as fh:
            fh.write(f"{signum}\\n")
        time.sleep(0.5)
        if len(got) == 1:
            sys.exit(0)
    signal.signal(signal.SIGTERM, handler)
    print("ready", flush=True)
    time.sleep(60)
""")


def test_a_stop_signal_reaches_the_command_once_and_the_command_dies_with_the_wrapper(tmp_path):
    script = tmp_path / "handler.py"
    script.write_text(HANDLER)
    seen = tmp_path / "seen"
    p = subprocess.Popen([*WRAP, PY, str(script), str(seen)], stdout=subprocess.PIPE, text=True,
                         start_new_session=True)
    assert p.stdout is not None and p.stdout.readline() == "ready\n"
    # a launcher that signals the group *and* forwards: the wrapper passes SIGTERM on once
    os.killpg(p.pid, signal.SIGTERM)
    os.kill(p.pid, signal.SIGTERM)
    assert p.wait(timeout=30) == 0
    assert seen.read_text() == f"{int(signal.SIGTERM)}\n"

    # a wrapper killed outright (SIGKILL from its launcher) takes its command with it
    pidfile = tmp_path / "pid"
    q = subprocess.Popen([*WRAP, PY, "-c", f"import os, time; open({str(pidfile)!r}, 'w')"
                          ".write(str(os.getpid())); time.sleep(60)"])
    deadline = time.monotonic() + 30
    while not (pidfile.exists() and pidfile.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    child = int(pidfile.read_text())
    q.kill()
    q.wait(timeout=30)
    deadline = time.monotonic() + 30
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child), "the command outlived its wrapper"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_output_of_children_left_behind_is_still_passed_on(tmp_path):
    """The command exits but a child it started still writes: the wrapper passes its lines on
    while they keep coming, then exits with the command's code."""
    code = ("import subprocess, sys; subprocess.Popen([sys.executable, '-c', "
            "'import time\\nfor i in range(3): print(\"late\", i, flush=True); time.sleep(0.2)']); "
            "print('parent done', flush=True); sys.exit(5)")
    p = subprocess.run([*WRAP, PY, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 5
    assert p.stdout.splitlines() == ["parent done", "late 0", "late 1", "late 2"]


def test_a_chatty_child_loses_no_line():
    """run_command on a child printing 20,000 lines: every line arrives, in order."""
    out = io.StringIO()
    rc = run_command([PY, "-c", "import sys\nfor i in range(20000): print(i)"], out=out)
    assert rc == 0 and out.getvalue().split() == [str(i) for i in range(20000)]
