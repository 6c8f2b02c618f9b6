"""Bad user input through ezpz-yeet-env: one line naming the key or path and the fix, exit
code 2, no traceback, nothing written or launched. And no shell anywhere in the package."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import simnodes
from ezpz.cli.yeet_env import hydra_quote
from refusal import assert_refused

PY = sys.executable
SRC = Path(__file__).resolve().parent.parent / "src" / "ezpz"


def yeet(*args, cwd, env, wrap=()):
    return subprocess.run([*wrap, PY, "-m", "ezpz.cli.yeet_env", "machine=local", *args],
                          cwd=cwd, capture_output=True, text=True, env=env, timeout=120)


@pytest.fixture
def setup(tmp_path):
    nodes = tmp_path / "nodes"
    nodes.write_text("localhost\n127.0.0.1\n")
    archive = tmp_path / "venv.tar.zst"
    archive.write_bytes(b"\x28\xb5\x2f\xfd" + bytes(64))
    env = {**os.environ, "PBS_NODEFILE": str(nodes), "PBS_JOBID": "1.test"}
    env.pop("EZPZ_LOG_LEVEL", None)
    return tmp_path, archive, env


CASES = {
    "missing-src": (["transfer.src=/no/such/env.tar.zst"],
                    ["transfer.src", "/no/such/env.tar.zst", "does not exist"]),
    "dst-is-a-file": (["transfer.src=ARCHIVE", "transfer.dst=FILE"],
                      ["transfer.dst", "exists and is not a directory", "choose another"]),
    "dst-below-a-file": (["transfer.src=ARCHIVE", "transfer.dst=FILE/sub"],
                         ["transfer.dst", "is not a directory", "choose another"]),
    "chunk-zero": (["transfer.src=ARCHIVE", "transfer.chunk_size=0"],
                   ["transfer.chunk_size", "must be greater than 0"]),
    "chunk-negative": (["transfer.src=ARCHIVE", "transfer.chunk_size=-1MiB"],
                       ["transfer.chunk_size", "must not be negative"]),
    "chunk-abc": (["transfer.src=ARCHIVE", "transfer.chunk_size=abc"],
                  ["transfer.chunk_size", "is not a size", "64MiB"]),
    "unknown-backend": (["transfer.src=ARCHIVE", "transfer.backend=carrier-pigeon"],
                        ["transfer.backend", "choose auto, mpi or torch"]),
    "unknown-machine": (["transfer.src=ARCHIVE", "machine=nosuch"],
                        ["machine=nosuch", "choose one of", "local"]),
    "hostfile-missing": (["transfer.src=ARCHIVE", "launcher.hostfile=/no/such/nodefile"],
                         ["launcher.hostfile", "/no/such/nodefile", "does not exist"]),
    "hostfile-empty": (["transfer.src=ARCHIVE", "launcher.hostfile=EMPTY"],
                       ["launcher.hostfile", "is empty"]),
    "ngpus-uneven": (["transfer.src=ARCHIVE", "launcher.ngpus=3"],
                     ["launcher.ngpus=3", "2 hosts"]),
    "ngpus-inconsistent": (["transfer.src=ARCHIVE", "launcher.ngpus=5", "launcher.nhosts=2",
                            "launcher.ngpu_per_host=2"],
                           ["launcher.ngpus=5 != launcher.nhosts=2 x launcher.ngpu_per_host=2"]),
    "too-many-hosts": (["transfer.src=ARCHIVE", "launcher.nhosts=3"],
                       ["3 hosts requested but the job has 2"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_refused_before_anything_runs(setup, case):
    tmp_path, archive, env = setup
    (tmp_path / "a file").write_text("not a directory")
    (tmp_path / "empty").write_text("")
    subs = {"ARCHIVE": hydra_quote(str(archive)), "FILE": hydra_quote(str(tmp_path / "a file"))[1:-1],
            "EMPTY": hydra_quote(str(tmp_path / "empty"))}
    args, needles = CASES[case]
    args = [a.replace("FILE", subs["FILE"]).replace("ARCHIVE", subs["ARCHIVE"])
            .replace("EMPTY", subs["EMPTY"]) for a in args]
    args = [a.replace("transfer.dst=" + subs["FILE"], "transfer.dst='" + subs["FILE"]) + "'"
            if a.startswith("transfer.dst=") else a for a in args]
    p = yeet(*args, cwd=tmp_path, env=env)
    assert_refused(p, tmp_path, *needles)
    assert (tmp_path / "a file").read_text() == "not a directory"


def test_unreadable_src(setup):
    """Root reads anything: the run drops to an unprivileged user with setpriv."""
    if not shutil.which("setpriv"):
        pytest.skip("setpriv (util-linux) is not installed")
    tmp_path, archive, env = setup
    # a directory of its own that the unprivileged user can enter; the archive mode 000
    work = Path(tempfile.mkdtemp(prefix="ezpz-unreadable-"))
    try:
        work.chmod(0o755)
        shutil.copy(tmp_path / "nodes", work / "nodes")
        (work / "nodes").chmod(0o644)
        env["PBS_NODEFILE"] = str(work / "nodes")
        target = work / "venv.tar.zst"
        shutil.copy(archive, target)
        target.chmod(0o000)
        p = yeet(f"transfer.src={hydra_quote(str(target))}", cwd=work, env=env,
                 wrap=["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"])
        assert_refused(p, work, "transfer.src: cannot read", str(target), "Permission denied",
                       "chmod a+r")
        # a file in a directory the user cannot enter is refused the same way
        p = yeet(f"transfer.src={hydra_quote(str(archive))}", cwd=work, env=env,
                 wrap=["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"])
        assert_refused(p, work, "transfer.src: cannot read", str(archive), "Permission denied")
    finally:
        shutil.rmtree(work)


def test_dst_on_a_read_only_location(setup, simnodes_ok):
    """ezpz-yeet-env itself runs as a simulated node whose /tmp is mounted read-only."""
    tmp_path, archive, env = setup
    env = simnodes.sim_env(tmp_path / "unused", readonly_node="node0", check=False, base=env)
    env.pop("EZPZ_SIM_OUT")
    p = yeet(f"transfer.src={hydra_quote(str(archive))}", "transfer.dst=/tmp/venv",
             cwd=tmp_path, env=env, wrap=[simnodes.SIMNODE])
    assert_refused(p, tmp_path, "transfer.dst: /tmp is on a read-only filesystem",
                   "transfer.dst=/tmp/ezpz-")


# --------------------------------------------------------------------------------------
# no shell anywhere in the package
# --------------------------------------------------------------------------------------
_RUNNERS = {"run", "Popen", "call", "check_call", "check_output", "getoutput",
            "getstatusoutput", "create_subprocess_shell", "create_subprocess_exec",
            "spawnl", "spawnlp", "execl", "execlp"}


def _is_string_built(node: ast.AST) -> bool:
    """An f-string, a string literal, concatenation/%-formatting or str.format(...)."""
    if isinstance(node, ast.JoinedStr):
        return True
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return True
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mod)):
        return _is_string_built(node.left) or _is_string_built(node.right)
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
        and node.func.attr in ("format", "join")


def shell_uses(source: str, filename: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        owner = getattr(func.value, "id", "") if isinstance(func, ast.Attribute) else ""
        where = f"{filename}:{node.lineno}"
        for kw in node.keywords:
            if kw.arg == "shell" and not (isinstance(kw.value, ast.Constant)
                                          and kw.value.value is False):
                found.append(f"{where}: shell=")
        if owner == "os" and name in ("system", "popen"):
            found.append(f"{where}: os.{name}")
        if name in ("getoutput", "getstatusoutput", "create_subprocess_shell"):
            found.append(f"{where}: {name}")
        if name in _RUNNERS and node.args and _is_string_built(node.args[0]):
            found.append(f"{where}: {name}() with a command built as a string")
    return found


def test_the_scanner_finds_shell_uses():
    bad = ("import os, subprocess\nos.system('ls')\nsubprocess.run(f'ls {x}')\n"
           "subprocess.Popen(['ls'], shell=True)\nos.popen('x')\n"
           "subprocess.check_output('ls ' + p)\nsubprocess.call(' '.join(argv))\n")
    assert len(shell_uses(bad, "bad.py")) == 6
    good = "import subprocess\nsubprocess.run(['tar', '-x', path], check=True)\n"
    assert shell_uses(good, "good.py") == []


def test_no_shell_in_the_package():
    files = sorted(SRC.rglob("*.py"))
    assert len(files) > 10
    found = [hit for f in files for hit in shell_uses(f.read_text(), str(f.relative_to(SRC)))]
    assert found == []
