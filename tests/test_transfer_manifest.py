"""Archives whose manifest lists many prefix files go through the worker like any other:
the plan rank 0 shares carries only what the nodes need from the manifest."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ezpz.pack import pack
from ezpz.transfer import make_plan

pytestmark = pytest.mark.simnodes


@pytest.fixture(scope="module")
def many_prefix_files(tmp_path_factory):
    """A venv with 600 scripts that name its prefix: a manifest of tens of KiB."""
    base = tmp_path_factory.mktemp("many")
    env = base / "manyenv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)
    for i in range(600):
        script = env / "bin" / f"tool{i:03d}"
        script.write_text(f"#!{env}/bin/python\nprint({i})\n")
        script.chmod(0o755)
    archive = pack(prefix=str(env), path=str(base / "manyenv.tar.zst"))
    return env, archive


def test_plan_carries_only_the_manifest_facts_nodes_need(many_prefix_files):
    env, archive = many_prefix_files
    plan = make_plan(str(archive), decompress=True)
    assert plan.kind == "venv"
    assert plan.total_bytes is not None and plan.total_bytes > 0
    assert len(json.dumps(plan.to_wire())) < 4096


def test_worker_delivers_an_env_with_a_large_manifest(many_prefix_files, run_nodes, python, tmp_path):
    env, archive = many_prefix_files
    run = run_nodes(2, [python, "-m", "ezpz.transfer", f"transfer.src={archive}",
                        "transfer.dst=/tmp/manyenv", "transfer.timeout=60",
                        f"hydra.run.dir={tmp_path / 'run'}"],
                    run_in_node=[["/tmp/manyenv/bin/tool599"]])
    assert run.returncode == 0, run.output + "".join(n.output for n in run.nodes)
    for node in run.nodes:
        assert node.rc == 0, node.output
        assert node.runs[0]["stdout"].strip() == "599", node.runs
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["status"] == "ok" and results["kind"] == "venv"
