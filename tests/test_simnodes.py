"""Self-test of the simulated-node harness: isolation of hostname and /tmp per rank."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.simnodes

PROBE = r"""
import json, os, socket, sys
from mpi4py import MPI
comm = MPI.COMM_WORLD
before = sorted(os.listdir("/tmp"))
with open(f"/tmp/mark.{comm.rank}", "w") as fh:
    fh.write(socket.gethostname())
comm.Barrier()   # every rank has written its file before anyone looks
after = sorted(os.listdir("/tmp"))
print(json.dumps({"rank": comm.rank, "size": comm.size, "host": socket.gethostname(),
                  "before": before, "after": after}))
"""


def test_three_nodes_are_isolated(run_nodes, python):
    run = run_nodes(3, [python, "-c", PROBE])
    assert run.returncode == 0, run.output
    seen = [json.loads(node.output.strip().splitlines()[-1]) for node in run.nodes]
    assert [s["rank"] for s in seen] == [0, 1, 2]
    assert all(s["size"] == 3 for s in seen)
    # each rank is its own host
    assert [s["host"] for s in seen] == ["node0", "node1", "node2"]
    for s in seen:
        assert s["before"] == [], "a node's /tmp must start empty"
        assert s["after"] == [f"mark.{s['rank']}"], "a rank must not see other nodes' files"
    # the check ran inside each node, before its /tmp vanished
    for node in run.nodes:
        assert node.rc == 0
        assert node.host == f"node{node.rank}"
        assert list(node.tmp) == [f"mark.{node.rank}"]


def test_ranks_on_one_node_share_tmp(run_nodes, python, tmp_path):
    run = run_nodes(4, [python, "-c", PROBE], ppn=2, shared_root=str(tmp_path / "nodes"))
    assert run.returncode == 0, run.output
    seen = [json.loads(node.output.strip().splitlines()[-1]) for node in run.nodes]
    assert [s["host"] for s in seen] == ["node0", "node0", "node1", "node1"]
    assert seen[0]["after"] == ["mark.0", "mark.1"]
    assert seen[3]["after"] == ["mark.2", "mark.3"]


def test_exit_code_and_commands_inside_node(run_nodes, python):
    code = "import os, sys; open('/tmp/x', 'w').write('hi'); sys.exit(3 if os.environ['PMI_RANK'] == '1' else 0)"
    run = run_nodes(2, [python, "-c", code], run_in_node=[["cat", "/tmp/x"]])
    assert run.returncode != 0
    assert [n.rc for n in run.nodes] == [0, 3]
    assert all(n.runs[0]["stdout"] == "hi" for n in run.nodes)
