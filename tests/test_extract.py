"""Safe streaming extraction (ezpz.extract): hostile members, corruption, both engines. No MPI."""

from __future__ import annotations

import gzip
import io
import os
import stat
import subprocess
import sys
import tarfile

import pytest
import zstandard

from ezpz.errors import ArchiveError
from ezpz.extract import ChunkStream, SafeExtractor, extract_file, extract_stream
from ezpz.formats.codecs import open_decoder
from trees import tree

#: "python-no-c" is the python engine with the C helper for plain members turned off;
#: "python-pool" the python engine writing on 4 threads (whatever this machine's cores).
ENGINES = ["python", "python-no-c", "python-pool", "tar"]


@pytest.fixture(params=ENGINES)
def engine(request, monkeypatch) -> str:
    """Every test that takes ``engine`` runs with each engine (and the python engine both with
    and without its C helper)."""
    if request.param == "python-no-c":
        monkeypatch.setenv("EZPZ_EXTRACT_C", "0")
        return "python"
    if request.param == "python-pool":
        monkeypatch.setattr("ezpz.extract.extractor.write_threads", lambda total: 4)
        return "python"
    return request.param


def _add(tf: tarfile.TarFile, name: str, *, data: bytes | None = None, type=tarfile.REGTYPE,
         linkname: str = "", mode: int = 0o644) -> None:
    ti = tarfile.TarInfo(name)
    ti.type = type
    ti.mode = mode
    ti.linkname = linkname
    ti.mtime = 1_700_000_000
    if data is not None:
        ti.size = len(data)
        tf.addfile(ti, io.BytesIO(data))
    else:
        tf.addfile(ti)


def build(path, members, fmt=tarfile.PAX_FORMAT) -> str:
    with tarfile.open(path, "w", format=fmt) as tf:
        for m in members:
            _add(tf, **m)
    return str(path)


@pytest.fixture
def area(tmp_path):
    dest = tmp_path / "dest"
    outside = tmp_path / "outside"
    dest.mkdir()
    outside.mkdir()
    (outside / "victim").write_text("original")
    return tmp_path, dest, outside


def _outside_untouched(outside) -> None:
    assert sorted(os.listdir(outside)) == ["victim"]
    assert (outside / "victim").read_text() == "original"


HOSTILE = {
    "absolute": ([dict(name="/abs/evil", data=b"x")], "absolute path"),
    "dotdot": ([dict(name="../outside/evil", data=b"x")], "'..' component"),
    "hidden-dotdot": ([dict(name="a/../../outside/evil", data=b"x")], "'..' component"),
    "symlink-abs-write": ([dict(name="link", type=tarfile.SYMTYPE, linkname="OUTSIDE"),
                           dict(name="link/victim", data=b"pwned")],
                          "written through symlink 'link'"),
    "symlink-rel-write": ([dict(name="d", type=tarfile.DIRTYPE, mode=0o755),
                           dict(name="d/link", type=tarfile.SYMTYPE, linkname="../../outside"),
                           dict(name="d/link/victim", data=b"pwned")],
                          "written through symlink 'd/link'"),
    "symlink-chain": ([dict(name="a", type=tarfile.SYMTYPE, linkname="b"),
                       dict(name="b", type=tarfile.SYMTYPE, linkname="OUTSIDE"),
                       dict(name="a/victim", data=b"pwned")], "written through symlink 'b'"),
    "hardlink-abs": ([dict(name="h", type=tarfile.LNKTYPE, linkname="OUTSIDE/victim")],
                     "hardlink to absolute path"),
    "hardlink-dotdot": ([dict(name="h", type=tarfile.LNKTYPE, linkname="../outside/victim")],
                        "escapes the destination"),
    "hardlink-via-symlink": ([dict(name="s", type=tarfile.SYMTYPE, linkname="OUTSIDE"),
                              dict(name="h", type=tarfile.LNKTYPE, linkname="s/victim")],
                             "written through symlink 's'"),
    "hardlink-missing": ([dict(name="h", type=tarfile.LNKTYPE, linkname="nothere")],
                         "not a file extracted earlier"),
    "symlink-names-destination": ([dict(name=".", type=tarfile.SYMTYPE, linkname="OUTSIDE")],
                                  "names the destination itself"),
    "chardev": ([dict(name="null", type=tarfile.CHRTYPE)], "device node"),
    "blockdev": ([dict(name="sda", type=tarfile.BLKTYPE)], "device node"),
    "fifo": ([dict(name="pipe", type=tarfile.FIFOTYPE)], "FIFO"),
    "too-long": ([dict(name="/".join(["d" * 200] * 25), data=b"x")], "PATH_MAX"),
    "long-component": ([dict(name="x" * 300, data=b"x")], "longer than 255 bytes"),
    # names and link targets over 100 bytes travel in pax headers
    "pax-dotdot": ([dict(name="a/" + "p" * 120 + "/../../../outside/evil", data=b"x")],
                   "'..' component"),
    "symlink-pax-write": ([dict(name="l" * 120, type=tarfile.SYMTYPE,
                                linkname="OUTSIDE/" + "." * 1 + "/" * 110),
                           dict(name="l" * 120 + "/victim", data=b"pwned")],
                          "written through symlink"),
    "pax-hardlink-abs": ([dict(name="h" * 120, type=tarfile.LNKTYPE,
                               linkname="OUTSIDE/" + "./" * 60 + "victim")],
                         "hardlink to absolute path"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_member_refused(area, case, engine):
    tmp, dest, outside = area
    members, expected = HOSTILE[case]
    members = [dict(m, linkname=m.get("linkname", "").replace("OUTSIDE", str(outside)))
               for m in members]
    path = build(tmp / f"{case}.tar", members)
    with pytest.raises(ArchiveError) as info:
        extract_file(path, str(dest), engine=engine)
    msg = str(info.value)
    assert expected in msg
    name = members[-1]["name"]
    shown = repr(name) if len(name) <= 300 else repr(name[:160] + "...")[:-1]
    assert shown in msg, "the error must name the member (very long names shortened)"
    assert "\n" not in msg
    _outside_untouched(outside)
    # the refused member itself was never created
    last = members[-1]["name"].lstrip("/")
    assert not os.path.lexists(dest / last) or case.startswith("symlink")
    assert not os.path.exists("/abs/evil")


def test_setuid_setgid_dropped_and_modes_kept(tmp_path, engine):
    path = build(tmp_path / "a.tar", [
        dict(name="env/bin", type=tarfile.DIRTYPE, mode=0o755),
        dict(name="env/bin/suid", data=b"#!/bin/sh\n", mode=0o4755),
        dict(name="env/bin/sgid", data=b"#!/bin/sh\n", mode=0o2750),
        dict(name="env/bin/ro", data=b"ro", mode=0o444),
        dict(name="env/shared", type=tarfile.DIRTYPE, mode=0o2775),
    ])
    dest = tmp_path / "d"
    dest.mkdir()
    rep = extract_file(path, str(dest), engine=engine)
    mode = lambda p: stat.S_IMODE(os.lstat(dest / p).st_mode)  # noqa: E731
    assert mode("env/bin/suid") == 0o755
    assert mode("env/bin/sgid") == 0o750
    assert mode("env/bin/ro") == 0o444
    assert mode("env/shared") == 0o775
    assert rep.dropped_bits == 3
    assert rep.top == "env"


def test_legitimate_links_are_created(tmp_path, engine):
    path = build(tmp_path / "env.tar", [
        dict(name="env", type=tarfile.DIRTYPE, mode=0o755),
        dict(name="env/lib", type=tarfile.DIRTYPE, mode=0o755),
        dict(name="env/lib64", type=tarfile.SYMTYPE, linkname="lib"),
        dict(name="env/lib64/through-internal-link.txt", data=b"inside"),
        dict(name="env/bin/python", type=tarfile.SYMTYPE, linkname="/usr/bin/python3.11"),
        dict(name="env/bin/a", data=b"payload", mode=0o755),
        dict(name="env/bin/b", type=tarfile.LNKTYPE, linkname="env/bin/a"),
        dict(name="env/empty", data=b""),
    ], fmt=tarfile.GNU_FORMAT)
    dest = tmp_path / "d"
    dest.mkdir()
    rep = extract_file(path, str(dest), engine=engine)
    assert os.readlink(dest / "env/bin/python") == "/usr/bin/python3.11"
    assert os.readlink(dest / "env/lib64") == "lib"
    assert (dest / "env/lib/through-internal-link.txt").read_bytes() == b"inside"
    assert os.stat(dest / "env/bin/a").st_ino == os.stat(dest / "env/bin/b").st_ino
    assert (dest / "env/empty").read_bytes() == b""
    assert os.stat(dest / "env/bin/a").st_mtime == 1_700_000_000
    assert rep.top == "env" and rep.symlinks == 2 and rep.hardlinks == 1


def test_top_level_detection(tmp_path):
    many = build(tmp_path / "m.tar", [dict(name="a", data=b"1"), dict(name="b/c", data=b"2")])
    d = tmp_path / "d"
    d.mkdir()
    assert extract_file(many, str(d)).top is None
    one_file = build(tmp_path / "f.tar", [dict(name="only", data=b"1")])
    d2 = tmp_path / "d2"
    d2.mkdir()
    assert extract_file(one_file, str(d2)).top is None


def _venv_archive(tmp_path, codec: str) -> tuple[str, str]:
    env = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)
    raw = tmp_path / "venv.tar"
    with tarfile.open(raw, "w") as tf:
        tf.add(env, arcname="venv")
    data = raw.read_bytes()
    if codec == "zstd":
        out = tmp_path / "venv.tar.zst"
        out.write_bytes(zstandard.ZstdCompressor().compress(data))
    elif codec == "gzip":
        out = tmp_path / "venv.tar.gz"
        out.write_bytes(gzip.compress(data))
    else:
        out = raw
    return str(env), str(out)


@pytest.mark.parametrize("codec", ["zstd", "gzip", "none"])
def test_real_venv_roundtrip(tmp_path, codec, engine):
    env, path = _venv_archive(tmp_path, codec)
    dest = tmp_path / "out"
    dest.mkdir()
    rep = extract_file(path, str(dest), engine=engine)
    assert rep.top == "venv"
    p = subprocess.run(["diff", "-r", "--no-dereference", env, str(dest / "venv")],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr


def test_truncated_and_corrupt_archives(tmp_path, engine):
    _env, path = _venv_archive(tmp_path, "zstd")
    data = open(path, "rb").read()
    cases = {
        "trunc-zstd": (data[: len(data) // 2], "truncated"),
        "flip-zstd": (data[:40] + bytes(b ^ 0xFF for b in data[40:60]) + data[60:], "corrupt"),
    }
    plain = zstandard.ZstdDecompressor().decompress(data)
    hdr = bytearray(plain)
    hdr[512 * 3 + 10] ^= 0x55  # inside a later member's header (or data: either fails cleanly)
    bad_hdr = bytearray(plain)
    bad_hdr[0:5] = b"XXXXX"  # first header's name changes -> checksum mismatch
    cases["flip-tar-header"] = (bytes(bad_hdr), "")
    cases["trunc-tar"] = (plain[: len(plain) // 2 + 100], "truncated")
    cases["not-an-archive"] = (b"hello world\n" * 100, "not a tar")
    for name, (blob, expected) in cases.items():
        f = tmp_path / f"{name}.bin"
        f.write_bytes(blob)
        d = tmp_path / f"out-{name}"
        d.mkdir()
        with pytest.raises(ArchiveError) as info:
            extract_file(str(f), str(d), engine=engine)
        assert str(f) in str(info.value), name
        assert expected in str(info.value), (name, str(info.value))


def test_header_corruption_midway_is_not_silent(tmp_path):
    members = [dict(name=f"f{i}", data=b"x" * 100) for i in range(5)]
    path = build(tmp_path / "c.tar", members, fmt=tarfile.USTAR_FORMAT)
    blob = bytearray(open(path, "rb").read())
    blob[1024 * 2 + 100] ^= 0x01  # the mode field of the third header: checksum mismatch
    bad = tmp_path / "bad.tar"
    bad.write_bytes(bytes(blob))
    d = tmp_path / "d"
    d.mkdir()
    with pytest.raises(ArchiveError, match="corrupt tar header"):
        extract_file(str(bad), str(d))


def test_unreadable_archive_named(tmp_path):
    with pytest.raises(ArchiveError, match="cannot read archive .*nothere"):
        extract_file(str(tmp_path / "nothere.tar.zst"), str(tmp_path))


def test_chunk_stream_feeds_extraction_from_another_thread(tmp_path):
    import threading

    _env, path = _venv_archive(tmp_path, "zstd")
    data = open(path, "rb").read()
    cs = ChunkStream(depth=2)
    released = []
    buf = bytearray(777)  # an odd chunk size, reused: release must come before reuse

    def produce():
        for i in range(0, len(data), len(buf)):
            part = data[i:i + len(buf)]
            ev = threading.Event()
            local = bytearray(part)
            cs.put(local, release=lambda ev=ev: (released.append(1), ev.set()))
        cs.close_input()

    t = threading.Thread(target=produce)
    t.start()
    dest = tmp_path / "o"
    dest.mkdir()
    rep = SafeExtractor(str(dest)).run(open_decoder(cs, "zstd"), "zstd")
    cs.drain()
    t.join()
    assert rep.top == "venv" and rep.files > 3
    assert len(released) == -(-len(data) // len(buf))


def test_chunk_stream_abort_stops_reader(tmp_path):
    cs = ChunkStream(depth=1)
    cs.put(b"\x28\xb5\x2f\xfd")
    cs.abort()
    from ezpz.extract import Aborted

    with pytest.raises(Aborted):
        cs.read(10)
        cs.read(10)


def test_extract_stream_detects_codec(tmp_path):
    _env, path = _venv_archive(tmp_path, "gzip")
    d = tmp_path / "o"
    d.mkdir()
    with open(path, "rb", buffering=0) as fh:
        rep = extract_stream(fh, str(d), label="x")
    assert rep.top == "venv"


def test_unknown_engine(tmp_path):
    with pytest.raises(ArchiveError, match="transfer.extractor"):
        SafeExtractor(str(tmp_path), engine="cpio")


def test_extract_file_reads_gzip_members_with_long_header_comments(tmp_path):
    # tar-env reserves room for the manifest in a gzip member's header comment, which can be
    # longer than igzip.GzipFile's input buffer (512 KiB); every reader of ezpz must take it.
    import gzip as gz
    import struct
    import zlib

    from ezpz.extract import extract_file

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        data = os.urandom(1 << 16)
        info = tarfile.TarInfo("top/data.bin")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    tar = buf.getvalue()
    comp = zlib.compressobj(6, zlib.DEFLATED, -15)
    body = comp.compress(tar[512:]) + comp.flush()
    member = (b"\x1f\x8b\x08\x10" + bytes(4) + b"\x00\xff" + b" " * 600_000 + b"\0" + body
              + struct.pack("<II", zlib.crc32(tar[512:]), len(tar) - 512))
    path = tmp_path / "long-comment.tar.gz"
    path.write_bytes(gz.compress(tar[:512]) + member)
    out = tmp_path / "out"
    extract_file(str(path), str(out))
    assert (out / "top" / "data.bin").read_bytes() == data


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_mixed_headers_extract_like_tarfile(tmp_path, engine, fmt):
    """Plain headers (read by the fast path) between long-name, pax and global pax headers."""
    long = "d/" + "e" * 60 + "/" + "n" * 60  # GNU long name, pax header or ustar prefix
    members = [dict(name="d", type=tarfile.DIRTYPE, mode=0o755),
               dict(name="d/a", data=b"a" * 1000),
               dict(name=long, data=b"long" * 300),
               dict(name="d/s", type=tarfile.SYMTYPE, linkname="a"),
               dict(name="d/h", type=tarfile.LNKTYPE, linkname="d/a"),
               dict(name="d/b", data=b"")]
    path = build(tmp_path / "m.tar", members, fmt=fmt)
    if fmt == tarfile.PAX_FORMAT:  # a global header first: every member goes through tarfile
        with tarfile.open(tmp_path / "g.tar", "w", format=fmt,
                          pax_headers={"comment": "x"}) as tf, tarfile.open(path) as src:
            for ti in src:
                tf.addfile(ti, src.extractfile(ti) if ti.isreg() else None)
        path = str(tmp_path / "g.tar")
    dest = tmp_path / "dest"
    dest.mkdir()
    rep = extract_file(path, str(dest), engine=engine)
    assert (rep.files, rep.dirs, rep.symlinks, rep.hardlinks) == (3, 1, 1, 1)
    assert (dest / long).read_bytes() == b"long" * 300
    assert (dest / "d/a").read_bytes() == b"a" * 1000
    assert os.readlink(dest / "d/s") == "a"
    assert os.stat(dest / "d/h").st_ino == os.stat(dest / "d/a").st_ino
    assert (dest / "d/b").read_bytes() == b""
    assert os.stat(dest / "d/a").st_mtime == 1_700_000_000


def test_abort_releases_the_chunk_the_reader_holds():
    # A failed extraction must hand every buffer back, or a producer waiting for a free
    # buffer stalls until its timeout and hides the real error.
    from ezpz.extract import ChunkStream

    released = []
    stream = ChunkStream(depth=1)
    stream.put(b"abc", release=lambda: released.append(1))
    assert stream.read(1) == b"a"  # the reader now holds the first chunk
    stream.put(b"def", release=lambda: released.append(2))
    stream.abort()
    assert sorted(released) == [1, 2]
    stream.abort()  # idempotent: nothing is released twice
    assert sorted(released) == [1, 2]


def _tricky_members() -> list[dict]:
    """Members the C helper writes, interleaved with every kind it must leave to Python."""
    rnd = bytes(range(256)) * (3 * 4096 + 7)  # ~3 MiB: spans the decoder's 1 MiB blocks
    members = [dict(name="env", type=tarfile.DIRTYPE, mode=0o755),
               dict(name="env/d", type=tarfile.DIRTYPE, mode=0o750),
               dict(name="env/d/big.bin", data=rnd, mode=0o644)]
    # many small files, so headers and data straddle block boundaries at many offsets
    members += [dict(name=f"env/d/f{i:04d}", data=bytes([i % 251]) * (i * 37 % 1500),
                     mode=(0o644, 0o755, 0o600, 0o444, 0o777)[i % 5]) for i in range(1500)]
    members += [
        dict(name="env/d/" + "l" * 60, type=tarfile.DIRTYPE, mode=0o755),
        dict(name="env/d/" + "l" * 60 + "/" + "n" * 60, data=b"long name"),  # pax/GNU/prefix
        dict(name="env/d/dup", data=b"first"),
        dict(name="env/d/dup", data=b"second wins"),                      # exists: Python
        dict(name="env/d", type=tarfile.DIRTYPE, mode=0o700),              # again: Python
        dict(name="env/s", type=tarfile.SYMTYPE, linkname="d"),
        dict(name="env/s/through-link", data=b"resolved by Python"),       # parent is a link
        dict(name="env/s", data=b"a file replaces the link"),              # was a link
        dict(name="env/suid", data=b"#!/bin/sh\n", mode=0o4755),           # special bits
        dict(name="env/implicit/x", data=b"parent never declared"),        # parent not made
        dict(name="env/areg", data=b"old-style type", type=tarfile.AREGTYPE),
        dict(name="env/late/f", data=b"before its directory"),
        dict(name="env/late", type=tarfile.DIRTYPE, mode=0o711),
        dict(name="env/h", type=tarfile.LNKTYPE, linkname="env/d/f0001"),
        dict(name="env/d/after-link", data=b"plain again", mode=0o640),
    ]
    return members


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
@pytest.mark.parametrize("codec", ["none", "zstd"])
def test_c_helper_writes_the_same_tree_as_python(tmp_path, monkeypatch, fmt, codec):
    pytest.importorskip("ezpz.extract._fastx", reason="the C helper was not built")
    path = build(tmp_path / "t.tar", _tricky_members(), fmt=fmt)
    if codec == "zstd":
        zst = tmp_path / "t.tar.zst"
        zst.write_bytes(zstandard.ZstdCompressor().compress(open(path, "rb").read()))
        path = str(zst)
    trees, reports = [], []
    for flag in ("1", "0"):
        monkeypatch.setenv("EZPZ_EXTRACT_C", flag)
        dest = tmp_path / f"out{flag}"
        dest.mkdir()
        reports.append(extract_file(path, str(dest)))
        trees.append(tree(dest, mtime=True))
    with_c, without = reports
    assert with_c.fast_members > 1000, "the C helper must take the plain members"
    assert without.fast_members == 0
    for field in ("members", "files", "dirs", "symlinks", "hardlinks", "bytes", "tar_bytes",
                  "top", "dropped_bits"):
        assert getattr(with_c, field) == getattr(without, field), field
    for t in trees:  # made on the way, not by a member: its mtime is the time of extraction
        t["env/implicit"] = t["env/implicit"][:2]
    assert trees[0] == trees[1]
    t = trees[0]
    assert t["env/d/dup"][4] == b"second wins"
    assert t["env/s"][0] == "file" and t["env/d/through-link"][4] == b"resolved by Python"
    assert t["env/suid"][1] == 0o755
    assert t["env/d/f0004"][1] == 0o777 and t["env/d/f0003"][1] == 0o444
    assert t["env/d"][1] == 0o700 and t["env/late"][1] == 0o711
    assert t["env/h"][3] == 2


def test_c_helper_is_built_by_the_install():
    # The project's install compiles it (pyproject ext-modules); a silent build failure would
    # leave extraction on the slower Python path.
    import ezpz.extract._fastx  # noqa: F401


def test_c_writer_receives_only_accepted_members(tmp_path):
    """Plain members first, then a hostile one: the C writer is handed records (a parent
    descriptor, a leaf name, the data) of accepted members only, and never the hostile one."""
    fast = pytest.importorskip("ezpz.extract._fastx", reason="the C helper was not built")
    outside = tmp_path / "outside"
    outside.mkdir()
    members = [dict(name="env", type=tarfile.DIRTYPE, mode=0o755),
               dict(name="env/ok", data=b"fine"),
               dict(name="env/link", type=tarfile.SYMTYPE, linkname=str(outside)),
               dict(name="env/link/evil", data=b"pwned")]
    path = build(tmp_path / "h.tar", members)
    dest = tmp_path / "dest"
    dest.mkdir()
    seen = []

    class Spy:
        @staticmethod
        def write_files(records, umask):
            seen.extend(leaf for _fd, leaf, *_ in records)
            return fast.write_files(records, umask)

    ex = SafeExtractor(str(dest), label=path)
    ex._fast = Spy
    with open(path, "rb") as fh, pytest.raises(ArchiveError, match="written through symlink"):
        ex.run(fh)
    assert b"evil" not in seen
    assert os.listdir(outside) == []


def test_c_writer_interface_refuses_paths():
    """The C writer takes one path component per record, never a path."""
    fast = pytest.importorskip("ezpz.extract._fastx", reason="the C helper was not built")
    fd = os.open("/", os.O_RDONLY)
    try:
        for leaf in (b"a/b", b"..", b".", b"", b"a\0b"):
            with pytest.raises(ValueError):
                fast.write_files([(fd, leaf, 0o644, 0, b"x")], 0o022)
        with pytest.raises(TypeError):
            fast.write_files([(fd, b"x", 0o644)], 0o022)
    finally:
        os.close(fd)


def test_archive_of_a_directory_s_contents(tmp_path, engine):
    """`tar -C env -cf env.tar .` stores "./" first and every name below it as "./...": the
    entries land in the destination, which takes the mode of "./"; no single top is taken."""
    env = tmp_path / "env"
    (env / "bin").mkdir(parents=True)
    (env / "bin" / "tool").write_text("#!/bin/sh\n")
    (env / "bin" / "tool").chmod(0o755)
    (env / "pyvenv.cfg").write_text("home = /usr/bin\n")
    env.chmod(0o750)
    path = tmp_path / "env.tar"
    subprocess.run(["tar", "-C", str(env), "-cf", str(path), "."], check=True)
    assert tarfile.open(path).getnames()[0] == "."
    dest = tmp_path / "dest"
    dest.mkdir()
    rep = extract_file(str(path), str(dest), engine=engine)
    assert rep.top is None
    assert (dest / "bin" / "tool").read_text() == "#!/bin/sh\n"
    assert stat.S_IMODE(os.stat(dest / "bin" / "tool").st_mode) == 0o755
    assert (dest / "pyvenv.cfg").exists()
    assert stat.S_IMODE(os.stat(dest).st_mode) == 0o750  # "./" describes dest itself
