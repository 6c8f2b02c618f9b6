"""The one tar reader (ezpz.formats.tarread): the same members as tarfile on real archives of
every format, every header form decided once, every length bounded before allocation."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
import tracemalloc

import pytest

import tarbuild as tb
from ezpz.errors import ArchiveError
from ezpz.formats.tarread import GNU_LONG_MAX, PAX_MAX, TarReader, iter_archive


def members(data: bytes) -> list:
    return list(iter_archive(io.BytesIO(data), "t.tar"))


def refused(data: bytes) -> str:
    with pytest.raises(ArchiveError) as info:
        members(data)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("t.tar: ")
    return msg


@pytest.fixture(scope="module")
def venv_dir(tmp_path_factory):
    env = tmp_path_factory.mktemp("v") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)
    long = env / ("x" * 90) / ("y" * 90)
    long.mkdir(parents=True)
    (long / ("z" * 80 + ".txt")).write_text("long names")
    os.link(env / "pyvenv.cfg", env / "hardlink.cfg")
    os.symlink("y" * 120, env / "long-link")
    return env


@pytest.mark.parametrize("fmt", ["ustar", "gnu", "pax", "gnutar-cli", "posix-cli"])
def test_same_members_as_tarfile(venv_dir, tmp_path, fmt):
    """Field for field what tarfile reads, on archives written by tarfile and by GNU tar."""
    path = tmp_path / "a.tar"
    if fmt.endswith("-cli"):
        subprocess.run(["tar", f"--format={fmt[:-4].replace('gnutar', 'gnu')}", "-cf", str(path),
                        "-C", str(venv_dir.parent), "venv"], check=True)
    else:
        f = {"ustar": tarfile.USTAR_FORMAT, "gnu": tarfile.GNU_FORMAT,
             "pax": tarfile.PAX_FORMAT}[fmt]
        def keep(ti):  # ustar cannot hold a link target over 100 bytes, a name over 255
            return None if fmt == "ustar" and (len(ti.linkname) > 100 or len(ti.name) > 250) \
                else ti

        with tarfile.open(path, "w", format=f) as tf:
            tf.add(venv_dir, arcname="venv", filter=keep)
    ours = members(path.read_bytes())
    with tarfile.open(path) as tf:
        theirs = [(ti, tf.extractfile(ti).read() if ti.isreg() else None) for ti in tf]
    assert len(ours) == len(theirs) > 10
    for (m, data), (ti, tdata) in zip(ours, theirs):
        assert m.name == ti.name.rstrip("/") or m.name.rstrip("/") == ti.name
        assert (m.mode, m.mtime, m.linkname) == (ti.mode, int(ti.mtime), ti.linkname)
        assert m.type == (tarfile.REGTYPE if ti.type == tarfile.AREGTYPE else ti.type)
        assert data == tdata


def test_ustar_prefix_is_read_only_under_the_posix_magic():
    """Bytes 345-500 are the name's prefix in POSIX ustar and atime/ctime under GNU magic:
    one reading, GNU tar's (tarfile reads the prefix under both)."""
    posix = tb.member("name", b"x", prefix=b"dir") + tb.end()
    gnu = tb.member("name", b"x", prefix=b"dir", magic=tb.GNU_MAGIC) + tb.end()
    assert members(posix)[0][0].name == "dir/name"
    assert members(gnu)[0][0].name == "name"


def test_numbers_octal_base256_and_signed_checksums():
    big = tb.member("big", b"y" * 10, size_field=tb.base256(10, 12),
                    mtime_field=tb.base256(2_000_000_000, 12))
    old = tb.member("old", b"z", checksum="signed", mode=0o755)
    spaced = tb.member("spaced", b"s", mode_field=b"  644 \0 ", size_field=b"1 \0" + b"\0" * 9)
    (m1, d1), (m2, d2), (m3, d3) = members(big + old + spaced + tb.end())
    assert (m1.size, m1.mtime, d1) == (10, 2_000_000_000, b"y" * 10)
    assert (m2.mode, d2) == (0o755, b"z")
    assert (m3.mode, m3.size, d3) == (0o644, 1, b"s")


@pytest.mark.parametrize("field, why", [
    (dict(size_field=tb.base256(-5, 12)), "negative or not a number"),
    (dict(size_field=b"12a4\0" + b"\0" * 7), "negative or not a number"),
    (dict(mode_field=b"\xff" * 8), "mode field"),
    (dict(checksum="bad"), "checksum mismatch"),
])
def test_bad_numbers_refused_in_one_line(field, why):
    msg = refused(tb.member("f", b"data", **field) + tb.end())
    assert why in msg and "corrupt tar header at byte 0" in msg


def test_pax_and_gnu_long_names_and_their_precedence():
    data = (tb.gnu_long(b"gnu/long/name") + tb.pax({b"path": b"pax/wins"}) +
            tb.member("short", b"1") +
            tb.gnu_long(b"gnu/only") + tb.gnu_long(b"target", typ=b"K") +
            tb.header(b"s", typ=b"2", link=b"short-target") +
            tb.pax({b"path": b"sized", b"size": b"3", b"mtime": b"1234.5"}) +
            tb.member("x", b"abc", size=999) + tb.end())
    (a, da), (b, _), (c, dc) = members(data)
    assert (a.name, da) == ("pax/wins", b"1")
    assert (b.name, b.linkname) == ("gnu/only", "target")
    assert (c.name, c.size, c.mtime, dc) == ("sized", 3, 1234, b"abc")


def test_global_pax_headers():
    ok = tb.pax({b"mtime": b"42", b"comment": b"anything"}, typ=b"g") + tb.member("a", b"1")
    assert members(ok + tb.end())[0][0].mtime == 42
    for key in (b"path", b"linkpath", b"size", b"GNU.sparse.major"):
        msg = refused(tb.pax({key: b"1"}, typ=b"g") + tb.member("a", b"1") + tb.end())
        assert "global pax header sets" in msg


def test_sparse_members_are_marked():
    (m, _), = members(tb.member("s", b"", typ=b"S") + tb.end())
    assert m.sparse
    (m, _), = members(tb.pax({b"GNU.sparse.major": b"1"}) + tb.member("p", b"") + tb.end())
    assert m.sparse


@pytest.mark.parametrize("data, why", [
    (tb.pax({b"path": b"a"}) + tb.end(), "extended header without a member"),
    (tb.pax({b"path": b"a"}) + tb.pax({b"path": b"b"}) + tb.member("c") + tb.end(),
     "two pax headers"),
    (tb.gnu_long(b"a") + tb.gnu_long(b"b") + tb.member("c") + tb.end(), "two GNU long names"),
    (tb.pax({}, data=b"5 a=b\n") + tb.member("c") + tb.end(), "length does not match"),
    (tb.pax({}, data=b"x path=a\n") + tb.member("c") + tb.end(), "malformed pax record"),
    (tb.pax({}, data=b"8 noequ\n") + tb.member("c") + tb.end(), "without a keyword"),
    (tb.member("f", b"x" * 600)[:900], "truncated"),
    (tb.member("f", b"x"), "no end-of-archive marker"),
])
def test_malformed_headers_refused_in_one_line(data, why):
    assert why in refused(data)


@pytest.mark.parametrize("build, why", [
    (lambda n: tb.pax({b"path": b"a"}, declared=n), "pax header of"),
    (lambda n: tb.pax({b"mtime": b"1"}, typ=b"g", declared=n), "pax header of"),
    (lambda n: tb.gnu_long(b"a", declared=n), "GNU long name of"),
    (lambda n: tb.gnu_long(b"a", typ=b"K", declared=n), "GNU long link of"),
])
def test_huge_declared_lengths_refused_before_allocation(build, why):
    """A header field declaring 2 GiB (the stream itself a few blocks): refused with the
    limit named, and no more than a few MB allocated on the way."""
    data = build(2 << 30) + tb.member("x", b"1") + tb.end()
    tracemalloc.start()
    try:
        msg = refused(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert why in msg and "ezpz accepts" in msg
    assert peak < 4 << 20


def test_limits_accept_what_real_archives_hold():
    long = b"d/" * 2000 + b"f"  # 4,001 bytes: too long to create, but read and named
    data = (tb.pax({b"path": long, b"SCHILY.xattr.user.x": b"v" * 30_000}) +
            tb.member("x", b"1") + tb.gnu_long(long) + tb.member("y", b"2") + tb.end())
    (a, _), (b, _) = members(data)
    assert a.name.encode() == long == b.name.encode()
    assert PAX_MAX >= 64 * 1024 and GNU_LONG_MAX >= 4 * 4096


def test_data_views_and_streaming(tmp_path):
    data = tb.member("a", b"A" * 1000) + tb.member("b", b"B" * 3000) + tb.end()
    r = TarReader(io.BytesIO(data), "t", read_size=1024)
    assert r.next().name == "a"
    assert r.data_view() is None  # 1,000 bytes do not lie whole in the first 1 KiB block
    out = tmp_path / "a"
    fd = os.open(out, os.O_WRONLY | os.O_CREAT, 0o600)
    r.copy_data(fd, "a")
    os.close(fd)
    assert out.read_bytes() == b"A" * 1000
    m = r.next()
    assert m.name == "b" and b"".join(bytes(v) for v in r.iter_data("b", 700)) == b"B" * 3000
    assert r.next() is None and r.ended
