"""Corrupt archives through the whole worker on simulated nodes (real mpiexec).

Truncated at several points, bytes flipped inside compressed data and inside a tar header,
and a file that is not an archive at all: every node fails with the reason and the archive
named, and no node keeps dst or a staging directory.
"""

from __future__ import annotations

import gzip
import io
import os
import random
import tarfile
from pathlib import Path

import pytest
import zstandard

from test_transfer import run

pytestmark = pytest.mark.simnodes

def tar_bytes(nfiles: int = 12) -> bytes:
    rnd = random.Random(8)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        ti = tarfile.TarInfo("venv")
        ti.type, ti.mode = tarfile.DIRTYPE, 0o755
        tf.addfile(ti)
        for i in range(nfiles):
            # half random (incompressible), half text: compressed data has both kinds of blocks
            data = rnd.randbytes(16_000) + (f"line {i}\n" * 2000).encode()
            ti = tarfile.TarInfo(f"venv/f{i:02d}")
            ti.size, ti.mode = len(data), 0o644
            tf.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def archive(tmp_path: Path, codec: str) -> bytes:
    raw = tar_bytes()
    if codec == "zstd":  # with a content checksum, as ezpz-tar-env writes
        return zstandard.ZstdCompressor(level=3, write_checksum=True).compress(raw)
    if codec == "gzip":
        return gzip.compress(raw, compresslevel=1)
    return raw


def assert_failed_everywhere(res, results, src: Path, words: tuple[str, ...]) -> None:
    assert res.returncode != 0
    assert results["status"] == "failed"
    assert results["failed_hosts"] == ["node0", "node1"]
    for p in results["per_node"]:
        assert str(src) in p["error"], p["error"]
        assert any(w in p["error"] for w in words), p["error"]
        assert "re-create or re-copy the archive" in p["error"]
    for n in res.nodes:
        assert n.rc == 1, n.output
        assert set(n.tmp) == set(), n.tmp  # no dst, no staging, no lock


@pytest.mark.parametrize("codec, fraction", [
    ("zstd", 0.02), ("zstd", 0.5), ("zstd", 0.995), ("gzip", 0.3), ("none", 0.6),
])
def test_truncated_archive(run_nodes, python, tmp_path, codec, fraction):
    data = archive(tmp_path, codec)
    src = tmp_path / {"zstd": "venv.tar.zst", "gzip": "venv.tar.gz", "none": "venv.tar"}[codec]
    src.write_bytes(data[: max(600, int(len(data) * fraction))])
    res, results = run(run_nodes, python, 2, tmp_path, src=str(src), chunk_size="16KiB",
                       timeout=60)
    assert_failed_everywhere(res, results, src, ("truncated", "corrupt"))


@pytest.mark.parametrize("codec", ["zstd", "gzip"])
def test_bytes_flipped_inside_compressed_data(run_nodes, python, tmp_path, codec):
    data = bytearray(archive(tmp_path, codec))
    mid = len(data) // 2
    data[mid:mid + 16] = bytes(b ^ 0xA5 for b in data[mid:mid + 16])
    src = tmp_path / ("venv.tar.zst" if codec == "zstd" else "venv.tar.gz")
    src.write_bytes(bytes(data))
    res, results = run(run_nodes, python, 2, tmp_path, src=str(src), chunk_size="16KiB",
                       timeout=60)
    assert_failed_everywhere(res, results, src, ("corrupt",))


def test_byte_flipped_inside_a_tar_header(run_nodes, python, tmp_path):
    data = bytearray(tar_bytes())
    # the header of the third file: after the dir header and two (header + data) members
    size = 16_000 + len("line 0\n") * 2000
    off = 512 + 2 * (512 + -(-size // 512) * 512)
    assert data[off:off + 8] == b"venv/f02"
    data[off + 100] ^= 0x01  # its mode field: the header checksum no longer matches
    src = tmp_path / "venv.tar"
    src.write_bytes(bytes(data))
    res, results = run(run_nodes, python, 2, tmp_path, src=str(src), timeout=60)
    assert_failed_everywhere(res, results, src, ("corrupt tar header",))


@pytest.mark.parametrize("content", [b"just some text\n" * 100, b"\x28\xb5\x2f\xfd" + bytes(200)])
def test_not_an_archive_with_decompress(run_nodes, python, tmp_path, content):
    src = tmp_path / "venv.tar.zst"
    src.write_bytes(content)
    res, results = run(run_nodes, python, 2, tmp_path, src=str(src), timeout=60)
    assert res.returncode != 0
    if content.startswith(b"\x28\xb5\x2f\xfd"):  # looks like zstd: fails while decoding
        assert_failed_everywhere(res, results, src, ("corrupt", "truncated"))
        return
    # not recognised at all: a usage error on every rank before anything is written
    assert results is None
    for n in res.nodes:
        assert n.rc == 2
        assert "is not a tar, .tar.gz or .tar.zst archive" in n.output
        assert "transfer.decompress=false" in n.output and str(src) in n.output
        assert n.tmp == {}
    assert os.path.getsize(src) == len(content)
