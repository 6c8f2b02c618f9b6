"""The transfer worker on simulated nodes: real mpiexec, real archives of real venvs."""

from __future__ import annotations

import gzip
import json
import os
import socket
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import pytest
import zstandard

from ezpz.formats.codecs import strip_suffix

pytestmark = pytest.mark.simnodes

def make_venv(root: Path, name: str = "venv", extra: int = 30) -> Path:
    env = root / name
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)
    pkg = env / "lib" / "python3" / "site-packages" / "pkg"
    pkg.mkdir(parents=True)
    for i in range(extra):
        (pkg / f"m{i}.py").write_text(f"X = {i}\n" * (i * 40 + 1))
    (pkg / "tool").write_text("#!/bin/sh\necho hi\n")
    (pkg / "tool").chmod(0o750)
    (pkg / "data.bin").write_bytes(os.urandom(300_000))
    (pkg / "ro.txt").write_text("read only")
    (pkg / "ro.txt").chmod(0o444)
    return env


def pack(env: Path, out: Path, codec: str) -> Path:
    raw = out.with_suffix("")
    with tarfile.open(raw if codec != "none" else out, "w") as tf:
        tf.add(env, arcname=env.name)
    if codec == "zstd":
        out.write_bytes(zstandard.ZstdCompressor(level=3).compress(raw.read_bytes()))
    elif codec == "gzip":
        out.write_bytes(gzip.compress(raw.read_bytes(), compresslevel=1))
    return out


@pytest.fixture(scope="module")
def payload(tmp_path_factory):
    root = tmp_path_factory.mktemp("payload")
    env = make_venv(root)
    return {
        "env": env,
        "zstd": pack(env, root / "venv.tar.zst", "zstd"),
        "gzip": pack(env, root / "venv.tar.gz", "gzip"),
        "none": pack(env, root / "venv.tar", "none"),
    }


def worker(python, *overrides):
    return [python, "-m", "ezpz.transfer", *overrides]


def cfgfile(tmp_path: Path, **transfer) -> Path:
    """The worker's config; without ``dst``, ``/tmp/<name>`` (the tests' own place: the
    default, ``/tmp/ezpz-<user>/<name>``, is tested on its own)."""
    if "dst" not in transfer and "src" in transfer:
        name = os.path.basename(transfer["src"])
        if transfer.get("decompress", True):
            name = strip_suffix(name)
        transfer = {**transfer, "dst": f"/tmp/{name}"}
    lines = ["transfer:"] + [f"  {k}: {json.dumps(v)}" for k, v in transfer.items()]
    path = tmp_path / "cfg.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def run(run_nodes, python, n, tmp_path, *, ppn=1, env=None, extra=(), shared_root=None,
        timeout=120, tmp_size=None, readonly_node=None, **transfer):
    rd = tmp_path / "run"
    argv = [python, "-m", "ezpz.transfer", "--config-file", str(cfgfile(tmp_path, **transfer)),
            "--run-dir", str(rd), *extra]
    res = run_nodes(n, argv, ppn=ppn, env=env, shared_root=shared_root, timeout=timeout,
                    tmp_size=tmp_size, readonly_node=readonly_node)
    results = json.loads((rd / "results.json").read_text()) if (rd / "results.json").exists() \
        else None
    if results is not None:
        (rd / "results.json").unlink()
    return res, results


def tree(node, prefix="venv"):
    """The delivered tree; the marker's content (host, time) differs per node by design."""
    out = {k: v for k, v in node.tmp.items() if k == prefix or k.startswith(prefix + "/")}
    marker = f"{prefix}/.ezpz/installed.json"
    if marker in out:
        out[marker] = {"type": out[marker]["type"], "mode": out[marker]["mode"]}
    return out


def leftovers(node):
    return sorted(k for k in node.tmp if "ezpz-staging" in k or "ezpz-old" in k
                  or "ezpz-partial" in k)


def source_paths(env: Path) -> set[str]:
    out = {"venv"}
    for dirpath, dirs, files in os.walk(env):
        for name in dirs + files:
            out.add("venv/" + os.path.relpath(os.path.join(dirpath, name), env))
    return out


@pytest.mark.parametrize("codec", ["zstd", "gzip", "none"])
def test_identical_trees_every_codec(run_nodes, python, tmp_path, payload, codec):
    res, results = run(run_nodes, python, 3, tmp_path, src=str(payload[codec]),
                       chunk_size="64KiB")
    assert res.returncode == 0, res.output + "\n".join(n.output for n in res.nodes)
    trees = [tree(n) for n in res.nodes]
    assert trees[0] == trees[1] == trees[2]
    expected = source_paths(payload["env"]) | {"venv/.ezpz", "venv/.ezpz/installed.json"}
    assert set(trees[0]) == expected
    t = trees[0]
    assert t["venv/lib/python3/site-packages/pkg/tool"]["mode"] == 0o750
    assert t["venv/lib/python3/site-packages/pkg/ro.txt"]["mode"] == 0o444
    assert t["venv/lib64"] == {"mode": 0o777, "type": "symlink", "target": "lib"}
    assert t["venv/bin/python3"]["type"] == "symlink"
    # data files arrive byte-identical
    import hashlib

    data = (payload["env"] / "lib/python3/site-packages/pkg/data.bin").read_bytes()
    assert t["venv/lib/python3/site-packages/pkg/data.bin"]["sha256"] == \
        hashlib.sha256(data).hexdigest()
    # relocated: the activate script names the new prefix
    for n in res.nodes:
        assert leftovers(n) == []
    assert results["status"] == "ok" and results["exit_code"] == 0
    assert results["nodes"] == 3 and results["ranks"] == 3
    assert results["archive"]["codec"] == codec
    assert results["archive"]["bytes"] == payload[codec].stat().st_size
    assert [p["host"] for p in results["per_node"]] == ["node0", "node1", "node2"]
    assert set(results["phases"]) == {"read", "broadcast", "extract", "verify", "relocate", "total"}
    assert results["config"]["backend"] == "mpi" and results["dst"] == "/tmp/venv"
    assert results["kind"] == "venv"


def test_torch_backend_gloo(run_nodes, python, tmp_path, payload):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
               GLOO_SOCKET_IFNAME="lo")
    res, results = run(run_nodes, python, 2, tmp_path, env=env, src=str(payload["zstd"]),
                       backend="torch", chunk_size="100000")
    assert res.returncode == 0, res.output + "\n".join(n.output for n in res.nodes)
    assert tree(res.nodes[0]) == tree(res.nodes[1])
    assert "venv/pyvenv.cfg" in tree(res.nodes[0])
    assert results["config"]["backend"] == "torch"


def test_decompress_false_byte_identical_and_empty_file(run_nodes, python, tmp_path, payload):
    import hashlib

    src = payload["zstd"]
    res, results = run(run_nodes, python, 2, tmp_path, src=str(src), decompress=False,
                       chunk_size="7000")
    assert res.returncode == 0, res.output + "\n".join(n.output for n in res.nodes)
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    for n in res.nodes:
        assert n.tmp["venv.tar.zst"]["sha256"] == digest
        assert leftovers(n) == []
    assert results["archive"]["codec"] == "file"
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    res, results = run(run_nodes, python, 2, tmp_path, src=str(empty), decompress=False)
    assert res.returncode == 0, "\n".join(n.output for n in res.nodes)
    for n in res.nodes:
        assert n.tmp["empty.bin"]["size"] == 0


@pytest.mark.parametrize("chunk", ["1000", "64MiB"])
def test_chunk_sizes(run_nodes, python, tmp_path, payload, chunk):
    res, results = run(run_nodes, python, 2, tmp_path, src=str(payload["gzip"]),
                       chunk_size=chunk, dst="/tmp/env-here")
    assert res.returncode == 0, "\n".join(n.output for n in res.nodes)
    a, b = (tree(n, "env-here") for n in res.nodes)
    assert a == b and "env-here/pyvenv.cfg" in a


def test_two_ranks_per_node_extract_once(run_nodes, python, tmp_path, payload):
    root = tmp_path / "nodes"
    res, results = run(run_nodes, python, 4, tmp_path, ppn=2, shared_root=str(root),
                       src=str(payload["zstd"]))
    assert res.returncode == 0, "\n".join(n.output for n in res.nodes)
    assert results["nodes"] == 2 and results["ranks"] == 4
    assert [p["host"] for p in results["per_node"]] == ["node0", "node1"]
    for node in ("node0", "node1"):
        entries = sorted(os.listdir(root / node))
        assert entries == ["venv"], entries


def test_rerun_skip_refuse_and_overwrite(run_nodes, python, tmp_path, payload):
    root = tmp_path / "nodes"
    res, results = run(run_nodes, python, 2, tmp_path, shared_root=str(root),
                       src=str(payload["zstd"]))
    assert res.returncode == 0
    marker = json.loads((root / "node1/venv/.ezpz/installed.json").read_text())
    assert marker["xxh3_128"] == results["archive"]["xxh3_128"]
    # same archive: skipped on every node
    res, results = run(run_nodes, python, 2, tmp_path, shared_root=str(root),
                       src=str(payload["zstd"]))
    assert res.returncode == 0
    assert results["status"] == "skipped"
    assert {p["status"] for p in results["per_node"]} == {"skipped"}
    # a different archive with the same name: refused, old tree intact
    other = make_venv(tmp_path / "other", extra=3)
    (other / "NEW").write_text("new")
    new_src = pack(other, tmp_path / "other" / "venv.tar.gz", "gzip")
    res, results = run(run_nodes, python, 2, tmp_path, shared_root=str(root), src=str(new_src))
    assert res.returncode != 0
    assert results["status"] == "failed"
    assert results["failed_hosts"] == ["node0", "node1"]
    assert "transfer.overwrite=true" in results["per_node"][1]["error"]
    assert not (root / "node1/venv/NEW").exists()
    assert (root / "node1/venv/lib/python3/site-packages/pkg/m29.py").exists()
    # overwrite=true replaces it
    res, results = run(run_nodes, python, 2, tmp_path, shared_root=str(root), src=str(new_src),
                       overwrite=True)
    assert res.returncode == 0, "\n".join(n.output for n in res.nodes)
    for node in ("node0", "node1"):
        assert (root / node / "venv/NEW").read_text() == "new"
        assert not (root / node / "venv/lib/python3/site-packages/pkg/m29.py").exists()
        assert sorted(os.listdir(root / node)) == ["venv"]


@pytest.mark.parametrize("how", ["gzip-flipped", "zstd-truncated"])
def test_corrupt_archive_fails_everywhere_nothing_left(run_nodes, python, tmp_path, payload, how):
    # gzip carries a CRC; a zstd frame without a checksum only fails when it is cut short
    if how == "gzip-flipped":
        data = bytearray(payload["gzip"].read_bytes())
        mid = len(data) // 2
        data[mid:mid + 64] = bytes(b ^ 0x5A for b in data[mid:mid + 64])
        bad = tmp_path / "venv.tar.gz"
    else:
        data = bytearray(payload["zstd"].read_bytes())[: payload["zstd"].stat().st_size * 2 // 3]
        bad = tmp_path / "venv.tar.zst"
    bad.write_bytes(bytes(data))
    res, results = run(run_nodes, python, 3, tmp_path, src=str(bad), chunk_size="32KiB")
    assert res.returncode != 0
    assert results["status"] == "failed"
    assert results["failed_hosts"] == ["node0", "node1", "node2"]
    for p in results["per_node"]:
        assert str(bad) in p["error"], p["error"]
        assert ("corrupt" in p["error"] or "truncated" in p["error"]), p["error"]
    for n in res.nodes:
        assert n.rc != 0
        assert tree(n) == {} and leftovers(n) == [], n.tmp


def test_missing_src_is_a_usage_error_on_every_rank(run_nodes, python, tmp_path):
    res, results = run(run_nodes, python, 2, tmp_path, src=str(tmp_path / "nope.tar.zst"))
    assert results is None
    for n in res.nodes:
        assert n.rc == 2
        assert "transfer.src: cannot read" in n.output and "nope.tar.zst" in n.output
        assert n.tmp == {}


def test_root_read_failing_midway_stops_every_rank(run_nodes, python, tmp_path):
    """The source shrinks while rank 0 reads it: every rank exits non-zero, nothing left."""
    src = tmp_path / "big.bin"
    with open(src, "wb") as fh:
        fh.truncate(256 << 20)  # sparse: cheap to create and to read
    stop = threading.Event()

    def truncate_when_open():
        target = str(src)
        while not stop.is_set():
            for fd_dir in Path("/proc").glob("[0-9]*/fd"):
                try:
                    for fd in fd_dir.iterdir():
                        if os.readlink(fd) == target:
                            time.sleep(0.05)
                            os.truncate(target, 1 << 20)
                            return
                except OSError:
                    continue
            time.sleep(0.005)

    t = threading.Thread(target=truncate_when_open, daemon=True)
    t.start()
    try:
        res, results = run(run_nodes, python, 3, tmp_path, src=str(src), decompress=False,
                           chunk_size="256KiB", timeout=60)
    finally:
        stop.set()
    assert "TIMEOUT" not in res.output
    assert res.returncode != 0
    assert all(n.rc not in (0, None) for n in res.nodes), [n.rc for n in res.nodes]
    assert results["status"] == "failed"
    for p in results["per_node"]:
        assert "cannot read" in p["error"] and "big.bin" in p["error"], p["error"]
    for n in res.nodes:
        assert "big.bin" not in n.tmp and leftovers(n) == []
