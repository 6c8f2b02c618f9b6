"""The one log format, and its level on rank 0 vs other ranks."""

from __future__ import annotations

import io
import logging
import re
import subprocess
import sys

from ezpz import log as ezlog

LINE = re.compile(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{6}\]\[([DIWEC])\]\[([^:\]]+):(\d+):(\w+)\] (.*)$")


def _emit(env_extra):
    code = ("from ezpz.log import get_logger\n"
            "def where():\n"
            "    log = get_logger('ezpz.probe')\n"
            "    log.debug('d'); log.info('hello'); log.warning('w'); log.critical('c')\n"
            "where()\n")
    env = {k: v for k, v in __import__("os").environ.items()
           if k not in ("PMI_RANK", "RANK", "SLURM_PROCID", "PMIX_RANK", "PALS_RANKID",
                        "OMPI_COMM_WORLD_RANK", "EZPZ_LOG_LEVEL")}
    env.update(env_extra)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert p.returncode == 0, p.stderr
    return p.stderr.strip().splitlines()


def test_rank0_logs_info_in_the_format():
    lines = _emit({"PMI_RANK": "0"})
    assert len(lines) == 3
    m = LINE.match(lines[0])
    assert m, lines[0]
    assert m.group(1) == "I" and m.group(2) == "<string>" and m.group(3) == "4"
    assert m.group(4) == "where" and m.group(5) == "hello"
    assert [LINE.match(x).group(1) for x in lines] == ["I", "W", "C"]


def test_other_ranks_log_only_critical():
    for var in ("PMI_RANK", "SLURM_PROCID", "RANK"):
        lines = _emit({var: "3"})
        assert len(lines) == 1 and LINE.match(lines[0]).group(1) == "C"


def test_env_level_overrides_rank():
    lines = _emit({"PMI_RANK": "5", "EZPZ_LOG_LEVEL": "DEBUG"})
    assert [LINE.match(x).group(1) for x in lines] == ["D", "I", "W", "C"]
    lines = _emit({"PMI_RANK": "0", "EZPZ_LOG_LEVEL": "error"})
    assert [LINE.match(x).group(1) for x in lines] == ["C"]


def test_setup_is_idempotent_and_leaves_root_alone():
    root_handlers = list(logging.getLogger().handlers)
    buf = io.StringIO()
    ezlog.setup_logging(rank=0, stream=buf)
    ezlog.setup_logging(rank=0, stream=buf)
    logging.getLogger("ezpz.x").info("once")
    assert buf.getvalue().count("once") == 1
    assert logging.getLogger().handlers == root_handlers
    ezlog.setup_logging()


def test_get_rank():
    assert ezlog.get_rank({"PMI_RANK": "7"}) == 7
    assert ezlog.get_rank({"SLURM_PROCID": "2"}) == 2
    assert ezlog.get_rank({}) == 0
    assert ezlog.resolve_level(environ={"PMI_RANK": "1"}) == logging.CRITICAL
    assert ezlog.resolve_level(environ={}) == logging.INFO


def test_torchrun_rank_wins_over_the_launchers_node_index():
    # torchrun started by mpiexec: PMI_RANK is the node's index, RANK the process's rank
    assert ezlog.get_rank({"PMI_RANK": "1", "RANK": "5"}) == 5
