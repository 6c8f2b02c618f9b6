"""The worker's decode-ahead stream: every codec, multi-member gzip, pigz output, bad input;
zstd frames decoded on several threads exactly as one stream would be."""

from __future__ import annotations

import gzip
import io
import os
import shutil
import struct
import subprocess
import threading
import time
import zlib
from typing import Any

import pytest
import zstandard

from ezpz.extract import ChunkStream, decode
from ezpz.extract.decode import DecodeAhead


def _payload() -> bytes:
    rnd = os.urandom(1 << 20)
    return b"".join(rnd[i:] + bytes([i >> 17]) * 50_000 for i in range(0, 1 << 20, 1 << 17))


def _decode(data: bytes, codec: str, chunk: int = 300_001, threads: int = 1) -> bytes:
    """Feed ``data`` in chunks through a ChunkStream from another thread, as the worker does."""
    stream = ChunkStream(depth=4)
    dec = DecodeAhead(stream, codec, threads=threads)

    def produce() -> None:
        for i in range(0, len(data), chunk):
            stream.put(data[i:i + chunk], timeout=30)
        stream.close_input()

    feeder = threading.Thread(target=produce, daemon=True)
    feeder.start()
    out = []
    try:
        while True:
            block = dec.read(1 << 20)
            if not block:
                break
            out.append(block)
    finally:
        dec.close()
        stream.abort()
        feeder.join(30)
    return b"".join(out)


@pytest.fixture(scope="module")
def payload() -> bytes:
    return _payload()


THREADS = pytest.mark.parametrize("threads", [1, 3])


@THREADS
def test_zstd_and_plain(payload: bytes, threads: int) -> None:
    assert _decode(zstandard.ZstdCompressor().compress(payload), "zstd",
                   threads=threads) == payload
    assert _decode(payload, "none", threads=threads) == payload


@THREADS
def test_gzip_members_and_zero_padding(payload: bytes, threads: int) -> None:
    half = len(payload) // 2
    data = gzip.compress(payload[:half]) + gzip.compress(payload[half:]) + bytes(1000)
    assert _decode(data, "gzip", threads=threads) == payload


def _member_with_comment(data: bytes, comment_len: int) -> bytes:
    """A gzip member whose header carries a long FCOMMENT (room an archiver reserved)."""
    co = zlib.compressobj(6, zlib.DEFLATED, -15)
    body = co.compress(data) + co.flush()
    head = b"\x1f\x8b\x08\x10" + bytes(4) + b"\x00\xff" + b" " * comment_len + b"\0"
    return head + body + struct.pack("<II", zlib.crc32(data), len(data) & 0xFFFFFFFF)


def test_gzip_header_longer_than_isal_reader_buffer(payload: bytes) -> None:
    # ISA-L's GzipFile reader (isal 1.9.1) refuses headers over 512 KiB ("Gzip header exceeds
    # input buffer size"); the format allows them and ezpz-tar-env archives can carry one.
    data = gzip.compress(payload[:1000]) + _member_with_comment(payload[1000:], 600_000)
    assert gzip.decompress(data) == payload
    assert _decode(data, "gzip") == payload


@pytest.mark.skipif(not shutil.which("pigz"), reason="pigz is not installed")
def test_gzip_from_pigz(payload: bytes) -> None:
    data = subprocess.run(["pigz", "-c", "-p", "2", "-b", "128"], input=payload * 3,
                          capture_output=True, check=True).stdout
    assert _decode(data, "gzip") == payload * 3


def test_gzip_truncated_and_corrupt(payload: bytes) -> None:
    data = gzip.compress(payload)
    with pytest.raises(EOFError, match="ended before the end-of-stream marker"):
        _decode(data[: len(data) // 2], "gzip")
    bad = bytearray(data)
    bad[len(bad) // 2: len(bad) // 2 + 64] = bytes(64)
    with pytest.raises(gzip.BadGzipFile):
        _decode(bytes(bad), "gzip")


@THREADS
def test_reads_of_any_size(payload: bytes, threads: int) -> None:
    stream = ChunkStream(depth=64)
    data = _frames(payload, 700_000)
    stream.put(data)
    stream.close_input()
    dec = DecodeAhead(stream, "zstd", threads=threads)
    buf = io.BytesIO()
    sizes = [1, 511, 512, 70_000, 1 << 20, 3 << 20]
    i = 0
    while True:
        block = dec.read(sizes[i % len(sizes)])
        i += 1
        if not block:
            break
        assert len(block) <= sizes[(i - 1) % len(sizes)]
        buf.write(block)
    dec.close()
    assert buf.getvalue() == payload


# --------------------------------------------------------------------------------------
# zstd frames on several threads
# --------------------------------------------------------------------------------------
def _frames(data: bytes, size: int, **kw: object) -> bytes:
    """``data`` as independent frames of ``size`` bytes, as ezpz-tar-env writes them."""
    c = zstandard.ZstdCompressor(level=3, write_checksum=True, **kw)  # type: ignore[arg-type]
    return b"".join(c.compress(data[i:i + size]) for i in range(0, len(data), size))


def _skippable(n: int) -> bytes:
    return struct.pack("<II", 0x184D2A50, n) + bytes(n)


def _outcome(data: bytes, threads: int) -> tuple[bytes, str | None]:
    """What the reader sees: every byte before the error, and the error."""
    stream = ChunkStream(depth=4)
    stream.put(data)
    stream.close_input()
    dec = DecodeAhead(stream, "zstd", threads=threads)
    out = bytearray()
    try:
        while True:
            block = dec.read(1 << 20)
            if not block:
                return bytes(out), None
            out += block
    except Exception as exc:  # noqa: BLE001 - compared between thread counts
        return bytes(out), type(exc).__name__
    finally:
        dec.close()


def test_frames_skippable_frames_and_a_one_stream_tail(payload: bytes) -> None:
    one = zstandard.ZstdCompressor().compressobj()  # no declared size: not split off
    tail = one.compress(payload[:300_000]) + one.flush()
    data = (_frames(b"manifest", 100) + _skippable(5000) + _frames(payload, 1 << 20)
            + _skippable(0) + _frames(payload, 333_333) + tail + _frames(b"after", 10))
    want = b"manifest" + payload + payload + payload[:300_000] + b"after"
    for chunk in (7777, 1 << 20, len(data)):  # frames cut anywhere by the chunks
        assert _decode(data, "zstd", chunk=chunk, threads=3) == want


def test_a_frame_larger_than_the_limit_is_decoded_as_one_stream(
        payload: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(decode, "FRAME_MAX", len(payload))
    big = payload + b"!"
    data = _frames(b"head", 10) + _frames(big, len(big)) + _frames(b"tail", 10)
    assert _outcome(data, 2) == (b"head" + big + b"tail", None)


def test_errors_come_after_every_byte_before_them_as_with_one_thread(payload: bytes) -> None:
    good = _frames(payload, 500_000)
    corrupt = bytearray(_frames(payload[:400_000], 400_000))
    corrupt[len(corrupt) - 10] ^= 0xFF  # the checksum no longer matches
    lying = bytearray(_frames(b"x" * 1000, 1000))
    lying[6] ^= 0x01  # the declared content size (single segment, 2-byte field) is wrong
    cases = {
        "corrupt frame": good + bytes(corrupt) + good,
        "truncated frame": good + _frames(payload, 1 << 20)[:-100],
        "truncated skippable frame": good + _skippable(1000)[:-10],
        "garbage after frames": good + b"garbage!" * 10,
        "size lie": good + bytes(lying),
        "nothing": b"",
    }
    for name, data in cases.items():
        seq = _outcome(data, 1)
        par = _outcome(data, 3)
        assert par[1] == seq[1], name  # the same verdict
        # the one-stream decoder may drop what it decoded in the call that failed, or pass
        # on part of a frame that fails its checksum; the frames before a bad one are
        # delivered whole, nothing of the bad one
        if name in ("corrupt frame", "garbage after frames", "size lie"):
            assert par[1] == "ZstdError" and par[0] == payload, name
        elif name.startswith("truncated"):
            # the one-stream decoder may pass on blocks of the cut frame, or drop what it
            # decoded in the call that failed; side by side, every whole frame before the cut
            # one: both are the stream's start, then EOFError
            whole = payload + payload
            assert seq[1] == "EOFError" and whole.startswith(seq[0]), name
            assert whole.startswith(par[0]) and len(par[0]) >= len(payload), name
        else:
            assert par == seq, name


class _Counting(io.RawIOBase):
    def __init__(self, data: bytes) -> None:
        self.data = memoryview(data)
        self.pos = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        n = min(len(b), len(self.data) - self.pos)
        memoryview(b)[:n] = self.data[self.pos:self.pos + n]
        self.pos += n
        return n


def test_decoding_ahead_is_bounded_and_close_stops_it() -> None:
    frame = 256 * 1024
    data = _frames(os.urandom(frame) * 64, frame)  # stored: compressed ~ decoded
    src = _Counting(data)
    dec = DecodeAhead(src, "zstd", threads=8)
    assert dec.read(10)
    deadline = time.monotonic() + 10
    last = -1
    while time.monotonic() < deadline and src.pos != last:  # let it run ahead
        last = src.pos
        time.sleep(0.3)
    ahead = (decode.FRAMES_AHEAD_MAX + 3) * frame + decode.READ_SIZE
    assert 0 < src.pos <= ahead, src.pos
    dec.close()
    got = src.pos
    time.sleep(0.3)
    assert src.pos == got
