"""Partial success at scale: min_success_nodes / min_success_fraction with one simulated node
made to fail (its /tmp read-only), the failed-hosts file next to dst, and its removal."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from test_transfer import run

pytestmark = pytest.mark.simnodes

FAILED_HOSTS = "venv.failed-hosts"


def small_tar(path: Path) -> Path:
    with tarfile.open(path, "w") as tf:
        ti = tarfile.TarInfo("venv/ok.txt")
        ti.size = 3
        tf.addfile(ti, io.BytesIO(b"ok\n"))
    return path


def test_threshold_met_writes_failed_hosts_then_a_clean_run_removes_them(run_nodes, python,
                                                                         tmp_path):
    root = tmp_path / "nodes"
    src = small_tar(tmp_path / "venv.tar")
    (root / "node1").mkdir(parents=True)
    (root / "node1" / "venv").write_text("in the way")  # node1 fails: dst is a file
    res, results = run(run_nodes, python, 3, tmp_path, src=str(src), shared_root=str(root),
                       min_success_nodes=2)
    assert res.returncode == 0, res.output
    assert results["status"] == "partial" and results["exit_code"] == 0
    assert results["failed_hosts"] == ["node1"]
    assert "/tmp/venv exists and is not a directory" in results["per_node"][1]["error"]
    by_host = {n.host: n for n in res.nodes}
    assert by_host["node1"].rc == 0
    assert set(by_host["node1"].tmp) == {"venv"}  # left as it was
    (root / "node1" / "venv").unlink()
    for host in ("node0", "node2"):
        node = by_host[host]
        assert node.rc == 0
        assert node.tmp["venv/ok.txt"]["size"] == 3
        assert (root / host / FAILED_HOSTS).read_text() == "node1\n"
        assert FAILED_HOSTS in node.tmp  # seen inside the node too
    # a clean run (all nodes, delivered again) removes the stale list everywhere
    res, results = run(run_nodes, python, 3, tmp_path, src=str(src), shared_root=str(root),
                       overwrite=True, min_success_nodes=2)
    assert res.returncode == 0 and results["status"] == "ok"
    for node in res.nodes:
        assert FAILED_HOSTS not in node.tmp and "venv/ok.txt" in node.tmp, node.tmp


@pytest.mark.parametrize("setting, ok", [("min_success_fraction=0.6", True),
                                         ("min_success_fraction=0.9", False),
                                         ("min_success_nodes=3", False)])
def test_below_the_threshold_fails(run_nodes, python, tmp_path, setting, ok):
    src = small_tar(tmp_path / "venv.tar")
    key, value = setting.split("=")
    res, results = run(run_nodes, python, 3, tmp_path, src=str(src), readonly_node="node2",
                       **{key: float(value) if "." in value else int(value)})
    assert results["failed_hosts"] == ["node2"]
    if ok:
        assert res.returncode == 0 and results["status"] == "partial"
        assert all(FAILED_HOSTS in n.tmp for n in res.nodes[:2])
        return
    assert res.returncode != 0
    assert results["status"] == "failed" and results["exit_code"] == 1
    for node in res.nodes:
        assert node.rc == 1
        assert FAILED_HOSTS not in node.tmp
