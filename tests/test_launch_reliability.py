"""ezpz-launch as a long job needs it, end to end with the venv's real mpiexec and torchrun:
the idle watchdog, retries, spare-node failover on simulated hosts, signal grace, whole lines,
output filters and the DDP environment.

Failover runs each host of a node file as a host of its own: MPICH's hydra reaches the
"remote" hosts through tests/fakessh.sh, which starts the proxy in a UTS namespace named after
the host, so every rank sees its host's name (needs root, as the simulated nodes do).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import simnodes

PY = sys.executable
HERE = Path(__file__).resolve().parent
FAKESSH = str(HERE / "fakessh.sh")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "PBS_", "MASTER_", "EZPZ_"))}
    env.update(extra)
    return env


def _cli(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 180
         ) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", "ezpz.cli.launch", *args], cwd=cwd, capture_output=True,
                          text=True, env=env or _env(), timeout=timeout)


def _run_dir(cwd: Path) -> Path:
    (run,) = cwd.glob("outputs/launch/*/*")
    return run


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def two_hosts(tmp_path) -> str:
    """launcher.hostfile=... naming this machine twice (two hosts, all ranks here)."""
    hf = tmp_path / "nodes"
    hf.write_text("localhost\n127.0.0.1\n")
    return f"launcher.hostfile={hf}"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _wait_for(predicate, limit: float = 60.0) -> bool:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


# --------------------------------------------------------------------------------------
# idle watchdog and retries
# --------------------------------------------------------------------------------------
SILENT = textwrap.dedent("""
    import os, sys, time
    d, rank = sys.argv[1], os.environ["RANK"]
    n = len([f for f in os.listdir(d) if f.startswith(f"try.{rank}.")])
    open(os.path.join(d, f"try.{rank}.{n}"), "w").close()
    open(os.path.join(d, f"pid.{rank}.{os.getpid()}"), "w").close()
    print("started", flush=True)
    if len(sys.argv) > 2 and n >= int(sys.argv[2]):
        print("quick this time", flush=True)
        sys.exit(0)
    time.sleep(120)
""")


def test_idle_watchdog_stops_a_silent_job_with_exit_124(tmp_path, two_hosts):
    script = tmp_path / "silent.py"
    script.write_text(SILENT)
    state = tmp_path / "state"
    state.mkdir()
    p = _cli("machine=local", two_hosts, "launcher.idle_timeout=1", "launcher.grace=2", "--",
             PY, str(script), str(state), cwd=tmp_path)
    assert p.returncode == 124, p.stderr
    assert p.stdout.count("started") == 2
    assert "no output for 1 s (launcher.idle_timeout): stopping the job" in p.stderr
    assert "attempt 1 failed with exit code 124" in p.stderr
    pids = [int(f.name.split(".")[2]) for f in state.glob("pid.*")]
    assert len(pids) == 2 and _wait_for(lambda: not any(_alive(pid) for pid in pids), 10)
    record = json.loads((_run_dir(tmp_path) / "launch.json").read_text())
    assert record["exit_code"] == 124
    assert record["attempts"][0]["cause"] == "no output for 1 s (launcher.idle_timeout)"


def test_a_hung_attempt_is_retried(tmp_path, two_hosts):
    script = tmp_path / "silent.py"
    script.write_text(SILENT)
    state = tmp_path / "state"
    state.mkdir()
    p = _cli("machine=local", two_hosts, "launcher.idle_timeout=1", "launcher.grace=1",
             "launcher.retries=1", "launcher.retry_delay=0", "--", PY, str(script), str(state),
             "1", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "quick this time" in p.stdout
    record = json.loads((_run_dir(tmp_path) / "launch.json").read_text())
    assert [(a["exit_code"], a["next"]) for a in record["attempts"]] == [(124, "retry"), (0, None)]


PROGRESS = textwrap.dedent("""
    import sys, time
    for i in range(1, 11):
        sys.stderr.write(f"\\rtraining {i * 10:3d}%")   # redrawn in place, no newline
        sys.stderr.flush()
        time.sleep(0.3)
    sys.stderr.write("\\n")
    print("done")
""")


def test_a_progress_bar_counts_as_output_for_the_idle_watchdog(tmp_path):
    """3 s of \\r redraws with idle_timeout=1: not a silent job."""
    script = tmp_path / "progress.py"
    script.write_text(PROGRESS)
    p = subprocess.run([PY, "-m", "ezpz.cli.launch", "machine=local", "launcher.idle_timeout=1",
                        "launcher.label=true", "--", PY, str(script)], cwd=tmp_path,
                       capture_output=True, env=_env(), timeout=120)  # bytes: \\r kept as is
    assert p.returncode == 0, p.stderr
    redraws = re.findall(rb"0: training +(\d+)%[\r\n]", p.stdout)
    assert redraws == [b"%d" % (10 * i) for i in range(1, 11)], p.stdout
    assert p.stdout.endswith(b"0: done\n") and b"idle_timeout" not in p.stderr


FLAKY = textwrap.dedent("""
    import os, sys
    counter = os.path.join(sys.argv[1], "count." + os.environ["RANK"])
    n = int(open(counter).read()) + 1 if os.path.exists(counter) else 1
    open(counter, "w").write(str(n))
    print(f"rank {os.environ['RANK']} attempt {n}", flush=True)
    sys.exit(0 if n >= int(sys.argv[2]) else 7)
""")


def test_a_command_failing_twice_succeeds_on_the_third_attempt(tmp_path, two_hosts):
    script = tmp_path / "flaky.py"
    script.write_text(FLAKY)
    p = _cli("machine=local", two_hosts, "launcher.retries=2", "launcher.retry_delay=0.05", "--",
             PY, str(script), str(tmp_path), "3", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    for n in (1, 2, 3):
        assert f"rank 0 attempt {n}" in p.stdout and f"rank 1 attempt {n}" in p.stdout
    err = p.stderr
    assert "running (attempt 1 of at most 3)" in err
    assert re.search(r"attempt 1 failed with exit code 7 after [\d.]+ s: rank 0 on \S+: exit code 7; "
                     r"rank 1 on \S+: exit code 7", err), err
    assert "attempt 2 failed with exit code 7" in err and "attempt 3 succeeded" in err
    # the delay doubles per attempt
    assert "attempt 2 (retry) in 0.05 s" in err and "attempt 3 (retry) in 0.1 s" in err
    record = json.loads((_run_dir(tmp_path) / "launch.json").read_text())
    assert [(a["attempt"], a["exit_code"], a["next"]) for a in record["attempts"]] == \
        [(1, 7, "retry"), (2, 7, "retry"), (3, 0, None)]
    assert record["exit_code"] == 0


def test_retries_used_up_return_the_last_exit_code(tmp_path, two_hosts):
    script = tmp_path / "flaky.py"
    script.write_text(FLAKY)
    p = _cli("machine=local", two_hosts, "launcher.nhosts=1", "launcher.retries=1",
             "launcher.retry_delay=0", "--", PY, str(script), str(tmp_path), "99", cwd=tmp_path)
    assert p.returncode == 7, p.stderr
    assert "attempt 2 failed with exit code 7" in p.stderr and "attempt 3" not in p.stderr
    assert "finished with exit code 7 after 2 attempts" in p.stderr


def test_a_signal_while_waiting_to_relaunch_stops_for_good(tmp_path, two_hosts):
    script = tmp_path / "flaky.py"
    script.write_text(FLAKY)
    proc = subprocess.Popen([PY, "-m", "ezpz.cli.launch", "machine=local", two_hosts,
                             "launcher.retries=3", "launcher.retry_delay=60", "--", PY,
                             str(script), str(tmp_path), "99"], cwd=tmp_path, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if "attempt 2 (retry) in 60 s" in line:
                proc.send_signal(signal.SIGTERM)
                break
        out = "".join(lines) + proc.communicate(timeout=30)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, out
    assert "received SIGTERM while waiting: not relaunching" in out
    assert "attempt 2 of at most 4" not in out
    record = json.loads((_run_dir(tmp_path) / "launch.json").read_text())
    assert record["exit_code"] == 143 and len(record["attempts"]) == 1


# --------------------------------------------------------------------------------------
# signals: the job's handlers get their grace
# --------------------------------------------------------------------------------------
CHECKPOINT = textwrap.dedent("""
    import os, signal, sys, time
    d, mode = sys.argv[1], sys.argv[2]
    rank = os.environ["RANK"]
    def save(signum, frame):
        open(os.path.join(d, f"got.{rank}"), "w").write(str(signum))
        time.sleep(1.0)                      # a checkpoint takes a while
        open(os.path.join(d, f"saved.{rank}"), "w").write("ok")
        sys.exit(0)
    signal.signal(signal.SIGTERM, save if mode == "save" else signal.SIG_IGN)
    if mode == "ignore":
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    open(os.path.join(d, f"pid.{rank}"), "w").write(str(os.getpid()))
    print("training", flush=True)
    time.sleep(120)
""")


def _start_and_signal(tmp_path: Path, args: list[str], nranks: int, sig: int, again: bool = False
                      ) -> tuple[int, str, list[int]]:
    state = tmp_path / "state"
    state.mkdir(exist_ok=True)
    proc = subprocess.Popen([PY, "-m", "ezpz.cli.launch", *args], cwd=tmp_path, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        ready = _wait_for(lambda: len(list(state.glob("pid.*"))) == nranks
                          or proc.poll() is not None, 120)
        assert ready and proc.poll() is None, proc.communicate()[0]
        time.sleep(0.2)
        pids = [int(p.read_text()) for p in state.glob("pid.*")]
        proc.send_signal(sig)
        if again:
            time.sleep(1.0)
            proc.send_signal(sig)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, out, pids


@pytest.mark.parametrize("launcher", ["mpiexec", pytest.param("torchrun", marks=pytest.mark.slow)])
def test_sigterm_gives_the_ranks_their_grace_and_exits_143(tmp_path, two_hosts, launcher):
    script = tmp_path / "ckpt.py"
    script.write_text(CHECKPOINT)
    state = tmp_path / "state"
    extra = [f"launcher.rdzv_port={_free_port()}", "launcher.ngpu_per_host=2",
             "launcher.nhosts=1"] if launcher == "torchrun" else [two_hosts]
    rc, out, pids = _start_and_signal(
        tmp_path, ["machine=local", f"launcher={launcher}", *extra, "--",
                   *([PY] if launcher == "mpiexec" else []), str(script), str(state), "save"],
        2, signal.SIGTERM)
    assert rc == 143, out
    # every rank's handler ran to the end: it was neither killed nor interrupted twice
    assert sorted(p.name for p in state.glob("saved.*")) == ["saved.0", "saved.1"], out
    assert [p.read_text() for p in sorted(state.glob("got.*"))] == ["15", "15"]
    assert "received SIGTERM: passing it to mpiexec, which passes it on to every rank" in out
    assert "still running" not in out
    assert _wait_for(lambda: not any(_alive(pid) for pid in pids), 10)


def test_a_job_that_ignores_sigterm_is_killed_after_the_grace(tmp_path, two_hosts):
    script = tmp_path / "ckpt.py"
    script.write_text(CHECKPOINT)
    rc, out, pids = _start_and_signal(
        tmp_path, ["machine=local", two_hosts, "launcher.grace=1", "--", PY, str(script),
                   str(tmp_path / "state"), "ignore"], 2, signal.SIGTERM)
    assert rc == 143, out
    assert "the job is still running 1 s after SIGTERM: killing it" in out
    assert _wait_for(lambda: not any(_alive(pid) for pid in pids), 10), "a rank survived"


def test_a_second_ctrl_c_kills_at_once(tmp_path, two_hosts):
    script = tmp_path / "ckpt.py"
    script.write_text(CHECKPOINT)
    # ranks that ignore SIGINT and a 600 s grace: only the second Ctrl-C can end this before
    # the helper's 120 s timeout
    rc, out, pids = _start_and_signal(
        tmp_path, ["machine=local", two_hosts, "launcher.grace=600", "--", PY, str(script),
                   str(tmp_path / "state"), "ignore"], 2, signal.SIGINT, again=True)
    assert rc == 130, out
    assert "received SIGINT again: killing the job now" in out
    assert _wait_for(lambda: not any(_alive(pid) for pid in pids), 10), "a rank survived"


# --------------------------------------------------------------------------------------
# whole lines and filters
# --------------------------------------------------------------------------------------
LINES = textwrap.dedent("""
    import os, sys
    rank = os.environ["RANK"]
    for i in range(1500):
        sys.stdout.write(f"rank {rank} line {i:04d} ")   # two writes per line
        sys.stdout.flush()
        sys.stdout.write("x" * (i % 97) + " end\\n")
        sys.stdout.flush()
""")


@pytest.mark.parametrize("launcher", ["mpiexec", pytest.param("torchrun", marks=pytest.mark.slow)])
def test_6000_lines_from_4_ranks_arrive_intact(tmp_path, launcher):
    script = tmp_path / "lines.py"
    script.write_text(LINES)
    args = ["machine=local", "launcher.ngpu_per_host=4", f"launcher={launcher}",
            f"launcher.rdzv_port={_free_port()}", "--"]
    args += [PY, str(script)] if launcher == "mpiexec" else [str(script)]
    p = _cli(*args, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    lines = re.findall(r"^rank ([0-3]) line (\d{4}) (x*) end$", p.stdout, flags=re.M)
    assert len(lines) == 6000, p.stdout[:2000]
    assert all(len(x) == int(i) % 97 for _, i, x in lines)
    for rank in "0123":  # each rank's lines in its own order
        assert [int(i) for r, i, _ in lines if r == rank] == list(range(1500))


def test_labels_say_which_rank_printed_a_line(tmp_path, two_hosts):
    p = _cli("machine=local", two_hosts, "launcher.label=true", "--", PY, "-c",
             "import os; print('hi from', os.environ['RANK'])", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert sorted(p.stdout.splitlines()) == ["0: hi from 0", "1: hi from 1"]


def test_mpi_programs_run_through_the_rank_wrapper(tmp_path, two_hosts):
    """The wrapper passes the launcher's PMI connection on: mpi4py forms one world."""
    p = _cli("machine=local", two_hosts, "--", PY, "-c",
             "from mpi4py import MPI; c = MPI.COMM_WORLD; "
             "print('mpi', c.rank, c.size, c.allreduce(c.rank + 1))", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert sorted(p.stdout.splitlines()) == ["mpi 0 2 3", "mpi 1 2 3"]


NOISY = textwrap.dedent("""
    import os, sys
    print("step 1 loss 2.5")
    print("  dispatch key: XPU")
    print("2025:01:28-08:07:38:(1) |CCL_WARN| did not find MPI-launcher specific variables, "
          "switch to ATL/OFI", file=sys.stderr)
    print("AttributeError: 'Trainer' object has no attribute 'step'")
    print("step 2 loss 1.5")
""")


def test_filtered_lines_are_kept_in_the_run_dir_and_counted(tmp_path):
    """The aurora preset's filters on this machine (its mpiexec settings swapped for MPICH's)."""
    script = tmp_path / "noisy.py"
    script.write_text(NOISY)
    nodes = tmp_path / "nodes"
    nodes.write_text("localhost\n")
    common = ["machine=aurora", f"launcher.hostfile={nodes}", "launcher.ngpu_per_host=1",
              "machine.mpiexec_flavor=hydra", "machine.mpiexec_flags=[]", "machine.cpu_bind=null"]
    p = _cli(*common, "--", PY, str(script), cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == ["step 1 loss 2.5",
                                     "AttributeError: 'Trainer' object has no attribute 'step'",
                                     "step 2 loss 1.5"]
    run = _run_dir(tmp_path)
    assert (run / "filtered.log").read_text().splitlines() == [
        "  dispatch key: XPU",
        "2025:01:28-08:07:38:(1) |CCL_WARN| did not find MPI-launcher specific variables, "
        "switch to ATL/OFI"]
    assert f"hid 2 output lines matching the output filters; they are in {run / 'filtered.log'}" \
        in p.stderr
    # launcher.filters=[] shows everything and writes no file
    again = tmp_path / "again"
    again.mkdir()
    q = _cli(*common, "launcher.filters=[]", "--", PY, str(script), cwd=again)
    assert q.returncode == 0, q.stderr
    assert len(q.stdout.splitlines()) == 5 and "hid " not in q.stderr
    assert not (_run_dir(again) / "filtered.log").exists()


# --------------------------------------------------------------------------------------
# spare-node failover on simulated hosts
# --------------------------------------------------------------------------------------
NODE_FAULT = textwrap.dedent("""
    import os, signal, socket, sys
    out, bad, how = sys.argv[1], sys.argv[2], sys.argv[3]
    host, rank = socket.gethostname(), os.environ["RANK"]
    with open(os.path.join(out, "runs"), "a") as fh:
        fh.write(f"{rank} {host}\\n")
    if host == bad:
        if how == "kill":
            os.kill(os.getpid(), signal.SIGKILL)      # the node's OOM killer, say
        if how == "pattern":
            print("FAKE GPU FAULT: device lost", flush=True)
            sys.exit(1)
        sys.exit(3)                                  # an ordinary failure
    print(f"rank {rank} done on {host}", flush=True)
""")


@pytest.fixture
def fake_hosts(tmp_path, simnodes_ok):
    """A node file of three hosts; hydra reaches them through fakessh.sh."""
    hf = tmp_path / "nodefile"
    hf.write_text("nodeA\nnodeB\nnodeC\n")
    log = tmp_path / "ssh.log"
    extra = ("launcher.extra_args=['-launcher','ssh','-launcher-exec',"
             f"'{FAKESSH}']")
    return [f"launcher.hostfile={hf}", extra], _env(EZPZ_FAKESSH_LOG=str(log)), log


@pytest.mark.simnodes
@pytest.mark.parametrize("how", ["kill", "pattern"])
def test_a_bad_node_is_replaced_by_a_spare_and_the_job_completes(tmp_path, fake_hosts, how):
    args, env, ssh_log = fake_hosts
    script = tmp_path / "fault.py"
    script.write_text(NODE_FAULT)
    patterns = ["machine.bad_node_patterns=['^FAKE GPU FAULT: device lost$']"] \
        if how == "pattern" else []
    p = _cli("machine=local", *args, *patterns, "launcher.spares=1", "launcher.retry_delay=0",
             "--", PY, str(script), str(tmp_path), "nodeB", how, cwd=tmp_path, env=env)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "holding back 1 spare host: nodeC" in p.stderr
    why = ("rank 1 was killed by SIGKILL" if how == "kill" else
           "rank 1 printed a line matching '^FAKE GPU FAULT: device lost$'")
    assert f"replacing nodeB with spare nodeC ({why}" in p.stderr, p.stderr
    assert "hosts used: nodeA, nodeC; replaced: nodeB -> nodeC; spares left: none" in p.stderr
    # rank 1 ran on nodeB, then on the spare; the job completed there
    assert sorted((tmp_path / "runs").read_text().split("\n")[:-1]) == \
        ["0 nodeA", "0 nodeA", "1 nodeB", "1 nodeC"]
    assert "rank 1 done on nodeC" in p.stdout and "rank 0 done on nodeA" in p.stdout
    # hydra starts an attempt's proxies concurrently: the order within an attempt is free
    reached = ssh_log.read_text().split()
    assert sorted(reached[:2]) == ["nodeA", "nodeB"] and sorted(reached[2:]) == ["nodeA", "nodeC"]
    run = _run_dir(tmp_path)
    assert (run / "hostfile").read_text() == "nodeA\nnodeB\n"
    assert (run / "hostfile.attempt2").read_text() == "nodeA\nnodeC\n"
    record = json.loads((run / "launch.json").read_text())
    first, second = record["attempts"]
    assert first["hosts"] == ["nodeA", "nodeB"] and first["next"] == "failover"
    assert list(first["bad_hosts"]) == ["nodeB"] and first["exit_code"] != 0
    assert second["hosts"] == ["nodeA", "nodeC"] and second["exit_code"] == 0
    assert record["hosts"] == {"used": ["nodeA", "nodeC"], "replaced": {"nodeB": "nodeC"},
                               "spares_left": []}
    failed = json.loads((run / "ranks" / "attempt-1" / "rank-1.json").read_text())
    assert failed["host"] == "nodeB"


@pytest.mark.simnodes
def test_an_exit_code_alone_does_not_cost_a_spare(tmp_path, fake_hosts):
    args, env, _ = fake_hosts
    script = tmp_path / "fault.py"
    script.write_text(NODE_FAULT)
    p = _cli("machine=local", *args, "launcher.spares=1", "--", PY, str(script), str(tmp_path),
             "nodeB", "exit", cwd=tmp_path, env=env)
    assert p.returncode == 3, p.stderr
    assert "replacing" not in p.stderr
    assert re.search(r"attempt 1 failed with exit code 3 after [\d.]+ s: rank 1 on nodeB: exit "
                     r"code 3", p.stderr), p.stderr
    record = json.loads((_run_dir(tmp_path) / "launch.json").read_text())
    assert record["hosts"]["spares_left"] == ["nodeC"] and record["attempts"][0]["next"] is None


# --------------------------------------------------------------------------------------
# the DDP environment: plain init_process_group under mpiexec
# --------------------------------------------------------------------------------------
DDP = textwrap.dedent("""
    import json, os, socket, sys
    import torch, torch.distributed as dist
    dist.init_process_group("gloo")          # env:// : RANK, WORLD_SIZE, MASTER_ADDR/PORT
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.05)
    gen = torch.Generator().manual_seed(rank)
    x = torch.randn(64, 4, generator=gen)
    y = x.sum(dim=1, keepdim=True)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = ((ddp(x) - y) ** 2).mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    w = torch.cat([p.detach().flatten() for p in model.parameters()])
    every = [torch.zeros_like(w) for _ in range(world)]
    dist.all_gather(every, w)
    with open(os.path.join(sys.argv[1], f"ddp.{rank}.json"), "w") as fh:
        json.dump({"rank": rank, "world": world, "local_rank": int(os.environ["LOCAL_RANK"]),
                   "host": socket.gethostname(), "first": losses[0], "last": losses[-1],
                   "same": all(torch.equal(every[0], t) for t in every)}, fh)
    dist.barrier()  # no rank tears gloo down while another still talks to it
    del ddp, opt     # the reducer holds the group: release it before destroying
    dist.destroy_process_group()
    # gloo's threads can abort the interpreter's own teardown (SIGABRT, "terminate called
    # without an active exception") now and then; the job's work is done and recorded here
    sys.stdout.flush()
    os._exit(0)
""")


@pytest.mark.simnodes
@pytest.mark.slow
def test_plain_ddp_trains_across_two_simulated_nodes_under_mpiexec(tmp_path, two_hosts,
                                                                   simnodes_ok):
    script = tmp_path / "ddp.py"
    script.write_text(DDP)
    out = tmp_path / "sim"
    out.mkdir()
    env = simnodes.sim_env(out, check=False, base=_env())
    p = _cli("machine=local", two_hosts, f"launcher.rdzv_port={_free_port()}",
             f"launcher.wrap=['{simnodes.SIMNODE}']", "--", PY, str(script), str(tmp_path),
             cwd=tmp_path, env=env, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    seen = [json.loads((tmp_path / f"ddp.{r}.json").read_text()) for r in (0, 1)]
    assert [(s["rank"], s["world"]) for s in seen] == [(0, 2), (1, 2)]
    assert [s["host"] for s in seen] == ["node0", "node1"], "one rank per simulated node"
    assert all(s["same"] for s in seen), "DDP kept the replicas identical"
    assert all(s["last"] < s["first"] for s in seen), "the model trained"
