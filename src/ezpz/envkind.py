"""What kind of environment a directory holds: ``venv``, ``conda`` or plain ``data``.

The one rule for the packer, the transfer worker and relocation. Links are never followed:
in a delivered tree an archive chose every name, so only a real ``conda-meta/`` directory or
a regular ``pyvenv.cfg`` file counts.
"""

from __future__ import annotations

import os
import stat
from enum import Enum


class EnvKind(str, Enum):
    venv = "venv"
    conda = "conda"
    data = "data"

    def __str__(self) -> str:
        return str(self.value)


def _is(path: str, kind: int) -> bool:
    try:
        return stat.S_IFMT(os.lstat(path).st_mode) == kind
    except OSError:
        return False


def detect_kind(prefix: str | os.PathLike[str]) -> EnvKind:
    """``conda`` (a ``conda-meta/`` directory), ``venv`` (a ``pyvenv.cfg`` file) or ``data``."""
    root = os.fspath(prefix)
    if _is(os.path.join(root, "conda-meta"), stat.S_IFDIR):
        return EnvKind.conda
    if _is(os.path.join(root, "pyvenv.cfg"), stat.S_IFREG):
        return EnvKind.venv
    return EnvKind.data


def activation_hint(kind: str, dst: str | os.PathLike[str]) -> str:
    """How to use an environment delivered to ``dst``: one shell command."""
    import shlex

    path = os.fspath(dst)
    if kind == EnvKind.conda:
        return f"conda activate {shlex.quote(path)}"
    if kind == EnvKind.venv:
        return f"source {shlex.quote(os.path.join(path, 'bin', 'activate'))}"
    return f"files are in {shlex.quote(path)}"
