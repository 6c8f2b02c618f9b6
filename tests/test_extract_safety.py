"""Classes of hostile and tricky archives, on every engine (python with and without its C
writer, GNU tar fed the canonical stream): ezpz's reserved names, GNU tar's semantics for
legitimate archives (mode-000 directories, duplicates, sizes), one reading of every header,
and the shapes of other extractors' known bypasses (CPython tarfile's 2025 filter CVEs, GNU
tar's two-step symlink traversal). Each test checks canary files next to the destination."""

from __future__ import annotations

import io
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import textwrap
from pathlib import Path

import pytest

import tarbuild as tb
from ezpz.errors import ArchiveError
from ezpz.extract import checks, extract_file
from trees import tree

ENGINES = ["python", "python-no-c", "python-pool", "tar"]


@pytest.fixture(params=ENGINES)
def engine(request, monkeypatch) -> str:
    if request.param == "python-no-c":
        monkeypatch.setenv("EZPZ_EXTRACT_C", "0")
        return "python"
    if request.param == "python-pool":
        monkeypatch.setattr("ezpz.extract.extractor.write_threads", lambda total: 4)
        return "python"
    return request.param


class Box:
    """``dst`` inside a sandbox whose other entries are canaries: files, a directory and a
    file in it, each with known content, mode and mtime."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.dst = root / "dst"
        self.outside = root / "outside"
        self.dst.mkdir(parents=True)
        self.outside.mkdir()
        (self.outside / "canary").write_text("original")
        (root / "flag").write_text("flag")
        for p in (self.outside / "canary", root / "flag", self.outside):
            os.chmod(p, 0o750 if p.is_dir() else 0o640)
            os.utime(p, (1_500_000_000, 1_500_000_000))
        self.before = self.snapshot()

    def snapshot(self) -> dict:
        out = {}
        for dirpath, dirnames, filenames in os.walk(self.root):
            rel = os.path.relpath(dirpath, self.root)
            if rel == "dst" or rel.startswith("dst/"):
                continue
            for name in dirnames + filenames:
                p = os.path.join(dirpath, name)
                if p == str(self.dst):
                    continue
                st = os.lstat(p)
                body = open(p, "rb").read() if stat.S_ISREG(st.st_mode) else None
                out[os.path.relpath(p, self.root)] = (st.st_mode, st.st_mtime, body)
        return out

    def intact(self) -> None:
        assert self.snapshot() == self.before, "something outside dst changed"


@pytest.fixture
def box(tmp_path) -> Box:
    return Box(tmp_path / "box")


def extract(box: Box, data: bytes, engine: str, dst: Path | None = None) -> None:
    path = box.root.parent / "a.tar"
    path.write_bytes(data)
    extract_file(str(path), str(dst or box.dst), engine=engine)


def refused(box: Box, data: bytes, engine: str, why: str) -> str:
    with pytest.raises(ArchiveError) as info:
        extract(box, data, engine)
    msg = str(info.value)
    assert why in msg, msg
    assert "\n" not in msg
    box.intact()
    return msg


D = tarfile.DIRTYPE
S = tarfile.SYMTYPE
H = tarfile.LNKTYPE


# -- ezpz's own names --------------------------------------------------------------------------
@pytest.mark.parametrize("members", [
    [dict(name="venv/.ezpz/installed.json", data=b"{}")],
    [dict(name=".ezpz/installed.json", data=b"{}")],
    [dict(name="venv/.ezpz", type=S, linkname="/tmp")],
    [dict(name="venv/.ezpz", data=b"a file")],
    [dict(name="venv/.ezpz/other", data=b"x")],
    [dict(name="venv/.ezpz/manifest.json", type=S, linkname="/etc/passwd")],
    [dict(name="venv/f", data=b"x"), dict(name="venv/.ezpz/manifest.json", type=H,
                                          linkname="venv/f")],
    [dict(name="venv/.ezpz/python", type=S, linkname="/usr")],
    [dict(name="venv/x", type=S, linkname=".ezpz"), dict(name="venv/x/installed.json",
                                                         data=b"{}")],
], ids=["marker", "top-marker", "dir-symlink", "dir-file", "other", "manifest-symlink",
        "manifest-hardlink", "python-symlink", "through-a-link"])
def test_reserved_names_refused(box, engine, members):
    data = tb.with_tarfile([dict(name="venv", type=D, mode=0o755)] + members)
    refused(box, data, engine, "is a name ezpz reserves for its own files")
    assert not (box.dst / "venv" / ".ezpz" / "installed.json").exists()


def test_manifest_and_bundled_interpreter_allowed(box, engine):
    data = tb.with_tarfile([
        dict(name="venv/.ezpz/manifest.json", data=b"{}"),
        dict(name="venv", type=D, mode=0o755),
        dict(name="venv/.ezpz", type=D, mode=0o755),
        dict(name="venv/.ezpz/python/bin/python3", data=b"\x7fELF"),
        dict(name="venv/.ezpz/python/bin/python", type=S, linkname="python3"),
    ])
    extract(box, data, engine)
    assert (box.dst / "venv/.ezpz/manifest.json").read_bytes() == b"{}"
    assert os.readlink(box.dst / "venv/.ezpz/python/bin/python") == "python3"
    box.intact()


# -- GNU tar's semantics for legitimate archives ------------------------------------------
def test_unwritable_directories_extract_and_keep_their_modes(box, engine):
    data = tb.with_tarfile([
        dict(name="env", type=D, mode=0o755),
        dict(name="env/locked", type=D, mode=0o000),
        dict(name="env/locked/f", data=b"inside a mode-000 directory", mode=0o444),
        dict(name="env/locked/sub", type=D, mode=0o555),
        dict(name="env/locked/sub/g", data=b"deeper"),
        dict(name="env/ro", type=D, mode=0o500),
        dict(name="env/ro/h", data=b"h", mode=0o000),
    ])
    extract(box, data, engine)
    mode = lambda p: stat.S_IMODE(os.lstat(box.dst / p).st_mode)  # noqa: E731
    assert (mode("env/locked"), mode("env/locked/sub"), mode("env/ro")) == (0, 0o555, 0o500)
    assert (mode("env/locked/f"), mode("env/ro/h")) == (0o444, 0)
    assert (box.dst / "env/locked/sub/g").read_bytes() == b"deeper"
    box.intact()


@pytest.fixture
def user_dir():
    """A directory the unprivileged user 65534 owns (the tests run as root, which reads and
    writes anything: what an ordinary user meets is checked as that user, with setpriv)."""
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv to run as another user")
    work = tempfile.mkdtemp(prefix="ezpz-user-", dir="/var/tmp")
    os.chmod(work, 0o755)
    os.chown(work, 65534, 65534)
    yield Path(work)
    subprocess.run(["chmod", "-R", "u+rwx", work], check=False)
    shutil.rmtree(work)


@pytest.mark.parametrize("eng", ["python", "tar"])
def test_mode_000_directories_as_an_ordinary_user(user_dir, eng):
    """As a user (no override of permissions): the tree extracts, the modes end as given, and
    a failing extraction's tree can still be removed."""
    archive = user_dir / "a.tar"
    archive.write_bytes(tb.with_tarfile([
        dict(name="env", type=D, mode=0o755), dict(name="env/locked", type=D, mode=0o000),
        dict(name="env/locked/f", data=b"ok"), dict(name="env/locked/ro", type=D, mode=0o555),
        dict(name="env/locked/ro/g", data=b"ok2")]))
    os.chmod(archive, 0o644)
    code = textwrap.dedent(f"""
        import os, stat
        from ezpz.extract import extract_file
        from ezpz.fsutil import remove
        dst = {str(user_dir)!r} + "/dst"
        os.mkdir(dst)
        extract_file({str(archive)!r}, dst, engine={eng!r})
        assert stat.S_IMODE(os.stat(dst + "/env/locked").st_mode) == 0
        os.chmod(dst + "/env/locked", 0o700)
        assert open(dst + "/env/locked/ro/g").read() == "ok2"
        os.chmod(dst + "/env/locked", 0)
        remove(dst)
        assert not os.path.exists(dst)
    """)
    p = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                        sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr


DUPLICATES = {
    "file-symlink-file": [dict(name="d", type=D, mode=0o755), dict(name="d/a", data=b"1"),
                          dict(name="d/a", type=S, linkname="b"), dict(name="d/a", data=b"3")],
    "symlink-file-symlink": [dict(name="d", type=D, mode=0o755), dict(name="d/b", data=b"B"),
                             dict(name="d/a", type=S, linkname="b"), dict(name="d/a", data=b"2"),
                             dict(name="d/a", type=S, linkname="c")],
    "file-hardlink-file": [dict(name="d", type=D, mode=0o755), dict(name="d/a", data=b"1"),
                           dict(name="d/h", type=H, linkname="d/a"),
                           dict(name="d/h", data=b"new")],
    "link-to-file-then-file": [dict(name="d", type=D, mode=0o755), dict(name="d/t", data=b"T"),
                               dict(name="d/l", type=S, linkname="t"),
                               dict(name="d/l", data=b"not through the link")],
    "directory-over-file": [dict(name="d", data=b"1"), dict(name="d", type=D, mode=0o750),
                            dict(name="d/x", data=b"x")],
    "directory-twice": [dict(name="d", type=D, mode=0o755), dict(name="d/x", data=b"x"),
                        dict(name="d", type=D, mode=0o700)],
    "below-an-internal-link": [dict(name="real", type=D, mode=0o755),
                               dict(name="s", type=S, linkname="real"),
                               dict(name="s/f", data=b"via"), dict(name="s", data=b"file now")],
}


@pytest.mark.parametrize("case", sorted(DUPLICATES))
def test_duplicates_end_as_with_gnu_tar(box, engine, case):
    """The last member wins, an earlier entry is removed rather than written through: the
    same tree as GNU tar extracting the archive itself."""
    data = tb.with_tarfile(DUPLICATES[case], fmt=tarfile.GNU_FORMAT)
    path = box.root.parent / "dup.tar"
    path.write_bytes(data)
    gnu = box.root.parent / "gnu"
    gnu.mkdir()
    subprocess.run(["tar", "-xf", str(path), "-C", str(gnu)], check=True)
    extract(box, data, engine)
    assert tree(box.dst) == tree(gnu)
    box.intact()


SUID_FORMS = {  # (archive, expected mode of the one entry)
    "ustar": (tb.with_tarfile([dict(name="f", data=b"x", mode=0o6755)],
                              fmt=tarfile.USTAR_FORMAT), 0o755),
    "ustar-prefix": (tb.header(b"f", mode=0o6755, size=1, prefix=b"dir") + tb.pad(b"x"), 0o755),
    "gnu-longname": (tb.gnu_long(b"d" * 120) + tb.member("x", b"x", mode=0o6750,
                                                         magic=tb.GNU_MAGIC), 0o750),
    "pax-path": (tb.pax({b"path": b"p" * 150}) + tb.member("x", b"x", mode=0o6711), 0o711),
    "contiguous": (tb.member("c", b"x", mode=0o4755, typ=b"7"), 0o755),
    "old-style": (tb.member("o", b"x", mode=0o2755, typ=b"\0", magic=b"\0" * 8), 0o755),
    "directory": (tb.header(b"sgid-dir", mode=0o2775, typ=b"5"), 0o775),
    "base256-times": (tb.member("t", b"x", mode=0o6755, mtime_field=tb.base256(5, 12)), 0o755),
}


@pytest.mark.parametrize("form", sorted(SUID_FORMS))
def test_setuid_setgid_dropped_in_every_header_form(box, engine, form):
    data, expected = SUID_FORMS[form]
    extract(box, data + tb.end(), engine)
    found = [(os.path.relpath(os.path.join(d, n), box.dst),
              stat.S_IMODE(os.lstat(os.path.join(d, n)).st_mode))
             for d, dn, fn in os.walk(box.dst) for n in dn + fn]
    leaf = [m for p, m in found if p != "dir"]  # "dir": the prefix, made on the way
    assert leaf == [expected], found


def test_base256_size_extracts_and_negative_size_is_refused_fast(box, engine):
    """On every engine: a base-256 size is read; a negative one is refused in one line at
    once (the tar engine never sees it, so it cannot wait for data until a timeout)."""
    extract(box, tb.member("big", b"z" * 700, size_field=tb.base256(700, 12)) + tb.end(), engine)
    assert (box.dst / "big").read_bytes() == b"z" * 700
    shutil.rmtree(box.dst)
    box.dst.mkdir()
    bad = tb.member("neg", b"", size_field=tb.base256(-1, 12)) + tb.member("x", b"1") + tb.end()
    refused(box, bad, engine, "the size field is negative")


def test_one_reading_of_the_prefix_field(box, engine):
    """The parser differential of the old tar engine: a GNU-magic header whose bytes 345-500
    hold a path. tarfile read it as a prefix, GNU tar does not: now every engine writes what
    the one reader read (GNU tar's reading), setuid dropped."""
    data = tb.header(b"tool", mode=0o4755, size=2, magic=tb.GNU_MAGIC,
                     prefix=b"usr/local/bin") + tb.pad(b"#!") + tb.end()
    extract(box, data, engine)
    assert tree(box.dst) == {"tool": ("file", 0o755, 1, b"#!")}


def test_tar_engine_needs_an_empty_destination(box):
    (box.dst / "existing").write_text("x")
    refused(box, tb.member("a", b"1") + tb.end(), "tar", "extracts only into an empty directory")


def test_member_bookkeeping_is_bounded(box, engine, monkeypatch):
    monkeypatch.setattr(checks, "STATE_MAX", 50_000)
    data = b"".join(tb.member(f"f{i:05d}", b"") for i in range(1000)) + tb.end()
    refused(box, data, engine, "more entries than ezpz keeps track of")


# -- other extractors' known bypasses --------------------------------------------------------
def cve_2025_4517(box: Box) -> list[dict]:
    """tarfile's realpath/PATH_MAX bypass: symlinks that expand past PATH_MAX, then a chain
    climbing out, a hardlink to a file outside through it, and a write through it."""
    steps = "abcdefghijklmnop"
    comp = "d" * ((4096 - len(str(box.dst)) - 1) // (len(steps) + 1))
    members, path = [], ""
    for s in steps:
        members.append(dict(name=os.path.join(path, comp), type=D, mode=0o777))
        members.append(dict(name=os.path.join(path, s), type=S, linkname=comp))
        path = os.path.join(path, comp)
    link = os.path.join(*steps, "l" * 254)
    members.append(dict(name=link, type=S, linkname=os.path.join(*[".."] * len(steps))))
    members.append(dict(name="escape", type=S, linkname=os.path.join(link, "..")))
    members.append(dict(name="flaglink", type=H, linkname="escape/flag"))
    members.append(dict(name="flaglink", data=b"overwrite"))
    members.append(dict(name="escape/newfile", data=b"new"))
    return members


CVES = {
    "CVE-2025-4517-realpath-limit": (cve_2025_4517, "PATH_MAX"),
    "CVE-2025-4330-link-outside": (lambda b: [
        dict(name="d", type=D, mode=0o755), dict(name="d/up", type=S, linkname=".."),
        dict(name="d/up2", type=S, linkname="up/.."),
        dict(name="h", type=H, linkname="d/up2/flag")], "points outside"),
    "CVE-2025-4138-symlink-traversal": (lambda b: [
        dict(name="b", type=D, mode=0o755), dict(name="b/c", type=S, linkname="../.."),
        dict(name="s", type=S, linkname="b/c"), dict(name="s/outside/canary", data=b"pwned")],
        "points outside"),
    "CVE-2024-12718-metadata-outside": (lambda b: [
        dict(name="m", type=S, linkname=str(b.outside)),
        dict(name="m", type=D, mode=0o777, mtime=0)], "replaces a symlink"),
    "CVE-2025-4435-errorlevel": (lambda b: [
        dict(name="ok", data=b"1"), dict(name="../flag", data=b"pwned"),
        dict(name="ok2", data=b"2")], "'..' component"),
    "empty-name-symlink": (lambda b: [dict(name="", type=S, linkname=str(b.outside))],
                           "empty name"),
    "dot-symlink": (lambda b: [dict(name="./", type=S, linkname=str(b.outside))],
                    "names the destination itself"),
    "hardlink-to-symlink": (lambda b: [
        dict(name="s", type=S, linkname=str(b.outside / "canary")),
        dict(name="h", type=H, linkname="s"), dict(name="h", data=b"pwned")],
        "not a file extracted earlier"),
    "hardlink-to-internal-symlink": (lambda b: [
        dict(name="f", data=b"f"), dict(name="s", type=S, linkname="f"),
        dict(name="h", type=H, linkname="s")], "not a file extracted earlier"),
    "hardlink-fallback": (lambda b: [
        dict(name="h", type=H, linkname="later"), dict(name="later", data=b"x")],
        "not a file extracted earlier"),
    "hardlink-target-replaced-by-symlink": (lambda b: [
        dict(name="f", data=b"f"), dict(name="f", type=S, linkname=str(b.root / "flag")),
        dict(name="h", type=H, linkname="f"), dict(name="h", data=b"pwned")],
        "not a file extracted earlier"),
    "gnu-tar-CVE-2025-45582-in-one-archive": (lambda b: [
        dict(name="x", type=S, linkname="../outside"), dict(name="x/canary", data=b"pwned")],
        "points outside"),
}


@pytest.mark.parametrize("case", sorted(CVES))
def test_known_bypasses_of_other_extractors(box, engine, case):
    make, why = CVES[case]
    refused(box, tb.with_tarfile(make(box)), engine, why)


def test_gnu_tar_two_step_symlink_traversal(box, engine):
    """GNU tar's CVE-2025-45582: a first archive leaves symlinks out of the tree, a second one
    writes through them. The second extraction is refused: the python engine never writes
    through a symlink it finds on disk, the tar engine only writes into an empty directory."""
    first = tb.with_tarfile([dict(name="x", type=S, linkname=str(box.outside)),
                             dict(name="y", type=S, linkname="../outside")])
    extract(box, first, engine)
    for second in ([dict(name="x/canary", data=b"pwned")],
                   [dict(name="y/new", data=b"pwned")],
                   [dict(name="x/sub/new", data=b"pwned")],
                   [dict(name="h", type=H, linkname="y/canary")]):
        with pytest.raises(ArchiveError) as info:
            extract(box, tb.with_tarfile(second), engine)
        assert "\n" not in str(info.value)
        box.intact()


def test_marker_place_cannot_be_planted(box, engine):
    """An archive cannot put anything where ezpz writes its marker, so the later write into
    .ezpz/ goes into a directory the extraction made itself."""
    data = tb.with_tarfile([dict(name="venv", type=D, mode=0o755),
                            dict(name="venv/.ezpz", type=D, mode=0o755)])
    extract(box, data, engine)
    from ezpz.anchored import Anchor

    with Anchor(str(box.dst / "venv")) as a:
        a.write_file(".ezpz/installed.json", b"{}")
    assert (box.dst / "venv/.ezpz/installed.json").read_bytes() == b"{}"
    box.intact()


def test_truncated_archive_on_every_engine(box, engine):
    data = tb.with_tarfile([dict(name="f", data=b"x" * 5000)])
    refused(box, data[:2048], engine, "truncated archive")


def test_pax_header_too_large_on_every_engine(box, engine):
    data = tb.pax({b"path": b"a"}, declared=1 << 31) + tb.member("a", b"1") + tb.end()
    refused(box, data, engine, "more than the 64 KiB ezpz accepts")
    assert os.listdir(box.dst) == []


def test_archive_bytes_after_the_end_are_ignored(box, engine):
    data = tb.member("a", b"1") + tb.end() + b"junk after the end"
    extract(box, data, engine)
    assert (box.dst / "a").read_bytes() == b"1"


def test_reader_rejects_sparse_on_every_engine(box, engine):
    data = tb.member("s", b"", typ=b"S") + tb.end()
    refused(box, data, engine, "sparse file")


def test_io_archives_in_memory_work(box, engine):
    """extract_stream on a plain in-memory tar (no codec, no file)."""
    from ezpz.extract import extract_stream

    data = tb.with_tarfile([dict(name="m/f", data=b"mem")])
    extract_stream(io.BytesIO(data), str(box.dst), engine=engine, label="mem")
    assert (box.dst / "m/f").read_bytes() == b"mem"


def test_pack_of_a_delivered_env_delivers_again(tmp_path):
    """ezpz-tar-env leaves the install marker of a delivered env behind: the archive it makes
    holds no reserved name and extracts."""
    from ezpz.formats.manifest import iter_members
    from ezpz.pack import pack

    env = tmp_path / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)
    (env / ".ezpz").mkdir()
    (env / ".ezpz" / "installed.json").write_text("{}")
    out = pack(prefix=str(env), path=str(tmp_path / "env.tar.zst"))
    names = [m.name for m, _ in iter_members(out)]
    assert "env/.ezpz/manifest.json" in names and "env/.ezpz/installed.json" not in names
    extract_file(str(out), str(tmp_path / "x"))
    assert (tmp_path / "x" / "env" / "pyvenv.cfg").exists()


@pytest.mark.parametrize("cut", ["inside-skippable", "inside-skippable-header", "complete"])
def test_trailing_zstd_skippable_frame_cut_short_is_truncation(box, engine, cut):
    """zstd decoders accept a stream whose trailing skippable frame is cut short; ezpz follows
    the frame structure and calls it what it is, a truncated archive."""
    import struct

    import zstandard

    tar = tb.with_tarfile([dict(name="f", data=b"x" * 3000)])
    skip = struct.pack("<II", 0x184D2A50, 4096) + bytes(4096)
    data = zstandard.ZstdCompressor(write_checksum=True).compress(tar) + \
        {"inside-skippable": skip[:1000], "inside-skippable-header": skip[:5],
         "complete": skip}[cut]
    path = box.root.parent / "a.tar.zst"
    path.write_bytes(data)
    if cut == "complete":
        extract_file(str(path), str(box.dst), engine=engine)
        assert (box.dst / "f").read_bytes() == b"x" * 3000
        return
    with pytest.raises(ArchiveError, match="corrupt or truncated zstd data"):
        extract_file(str(path), str(box.dst), engine=engine)
    box.intact()


@pytest.mark.parametrize("variant", ["python", "python-no-c"])
def test_a_non_empty_destination(box, monkeypatch, variant):
    """The python engine into a directory that holds entries already: a file at a member's
    path is replaced (the C writer hands it back to Python), a directory there is refused in
    one line naming the member, a symlink there is replaced, never written through."""
    if variant == "python-no-c":
        monkeypatch.setenv("EZPZ_EXTRACT_C", "0")
    (box.dst / "d").mkdir()
    (box.dst / "d" / "f").write_text("old")
    os.symlink(box.outside / "canary", box.dst / "d" / "l")
    extract(box, tb.with_tarfile([dict(name="d/f", data=b"new"), dict(name="d/l", data=b"n")]),
            "python")
    assert (box.dst / "d" / "f").read_bytes() == b"new"
    assert (box.dst / "d" / "l").read_bytes() == b"n" and not (box.dst / "d" / "l").is_symlink()
    (box.dst / "d" / "sub").mkdir()
    (box.dst / "d" / "sub" / "x").write_text("x")
    msg = refused(box, tb.with_tarfile([dict(name="d/sub", data=b"file")]), "python",
                  "cannot write member 'd/sub'")
    assert "\n" not in msg and (box.dst / "d" / "sub" / "x").exists()
