"""The worker's decode-ahead stream: every codec, multi-member gzip, pigz output, bad input."""

from __future__ import annotations

import gzip
import io
import os
import shutil
import struct
import subprocess
import threading
import zlib

import pytest
import zstandard

from ezpz.extract import ChunkStream
from ezpz.extract.decode import DecodeAhead


def _payload() -> bytes:
    rnd = os.urandom(1 << 20)
    return b"".join(rnd[i:] + bytes([i >> 17]) * 50_000 for i in range(0, 1 << 20, 1 << 17))


def _decode(data: bytes, codec: str, chunk: int = 300_001) -> bytes:
    """Feed ``data`` in chunks through a ChunkStream from another thread, as the worker does."""
    stream = ChunkStream(depth=4)
    dec = DecodeAhead(stream, codec)

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


def test_zstd_and_plain(payload: bytes) -> None:
    assert _decode(zstandard.ZstdCompressor().compress(payload), "zstd") == payload
    assert _decode(payload, "none") == payload


def test_gzip_members_and_zero_padding(payload: bytes) -> None:
    half = len(payload) // 2
    data = gzip.compress(payload[:half]) + gzip.compress(payload[half:]) + bytes(1000)
    assert _decode(data, "gzip") == payload


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


def test_reads_of_any_size(payload: bytes) -> None:
    stream = ChunkStream(depth=64)
    data = zstandard.ZstdCompressor().compress(payload)
    stream.put(data)
    stream.close_input()
    dec = DecodeAhead(stream, "zstd")
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
