"""Shared fixtures: simulated nodes, the interpreter, clean logging."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

import simnodes

# The session-scoped throwaway Slurm cluster fixture (tests/slurm_cluster.py).
pytest_plugins = ("slurm_cluster",)

# Simulated nodes mount a private tmpfs on /tmp: whatever a rank needs (venvs, archives, the
# test's files) must live elsewhere, so the tests' temporary directories go to /var/tmp.
if os.path.realpath(os.environ.get("TMPDIR", "/tmp")).startswith("/tmp"):
    os.environ["TMPDIR"] = "/var/tmp"
    import tempfile

    tempfile.tempdir = None


@pytest.fixture(scope="session")
def simnodes_ok() -> None:
    """Skip (with the reason) where simulated nodes cannot run; CI runs as root, so they run."""
    ok, why = simnodes.namespaces_available()
    if not ok:
        pytest.skip(why)


@pytest.fixture
def run_nodes(simnodes_ok):
    """``run_nodes(n, argv, **kw)`` → SimRun (see tests/simnodes.py)."""
    return simnodes.run_simnodes


@pytest.fixture
def python() -> str:
    return sys.executable
