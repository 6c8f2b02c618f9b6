"""The manifest: a typed schema (a wrong type is one line naming the field, never a
traceback), bounded before it is read, and read from a tree without following a symlink."""

from __future__ import annotations

import json
import os
import tracemalloc

import pytest
import zstandard

import tarbuild as tb
from ezpz.errors import ArchiveError
from ezpz.formats.manifest import (
    MANIFEST_ITEMS,
    MANIFEST_MAX,
    MANIFEST_RELPATH,
    Manifest,
    read_manifest,
)

GOOD = {"kind": "venv", "name": "env", "prefix": "/old/env", "format": 1, "files": 3,
        "dirs": 1, "symlinks": 0, "total_bytes": 10,
        "prefix_files": [{"path": "bin/activate", "mode": "text"}, "bin/pip"],
        "excludes": ["*.pyc"], "source": {"tree": "abc"}, "codec": "zstd",
        "python_version": "3.11.7", "frames": [0, 4096, 9000],
        "newer_field": {"ignored": True}}


def archive(tmp_path, manifest: bytes, *, declared: int | None = None, codec: str = "none"):
    name = f"env/{MANIFEST_RELPATH}".encode()
    size = len(manifest) if declared is None else declared
    data = tb.header(name, size=size) + tb.pad(manifest) + tb.member("env/f", b"1") + tb.end()
    path = tmp_path / ("a.tar.zst" if codec == "zstd" else "a.tar")
    path.write_bytes(zstandard.ZstdCompressor().compress(data) if codec == "zstd" else data)
    return path


def test_a_good_manifest_reads_back(tmp_path):
    m = read_manifest(archive(tmp_path, json.dumps(GOOD).encode(), codec="zstd"))
    assert (m.kind, m.name, m.files) == ("venv", "env", 3)
    assert [(p.path, p.mode) for p in m.prefix_files] == [("bin/activate", "text"),
                                                          ("bin/pip", "text")]
    assert Manifest.from_json(m.to_json()) == m


@pytest.mark.parametrize("field, value, why", [
    ("kind", 3, "'kind' must be a string, not int"),
    ("kind", "rpm", "'kind' is 'rpm'; expected one of venv, conda, data"),
    ("name", "../up", "'name' is '../up', not a directory name"),
    ("prefix", ["/a"], "'prefix' must be a string, not list"),
    ("files", "many", "'files' must be an integer, not str"),
    ("files", True, "'files' must be an integer, not bool"),
    ("dirs", -1, "'dirs' is negative"),
    ("prefix_files", {"bin/x": "text"}, "'prefix_files' must be a list, not dict"),
    ("prefix_files", [{"path": 5}], "'prefix_files' must list strings or objects"),
    ("prefix_files", [["bin/x"]], "'prefix_files' must list strings or objects"),
    ("excludes", [1, 2], "'excludes' must be a list of strings"),
    ("source", "x", "'source' must be an object, not str"),
    ("codec", 1.5, "'codec' must be a string or null, not float"),
    ("frames", {"0": 1}, "'frames' must be a list, not dict"),
    ("frames", [0, "16"], "'frames' must be a list of increasing offsets"),
    ("frames", [0, -5], "'frames' must be a list of increasing offsets"),
    ("frames", [0, 100, 100], "'frames' must be a list of increasing offsets"),
    ("frames", [True], "'frames' must be a list of increasing offsets"),
])
def test_wrong_types_are_one_line(tmp_path, field, value, why):
    bad = dict(GOOD, **{field: value})
    path = archive(tmp_path, json.dumps(bad).encode())
    with pytest.raises(ArchiveError) as info:
        read_manifest(path)
    msg = str(info.value)
    assert why in msg and msg.startswith(f"{path}: not a readable ezpz archive")
    assert "\n" not in msg


@pytest.mark.parametrize("text, why", [
    (b"[1, 2]", "a manifest is a JSON object, not list"),
    (b"{not json", "the manifest is not valid JSON"),
    (b'{"kind": "venv"}', "the manifest has no 'name'"),
    (b"[" * 100_000 + b"]" * 100_000, "nests too deeply"),
    (b"\xff\xfe", "not valid JSON"),
])
def test_malformed_manifests_are_one_line(tmp_path, text, why):
    with pytest.raises(ArchiveError) as info:
        read_manifest(archive(tmp_path, text))
    assert why in str(info.value) and "\n" not in str(info.value)


def test_huge_manifests_refused_before_they_are_read(tmp_path):
    """A manifest member declaring 2 GiB is refused from its header; one that holds many
    small values is refused before it is parsed: nothing near a rank's memory budget is
    allocated."""
    path = archive(tmp_path, b"{}", declared=2 << 30)
    tracemalloc.start()
    try:
        with pytest.raises(ArchiveError) as info:
            read_manifest(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "declares 2147483648 bytes, more than the 16 MiB ezpz accepts" in str(info.value)
    assert peak < 4 << 20

    many = b"[" + b"{}," * (MANIFEST_ITEMS + 1) + b"{}]"
    assert len(many) < MANIFEST_MAX
    tracemalloc.start()
    try:
        with pytest.raises(ArchiveError) as info:
            read_manifest(archive(tmp_path, many))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "more than the 400000 ezpz accepts" in str(info.value)
    assert peak < 64 << 20


def test_largest_accepted_manifest_stays_small(tmp_path):
    """The worst manifest the limits let through (values of the costliest shape, just under
    the item limit) parses within a bounded amount of memory."""
    worst = json.dumps(dict(GOOD, source={"x": [{"a": 0}] * (MANIFEST_ITEMS // 3 - 10)}),
                       separators=(",", ":")).encode()
    tracemalloc.start()
    try:
        m = Manifest.from_json(worst)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert m.kind == "venv" and peak < 150 << 20


def test_load_from_a_tree_never_follows_a_symlink(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "manifest.json").write_text(json.dumps(GOOD))
    tree = tmp_path / "env"
    tree.mkdir()
    os.symlink(outside, tree / ".ezpz")
    with pytest.raises(OSError):
        Manifest.load(tree)
    os.unlink(tree / ".ezpz")
    (tree / ".ezpz").mkdir()
    os.symlink(outside / "manifest.json", tree / MANIFEST_RELPATH)
    with pytest.raises(OSError):
        Manifest.load(tree)
    os.unlink(tree / MANIFEST_RELPATH)
    os.mkfifo(tree / MANIFEST_RELPATH)  # never waited for
    with pytest.raises(OSError):
        Manifest.load(tree)
    os.unlink(tree / MANIFEST_RELPATH)
    assert Manifest.load(tree) is None
    (tree / MANIFEST_RELPATH).write_text(json.dumps(dict(GOOD, files="x")))
    with pytest.raises(ValueError, match="'files' must be an integer"):
        Manifest.load(tree)


def test_first_member_not_a_manifest(tmp_path):
    path = tmp_path / "plain.tar"
    path.write_bytes(tb.member("env/x", b"1") + tb.end())
    assert read_manifest(path) is None
