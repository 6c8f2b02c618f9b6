"""On PALS machines the system's mpiexec is used, never the MPICH wheel's next to Python."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from ezpz.config import MachineConfig
from ezpz.launch import system_mpiexec


def _path_without_venv() -> str:
    here = str(Path(sys.executable).parent)
    return os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if p != here)


def test_hydra_machine_falls_back_to_the_wheels_mpiexec(monkeypatch):
    monkeypatch.setenv("PATH", _path_without_venv())
    wheel = Path(sys.executable).parent / "mpiexec"
    got = system_mpiexec(MachineConfig(name="local", mpiexec_flavor="hydra"))
    assert got == (str(wheel) if wheel.exists() else "mpiexec")


def test_pals_machine_never_picks_the_wheels_mpiexec(monkeypatch):
    monkeypatch.setenv("PATH", _path_without_venv())
    got = system_mpiexec(MachineConfig(name="aurora", mpiexec_flavor="pals"))
    assert got == "mpiexec"  # left to the system PATH at launch time


def test_pals_machine_warns_when_path_has_this_environments_mpiexec(monkeypatch, tmp_path, caplog):
    fake_bin = Path(sys.prefix) / "bin"
    if not (fake_bin / "mpiexec").exists():
        import pytest

        pytest.skip("this environment has no mpiexec of its own")
    monkeypatch.setenv("PATH", str(fake_bin) + os.pathsep + os.environ.get("PATH", ""))
    logger = logging.getLogger("ezpz")
    monkeypatch.setattr(logger, "propagate", True)
    with caplog.at_level(logging.WARNING, logger="ezpz"):
        got = system_mpiexec(MachineConfig(name="polaris", mpiexec_flavor="pals"))
    assert got == "mpiexec"
    assert any("comes from this Python environment" in r.getMessage() and "polaris" in r.getMessage()
               for r in caplog.records)
