"""ezpz's own writes around the extraction, through the whole worker on simulated nodes (real
mpiexec), on every engine: relocation never writes through a link the archive planted, very
deep trees are removed after a failure, unwritable directories are delivered, one header
field or manifest declaring gigabytes is refused within the memory budget, and what the
checks read is what the tar engine writes. Each node's /tmp holds a canary file."""

from __future__ import annotations

import hashlib
import json
import tarfile
from pathlib import Path

import pytest

import tarbuild as tb
from test_transfer import run

pytestmark = pytest.mark.simnodes

OLD = "/opt/build/original/venv"
VICTIM = f'VIRTUAL_ENV="{OLD}"\n'.encode()
LOCK = ".venv.ezpz-lock"
VARIANTS = {"python": ("python", None), "python-no-c": ("python", {"EZPZ_EXTRACT_C": "0"}),
            "tar": ("tar", None)}


def manifest(prefix_files: list[str]) -> bytes:
    return json.dumps({"kind": "venv", "name": "venv", "prefix": OLD, "prefix_files":
                       [{"path": p, "mode": "text"} for p in prefix_files]}).encode()


def archive(path: Path, members: list[dict], man: bytes | None = None) -> Path:
    head = [dict(name="venv/.ezpz/manifest.json", data=man)] if man is not None else []
    path.write_bytes(tb.with_tarfile(head + members, fmt=tarfile.GNU_FORMAT))
    return path


def nodes_with_victim(tmp_path: Path, n: int = 2) -> Path:
    root = tmp_path / "nodes"
    for k in range(n):
        (root / f"node{k}").mkdir(parents=True)
        (root / f"node{k}" / "victim").write_bytes(VICTIM)
    return root


def victim_intact(node) -> None:
    assert node.tmp["victim"]["sha256"] == hashlib.sha256(VICTIM).hexdigest(), \
        "a file outside dst was modified"


def go(run_nodes, python, tmp_path, src, variant, **kw):
    engine, env = VARIANTS[variant]
    res, results = run(run_nodes, python, 2, tmp_path, src=str(src), extractor=engine,
                       env=env, timeout=kw.pop("timeout", 90), **kw)
    for n in res.nodes:
        assert "Traceback" not in n.output, n.output
    return res, results


@pytest.fixture(params=sorted(VARIANTS))
def variant(request) -> str:
    return request.param


VENV = [dict(name="venv", type=tarfile.DIRTYPE, mode=0o755),
        dict(name="venv/pyvenv.cfg", data=f"home = /usr/bin\ncommand = x -m venv {OLD}\n"
             .encode()),
        dict(name="venv/bin", type=tarfile.DIRTYPE, mode=0o755),
        dict(name="venv/bin/tool", data=f"#!{OLD}/bin/python\n".encode(), mode=0o755)]


def test_relocation_never_writes_through_a_planted_link(run_nodes, python, tmp_path, variant):
    """bin/activate is a symlink to a file of the node holding the old prefix, and the
    manifest lists it: the env is delivered and relocated, the link left as it is, the file
    it points to untouched."""
    src = archive(tmp_path / "venv.tar", VENV + [
        dict(name="venv/bin/activate", type=tarfile.SYMTYPE, linkname="/tmp/victim")],
        manifest(["bin/activate", "bin/tool", "pyvenv.cfg"]))
    res, results = go(run_nodes, python, tmp_path, src, variant,
                      shared_root=str(nodes_with_victim(tmp_path)))
    assert res.returncode == 0, "\n".join(n.output for n in res.nodes)
    for n in res.nodes:
        victim_intact(n)
        assert n.tmp["venv/bin/activate"] == {"type": "symlink", "target": "/tmp/victim",
                                              "mode": 0o777}
        assert n.tmp["venv/bin/tool"]["type"] == "file"


def test_relocation_behind_a_planted_directory_link_fails_cleanly(run_nodes, python, tmp_path,
                                                                   variant):
    src = archive(tmp_path / "venv.tar", VENV + [
        dict(name="venv/lib", type=tarfile.SYMTYPE, linkname="/tmp")],
        manifest(["lib/victim", "bin/tool"]))
    res, results = go(run_nodes, python, tmp_path, src, variant,
                      shared_root=str(nodes_with_victim(tmp_path)))
    assert res.returncode != 0 and results["failed_hosts"] == ["node0", "node1"]
    for p in results["per_node"]:
        assert "lib/victim lies outside the environment" in p["error"], p["error"]
    for n in res.nodes:
        victim_intact(n)
        assert set(n.tmp) <= {LOCK, "victim"}, n.tmp  # no dst, no staging


def test_reserved_names_refused_on_every_node(run_nodes, python, tmp_path, variant):
    src = archive(tmp_path / "venv.tar", VENV + [
        dict(name="venv/.ezpz", type=tarfile.SYMTYPE, linkname="/tmp")])
    res, results = go(run_nodes, python, tmp_path, src, variant,
                      shared_root=str(nodes_with_victim(tmp_path)))
    assert res.returncode != 0
    for p in results["per_node"]:
        assert "'venv/.ezpz' is a name ezpz reserves" in p["error"] and "\n" not in p["error"]
    for n in res.nodes:
        victim_intact(n)
        assert set(n.tmp) <= {LOCK, "victim"}, n.tmp


@pytest.mark.slow
def test_very_deep_tree_removed_after_a_failure(run_nodes, python, tmp_path, variant):
    """1,900 nested directories, then a member that is refused: the staging tree is removed
    (shutil.rmtree raised RecursionError at ~1,000 levels and left it behind)."""
    deep = "venv/" + "/".join(["d"] * 1900)
    members = [dict(name="venv", type=tarfile.DIRTYPE, mode=0o755),
               dict(name=deep + "/f", data=b"deep"),
               dict(name="venv/null", type=tarfile.CHRTYPE)]
    src = archive(tmp_path / "venv.tar", members)
    res, results = go(run_nodes, python, tmp_path, src, variant)
    assert res.returncode != 0
    for p in results["per_node"]:
        assert "device node" in p["error"]
    for n in res.nodes:
        assert "RecursionError" not in n.output and "Traceback" not in n.output
        assert set(n.tmp) <= {LOCK}, sorted(n.tmp)[:5]


def test_unwritable_directories_delivered(run_nodes, python, tmp_path, variant):
    src = archive(tmp_path / "venv.tar", VENV + [
        dict(name="venv/locked", type=tarfile.DIRTYPE, mode=0o000),
        dict(name="venv/locked/f", data=b"inside"),
        dict(name="venv/share", type=tarfile.DIRTYPE, mode=0o555),
        dict(name="venv/share/g", data=b"ro", mode=0o444)])
    res, results = go(run_nodes, python, tmp_path, src, variant)
    assert res.returncode == 0, "\n".join(n.output for n in res.nodes)
    for n in res.nodes:
        assert n.tmp["venv/locked"]["mode"] == 0 and n.tmp["venv/share"]["mode"] == 0o555
        assert n.tmp["venv/locked/f"]["type"] == "file"
        assert not [k for k in n.tmp if "ezpz-staging" in k]


HUGE = {
    "pax-header": lambda: tb.pax({b"path": b"venv/a"}, declared=2 << 30) + tb.member("venv/a"),
    "gnu-long-name": lambda: tb.gnu_long(b"venv/a", declared=2 << 30) + tb.member("venv/a"),
    "manifest": lambda: tb.header(b"venv/.ezpz/manifest.json", size=2 << 30) + b"{}",
}


@pytest.mark.parametrize("case", sorted(HUGE))
def test_gigabyte_fields_refused_within_the_memory_budget(run_nodes, python, tmp_path, case):
    """One header field or manifest declaring 2 GiB (the archive itself a few KB): refused
    on every node with the limit named; every rank's peak RSS stays under 300 MB."""
    src = tmp_path / "venv.tar"
    data = HUGE[case]()
    src.write_bytes(data + bytes(-len(data) % 512) + tb.end())
    res, results = run(run_nodes, python, 2, tmp_path, src=str(src), timeout=90)
    assert res.returncode != 0
    assert not [n for n in res.nodes if "Traceback" in n.output]
    for p in results["per_node"]:
        assert "ezpz accepts" in p["error"] or "ezpz reads" in p["error"], p["error"]
        assert p["rss_mb"] < 300, p
    for n in res.nodes:
        assert set(n.tmp) <= {LOCK}, n.tmp


def test_what_is_checked_is_what_tar_writes(run_nodes, python, tmp_path):
    """The old tar engine's parser differential: a header under GNU magic whose bytes 345-500
    hold a path and whose mode is setuid. The checks read one name; GNU tar is fed that name
    (and the mode without setuid), never the original header."""
    hdr = tb.header(b"tool", mode=0o4755, size=3, magic=tb.GNU_MAGIC, prefix=b"venv/bin")
    data = (tb.member("venv", b"", typ=b"5", mode=0o755) + tb.member("venv/ok", b"fine") +
            hdr + tb.pad(b"#!x") + tb.end())
    src = tmp_path / "venv.tar"
    src.write_bytes(data)
    res, results = run(run_nodes, python, 2, tmp_path, src=str(src), extractor="tar",
                       timeout=90)
    assert res.returncode == 0, "\n".join(n.output for n in res.nodes)
    for n in res.nodes:
        assert "venv/bin/tool" not in n.tmp and "venv/bin" not in n.tmp
        assert not any(k.endswith("tool") and v.get("mode", 0) & 0o6000
                       for k, v in n.tmp.items())


def test_negative_size_fails_at_once_on_the_tar_engine(run_nodes, python, tmp_path):
    """GNU tar used to wait for the data of a negative size until the timeout: the reader
    refuses it before tar sees anything, with the reason named."""
    data = (tb.member("venv", b"", typ=b"5", mode=0o755) +
            tb.member("venv/neg", b"", size_field=tb.base256(-512, 12)) + tb.end())
    src = tmp_path / "venv.tar"
    src.write_bytes(data)
    res, results = run(run_nodes, python, 2, tmp_path, src=str(src), extractor="tar",
                       timeout=600)
    assert res.returncode != 0
    for p in results["per_node"]:
        assert "the size field is negative" in p["error"], p["error"]
        assert "timeout" not in p["error"]
    for n in res.nodes:
        assert set(n.tmp) <= {LOCK}, n.tmp
