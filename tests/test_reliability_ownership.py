"""Ownership, end to end: ezpz replaces or removes only a tree it installed itself.

- A careless user's dst (/tmp, /tmp/, $HOME, the archive's directory, the running venv, the
  current directory, a mount point, an existing directory), with and without
  ``transfer.overwrite``: refused in one line before anything starts (ezpz-yeet-env: exit 2,
  no run directory), and again on every simulated node; canaries intact.
- Other users: a pre-created per-user directory or a forged marker of another uid is
  refused, never ``skipped``; planted symbolic links at the lock or the kept archive are
  refused and their targets untouched.
- keep_archive into two dsts at once, a relative or shared dst, every bad config value.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from ezpz.cli.yeet_env import hydra_quote
from ezpz.ownership import user_name
from ezpz.transfer.plan import archive_id
from refusal import assert_refused
from test_reliability_concurrency import env_tar
from test_transfer import run
from trees import tree as snapshot

PY = sys.executable
OTHER_UID = 65534
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")


def cli(module: str, *args, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", module, *args], cwd=cwd, capture_output=True, text=True,
                          env=env, timeout=120)


@pytest.fixture
def world(tmp_path):
    """An archive in its own directory, a home and a work directory, each with a canary."""
    arch = tmp_path / "arch"
    arch.mkdir()
    src = env_tar(arch / "venv.tar", "OWN", nfiles=3, size=2000)
    (arch / "canary").write_text("next to the archive")
    home = tmp_path / "home"
    home.mkdir()
    (home / "canary").write_text("in the home directory")
    work = tmp_path / "work"
    work.mkdir()
    (work / "canary").write_text("in the current directory")
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "canary").write_text("someone's directory")
    nodes = tmp_path / "nodefile"
    nodes.write_text("localhost\n127.0.0.1\n")
    env = {**os.environ, "HOME": str(home), "PBS_NODEFILE": str(nodes), "PBS_JOBID": "1.t"}
    env.pop("EZPZ_LOG_LEVEL", None)
    return {"tmp": tmp_path, "src": src, "arch": arch, "home": home, "work": work,
            "victim": victim, "env": env}


def _mount_point() -> str:
    return next(p for p in ("/dev/shm", "/run", "/sys", "/proc") if os.path.ismount(p))


CARELESS = {
    "tmp": ("/tmp", "transfer.dst: /tmp contains"),
    "tmp-slash": ("/tmp/", "transfer.dst: /tmp contains"),
    "root": ("/", "transfer.dst: / is the filesystem root"),
    "home": ("HOME", "is your home directory"),
    "home-parent": ("TMP", "contains your home directory"),
    "archive-dir": ("ARCH", "contains transfer.src"),
    "running-venv": (sys.prefix, "is the running Python's environment"),
    "cwd": ("WORK", "is the current directory"),
    "mount-point": (_mount_point(), "is a mount point"),
    "existing-dir": ("VICTIM", "exists and is not an ezpz install of yours (it holds no ezpz "
                               "marker); ezpz never replaces it, whatever transfer.overwrite says"),
}


@pytest.mark.parametrize("overwrite", [False, True])
@pytest.mark.parametrize("case", sorted(CARELESS))
def test_a_careless_dst_is_refused_before_anything_starts(world, case, overwrite):
    dst, needle = CARELESS[case]
    dst = {"HOME": str(world["home"]), "TMP": str(world["tmp"]), "ARCH": str(world["arch"]),
           "WORK": str(world["work"]), "VICTIM": str(world["victim"])}.get(dst, dst)
    before = snapshot(world["tmp"])
    p = cli("ezpz.cli.yeet_env", "machine=local", f"transfer.src={hydra_quote(str(world['src']))}",
            f"transfer.dst={hydra_quote(dst)}", f"transfer.overwrite={str(overwrite).lower()}",
            "launcher.dry_run=true", cwd=world["work"], env=world["env"])
    line = assert_refused(p, world["work"], "transfer.dst: ", needle)
    assert "ezpz never" in line
    assert snapshot(world["tmp"]) == before, "a refused run changed files"


@pytest.mark.simnodes
@pytest.mark.parametrize("overwrite", [False, True])
@pytest.mark.parametrize("case", ["tmp", "tmp-slash", "home", "archive-dir", "existing"])
def test_every_node_refuses_a_careless_dst(run_nodes, python, world, case, overwrite):
    """The worker started without ezpz-yeet-env: each node checks again, nothing removed."""
    root = world["tmp"] / "nodes"
    for k in ("node0", "node1"):
        (root / k / "victim").mkdir(parents=True)
        (root / k / "victim" / "canary").write_text("a user's directory in the node's /tmp")
    dst, needle = {
        "tmp": ("/tmp", "transfer.dst: /tmp "),
        "tmp-slash": ("/tmp/", "transfer.dst: /tmp "),
        "home": (str(world["home"]), "is your home directory; ezpz never installs there"),
        "archive-dir": (str(world["arch"]), "contains transfer.src"),
        "existing": ("/tmp/victim", "exists and is not an ezpz install of yours"),
    }[case]
    (world["tmp"] / "w").mkdir()
    before = snapshot(world["tmp"])
    res, results = run(run_nodes, python, 2, world["tmp"] / "w", src=str(world["src"]), dst=dst,
                       overwrite=overwrite, env=world["env"], shared_root=str(root), timeout=60)
    assert res.returncode != 0
    assert results["status"] == "failed"
    for p in results["per_node"]:
        assert p["status"] == "failed" and needle in p["error"], p["error"]
        assert "\n" not in p["error"]
    after = snapshot(world["tmp"])
    for path, entry in before.items():  # everything that was there is there, unchanged
        assert after.get(path) == entry, path
    for k in ("node0", "node1"):
        assert sorted(os.listdir(root / k)) == ["victim"]
        assert (root / k / "victim" / "canary").read_text().startswith("a user's")


@pytest.mark.parametrize("overwrite", [False, True])
@pytest.mark.parametrize("target", ["a-users-file", "the-archive-itself"])
def test_a_file_dst_is_never_what_ezpz_did_not_deliver(world, target, overwrite):
    """decompress=false: the same rule for a file dst."""
    mine = world["work"] / "results.csv"
    mine.write_text("a user's file")
    dst, needle = {"a-users-file": (mine, "exists and is not an ezpz install of yours (it "
                                          "holds no ezpz marker)"),
                   "the-archive-itself": (world["src"], "is transfer.src")}[target]
    before = snapshot(world["tmp"])
    p = cli("ezpz.cli.yeet_env", "machine=local", f"transfer.src={hydra_quote(str(world['src']))}",
            f"transfer.dst={hydra_quote(str(dst))}", "transfer.decompress=false",
            f"transfer.overwrite={str(overwrite).lower()}", "launcher.dry_run=true",
            cwd=world["work"], env=world["env"])
    assert_refused(p, world["work"], f"transfer.dst: {dst} ", needle)
    assert snapshot(world["tmp"]) == before


# --------------------------------------------------------------------------------------
# other users
# --------------------------------------------------------------------------------------
@needs_root
@pytest.mark.simnodes
def test_another_users_per_user_directory_is_refused(run_nodes, python, tmp_path):
    src = env_tar(tmp_path / "venv.tar", "OWN", nfiles=2)
    root = tmp_path / "nodes"
    theirs = root / "node1" / f"ezpz-{user_name()}"
    theirs.mkdir(parents=True, mode=0o755)
    (root / "node0").mkdir()
    os.chown(theirs, OTHER_UID, OTHER_UID)
    res, results = run(run_nodes, python, 2, tmp_path, src=str(src), dst=None,
                       shared_root=str(root), timeout=60)
    assert res.returncode != 0 and results["status"] == "failed"
    assert results["dst"] == f"/tmp/ezpz-{user_name()}/venv"
    by_host = {p["host"]: p for p in results["per_node"]}
    assert by_host["node1"]["status"] == "failed"
    assert f"the per-user directory /tmp/ezpz-{user_name()} cannot be used (it belongs to " \
        in by_host["node1"]["error"] and "uid 65534" in by_host["node1"]["error"]
    assert os.listdir(theirs) == [] and theirs.stat().st_uid == OTHER_UID
    # node0 made its own, private
    mine = root / "node0" / f"ezpz-{user_name()}"
    assert (mine.stat().st_mode & 0o777) == 0o700
    assert (mine / "venv" / "ok.txt").read_text() == "OWN\n"


@needs_root
@pytest.mark.simnodes
@pytest.mark.parametrize("forged", ["tree-of-another-user", "marker-of-another-user",
                                    "ezpz-dir-a-link"])
def test_a_forged_marker_is_refused_never_skipped(run_nodes, python, tmp_path, forged):
    src = env_tar(tmp_path / "venv.tar", "OWN", nfiles=2)
    st = src.stat()
    ident = archive_id(str(src), st.st_size, st.st_mtime_ns)
    root = tmp_path / "nodes"
    (root / "node0").mkdir(parents=True)
    tree = root / "node1" / "venv"
    (tree / ".ezpz").mkdir(parents=True)
    (tree / "bin").mkdir()
    (tree / "bin" / "python").write_text("#!/bin/sh\necho the attacker's code\n")
    marker = {"archive_id": ident, "src": str(src)}
    if forged == "ezpz-dir-a-link":
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        (elsewhere / "installed.json").write_text(json.dumps(marker))
        (tree / ".ezpz").rmdir()
        (tree / ".ezpz").symlink_to(elsewhere)
    else:
        (tree / ".ezpz" / "installed.json").write_text(json.dumps(marker))
        owned = [tree / ".ezpz" / "installed.json"]
        if forged == "tree-of-another-user":
            owned += [tree, tree / ".ezpz", tree / "bin", tree / "bin" / "python"]
        for p in owned:
            os.chown(p, OTHER_UID, OTHER_UID)
    before = snapshot(root / "node1")
    for overwrite in (False, True):
        res, results = run(run_nodes, python, 2, tmp_path, src=str(src), overwrite=overwrite,
                           shared_root=str(root), timeout=60)
        by_host = {p["host"]: p for p in results["per_node"]}
        assert by_host["node1"]["status"] == "failed", by_host  # never "skipped"
        assert "exists and is not an ezpz install of yours" in by_host["node1"]["error"]
        assert res.returncode != 0
        assert snapshot(root / "node1") == before
    assert (root / "node0" / "venv" / "ok.txt").read_text() == "OWN\n"


@pytest.mark.simnodes
@pytest.mark.parametrize("where", ["lock", "kept-archive"])
def test_a_planted_symlink_is_refused_and_its_target_untouched(run_nodes, python, tmp_path,
                                                               where):
    src = env_tar(tmp_path / "venv.tar", "OWN", nfiles=2)
    root = tmp_path / "nodes"
    target = tmp_path / "target"
    target.write_text("precious")
    target.chmod(0o600)
    (root / "node0").mkdir(parents=True)
    (root / "node1").mkdir()
    planted = root / "node1" / (".venv.ezpz-lock" if where == "lock" else "venv.tar")
    planted.symlink_to(target)
    res, results = run(run_nodes, python, 2, tmp_path, src=str(src), keep_archive=True,
                       shared_root=str(root), timeout=60)
    assert res.returncode != 0
    by_host = {p["host"]: p for p in results["per_node"]}
    err = by_host["node1"]["error"]
    if where == "lock":
        assert err.startswith("the lock /tmp/.venv.ezpz-lock is a symbolic link"), err
    else:
        assert err.startswith("transfer.keep_archive: /tmp/venv.tar exists and is not an "
                              "archive ezpz kept (it is a symbolic link)"), err
    assert target.read_text() == "precious" and (target.stat().st_mode & 0o777) == 0o600
    assert os.readlink(planted) == str(target)
    assert sorted(os.listdir(root / "node1")) == [planted.name]
    assert sorted(os.listdir(root / "node0")) == [".venv.tar.ezpz-installed.json", "venv",
                                                  "venv.tar"]


# --------------------------------------------------------------------------------------
# keep_archive twice at once; relative and shared dst
# --------------------------------------------------------------------------------------
@pytest.mark.simnodes
def test_keep_archive_into_two_dsts_at_once(run_nodes, python, tmp_path):
    src = env_tar(tmp_path / "venv.tar", "BOTH", nfiles=40, size=20_000)
    root = tmp_path / "nodes"
    out: dict[str, object] = {}

    def go(name: str) -> None:
        (tmp_path / name).mkdir()
        out[name] = run(run_nodes, python, 2, tmp_path / name, src=str(src), dst=f"/tmp/{name}",
                        keep_archive=True, chunk_size="8KiB", shared_root=str(root), timeout=90)

    threads = [threading.Thread(target=go, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(150)
    for name in ("a", "b"):
        res, results = out[name]
        assert res.returncode == 0, res.output
        assert results["status"] == "ok"
    for k in ("node0", "node1"):
        assert sorted(os.listdir(root / k)) == [".venv.tar.ezpz-installed.json", "a", "b",
                                                "venv.tar"]
        assert (root / k / "venv.tar").read_bytes() == src.read_bytes()
        assert (root / k / "a" / "ok.txt").read_text() == "BOTH\n"


@pytest.mark.simnodes
def test_a_dst_shared_by_the_nodes_is_refused_at_once(run_nodes, python, tmp_path):
    src = env_tar(tmp_path / "venv.tar", "OWN", nfiles=2)
    shared = tmp_path / "lustre" / "envs"  # every simulated node sees /var/tmp
    res, results = run(run_nodes, python, 3, tmp_path, src=str(src), dst=str(shared / "venv"),
                       timeout=120)
    assert res.returncode != 0 and results["status"] == "failed"
    for p in results["per_node"]:
        assert p["error"].startswith(f"transfer.dst: {shared} is one directory shared by "
                                     "several nodes"), p["error"]
        assert "still running" not in p["error"]
    assert os.listdir(shared) == []  # no token, lock, staging or tree


def test_a_relative_dst_is_refused_by_the_worker(tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("transfer:\n  src: /x/venv.tar\n  dst: venv\n")
    p = cli("ezpz.transfer", "--config-file", str(cfg), cwd=tmp_path, env=dict(os.environ))
    assert_refused(p, tmp_path, "transfer.dst: 'venv' is relative", "absolute")


# --------------------------------------------------------------------------------------
# every bad value: one line, exit 2, no run directory, nothing written
# --------------------------------------------------------------------------------------
BAD_VALUES = {
    "timeout-nan": (["transfer.timeout=nan"], "transfer.timeout: must be more than 0 and at most"),
    "timeout-inf": (["transfer.timeout=inf"], "transfer.timeout: must be more than 0"),
    "timeout-huge": (["transfer.timeout=1e30"], "at most 86400 seconds, got 1e+30"),
    "timeout-zero": (["transfer.timeout=0"], "transfer.timeout: must be more than 0"),
    "timeout-negative": (["transfer.timeout=-5"], "transfer.timeout: must be more than 0"),
    "depth-zero": (["transfer.depth=0"], "transfer.depth: must be 1 to 1024, got 0"),
    "depth-huge": (["transfer.depth=100000"], "transfer.depth: must be 1 to 1024"),
    "chunk-too-big": (["transfer.chunk_size=3GiB"],
                      "transfer.chunk_size x transfer.depth = 3.0 GiB x 4 = 12.0 GiB is more "
                      "than transfer.memory_budget=256MiB"),
    "depth-too-big": (["transfer.chunk_size=64MiB", "transfer.depth=5"],
                      "64.0 MiB x 5 = 320.0 MiB is more than transfer.memory_budget"),
    "budget-abc": (["transfer.memory_budget=abc"], "transfer.memory_budget: 'abc' is not a size"),
    "repeat-zero": (["transfer.repeat=0"], "transfer.repeat: must be 1 to 1000"),
    "repeat-huge": (["transfer.repeat=1000000"], "transfer.repeat: must be 1 to 1000"),
    "unknown-key": (["transfer.foo=1"], "transfer.foo: unknown key"),
    "unknown-key-plus": (["+transfer.foo=1"], "transfer.foo: unknown key (not in TransferConfig)"),
    "unknown-key-plusplus": (["++transfer.foo=1"], "transfer.foo: unknown key"),
    "unknown-top-key": (["+foo=1"], "foo: unknown key (not in YeetConfig)"),
    "src-empty-string": (["transfer.src=''"], "transfer.src: is empty"),
    "src-empty-file": (["transfer.src=EMPTY"], "is empty (0 bytes), not an archive"),
    "src-fifo": (["transfer.src=FIFO"], "transfer.src: ", "is neither a file nor a directory"),
    "dst-empty": (["transfer.dst=''"], "transfer.dst: is empty"),
    "dst-relative": (["transfer.dst=venv"], "transfer.dst: 'venv' is relative"),
    "dst-tilde": (["transfer.dst=~/venv"], "is relative"),
    "dst-quote": (["transfer.dst=DST'q"], "contains '"),
    "dst-double-quote": (['transfer.dst=DST"q'], 'contains "'),
    "dst-dollar": (["transfer.dst=DST$HOME"], "contains $"),
    "dst-backslash": (["transfer.dst=DST\\x"], "contains \\"),
    "dst-backquote": (["transfer.dst=DST`id`"], "contains `"),
    "dst-newline": (["transfer.dst=DST\nx"], "contains \\n"),
    "dst-reserved-name": (["transfer.dst=/tmp/x.ezpz-staging-1"], "are ezpz's own"),
    "dst-name-too-long": (["transfer.dst=/tmp/" + "n" * 240], "is longer than 200 bytes"),
    "min-fraction-nan": (["transfer.min_success_fraction=nan"], "must be in (0, 1]"),
}


@pytest.mark.parametrize("case", sorted(BAD_VALUES))
def test_every_bad_value_is_one_line(world, case):
    args, *needles = BAD_VALUES[case]
    work = world["work"]
    (work / "empty.tar.zst").write_bytes(b"")
    os.mkfifo(work / "fifo")
    subs = {"EMPTY": str(work / "empty.tar.zst"), "FIFO": str(work / "fifo"),
            "DST": "/tmp/x"}
    overrides = []
    for a in args:
        key, _, value = a.partition("=")
        for k, v in subs.items():
            value = value.replace(k, v)
        overrides.append(f"{key}={hydra_quote(value)}" if value and value != "''" else a)
    src = [] if any(a.startswith("transfer.src") for a in args) else \
        [f"transfer.src={hydra_quote(str(world['src']))}"]
    before = snapshot(world["tmp"])
    p = cli("ezpz.cli.yeet_env", "machine=local", *src, *overrides, cwd=work, env=world["env"])
    assert_refused(p, work, *needles)
    assert snapshot(world["tmp"]) == before


def test_bad_values_through_the_worker_are_one_line(tmp_path):
    for body, needle in [("  timeout: .nan\n", "transfer.timeout: must be more than 0"),
                         ("  dst: '/tmp/a$b'\n", "contains $"),
                         ("  chunk_size: 1GiB\n", "is more than transfer.memory_budget")]:
        cfg = tmp_path / "cfg.yaml"
        cfg.write_text("transfer:\n  src: /x/venv.tar\n" + body)
        p = cli("ezpz.transfer", "--config-file", str(cfg), cwd=tmp_path, env=dict(os.environ))
        assert_refused(p, tmp_path, needle)


@pytest.mark.parametrize("case", ["directory", "home", "foreign-file", "symlink", "threads",
                                  "unknown-key"])
def test_tar_env_archive_path_is_never_what_ezpz_did_not_write(world, case):
    """ezpz-tar-env: archive.path is a file ezpz may replace only when it holds an ezpz
    archive of the user's; refused before a run directory exists, whatever overwrite says."""
    work, tmp = world["work"], world["tmp"]
    subprocess.run([PY, "-m", "venv", "--without-pip", str(tmp / "env")], check=True)
    (tmp / "foreign.tar.zst").write_text("the user's own data")
    (tmp / "link.tar.zst").symlink_to(tmp / "foreign.tar.zst")
    args, needle = {
        "directory": ([f"archive.path={hydra_quote(str(tmp / 'arch'))}"], "is a directory"),
        "home": ([f"archive.path={hydra_quote(str(world['home']))}"], "is a directory"),
        "foreign-file": ([f"archive.path={hydra_quote(str(tmp / 'foreign.tar.zst'))}"],
                         "exists and is not an ezpz archive of yours (it holds no ezpz "
                         "manifest); ezpz never replaces it, whatever overwrite says"),
        "symlink": ([f"archive.path={hydra_quote(str(tmp / 'link.tar.zst'))}"],
                    "(it is a symbolic link)"),
        "threads": (["archive.threads=100000"], "archive.threads: must be 0 (all cores) to"),
        "unknown-key": (["+archive.foo=1"], "archive.foo: unknown key"),
    }[case]
    before = snapshot(tmp)
    for overwrite in ("false", "true"):
        p = cli("ezpz.cli.tar_env", f"env.prefix={hydra_quote(str(tmp / 'env'))}", *args,
                f"overwrite={overwrite}", cwd=work, env=world["env"])
        assert_refused(p, work, needle)
        assert snapshot(tmp) == before
