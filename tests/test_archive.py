"""Archive building blocks: tar headers, padding frames, excludes, prefix scanning."""

from __future__ import annotations

import gzip
import io
import os
import subprocess
import tarfile

import pytest

from ezpz.errors import ArchiveError
from ezpz.formats import prefix as prefixes
from ezpz.formats import tarheader
from ezpz.pack import sinks, writer
from ezpz.pack import tree as packtree


def test_headers_round_trip_through_tarfile_including_long_fields():
    long_name = ("dir-" * 40 + "/file.txt").encode()
    long_link = ("../" * 50 + "target").encode()
    data = b"hello"
    stream = (tarheader.tar_header(long_name, 0o100640, len(data), 1_700_000_000, b"0") + data
              + bytes(512 - len(data))
              + tarheader.tar_header(b"top/link", 0o120777, 0, 5, b"2", long_link)
              + tarheader.tar_header(b"top/d/", 0o40750, 0, -3, b"5")
              + tarheader.END_OF_ARCHIVE)
    with tarfile.open(fileobj=io.BytesIO(stream), mode="r:") as tf:
        members = tf.getmembers()
        assert [m.name for m in members] == [long_name.decode(), "top/link", "top/d"]
        assert members[0].mode == 0o640 and members[0].mtime == 1_700_000_000
        assert tf.extractfile(members[0]).read() == data
        assert members[1].issym() and members[1].linkname == long_link.decode()
        assert members[2].isdir() and members[2].mode == 0o750 and members[2].mtime == 0
        assert all(m.uid == 0 and m.gid == 0 for m in members)


@pytest.mark.parametrize("codec", ["zstd", "gzip"])
@pytest.mark.parametrize("gap", [0, 8, 21, 100, 5000])
def test_padding_is_skipped_by_decoders(tmp_path, codec, gap):
    pad = sinks.padding(codec, gap)
    if pad is None:
        assert (codec, gap) in {("gzip", 8)}
        return
    assert len(pad) == gap
    blob = sinks.compress_frame(codec, b"first ") + pad + sinks.compress_frame(codec, b"second")
    f = tmp_path / "x"
    f.write_bytes(blob)
    tool = {"zstd": ["zstd", "-dc", str(f)], "gzip": ["gzip", "-dc", str(f)]}[codec]
    assert subprocess.run(tool, capture_output=True, check=True).stdout == b"first second"
    if codec == "gzip":
        assert gzip.decompress(blob) == b"first second"


def test_padding_refuses_sizes_it_cannot_make():
    assert sinks.padding("zstd", 7) is None
    assert sinks.padding("gzip", 20) is None
    assert sinks.padding("none", 10) is None
    assert sinks.padding("none", 0) == b""


@pytest.mark.parametrize("pattern,path,hit", [
    ("**/__pycache__", "__pycache__", True),
    ("**/__pycache__", "lib/a/__pycache__", True),
    ("**/__pycache__", "lib/__pycache__x", False),
    ("*.pyc", "lib/x/y.pyc", True),
    ("*.pyc", "lib/x/y.py", False),
    ("lib/*/tests", "lib/pkg/tests", True),
    ("lib/*/tests", "lib/a/b/tests", False),
    ("lib/**/tests", "lib/a/b/tests", True),
    ("share/[ab]?", "share/ax", True),
    ("share/[!ab]?", "share/ax", False),
])
def test_exclude_patterns(pattern, path, hit):
    assert packtree.compile_excludes([pattern])(path) is hit


def test_scan_file_finds_a_prefix_across_chunks(tmp_path):
    prefix = b"/some/long/prefix/of/an/env"
    data = bytearray(prefixes.CHUNK * 2)
    data[:] = b"a" * len(data)
    at = prefixes.CHUNK - 7
    data[at:at + len(prefix)] = prefix
    f = tmp_path / "f"
    f.write_bytes(bytes(data))
    assert prefixes.scan_file(f, prefix) == "text"
    f.write_bytes(bytes(data) + b"\0")
    assert prefixes.scan_file(f, prefix) == "binary"
    f.write_bytes(b"a" * 100)
    assert prefixes.scan_file(f, prefix) is None


def test_find_prefix_files_rejects_an_empty_prefix(tmp_path):
    with pytest.raises(ArchiveError, match="prefix is empty"):
        prefixes.find_prefix_files(tmp_path, "")


def test_walk_tree_order_and_kinds(tmp_path):
    root = tmp_path / "env"
    (root / "b" / "c").mkdir(parents=True)
    (root / "a.txt").write_text("a")
    (root / "b" / "f").write_text("f")
    (root / "link").symlink_to("b")
    os.mkfifo(root / "fifo")
    tree = packtree.walk_tree(str(root), "env")
    assert [e.arcname for e in tree.entries] == ["env", "env/a.txt", "env/b", "env/link",
                                                 "env/b/c", "env/b/f"]
    assert tree.skipped_special == [str(root / "fifo")]


def test_zstd_frames_carry_a_checksum_so_corruption_on_disk_is_caught(tmp_path):
    # Random data is stored raw by zstd: without a frame checksum a flipped byte there decodes
    # silently. The archive's frames carry one, so the reader refuses the file.
    import subprocess as sp
    import sys

    from ezpz import extract
    from ezpz.pack import pack

    env = tmp_path / "env"
    sp.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)
    (env / "blob").write_bytes(os.urandom(3 << 20))
    path = pack(prefix=str(env), path=str(tmp_path / "env.tar.zst"))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad = tmp_path / "bad.tar.zst"
    bad.write_bytes(bytes(data))
    with pytest.raises(ArchiveError, match=r"bad.tar.zst: corrupt or truncated zstd data .*checksum"):
        extract.extract_file(str(bad), str(tmp_path / "out"))


def test_progress_counts_every_byte_written_large_files_included(tmp_path):
    root = tmp_path / "tree"
    root.mkdir()
    (root / "big.bin").write_bytes(os.urandom(prefixes.CHUNK * 2 + 123))
    (root / "small.txt").write_text("hello\n")
    out = io.BytesIO()
    counted = []
    tree = packtree.walk_tree(str(root), "tree")
    writer.write_body(sinks.Sink(out), tree.entries, None, counted.append)
    assert sum(counted) == len(out.getvalue())


@pytest.mark.parametrize("text", ["[]", '"x"', "3"])
def test_a_manifest_that_is_not_an_object_is_a_value_error(text):
    from ezpz.formats.manifest import Manifest

    with pytest.raises(ValueError, match="a manifest is a JSON object"):
        Manifest.from_json(text)
