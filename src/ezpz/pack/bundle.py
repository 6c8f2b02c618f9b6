"""What ``env.bundle_python=true`` packs of an interpreter that lives outside the venv: what it
needs to run, not the base's own packages or what is only used to build or test it."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ..config import format_size
from ..log import get_logger
from . import tree

log = get_logger(__name__)

#: What a bundled interpreter leaves out (paths relative to its prefix): the base's own
#: site-packages (the venv has its packages), the test suites, the static library and the
#: headers (for building extensions, not for running), docs. Bytecode caches of the standard
#: library stay, so that nodes do not compile it at start-up.
EXCLUDE_PATTERNS = ("lib/python*/site-packages/*", "lib/python*/test", "lib/python*/**/tests",
                    "lib/python*/**/idle_test", "lib/python*/config-*", "lib/pkgconfig",
                    "include", "share")
EXCLUDES = tree.compile_excludes(EXCLUDE_PATTERNS)


def log_bundle(root: str, bundled: tree.Tree) -> None:
    """Say how much of the interpreter is packed, and how much of what is left out."""
    kept = sum(e.st.st_size for e in bundled.entries if stat.S_ISREG(e.st.st_mode))
    left = 0
    lib = Path(root) / "lib"
    for d in [*lib.glob("python*/site-packages"), *lib.glob("python*/test")]:
        for dirpath, _dirs, files in os.walk(d):
            for f in files:
                try:
                    left += os.lstat(os.path.join(dirpath, f)).st_size
                except OSError:
                    pass
    log.info("bundling %s of the interpreter at %s (left out: its site-packages and test "
             "suite, %s, and the static library, headers and docs)", format_size(kept), root,
             format_size(left))
