"""ezpz-tar-env's zstd archives are made of independent frames, recorded in the manifest."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import zstandard

from ezpz.formats.manifest import Manifest, read_manifest
from ezpz.formats.zstdframes import FrameScan, NotSplittable, split_frames
from ezpz.pack import pack, sinks, writer
from ezpz.pack import tree as packtree

FRAME = 64 * 1024


@pytest.fixture()
def small_frames(monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr(sinks, "FRAME_BYTES", FRAME)
    return FRAME


def _env(tmp_path: Path) -> Path:
    env = tmp_path / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)
    rnd = os.urandom(300_000)
    (env / "big.bin").write_bytes(rnd + bytes(200_000) + rnd[:1000])  # several frames
    for i in range(40):
        (env / f"f{i}.txt").write_text(f"{env}\n" * (i * 50))
    return env


def _body_frames(data: bytes) -> tuple[int, list[int]]:
    """(offset of the first body frame, the body frames' offsets from it): the manifest's
    frame and its skippable padding come first."""
    frames = split_frames(data)
    assert not frames[0].skippable  # the manifest's own frame
    i = 1
    while i < len(frames) and frames[i].skippable:
        i += 1
    first = frames[i - 1].end
    return first, [f.end - first for f in frames[i - 1:-1]]


def _members(blob: bytes) -> list[tuple[str, bytes | None]]:
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:") as tf:
        return [(m.name, tf.extractfile(m).read() if m.isfile() else None)  # type: ignore[union-attr]
                for m in tf.getmembers()]


def test_frames_are_independent_bounded_and_listed_in_the_manifest(tmp_path, small_frames):
    env = _env(tmp_path)
    out = pack(prefix=str(env), path=str(tmp_path / "env.tar.zst"))
    data = out.read_bytes()
    man = read_manifest(out)
    assert man is not None and len(man.frames) > 5
    first, offsets = _body_frames(data)
    assert offsets == man.frames
    whole = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data),
                                                        read_across_frames=True).read()
    ends = [*man.frames[1:], len(data) - first]
    parts = []
    for a, b in zip(man.frames, ends, strict=True):
        frame = data[first + a:first + b]
        params = zstandard.get_frame_parameters(frame)
        assert params.content_size <= small_frames  # declared, bounded
        alone = zstandard.ZstdDecompressor().decompress(frame, allow_extra_data=False)
        assert len(alone) == params.content_size
        parts.append(alone)
    assert all(len(p) == small_frames for p in parts[:-1])  # every frame but the last is full
    # the body frames hold the whole tar stream after the manifest member
    assert whole.endswith(b"".join(parts))
    # GNU tar and zstd read the archive as one stream
    listed = subprocess.run(["tar", "-tf", str(out)], capture_output=True, text=True,
                            check=True).stdout.split()
    assert f"env/{'big.bin'}" in listed and listed[0] == "env/.ezpz/manifest.json"
    names = [n for n, _ in _members(whole)]
    assert names == [n.rstrip("/") for n in listed]


def test_frames_survive_a_manifest_larger_than_its_reserve(tmp_path, small_frames):
    root = tmp_path / "many"
    root.mkdir()
    for _ in range(300):  # random names: the compressed manifest cannot fit in 4 KiB
        (root / (os.urandom(12).hex() + ".txt")).write_bytes(os.fsencode(root) + os.urandom(3000))
    tree = packtree.walk_tree(str(root), "many")
    fh = open(tmp_path / "a.tar.zst", "w+b")
    spilled: list = []

    def spill():
        spilled.append(open(tmp_path / "b.tar.zst", "xb"))
        return spilled[-1]

    manifest, _stats, how = writer.write_archive(
        fh, "zstd", None, 2, tree.entries, 4096,
        lambda s: Manifest(kind="data", name="many", prefix=str(root),
                           prefix_files=s.prefix_files),
        prefix=str(root).encode(), spill=spill)
    fh.close()
    spilled[0].close()
    assert "frames of 64.0 KiB" in how
    data = (tmp_path / "b.tar.zst").read_bytes()
    frames = split_frames(data)
    assert not any(f.skippable for f in frames)  # no padding: the body was copied behind
    first = frames[0].end
    assert [f.end - first for f in frames[:-1]] == manifest.frames
    assert read_manifest(tmp_path / "b.tar.zst").frames == manifest.frames
    assert len(_members(zstandard.ZstdDecompressor().stream_reader(
        io.BytesIO(data), read_across_frames=True).read())) == 302


@pytest.mark.parametrize("threads", [1, 3])
def test_the_sink_writes_the_same_stream_on_any_thread_count(tmp_path, threads):
    payload = os.urandom(50_000) * 7 + bytes(123_457)
    outs = []
    for size in (1, 4096, 70_000, len(payload)):  # writes of every size
        buf = io.BytesIO()
        sink = sinks.open_sink("zstd", buf, threads=threads, frame_bytes=FRAME)
        for i in range(0, len(payload), size):
            chunk = bytearray(payload[i:i + size])
            sink.write(chunk)
            chunk[:] = bytes(len(chunk))  # the caller reuses its buffer at once
        sink.close()
        outs.append(buf.getvalue())
        assert sink.frames == [0] + [f.end for f in split_frames(outs[-1])][:-1]
    assert len(set(outs)) == 1
    frames = split_frames(outs[0])
    assert [f.size for f in frames] == [FRAME] * (len(payload) // FRAME) + [len(payload) % FRAME]
    assert zstandard.ZstdDecompressor().stream_reader(
        io.BytesIO(outs[0]), read_across_frames=True).read() == payload


def test_an_empty_body_is_one_empty_frame():
    buf = io.BytesIO()
    sink = sinks.open_sink("zstd", buf, threads=2)
    sink.close()
    assert sink.frames == [0]
    assert [f.size for f in split_frames(buf.getvalue())] == [0]


def test_an_aborted_sink_stops_its_threads():
    buf = io.BytesIO()
    sink = sinks.open_sink("zstd", buf, threads=3, frame_bytes=FRAME)
    sink.write(os.urandom(FRAME * 6))
    sink.abort()
    sink.abort()  # twice is fine


# --------------------------------------------------------------------------------------
# the frame reader
# --------------------------------------------------------------------------------------
def _frame(data: bytes, **kw) -> bytes:
    return zstandard.ZstdCompressor(level=3, **kw).compress(data)


def test_frame_scan_resumes_byte_by_byte_and_reports_sizes():
    data = _frame(os.urandom(200_000) + bytes(300_000), write_checksum=True) + \
        sinks.padding("zstd", 100) + _frame(b"tail")  # type: ignore[operator]
    frames = split_frames(data)
    assert [(f.size, f.skippable) for f in frames] == [(500_000, False), (0, True), (4, False)]
    scan = FrameScan(0, 1 << 30, 1 << 30)
    buf = bytearray()
    found = None
    for b in data:  # one byte at a time: the same frame end
        buf.append(b)
        found = scan.feed(buf)
        if found:
            break
    assert found == frames[0]


def test_frames_that_cannot_be_split_off_are_named():
    stream = zstandard.ZstdCompressor().compressobj()
    no_size = stream.compress(b"x" * 1000) + stream.flush()
    cases = {
        "no content size": no_size,
        "not a zstd frame": b"PK\x03\x04" + bytes(100),
        "frame content larger than the limit": _frame(bytes(5000)),
    }
    for why, data in cases.items():
        with pytest.raises(NotSplittable, match=why):
            FrameScan(0, 4096, 1 << 20).feed(data)
    with pytest.raises(NotSplittable, match="skippable frame larger"):
        FrameScan(0, 4096, 50).feed(sinks.padding("zstd", 100))
    rnd = _frame(os.urandom(3000))  # stored: compressed size > 1000
    with pytest.raises(NotSplittable, match="frame larger than the limit"):
        FrameScan(0, 1 << 20, 1000).feed(rnd)
    reserved = bytearray(_frame(b"abc"))
    reserved[4] |= 0x08
    with pytest.raises(NotSplittable, match="reserved bit"):
        FrameScan(0, 1 << 20, 1 << 20).feed(reserved)
    with pytest.raises(ValueError, match="ends inside the frame at offset 0"):
        split_frames(_frame(os.urandom(1000))[:-3])
