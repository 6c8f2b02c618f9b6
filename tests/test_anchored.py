"""The anchored filesystem API (ezpz.anchored): every path beneath a directory descriptor,
never through a symlink, with openat2 and with the O_NOFOLLOW component walk; iterative
removal and walks of trees deeper than Python's recursion limit."""

from __future__ import annotations

import errno
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap

import pytest

from ezpz import anchored
from ezpz.anchored import Anchor, DirCache, remove_at
from ezpz.fsutil import remove


@pytest.fixture(params=["openat2", "walk"])
def mode(request, monkeypatch) -> str:
    """Each test runs with openat2 (where the kernel has it) and with the component walk."""
    if request.param == "openat2":
        if not anchored.KERNEL.openat2:
            pytest.skip("this kernel has no openat2")
    else:
        monkeypatch.setattr(anchored.KERNEL, "openat2", False)
    return request.param


@pytest.fixture
def box(tmp_path):
    """``root`` (the anchored tree) next to ``outside`` holding a canary file; inside the
    tree, symlinks to the outside (absolute and relative) and to the canary itself."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "d" / "e").mkdir(parents=True)
    outside.mkdir()
    (outside / "canary").write_text("original")
    os.symlink(outside, root / "abs")
    os.symlink("../outside", root / "rel")
    os.symlink(outside / "canary", root / "d" / "file-link")
    (root / "d" / "plain").write_text("inside")
    return root, outside


def _outside_ok(outside) -> None:
    assert sorted(os.listdir(outside)) == ["canary"]
    assert (outside / "canary").read_text() == "original"


@pytest.mark.parametrize("rel", ["abs/canary", "rel/canary", "d/file-link", "abs/new",
                                 "rel/new/deeper"])
def test_nothing_is_opened_or_created_through_a_symlink(box, mode, rel):
    root, outside = box
    with Anchor(str(root)) as a:
        with pytest.raises(OSError) as info:
            a.open(rel, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        assert anchored.is_escape(info.value) or info.value.errno == errno.EEXIST
        assert info.value.filename == os.path.join(str(root), rel)  # the whole path is named
        with pytest.raises(OSError):
            a.read_bytes(rel, 1 << 20)
        with pytest.raises(OSError):
            a.makedirs(rel)
        with pytest.raises(OSError):
            a.write_file(rel + "/x", b"pwned")
    _outside_ok(outside)


def test_paths_must_stay_inside(box, mode):
    root, _ = box
    with Anchor(str(root)) as a:
        for bad in ("/etc/passwd", "../outside/canary", "d/../../outside", "a\0b"):
            with pytest.raises(ValueError):
                a.open(bad, os.O_RDONLY)
        assert a.read_bytes("d/plain", 100) == b"inside"
        assert a.read_bytes("./d//plain", 100) == b"inside"


def test_write_file_replaces_a_symlink_instead_of_writing_through_it(box, mode):
    root, outside = box
    with Anchor(str(root)) as a:
        a.write_file("d/file-link", b"new content", 0o640)
        assert a.kind("d/file-link") == "file"
    assert (root / "d" / "file-link").read_bytes() == b"new content"
    assert stat.S_IMODE(os.stat(root / "d" / "file-link").st_mode) == 0o640
    assert not [n for n in os.listdir(root / "d") if "ezpz-tmp" in n]
    _outside_ok(outside)


def test_read_bytes_limits_and_refuses_special_files(box, mode):
    root, _ = box
    (root / "big").write_bytes(b"x" * 5000)
    os.mkfifo(root / "fifo")
    with Anchor(str(root)) as a:
        with pytest.raises(OSError) as info:
            a.read_bytes("big", 4096)
        assert info.value.errno == errno.EFBIG
        with pytest.raises(OSError) as info:  # never waits for a writer
            a.read_bytes("fifo", 4096)
        assert info.value.errno == errno.EINVAL
        assert a.kind("fifo") == "other" and a.kind("abs") == "link"
        assert a.kind("abs/canary") is None and a.kind("missing") is None


def test_rename_exchange_link_and_set_meta(box, mode):
    root, outside = box
    (root / "a").write_text("A")
    (root / "b").mkdir()
    with Anchor(str(root)) as a:
        if a.rename("a", "b", exchange=True):  # tmpfs and ext4 can; others fall back
            assert (root / "a").is_dir() and (root / "b").read_text() == "A"
            a.rename("a", "b", exchange=True)
        a.link("a", "d/hard")
        a.link("abs", "d/hard-to-link")  # a hardlink to the symlink itself, never its target
        assert os.path.islink(root / "d" / "hard-to-link")
        a.set_meta("b", 0o700, 1_600_000_000)
        with pytest.raises(OSError):
            a.set_meta("abs", 0o777, 0)  # a symlink is refused, never followed
    assert os.stat(root / "d" / "hard").st_ino == os.stat(root / "a").st_ino
    assert stat.S_IMODE(os.stat(root / "b").st_mode) == 0o700
    assert os.stat(root / "b").st_mtime == 1_600_000_000
    assert stat.S_IMODE(os.stat(outside).st_mode) != 0o777
    _outside_ok(outside)


def _deep(root, depth: int) -> None:
    """A chain of ``depth`` directories built with descriptors (paths would exceed PATH_MAX)."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    for i in range(depth):
        os.mkdir("d", dir_fd=fd)
        if i % 500 == 0:
            os.symlink("/", f"up{i}", dir_fd=fd)
            with open(os.open(f"f{i}", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd), "w") as fh:
                fh.write("x")
        nfd = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = nfd
    os.close(fd)


def test_removal_and_walk_need_no_recursion(tmp_path, mode):
    """3,000 levels: more than Python's recursion limit (shutil.rmtree would raise)."""
    root = tmp_path / "deep"
    root.mkdir()
    try:
        _deep(root, 3000)
        assert sys.getrecursionlimit() < 3000
        with Anchor(str(root)) as a:
            dirs = sum(1 for _ in a.walk())
        assert dirs == 3001
        remove(str(root))
        assert not root.exists()
    finally:  # pytest's own cleanup (shutil.rmtree) could not remove it
        remove(str(root))
    assert os.path.isdir("/usr")  # the links to / were removed, not followed


def test_removal_holds_few_descriptors(tmp_path):
    """Under a limit of 40 open files a 1,000-level tree is still removed: the removal keeps
    a bounded number of directory descriptors and climbs back through '..'."""
    root = tmp_path / "deep"
    root.mkdir()
    try:
        _deep(root, 1000)
        code = textwrap.dedent(f"""
            import os, resource
            resource.setrlimit(resource.RLIMIT_NOFILE, (40, 40))
            from ezpz.anchored import remove_at
            fd = os.open({str(tmp_path)!r}, os.O_RDONLY)
            remove_at(fd, "deep")
        """)
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert p.returncode == 0, p.stderr
        assert not root.exists()
    finally:
        remove(str(root))


@pytest.fixture
def user_dir():
    """A directory the unprivileged user 65534 owns (tests run as root: root reads anything,
    so what an ordinary user meets is checked as that user, through setpriv)."""
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv to run as another user")
    work = tempfile.mkdtemp(prefix="ezpz-user-", dir="/var/tmp")
    os.chmod(work, 0o755)
    os.chown(work, 65534, 65534)
    yield work
    subprocess.run(["chmod", "-R", "u+rwx", work], check=False)
    shutil.rmtree(work)


def as_user(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                           sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True)


def test_removal_of_unreadable_directories_as_a_user(user_dir):
    """Mode-000 directories (as an archive can make them) are removed by their owner."""
    work = user_dir
    code = textwrap.dedent(f"""
        import os
        root = {str(work)!r} + "/tree"
        os.makedirs(root + "/a/b/c")
        open(root + "/a/b/c/f", "w").close()
        os.chmod(root + "/a/b/c", 0)
        os.chmod(root + "/a/b", 0)
        os.chmod(root + "/a", 0)
        from ezpz.fsutil import remove
        remove(root)
        assert not os.path.exists(root)
    """)
    p = as_user(code)
    assert p.returncode == 0, p.stderr


def test_remove_at_never_follows_a_symlinked_directory(box):
    root, outside = box
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        remove_at(fd, "abs")
        remove_at(fd, "d")
        remove_at(fd, "missing")
    finally:
        os.close(fd)
    assert sorted(os.listdir(root)) == ["rel"]
    _outside_ok(outside)


def test_dir_cache_evicts_and_resolves_beneath(box, mode):
    root, outside = box
    for i in range(10):
        (root / f"x{i}").mkdir()
    with Anchor(str(root)) as a:
        cache = DirCache(a, size=4)
        fds = [cache.get(f"x{i}") for i in range(10)]
        assert cache.retired == 6 and len(set(fds)) == 10
        cache.release()
        assert cache.get("d/e") and cache.get("d/e") == cache.get("d/e")
        with pytest.raises(OSError):
            cache.get("abs")
        with pytest.raises(OSError):
            cache.get("rel/x")
        cache.close()
    _outside_ok(outside)


def test_listdir_and_walk_do_not_follow_links(box, mode):
    root, _ = box
    with Anchor(str(root)) as a:
        kinds = {e.name: e.kind for e in a.listdir()}
        assert kinds == {"abs": "link", "d": "dir", "rel": "link"}
        assert a.listdir("abs") == [] and a.listdir("missing") == []
        walked = [d for d, _ in a.walk()]
    assert walked == ["", "d", "d/e"]
