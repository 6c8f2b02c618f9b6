"""Host discovery: hostfiles, PBS, Slurm ranges, localhost fallback, and every error path."""

from __future__ import annotations

import os

import pytest

from ezpz.errors import LaunchError
from ezpz.launch.hosts import (
    all_local,
    discover_hosts,
    expand_nodelist,
    is_local_host,
    read_hostfile,
    short_hostname,
    unique_hosts,
)

AURORA_A = "x4711c1s2b0n0.hostmgmt2711.cm.aurora.alcf.anl.gov"
AURORA_B = "x4711c1s3b0n0.hostmgmt2711.cm.aurora.alcf.anl.gov"


@pytest.mark.parametrize("text, expected", [
    ("nid[001-003,010],login01", ["nid001", "nid002", "nid003", "nid010", "login01"]),
    ("nid[8-10]", ["nid8", "nid9", "nid10"]),
    ("nid[08-10]", ["nid08", "nid09", "nid10"]),
    ("r[1-2]n[08-09]", ["r1n08", "r1n09", "r2n08", "r2n09"]),
    ("a,b,c", ["a", "b", "c"]),
    ("sim[1-3]", ["sim1", "sim2", "sim3"]),
    ("gpu-[7]-x", ["gpu-7-x"]),
    ("login01, nid[1,3]", ["login01", "nid1", "nid3"]),
])
def test_expand_nodelist(text, expected):
    assert expand_nodelist(text) == expected


@pytest.mark.parametrize("text, message", [
    ("nid[1-3", "unbalanced '\\['"),
    ("nid1-3]", "unbalanced '\\]'"),
    ("nid[3-1]", "range '3-1' goes backwards"),
    ("nid[a-b]", "bad range 'a-b'"),
    ("nid[1,,2]", "empty range"),
])
def test_expand_nodelist_errors(text, message):
    with pytest.raises(LaunchError, match=message):
        expand_nodelist(text)


def test_unique_hosts_compares_short_names_and_keeps_first_spelling():
    names = [AURORA_A, AURORA_A, "x4711c1s2b0n0-hsn0.hsn.cm.aurora.alcf.anl.gov", AURORA_B,
             AURORA_B, "127.0.0.1", "127.0.0.2", "localhost"]
    assert unique_hosts(names) == [AURORA_A, AURORA_B, "127.0.0.1", "127.0.0.2", "localhost"]
    assert short_hostname("127.0.0.1") == "127.0.0.1"


def test_pbs_nodefile_with_repeats_and_fqdns(tmp_path):
    nodefile = tmp_path / "pbs nodes 'x'"
    nodefile.write_text(f"{AURORA_A}\n{AURORA_A}\n\n# comment\n{AURORA_B}\n{AURORA_B}\n")
    hl = discover_hosts(environ={"PBS_NODEFILE": str(nodefile)})
    assert hl.hosts == [AURORA_A, AURORA_B]
    assert hl.source == f"PBS_NODEFILE={nodefile}" and hl.hostfile == str(nodefile)
    assert hl.lines == [AURORA_A, AURORA_A, AURORA_B, AURORA_B]


def test_order_launcher_hostfile_then_pbs_then_hostfile_env(tmp_path):
    a, b, c = (tmp_path / n for n in "abc")
    a.write_text("ha\n")
    b.write_text("hb\n")
    c.write_text("hc\n")
    env = {"PBS_NODEFILE": str(b), "HOSTFILE": str(c), "SLURM_JOB_NODELIST": "s[1-2]"}
    assert discover_hosts(str(a), env).hosts == ["ha"]
    assert discover_hosts(None, env).hosts == ["hb"]
    env.pop("PBS_NODEFILE")
    assert discover_hosts(None, env).hosts == ["hc"]
    env.pop("HOSTFILE")
    assert discover_hosts(None, env).hosts == ["s1", "s2"]


def test_pbs_jobid_aux_path(tmp_path):
    (tmp_path / "1234.pbs01").write_text("x3001c0s1b0n0\nx3001c0s1b0n0\nx3001c0s2b0n0\n")
    hl = discover_hosts(environ={"PBS_JOBID": "1234.pbs01"}, pbs_aux_dir=str(tmp_path))
    assert hl.hosts == ["x3001c0s1b0n0", "x3001c0s2b0n0"]
    assert hl.hostfile == os.path.join(str(tmp_path), "1234.pbs01")


def test_pbs_jobid_without_aux_file_is_an_error(tmp_path):
    with pytest.raises(LaunchError) as info:
        discover_hosts(environ={"PBS_JOBID": "77.pbs"}, pbs_aux_dir=str(tmp_path))
    assert str(info.value) == (f"PBS_JOBID=77.pbs (node file {tmp_path}/77.pbs): "
                               f"'{tmp_path}/77.pbs' does not exist")


def test_slurm_nodelist_fallback_variable():
    hl = discover_hosts(environ={"SLURM_NODELIST": "nid[001-002],nid001"})
    assert hl.hosts == ["nid001", "nid002"] and hl.hostfile is None
    assert hl.source == "SLURM_NODELIST=nid[001-002],nid001"


def test_localhost_fallback_warns(caplog):
    import logging
    logger = logging.getLogger("ezpz")
    logger.addHandler(caplog.handler)
    try:
        hl = discover_hosts(environ={})
    finally:
        logger.removeHandler(caplog.handler)
    assert hl.hosts == ["localhost"] and hl.source == "localhost"
    assert "running on this host only" in caplog.text


@pytest.mark.parametrize("kind", ["missing", "empty", "directory", "unreadable"])
def test_hostfile_errors_name_where_they_looked(tmp_path, kind):
    path = tmp_path / "nodes"
    if kind == "empty":
        path.write_text("\n# only a comment\n")
        message = f"launcher.hostfile: '{path}' is empty (no host names)"
    elif kind == "directory":
        path.mkdir()
        message = f"launcher.hostfile: '{path}' is a directory, not a node file"
    elif kind == "unreadable":
        path.write_text("h\n")
        path.chmod(0)
        if os.access(path, os.R_OK):  # root reads anything: use a path through a file instead
            path = tmp_path / "nodes" / "sub"
            message = f"launcher.hostfile: cannot read '{path}'"
        else:  # pragma: no cover - non-root
            message = f"launcher.hostfile: cannot read '{path}'"
    else:
        message = f"launcher.hostfile: '{path}' does not exist"
    with pytest.raises(LaunchError) as info:
        discover_hosts(str(path), environ={})
    assert str(info.value).startswith(message)


def test_env_nodefile_errors_name_the_variable(tmp_path):
    with pytest.raises(LaunchError, match=r"^PBS_NODEFILE: '.*gone' does not exist$"):
        discover_hosts(environ={"PBS_NODEFILE": str(tmp_path / "gone")})
    with pytest.raises(LaunchError, match=r"^HOSTFILE: '.*gone' does not exist$"):
        discover_hosts(environ={"HOSTFILE": str(tmp_path / "gone")})


def test_read_hostfile_takes_first_word(tmp_path):
    p = tmp_path / "h"
    p.write_text("node1 slots=4\n  node2  \n")
    assert read_hostfile(p) == ["node1", "node2"]


def test_local_aliases():
    own = {"vm", "vm.example.org"}
    assert is_local_host("localhost", own) and is_local_host("127.0.0.2", own)
    assert is_local_host("::1", own) and is_local_host("vm.example.org", own)
    assert not is_local_host("node-a", own)
    assert all_local(["localhost", "127.0.0.1", "vm"], own)
    assert not all_local(["localhost", "node-a"], own) and not all_local([], own)
