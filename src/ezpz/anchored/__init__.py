"""Filesystem access anchored at a directory: the one way ezpz touches a tree it writes.

An :class:`Anchor` is a directory opened once. Every path given to it is relative, and is
resolved beneath that directory's file descriptor without following any symlink (the last
component included) and without ``..``: with ``openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)``
where the kernel has it (Linux 5.6+), otherwise by opening one component at a time with
``O_NOFOLLOW``. A symlink planted anywhere in a path therefore makes the operation fail
(``ELOOP`` or ``ENOTDIR``) instead of reaching outside the tree; ``O_EXCL`` creation and
``*at`` system calls on the resolved parent do the rest.

Users: the extractor (both engines' post-steps and the C writer's parent directories), the
marker and ``.ezpz/`` files, relocation (reads, rewrites, links), manifest reads and tree
removal. Removal and walks are iterative (no recursion on a depth an archive controls) and
hold a bounded number of descriptors.
"""

from __future__ import annotations

from .anchor import Anchor, Entry, is_escape, split
from .kernel import KERNEL
from .trees import DirCache, remove_at

__all__ = ["Anchor", "DirCache", "Entry", "KERNEL", "is_escape", "remove_at", "split"]
