"""The tree to pack: its entries, walked with the excludes applied."""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field


@dataclass
class Entry:
    """One filesystem object to pack: where it is and its name inside the archive."""

    path: str
    arcname: str  # '/'-separated, no trailing slash
    st: os.stat_result
    #: Name relative to the environment root, recorded in the manifest (None: not recorded).
    relname: str | None = None


def compile_excludes(patterns: Iterable[str]) -> Callable[[str], bool]:
    """A predicate on '/'-separated relative paths for glob patterns.

    ``*`` and ``?`` stay within one path component, ``**`` spans any number of them, a
    pattern without ``/`` matches the last component at any depth (``*.pyc``,
    ``__pycache__``), one with ``/`` matches from the root (``lib/**/tests``). A matching
    directory excludes everything under it.
    """
    regexes = []
    for pat in patterns:
        pat = pat.strip().strip("/")
        if not pat:
            continue
        anchored = "/" in pat
        i, out = 0, []
        while i < len(pat):
            if pat.startswith("**/", i):
                out.append("(?:.*/)?")
                i += 3
            elif pat.startswith("**", i):
                out.append(".*")
                i += 2
            elif pat[i] == "*":
                out.append("[^/]*")
                i += 1
            elif pat[i] == "?":
                out.append("[^/]")
                i += 1
            elif pat[i] == "[":
                j = pat.find("]", i + 1)
                if j < 0:
                    out.append(re.escape(pat[i]))
                    i += 1
                else:
                    body = pat[i + 1:j].replace("\\", "\\\\")
                    if body.startswith("!"):
                        body = "^" + body[1:]
                    out.append(f"[{body}]")
                    i = j + 1
            else:
                out.append(re.escape(pat[i]))
                i += 1
        rx = "".join(out)
        regexes.append(re.compile(("" if anchored else "(?:.*/)?") + rx + r"\Z"))

    def excluded(rel: str) -> bool:
        return any(r.match(rel) for r in regexes)

    return excluded


@dataclass
class Tree:
    entries: list[Entry] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    skipped_special: list[str] = field(default_factory=list)


def walk_tree(root: str, arc_root: str, excluded: Callable[[str], bool] = lambda rel: False,
              record: bool = True, skip: Iterable[str] = ()) -> Tree:
    """Every directory, regular file and symlink under ``root`` (not following symlinks),
    sorted within each directory, ``root`` itself first; excluded paths left out.

    Files and directories this process cannot read are listed in ``Tree.unreadable``
    (and left out); sockets, FIFOs and devices in ``Tree.skipped_special``.
    """
    tree = Tree()
    skip = set(skip)
    tree.entries.append(Entry(root, arc_root, os.lstat(root), "" if record else None))
    stack = [(root, "")]
    while stack:
        dirpath, rel = stack.pop()
        try:
            with os.scandir(dirpath) as it:
                items = sorted(it, key=lambda e: e.name)
        except OSError:
            tree.unreadable.append(dirpath)
            continue
        subdirs = []
        for item in items:
            r = f"{rel}/{item.name}" if rel else item.name
            if r in skip or excluded(r):
                continue
            st = item.stat(follow_symlinks=False)
            mode = st.st_mode
            entry = Entry(item.path, f"{arc_root}/{r}", st, r if record else None)
            if stat.S_ISDIR(mode):
                if not os.access(item.path, os.R_OK | os.X_OK):
                    tree.unreadable.append(item.path)
                    continue
                tree.entries.append(entry)
                subdirs.append((item.path, r))
            elif stat.S_ISREG(mode):
                if not os.access(item.path, os.R_OK):
                    tree.unreadable.append(item.path)
                    continue
                tree.entries.append(entry)
            elif stat.S_ISLNK(mode):
                tree.entries.append(entry)
            else:
                tree.skipped_special.append(item.path)
        # Depth-first in name order: push in reverse so the first name is visited first.
        stack.extend(reversed(subdirs))
    return tree

