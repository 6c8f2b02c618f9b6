"""Relocation through the anchored API: it never reads through, writes through or re-points a
link out of the tree, rewrites large files in bounded memory (byte for byte as the in-memory
rules), and walks trees deeper than Python's recursion limit."""

from __future__ import annotations

import os
import re
import stat
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ezpz.errors import RelocateError
from ezpz.formats.manifest import Manifest, PrefixFile
from ezpz.fsutil import remove
from ezpz.relocate import relocate
from ezpz.relocate import stream as rstream
from ezpz.relocate.rewrite import Rewriter

OLD = "/opt/build/a-fairly-long-prefix/env"


def canaries(outside: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(outside.iterdir())}


@pytest.fixture
def planted(tmp_path):
    """A venv-like tree whose files holding the prefix are symlinks to files outside (each
    holding the old prefix too), and a directory symlink out of the tree."""
    root, outside = tmp_path / "env", tmp_path / "outside"
    (root / "bin").mkdir(parents=True)
    outside.mkdir()
    (root / "pyvenv.cfg").write_text(f"home = /usr/bin\ncommand = python -m venv {OLD}\n")
    (root / "bin" / "real").write_text(f"#!{OLD}/bin/python\nprint(1)\n")
    os.chmod(root / "bin" / "real", 0o755)
    for name in ("activate", "script", "cfg", "meta.json"):
        (outside / name).write_text(f'VIRTUAL_ENV="{OLD}"\n')
    os.symlink(outside / "activate", root / "bin" / "activate")
    os.symlink(outside / "script", root / "bin" / "pip")
    os.symlink(outside, root / "lib")
    os.symlink(f"{OLD}/bin/real", root / "bin" / "python")  # a link inside: re-pointed
    return root, outside


def test_scan_never_reads_or_writes_through_links(planted, tmp_path):
    root, outside = planted
    before = canaries(outside)
    rep = relocate(root, new_prefix=str(tmp_path / "new"), old_prefix=OLD)
    assert rep.scanned and rep.files_rewritten == 2  # bin/real, pyvenv.cfg
    assert (root / "bin" / "real").read_text().startswith(f"#!{tmp_path}/new/bin/python")
    assert os.readlink(root / "bin" / "python") == "real"
    assert os.readlink(root / "bin" / "activate") == str(outside / "activate")
    assert canaries(outside) == before


def test_manifest_entries_behind_or_at_links(planted, tmp_path):
    root, outside = planted
    before = canaries(outside)
    m = Manifest(kind="venv", name="env", prefix=OLD,
                 prefix_files=[PrefixFile("bin/real"), PrefixFile("bin/pip")])
    rep = relocate(root, new_prefix=str(tmp_path / "new"), manifest=m)
    assert rep.files_rewritten == 2  # a listed symlink is left as it is, never written through
    assert canaries(outside) == before
    m.prefix_files.append(PrefixFile("lib/cfg"))
    with pytest.raises(RelocateError, match="lib/cfg lies outside the environment"):
        relocate(root, new_prefix=str(tmp_path / "newer"), manifest=m)
    assert canaries(outside) == before


def test_manifest_symlink_is_not_followed(planted, tmp_path):
    root, outside = planted
    (outside / "m.json").write_text(Manifest(kind="venv", name="env", prefix=OLD).to_json())
    (root / ".ezpz").mkdir()
    os.symlink(outside / "m.json", root / ".ezpz" / "manifest.json")
    with pytest.raises(RelocateError, match="cannot read .*manifest.json"):
        relocate(root, new_prefix=str(tmp_path / "new"))
    os.unlink(root / ".ezpz" / "manifest.json")
    os.rmdir(root / ".ezpz")
    os.symlink(outside, root / ".ezpz")
    with pytest.raises(RelocateError, match="cannot read"):
        relocate(root, new_prefix=str(tmp_path / "new"))


def test_temporary_names_cannot_be_redirected(planted, tmp_path):
    """A symlink planted at the name of a relocation's temporary file makes it fail, never
    write through the link."""
    root, outside = planted
    os.symlink(outside / "cfg", root / f".pyvenv.cfg.ezpz-relocate.{os.getpid()}")
    before = canaries(outside)
    with pytest.raises(RelocateError, match="writing its new version failed"):
        relocate(root, new_prefix=str(tmp_path / "new"), old_prefix=OLD)
    assert canaries(outside) == before


def test_deep_tree_scanned_without_recursion(tmp_path):
    root = tmp_path / "env"
    (root / "bin").mkdir(parents=True)
    (root / "pyvenv.cfg").write_text(f"command = python -m venv {OLD}\n")
    try:
        fd = os.open(root, os.O_RDONLY)
        for _ in range(1500):
            os.mkdir("d", dir_fd=fd)
            nfd = os.open("d", os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = nfd
        with open(os.open("deep.txt", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd), "w") as fh:
            fh.write(OLD)
        os.close(fd)
        rep = relocate(root, new_prefix=str(tmp_path / "n"), old_prefix=OLD)
        assert rep.scanned and rep.files_rewritten == 2  # pyvenv.cfg and deep.txt
        deep = "/".join(["d"] * 1500) + "/deep.txt"
        from ezpz.anchored import Anchor

        with Anchor(str(root)) as a:
            assert a.read_bytes(deep, 100) == str(tmp_path / "n").encode()
    finally:
        remove(str(root))


def test_large_binary_rewritten_in_bounded_memory(tmp_path):
    """A 48 MiB library holding the prefix (conda's padded rule) is rewritten chunk by chunk."""
    root = tmp_path / "cenv"
    (root / "conda-meta").mkdir(parents=True)
    (root / "lib").mkdir()
    o = OLD.encode()
    block = b"\x00\x01" * 1000 + o + b"/lib:" + o + b"/etc\0" + b"z" * 3000
    big = root / "lib" / "libbig.so"
    with open(big, "wb") as fh:
        for _ in range((48 << 20) // len(block)):
            fh.write(block)
    new = "/n/env"
    expected = Rewriter([(OLD, new)]).binary(big.read_bytes(), "lib/libbig.so")
    m = Manifest(kind="conda", name="cenv", prefix=OLD,
                 prefix_files=[PrefixFile("lib/libbig.so", "binary")])
    tracemalloc.start()
    try:
        relocate(root, new_prefix=new, manifest=m)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 12 << 20
    data = big.read_bytes()
    assert len(data) == len(expected) and data == expected
    del data, expected


# -- the streaming rewrites are the in-memory rules ------------------------------------------
PREFIXES = ["/p/old", "/p/old/sub"]
NEWS = ["/q", "/p/old2", "/p/o"]
_piece = st.one_of(st.sampled_from([p.encode() for p in PREFIXES]),
                   st.sampled_from([b"\0", b"\0\0", b"/", b"x", b"2", b"\n", b":", b"/lib"]),
                   st.binary(max_size=12))


def _stream(fn, data: bytes, chunk: int) -> bytes:
    out: list[bytes] = []
    src = iter([data[i:i + chunk] for i in range(0, len(data), chunk)])
    fn(src, out.append)
    return b"".join(out)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pieces=st.lists(_piece, max_size=40), old=st.sampled_from(PREFIXES),
       new=st.sampled_from(NEWS), chunk=st.integers(1, 40))
def test_streamed_text_and_binary_match_the_in_memory_rules(pieces, old, new, chunk):
    data = b"".join(pieces)
    rw = Rewriter([(old, new)])
    longest = max(map(len, rw.map))
    got = _stream(lambda src, out: rstream.stream_sub(src, out, rw.regex,
                                                       lambda m: rw.map[m.group(0)], longest),
                  data, chunk)
    assert got == rw.sub(data)
    try:
        expected = rw.binary(data, "f")
    except RelocateError:
        expected = None
    pad = rstream.BinaryPadding("f", old, new)

    def binary(src, out):
        rstream.stream_sub(src, out, rw.regex, lambda m: rw.map[m.group(0)], longest,
                           pad.on_raw, pad.on_match)
        out(pad.tail())

    if expected is None:
        with pytest.raises(RelocateError):
            _stream(binary, data, chunk)
    else:
        assert _stream(binary, data, chunk) == expected


@settings(max_examples=100, deadline=None)
@given(pieces=st.lists(st.sampled_from([b"/b/lib", b"/b/lib/", b":", b"\0", b"x", b"/b/li",
                                        b"$ORIGIN"]), max_size=30), chunk=st.integers(1, 20))
def test_streamed_segments_see_whole_strings(pieces, chunk):
    data = b"".join(pieces)
    seen: list[bytes] = []

    def fn(seg: bytes) -> bytes | None:
        seen.append(seg)
        return seg.upper()

    got = _stream(lambda src, out: rstream.rewrite_segments(src, out, b"/b/lib", fn), data,
                  chunk)
    segs = data.split(b"\0")
    assert seen == [s for s in segs if b"/b/lib" in s]
    assert got == b"\0".join(s.upper() if b"/b/lib" in s else s for s in segs)


def test_text_shebang_and_large_text_streamed(tmp_path, monkeypatch):
    monkeypatch.setattr(rstream, "CHUNK", 64)
    import ezpz.relocate.plan as plan

    monkeypatch.setattr(plan, "CHUNK", 64)
    root = tmp_path / "env"
    (root / "bin").mkdir(parents=True)
    (root / "pyvenv.cfg").write_text(f"command = python -m venv {OLD}\n")
    body = (f"x = '{OLD}/lib'\n" * 50).encode()
    (root / "bin" / "tool").write_bytes(f"#!{OLD}/bin/python -E\n".encode() + body)
    stat_before = os.stat(root / "bin" / "tool").st_mode
    relocate(root, new_prefix="/n", old_prefix=OLD)
    got = (root / "bin" / "tool").read_bytes()
    assert got == b"#!/n/bin/python -E\n" + re.sub(re.escape(OLD.encode()), b"/n", body)
    assert stat.S_IMODE(os.stat(root / "bin" / "tool").st_mode) == stat.S_IMODE(stat_before)
