"""Running launch commands: output filters, exit codes, signal forwarding, dry run, and
``ezpz-launch`` end to end with the venv's real mpiexec (ranks on this machine)."""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from ezpz.errors import LaunchError
from ezpz.launch import launch, run_command

PY = sys.executable
NOISE = ["Overriding a previously registered kernel", r"\|CCL_WARN\|",
         "PMIX ERROR: PMIX_ERR_NOT_FOUND", r"operator: aten::_cummax_helper\("]
CHATTY = textwrap.dedent("""
    import sys
    print("real line 1")
    print("[W] Overriding a previously registered kernel for the same operator")
    print("2024:|CCL_WARN| something", file=sys.stderr)
    print("real line 2", file=sys.stderr)
    print("PMIX ERROR: PMIX_ERR_NOT_FOUND in file x")
    print("  operator: aten::_cummax_helper(Tensor self)")
    print("real line 3 a'; echo x")
    sys.exit(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
""")


@pytest.fixture
def chatty(tmp_path) -> Path:
    p = tmp_path / "chatty.py"
    p.write_text(CHATTY)
    return p


def test_filters_drop_known_noise_only(chatty, monkeypatch):
    monkeypatch.delenv("EZPZ_LOG_LEVEL", raising=False)
    out = io.StringIO()
    rc = run_command([PY, str(chatty)], NOISE, out=out)
    assert rc == 0
    assert out.getvalue().splitlines() == ["real line 1", "real line 2", "real line 3 a'; echo x"]


def test_debug_disables_filters(chatty, monkeypatch):
    monkeypatch.setenv("EZPZ_LOG_LEVEL", "DEBUG")
    out = io.StringIO()
    assert run_command([PY, str(chatty)], NOISE, out=out) == 0
    lines = out.getvalue().splitlines()
    assert len(lines) == 7 and "2024:|CCL_WARN| something" in lines


@pytest.mark.parametrize("code", [0, 3, 42])
def test_exit_code_is_propagated(chatty, code):
    assert run_command([PY, str(chatty), str(code)], [], out=io.StringIO()) == code


def test_killed_child_maps_to_128_plus_signal():
    rc = run_command([PY, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGTERM)"],
                     out=io.StringIO())
    assert rc == 128 + signal.SIGTERM


def test_string_command_is_split_not_shelled(tmp_path):
    marker = tmp_path / "pwned"
    out = io.StringIO()
    rc = run_command(f"{PY} -c 'import sys; print(sys.argv[1:])' 'a; touch {marker}'", out=out)
    assert rc == 0 and not marker.exists()
    assert out.getvalue().strip() == f"['a; touch {marker}']"


def test_missing_executable_is_a_launch_error(tmp_path):
    with pytest.raises(LaunchError, match=r"cannot run '.*nope': no such file or command on PATH"):
        run_command([str(tmp_path / "nope")])


def test_compat_launch_with_explicit_launch_cmd(chatty, monkeypatch):
    monkeypatch.delenv("EZPZ_LOG_LEVEL", raising=False)
    rc = launch(launch_cmd=[PY], cmd_to_launch=f"{chatty} 5", filters=["real line 2"])
    assert rc == 5


def test_compat_launch_include_python_and_empty_command(capfd):
    assert launch(launch_cmd="env", cmd_to_launch=["-c", "print('hi from python')"],
                  include_python=True) == 0
    assert "hi from python" in capfd.readouterr().out
    with pytest.raises(LaunchError, match="cmd_to_launch is empty"):
        launch(cmd_to_launch="")


# --------------------------------------------------------------------------------------
# ezpz-launch as users run it
# --------------------------------------------------------------------------------------
def _cli(*args, cwd, env=None, timeout=120):
    return subprocess.run([PY, "-m", "ezpz.cli.launch", *args], cwd=cwd, capture_output=True,
                          text=True, env=env, timeout=timeout)


def _hf(path: Path) -> str:
    """launcher.hostfile=... in Hydra's override syntax (the path holds a quote and a space)."""
    return f'launcher.hostfile="{path}"'


@pytest.fixture
def two_local_hosts(tmp_path) -> Path:
    """A fake PBS node file: two names for this machine, one line per slot."""
    p = tmp_path / "pbs nodes 'x'"
    p.write_text("localhost\nlocalhost\n127.0.0.1\n127.0.0.1\n")
    return p


def test_ezpz_launch_runs_one_rank_per_host_with_real_mpiexec(tmp_path, two_local_hosts):
    env = {**os.environ, "PBS_NODEFILE": str(two_local_hosts), "PBS_JOBID": "123.fake"}
    env.pop("EZPZ_LOG_LEVEL", None)
    p = _cli("machine=local", "launcher.filters=[NOISE]", "--", PY, "-c",
             "import os, sys; "
             "os.write(1, f\"rank {os.environ['PMI_RANK']} {sys.argv[1]}\\nNOISE\\n\".encode())",
             "a'; echo x", cwd=tmp_path, env=env)
    assert p.returncode == 0, p.stderr
    # mpiexec forwards each rank's output in chunks: lines of two ranks may share a line
    assert sorted(re.findall(r"rank (\d) a'; echo x", p.stdout)) == ["0", "1"], p.stdout
    assert "NOISE" not in p.stdout
    # no GPUs on this machine: processes, never a claim of GPUs
    assert "Using 2 processes [2 hosts] x [1 per host] (no GPUs)" in p.stderr
    assert "GPUs [" not in p.stderr
    assert "filtering output with 1 filters" in p.stderr
    assert "-n 2 -ppn 1 -hosts localhost" in p.stderr  # the resolved command is logged


def test_ezpz_launch_propagates_the_exit_code(tmp_path, two_local_hosts):
    p = _cli(_hf(two_local_hosts), "machine=local", "launcher.nhosts=1", "--",
             PY, "-c", "import sys; sys.exit(7)", cwd=tmp_path)
    assert p.returncode == 7, p.stderr
    assert "finished with exit code 7" in p.stderr


def test_ezpz_launch_dry_run_prints_and_runs_nothing(tmp_path, two_local_hosts):
    marker = tmp_path / "ran"
    env = {**os.environ, "CPU_BIND": "list:1-8"}
    p = _cli("machine=polaris", _hf(two_local_hosts), "launcher.dry_run=true",
             "--", PY, "-c", f"open({str(marker)!r}, 'w')", cwd=tmp_path, env=env)
    assert p.returncode == 0, p.stderr
    line = p.stdout.strip()
    exe, rest = line.split(" ", 1)
    assert exe.endswith("mpiexec") and rest.startswith("--envall --np=8 --ppn=4 --hostfile=")
    assert "--cpu-bind=list:1-8 --line-buffer --depth=8" in line
    assert "CPU_BIND from the environment overrides machine.cpu_bind: list:1-8" in p.stderr
    assert not marker.exists()


@pytest.mark.parametrize("args, message", [
    ([], "error: no command to launch: give it after -- (ezpz-launch [overrides] -- cmd ...)"),
    (["launcher.hostfile=/nonexistent/nodes", "--", "MARK"],
     "error: launcher.hostfile: '/nonexistent/nodes' does not exist"),
    (["machine=aurora", "HF", "launcher.ngpus=30", "--", "MARK"],
     "error: launcher.ngpus=30 is more than the 24 GPUs available (2 hosts x 12 per host)"),
    (["launcher.ngpus=0", "--", "MARK"], "error: launcher.ngpus: must be at least 1, got 0"),
])
def test_ezpz_launch_bad_input_is_one_line_exit_2(tmp_path, two_local_hosts, args, message):
    marker = tmp_path / "ran"
    argv: list[str] = []
    for a in args:
        if a == "HF":
            argv.append(_hf(two_local_hosts))
        elif a == "MARK":
            argv += [PY, "-c", f"open({str(marker)!r}, 'w')"]
        else:
            argv.append(a)
    p = _cli(*argv, cwd=tmp_path)
    assert p.returncode == 2
    assert p.stderr.strip().splitlines()[-1] == message
    assert not marker.exists()
    assert not list(tmp_path.rglob("hostfile")), "no hostfile may be written"


SLEEPER = textwrap.dedent("""
    import os, sys, time
    path = os.path.join(sys.argv[1], f"pid.{os.environ.get('PMI_RANK', '0')}")
    with open(path + ".tmp", "w") as fh:
        fh.write(str(os.getpid()))
    os.rename(path + ".tmp", path)
    print("sleeping", flush=True)
    time.sleep(600)
""")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _wait_for(predicate, limit: float = 60.0) -> bool:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_reaches_the_whole_child_group(tmp_path, two_local_hosts, sig):
    """A sleeping rank under mpiexec is gone after SIGINT/SIGTERM to ezpz-launch."""
    script = tmp_path / "sleeper.py"
    script.write_text(SLEEPER)
    proc = subprocess.Popen([PY, "-m", "ezpz.cli.launch", "machine=local",
                             _hf(two_local_hosts), "--", PY, str(script),
                             str(tmp_path)], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        pidfiles = [tmp_path / "pid.0", tmp_path / "pid.1"]
        started = _wait_for(lambda: all(p.exists() for p in pidfiles) or proc.poll() is not None)
        assert started and proc.poll() is None, proc.communicate()[0]
        pids = [int(p.read_text()) for p in pidfiles]
        assert all(_alive(pid) for pid in pids)
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + sig, out
    assert (f"received {signal.Signals(sig).name}: passing it to mpiexec, which passes it on to "
            "every rank") in out
    assert _wait_for(lambda: not any(_alive(pid) for pid in pids), 10), "a rank survived"


def test_ezpz_launch_torchrun_one_per_host_with_real_torchrun(tmp_path, two_local_hosts):
    """mpiexec starts one real torchrun per host; c10d rendezvous on the first host."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = tmp_path / "who.py"
    script.write_text("import os\n"
                      "open(os.path.join(os.path.dirname(__file__), 'rank.' + os.environ['RANK']),"
                      " 'w').write(os.environ['WORLD_SIZE'] + ' ' + os.environ['LOCAL_RANK'])\n")
    p = _cli("machine=local", "launcher=torchrun", _hf(two_local_hosts),
             f"launcher.rdzv_port={port}", "--", str(script), cwd=tmp_path, timeout=240)
    assert p.returncode == 0, p.stdout + p.stderr
    assert [(tmp_path / f"rank.{r}").read_text() for r in (0, 1)] == ["2 0", "2 0"]
    assert f"--rdzv-endpoint=localhost:{port}" in p.stderr


def test_ezpz_launch_debug_shows_everything_and_lists_the_filters(tmp_path, chatty,
                                                                  two_local_hosts):
    common = ["machine=local", _hf(two_local_hosts), "launcher.nhosts=1",
              "machine.filters=[Overriding a previously registered kernel,'\\|CCL_WARN\\|']",
              "--", PY, str(chatty)]
    quiet = _cli(*common, cwd=tmp_path, env={**os.environ, "EZPZ_LOG_LEVEL": "INFO"})
    assert quiet.returncode == 0, quiet.stderr
    assert "Overriding" not in quiet.stdout + quiet.stderr and "CCL_WARN|" not in quiet.stdout
    assert "filtering output with 2 filters" in quiet.stderr
    loud = _cli(*common, cwd=tmp_path, env={**os.environ, "EZPZ_LOG_LEVEL": "DEBUG"})
    assert loud.returncode == 0, loud.stderr
    assert "[W] Overriding a previously registered kernel" in loud.stdout
    assert "2024:|CCL_WARN| something" in loud.stdout
    assert ("output filters disabled by EZPZ_LOG_LEVEL=DEBUG: "
            "['Overriding a previously registered kernel', '\\\\|CCL_WARN\\\\|']") in loud.stderr
