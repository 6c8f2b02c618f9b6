"""One description of a directory tree for tests to compare: every entry under ``root`` by
its path relative to it, symlinks never followed."""

from __future__ import annotations

import os
import stat
from pathlib import Path


def tree(root: str | Path, *, mtime: bool = False) -> dict[str, tuple]:
    """``("link", target)``, ``("dir", mode)``, ``("file", mode, nlink, content)`` or
    ``("other", mode)`` per entry; with ``mtime`` directories and files carry their mtime
    after the mode."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            rel = os.path.relpath(p, root)
            mode = stat.S_IMODE(st.st_mode)
            when = (st.st_mtime,) if mtime else ()
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", mode, *when)
            elif stat.S_ISREG(st.st_mode):
                with open(p, "rb") as fh:
                    out[rel] = ("file", mode, *when, st.st_nlink, fh.read())
            else:
                out[rel] = ("other", mode)
    return out
