"""Ownership, in-process: what ezpz counts as its own (marker, lock, staging, the per-user
directory), the paths that are never a destination, default names, the lock's life, and
the node checks of the orchestration over LocalComm (shared dst, umask 002, keep_archive
twice at once)."""

from __future__ import annotations

import json
import os
import stat
import sys
import threading
import time
from pathlib import Path

import pytest

from ezpz.config import Backend, Status
from ezpz.errors import TransferError
from ezpz.ownership import (
    foreign_reason,
    protected_paths,
    protected_reason,
    read_private_json,
    user_dir,
    user_name,
)
from ezpz.transfer import WorkerSpec
from ezpz.transfer.node import Action, NodeInstall, install_state
from ezpz.transfer.plan import default_dst, env_name, visible_name
from ezpz.transfer.spec import Plan
from test_transfer_local import make_archive, run_job

OTHER_UID = 65534  # nobody

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")


def node_for(tmp_path: Path, *, dst: str | None = None, plan_id: str = "A" * 32,
             **spec_changes) -> NodeInstall:
    archive = tmp_path / "env.tar"
    if not archive.exists():
        make_archive(archive, {"f.txt": b"x"})
    spec = WorkerSpec(src=str(archive), dst=dst or str(tmp_path / "n" / "env"),
                      backend=Backend.mpi, chunk_bytes=4096, **spec_changes)
    plan = Plan(src=str(archive), bytes=archive.stat().st_size, id=plan_id, codec="none")
    return NodeInstall(spec, plan, "h")


def fake_install(dst: Path, archive_id: str = "A" * 32) -> Path:
    """A tree laid out as ezpz installs one (top, .ezpz/, marker), modes 0755/0644."""
    (dst / ".ezpz").mkdir(parents=True)
    (dst / "canary").write_text("keep me")
    (dst / ".ezpz" / "installed.json").write_text(json.dumps({"archive_id": archive_id,
                                                              "src": "/x/env.tar"}))
    for p in (dst, dst / ".ezpz"):
        p.chmod(0o755)
    (dst / ".ezpz" / "installed.json").chmod(0o644)
    return dst


# --------------------------------------------------------------------------------------
# what counts as ezpz's
# --------------------------------------------------------------------------------------
def test_an_install_of_the_running_user_is_ezpzs(tmp_path):
    mark, why = install_state(str(fake_install(tmp_path / "env")), False)
    assert why is None and mark["archive_id"] == "A" * 32


@pytest.mark.parametrize("case", ["no-marker", "marker-not-json", "marker-a-list",
                                  "marker-huge", "marker-symlink", "ezpz-dir-symlink",
                                  "top-group-writable", "marker-world-writable",
                                  "marker-hardlinked", "top-a-symlink", "marker-a-fifo"])
def test_anything_else_is_not(tmp_path, case):
    dst = fake_install(tmp_path / "env")
    marker = dst / ".ezpz" / "installed.json"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    if case == "no-marker":
        marker.unlink()
    elif case == "marker-not-json":
        marker.write_text("{not json")
    elif case == "marker-a-list":
        marker.write_text('["archive_id"]')
    elif case == "marker-huge":
        marker.write_text(json.dumps({"archive_id": "A" * 32, "pad": "x" * 100_000}))
    elif case == "marker-symlink":
        (elsewhere / "m.json").write_text(json.dumps({"archive_id": "A" * 32}))
        marker.unlink()
        marker.symlink_to(elsewhere / "m.json")
    elif case == "ezpz-dir-symlink":
        (elsewhere / "installed.json").write_text(json.dumps({"archive_id": "A" * 32}))
        marker.unlink()
        (dst / ".ezpz").rmdir()
        (dst / ".ezpz").symlink_to(elsewhere)
    elif case == "top-group-writable":
        dst.chmod(0o775)
    elif case == "marker-world-writable":
        marker.chmod(0o646)
    elif case == "marker-hardlinked":
        os.link(marker, elsewhere / "second-name")
    elif case == "top-a-symlink":
        real = tmp_path / "real"
        dst.rename(real)
        dst.symlink_to(real)
    elif case == "marker-a-fifo":
        marker.unlink()
        os.mkfifo(marker)
    mark, why = install_state(str(dst), False)
    assert mark is None and why, why


@needs_root
def test_a_forged_marker_of_another_user_is_not_ezpzs(tmp_path):
    dst = fake_install(tmp_path / "env")
    for p in (dst, dst / ".ezpz", dst / ".ezpz" / "installed.json"):
        os.chown(p, OTHER_UID, OTHER_UID)
    mark, why = install_state(str(dst), False)
    assert mark is None and "belongs to" in why and "uid 65534" in why
    # only the marker forged: still not ezpz's
    for p in (dst, dst / ".ezpz"):
        os.chown(p, 0, 0)
    mark, why = install_state(str(dst), False)
    assert mark is None and why.startswith("its ezpz marker: it belongs to")


def test_read_private_json_refuses_links_fifos_and_size(tmp_path):
    ok = tmp_path / "ok.json"
    ok.write_text('{"a": 1}')
    ok.chmod(0o600)
    assert read_private_json(str(ok)) == ({"a": 1}, None)
    (tmp_path / "link.json").symlink_to(ok)
    assert read_private_json(str(tmp_path / "link.json"))[1] == "it is a symbolic link"
    os.mkfifo(tmp_path / "fifo.json")
    assert read_private_json(str(tmp_path / "fifo.json"))[1] == "it is not a regular file"
    big = tmp_path / "big.json"
    big.write_text(json.dumps({"pad": "x" * 70_000}))
    big.chmod(0o600)
    assert "larger than" in read_private_json(str(big))[1]


def test_foreign_reason_names_what_is_wrong(tmp_path):
    f = tmp_path / "f"
    f.write_text("x")
    f.chmod(0o664)
    assert foreign_reason(os.lstat(f), want="file") == "others can write to it (mode 0664)"
    f.chmod(0o644)
    assert foreign_reason(os.lstat(f), want="file") is None
    assert foreign_reason(os.lstat(f), want="dir") == "it is not a directory"


# --------------------------------------------------------------------------------------
# paths that are never a destination
# --------------------------------------------------------------------------------------
def test_protected_paths(tmp_path, monkeypatch):
    home = tmp_path / "home" / "u"
    home.mkdir(parents=True)
    work = home / "proj"
    work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    src = tmp_path / "lus" / "envs" / "env.tar.zst"
    run_dir = tmp_path / "runs" / "r1"
    prot = protected_paths(src=[str(src)], run_dir=str(run_dir))

    def why(dst) -> str | None:
        return protected_reason(str(dst), prot, inside=[(str(tmp_path / "pkg"), "the env")])

    assert why("/") == "is the filesystem root"
    assert why(home) == "is your home directory"
    assert why(str(home) + "/") == "is your home directory"
    assert why(home.parent).startswith("contains your home directory")
    assert why(work) == "is the current directory"
    assert why(work / ".." / "proj") == "is the current directory"
    assert why(src.parent) == f"contains transfer.src ({src})"
    assert why(tmp_path / "lus").startswith("contains transfer.src")
    assert why(src) == "is transfer.src"
    assert why(run_dir) == "is the run directory"
    assert why(sys.prefix) == "is the running Python's environment"
    assert why(os.path.dirname(sys.prefix)).startswith("contains the running Python's")
    assert why(user_dir()) == "is ezpz's per-user directory"
    assert why("/tmp").startswith("contains")
    assert why(tmp_path / "pkg" / "sub") == f"is inside the env ({tmp_path / 'pkg'})"
    assert why("/proc") == "is a mount point"
    # through a symbolic link: the resolved path counts
    (tmp_path / "alias").symlink_to(home)
    assert why(tmp_path / "alias") == "is your home directory"
    # what remains allowed
    assert why(user_dir() + "/env") is None
    assert why(home / "envs" / "x") is None
    assert why(src.parent / "sibling") is None


# --------------------------------------------------------------------------------------
# default names
# --------------------------------------------------------------------------------------
def test_default_dst_is_visible_specific_and_per_user(tmp_path):
    from ezpz import pack as tar_env

    proj = tmp_path / "proj"
    proj.mkdir()
    import subprocess

    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(proj / ".venv")],
                   check=True)
    archive = tar_env.pack(prefix=str(proj / ".venv"), path=str(tmp_path / "whatever.tar.zst"))
    # the manifest's name (a dot-name: with its project) decides, not the archive's name
    assert default_dst(str(archive), True) == f"/tmp/ezpz-{user_name()}/proj-venv"
    assert env_name(str(proj / ".venv")) == "proj-venv"
    plain = make_archive(tmp_path / "myenv.tar", {"a": b"a"})
    assert default_dst(str(plain), True) == f"{user_dir()}/myenv"
    assert default_dst(str(plain), False) == f"{user_dir()}/myenv.tar"
    hidden = make_archive(tmp_path / ".hidden.tar", {"a": b"a"})
    assert default_dst(str(hidden), True) == f"{user_dir()}/hidden"
    assert visible_name("a$b'c`d\\e\nf") == "a_b_c_d_e_f"
    assert visible_name("x.ezpz-staging-1") == "x_ezpz-staging-1"
    assert visible_name("...") == "env"
    assert user_dir() == f"/tmp/ezpz-{user_name()}"


# --------------------------------------------------------------------------------------
# the lock next to dst
# --------------------------------------------------------------------------------------
def test_the_lock_is_private_and_removed_when_free(tmp_path):
    node = node_for(tmp_path)
    node.lock(1)
    st = os.lstat(node.lock_path)
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    node.unlock()
    assert not os.path.lexists(node.lock_path)
    assert os.listdir(tmp_path / "n") == []


def test_a_waiter_takes_the_lock_its_holder_removed(tmp_path):
    a, b, c = node_for(tmp_path), node_for(tmp_path), node_for(tmp_path)
    a.lock(1)
    got: list[object] = []
    t = threading.Thread(target=lambda: got.append(b.lock(10) or "locked"))
    t.start()
    time.sleep(0.3)
    assert not got  # b waits while a holds it
    a.unlock()  # removes the file b has open: b must lock the file that is there now
    t.join(10)
    assert got == ["locked"]
    assert b._is_lock_file(b._lock_fd)
    with pytest.raises(TransferError, match="another transfer into .* is still running"):
        c.lock(0.3)  # never two holders
    b.unlock()
    c.lock(1)
    c.unlock()
    assert not os.path.lexists(c.lock_path)


@pytest.mark.parametrize("planted", ["symlink", "dangling-symlink", "fifo", "dir", "hardlink",
                                     "group-writable"])
def test_a_planted_lock_is_refused_and_its_target_untouched(tmp_path, planted):
    node = node_for(tmp_path)
    os.makedirs(node.parent)
    victim = tmp_path / "victim"
    victim.write_text("precious")
    victim.chmod(0o640)
    lock = Path(node.lock_path)
    if planted == "symlink":
        lock.symlink_to(victim)
    elif planted == "dangling-symlink":
        lock.symlink_to(tmp_path / "would-be-created")
    elif planted == "fifo":
        os.mkfifo(lock)
    elif planted == "dir":
        lock.mkdir()
    elif planted == "hardlink":
        os.link(victim, lock)
    else:
        lock.write_text("")
        lock.chmod(0o666)
    with pytest.raises(TransferError, match=r"the lock .*\.env\.ezpz-lock (is a symbolic link|"
                                            r"is not ezpz's)"):
        node.lock(1)
    assert victim.read_text() == "precious" and stat.S_IMODE(victim.stat().st_mode) == 0o640
    assert not (tmp_path / "would-be-created").exists()
    assert os.path.lexists(lock)  # left for the user to look at


@needs_root
def test_a_lock_of_another_user_is_refused(tmp_path):
    node = node_for(tmp_path)
    os.makedirs(node.parent)
    Path(node.lock_path).write_text("")
    Path(node.lock_path).chmod(0o644)
    os.chown(node.lock_path, OTHER_UID, OTHER_UID)
    with pytest.raises(TransferError, match=r"is not ezpz's \(it belongs to .*uid 65534"):
        node.lock(1)


@needs_root
def test_stale_leftovers_of_others_and_links_are_left_alone(tmp_path):
    node = node_for(tmp_path)
    parent = Path(node.parent)
    parent.mkdir()
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "data").write_text("precious")
    mine = parent / ".env.ezpz-staging-1-aaaa"
    mine.mkdir()
    (mine / "x").write_text("stale")
    theirs = parent / ".env.ezpz-staging-2-bbbb"
    theirs.mkdir()
    (theirs / "y").write_text("not mine")
    os.chown(theirs, OTHER_UID, OTHER_UID)
    (parent / ".env.ezpz-partial-3-cccc").symlink_to(victim)
    node.lock(1)
    node.clean_stale()
    node.unlock()
    assert not mine.exists()
    assert (theirs / "y").read_text() == "not mine"
    assert (victim / "data").read_text() == "precious"
    assert os.path.islink(parent / ".env.ezpz-partial-3-cccc")


# --------------------------------------------------------------------------------------
# the node's checks before it writes
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("overwrite", [False, True])
def test_an_existing_directory_is_never_replaced(tmp_path, overwrite):
    dst = tmp_path / "n" / "env"
    dst.mkdir(parents=True)
    (dst / "canary").write_text("mine")
    node = node_for(tmp_path, overwrite=overwrite)
    with pytest.raises(TransferError, match=r"exists and is not an ezpz install of yours \(it "
                                            r"holds no ezpz marker\); ezpz never replaces it, "
                                            r"whatever transfer.overwrite says"):
        node.preflight()
    assert (dst / "canary").read_text() == "mine"


def test_an_ezpz_install_is_skipped_or_replaced_only_with_overwrite(tmp_path):
    fake_install(tmp_path / "n" / "env", "A" * 32)
    assert node_for(tmp_path).preflight() is Action.skip
    assert node_for(tmp_path, overwrite=True).preflight() is Action.go
    with pytest.raises(TransferError, match="holds a different archive"):
        node_for(tmp_path, plan_id="B" * 32).preflight()
    assert node_for(tmp_path, plan_id="B" * 32, overwrite=True).preflight() is Action.go


@needs_root
def test_a_per_user_directory_of_someone_else_is_refused(tmp_path, monkeypatch):
    from ezpz import ownership

    monkeypatch.setattr(ownership, "NODE_TMP", str(tmp_path))
    theirs = Path(user_dir())
    theirs.mkdir(0o755)
    os.chown(theirs, OTHER_UID, OTHER_UID)
    node = node_for(tmp_path, dst=str(theirs / "env"))
    with pytest.raises(TransferError, match=r"the per-user directory .* cannot be used \(it "
                                            r"belongs to .*uid 65534"):
        node.lock(1)
    assert os.listdir(theirs) == []
    os.chown(theirs, 0, 0)
    theirs.chmod(0o777)
    with pytest.raises(TransferError, match=r"others can write to it \(mode 0777\)"):
        node.lock(1)
    theirs.rmdir()
    node.lock(1)  # created 0700 when missing
    assert stat.S_IMODE(theirs.stat().st_mode) == 0o700
    node.unlock()


# --------------------------------------------------------------------------------------
# the orchestration (LocalComm): shared dst, umask 002, keep_archive twice at once
# --------------------------------------------------------------------------------------
@pytest.fixture
def archive(tmp_path):
    files = {f"f{i}.txt": os.urandom(3000 + i) for i in range(20)}
    return files, make_archive(tmp_path / "env.tar", files)


def _spec(src: Path, dst: Path, **kw) -> WorkerSpec:
    kw = {"chunk_bytes": 4096, "depth": 2, "timeout": 10.0, **kw}
    return WorkerSpec(src=str(src), dst=str(dst), backend=Backend.mpi, **kw)


def test_a_dst_shared_by_several_nodes_is_refused_at_once(tmp_path, archive):
    files, src = archive
    shared = tmp_path / "shared"
    out = run_job(["a", "b", "c"], lambda host: _spec(src, shared / "env"), tmp_path / "run")
    result = out[0]
    assert result.status is Status.failed
    for n in result.per_node:
        assert n.error.startswith(f"transfer.dst: {shared} is one directory shared by several "
                                  "nodes (this node sees the files of "), n.error
        assert "node-local path" in n.error
    assert isinstance(out[1], TransferError)
    assert list(shared.iterdir()) == []  # no token, lock, staging or tree left


def test_an_install_under_umask_002_is_still_ezpzs(tmp_path, archive):
    files, src = archive
    old = os.umask(0o002)
    try:
        for expected in (Status.ok, Status.skipped):
            out = run_job(["a", "b"], lambda host: _spec(src, tmp_path / host / "env"),
                          tmp_path / "run")
            assert out[0].status is expected, out
    finally:
        os.umask(old)
    for host in "ab":
        dst = tmp_path / host / "env"
        for p in (dst, dst / ".ezpz", dst / ".ezpz" / "installed.json"):
            assert not p.stat().st_mode & 0o022, p
        assert sorted(os.listdir(tmp_path / host)) == ["env"]


def test_keep_archive_into_two_dsts_at_once(tmp_path, archive):
    """Two transfers of one archive, keep_archive=true, into two dsts of one directory, at
    the same time: both succeed, one copy of the archive, no temporary name collides."""
    files, src = archive
    node = tmp_path / "node"
    results: dict[str, object] = {}

    def go(name: str) -> None:
        results[name] = run_job(["h"], lambda host: _spec(src, node / name, keep_archive=True,
                                                           chunk_bytes=1024, depth=1),
                                tmp_path / f"run-{name}")

    threads = [threading.Thread(target=go, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for name in ("a", "b"):
        assert results[name][0].status is Status.ok, results[name]
        assert {p.name: p.read_bytes() for p in (node / name).iterdir() if p.is_file()} == files
    assert (node / "env.tar").read_bytes() == src.read_bytes()
    assert sorted(os.listdir(node)) == [".env.tar.ezpz-installed.json", "a", "b", "env.tar"]
    # the kept copy is ezpz's: a third transfer into a new dst reuses it
    out = run_job(["h"], lambda host: _spec(src, node / "c", keep_archive=True), tmp_path / "r3")
    assert out[0].status is Status.ok
    assert sorted(os.listdir(node)) == [".env.tar.ezpz-installed.json", "a", "b", "c",
                                        "env.tar"]


@pytest.mark.parametrize("overwrite", [False, True])
def test_keep_archive_never_replaces_a_file_ezpz_did_not_keep(tmp_path, archive, overwrite):
    files, src = archive
    node = tmp_path / "node"
    node.mkdir()
    (node / "env.tar").write_text("the user's own file")
    out = run_job(["h"], lambda host: _spec(src, node / "env", keep_archive=True,
                                            overwrite=overwrite), tmp_path / "run")
    assert out[0].status is Status.failed
    assert out[0].per_node[0].error.startswith(
        f"transfer.keep_archive: {node / 'env.tar'} exists and is not an archive ezpz kept")
    assert (node / "env.tar").read_text() == "the user's own file"
    assert sorted(os.listdir(node)) == ["env.tar"]


def test_a_protected_ezpz_install_is_refused_even_with_overwrite(tmp_path, archive, monkeypatch):
    """An ezpz install that is the current directory (or holds the source) passes the
    ownership test, and is still never replaced."""
    files, src = archive
    out = run_job(["h"], lambda host: _spec(src, tmp_path / "inst"), tmp_path / "run")
    assert out[0].status is Status.ok
    (tmp_path / "inst" / "mine.txt").write_text("work in progress")
    monkeypatch.chdir(tmp_path / "inst")
    out = run_job(["h"], lambda host: _spec(src, tmp_path / "inst", overwrite=True),
                  tmp_path / "run2")
    assert out[0].status is Status.failed
    assert out[0].per_node[0].error.startswith(f"transfer.dst: {tmp_path / 'inst'} is the "
                                               "current directory; ezpz never installs there")
    monkeypatch.chdir(tmp_path)
    inner = tmp_path / "inst" / "env.tar"
    inner.write_bytes(src.read_bytes())
    out = run_job(["h"], lambda host: _spec(inner, tmp_path / "inst", overwrite=True),
                  tmp_path / "run3")
    assert out[0].status is Status.failed
    assert "contains transfer.src" in out[0].per_node[0].error
    assert (tmp_path / "inst" / "mine.txt").read_text() == "work in progress"
