"""One check for a command line refused before anything runs: exit 2, one ``error:`` line on
stderr and no traceback, the given words in that line, and no run directory created."""

from __future__ import annotations

import subprocess
from pathlib import Path


def assert_refused(p: subprocess.CompletedProcess, cwd: Path, *needles: str) -> str:
    """The refusal's one line (asserting all of the above)."""
    assert p.returncode == 2, p.stdout + p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), p.stderr
    assert "Traceback" not in p.stdout + p.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert not (cwd / "outputs").exists() and not (cwd / "multirun").exists(), \
        "a refused run must not create a run directory"
    return lines[0]
