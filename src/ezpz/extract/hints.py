"""Relocation hints collected while extracting an archive without a manifest.

Relocating such a tree used to mean reading every file again after the extraction, looking
for the old prefix. The file data passes through the extraction's memory anyway: every
decoded block of the tar stream is searched for a *needle*, a part of the old prefix known
before the data arrives, and each occurrence is attributed to the regular file whose data
holds it. The needle is ``/<top>``, the archive's top directory (``tar -czf env.tgz env``
stores ``env/...``; the environment's prefix ends with that name). What is kept is bounded: a
list of relative paths (files that held the needle, hardlinks, symlinks with an absolute
target; compiled ``.pyc`` files aside, which relocation never rewrites), at most
:data:`MAX_PATHS` of them, never data.

An archive made from inside the environment (``tar -C env -czf env.tgz .``: members start
with ``./`` or an environment directory) has no top directory. Its needle is then the old
prefix itself, read from the first member that names it as it passes (``pyvenv.cfg``'s
``command``, ``bin/activate``'s ``VIRTUAL_ENV``). Until then blocks are held (at most
:data:`MAX_SEEK_HELD` bytes) and scanned once the needle is known; the files whose data passed
before it and was not held are listed as they are (relocation reads them: a superset).

Relocation then checks the hints against the old prefix it detects (the needle must be part
of it) and reads only the listed files (:class:`ezpz.formats.prefix.PrefixHints`). When
there is no needle (no member names the prefix), when the needle is in too many places, or
when it is not part of the prefix, the hints say why and relocation scans the whole tree as
before.

Searching uses ``memmem`` in the C module with the GIL released (``bytes.find`` without it).
"""

from __future__ import annotations

import os
from bisect import bisect_left
from collections.abc import Callable
from typing import Any

from ..formats.prefix import (
    SKIP_SUFFIXES,
    PrefixHints,
    prefix_in_activate,
    prefix_in_pyvenv_cfg,
)
from .checks import DIR, FILE, HARDLINK, ROOT, SYMLINK, Accepted

#: Most paths kept (files holding the needle, hardlinks, symlinks): beyond, the hints are
#: dropped and relocation scans the tree.
MAX_PATHS = 16384
#: Most occurrences of the needle attributed per decoded block: beyond, the needle is too
#: common to narrow anything down.
MAX_HITS_PER_BLOCK = 4096
#: Bytes of blocks held (references, no copy) until the first member names the top directory.
MAX_HELD = 16 << 20
#: Bytes of blocks held, without a top directory, until a member names the prefix; beyond,
#: the files that pass are listed unread.
MAX_SEEK_HELD = 16 << 20
#: Members of an environment archived from inside it that name its prefix, and how to read
#: it from their text.
NAMERS = {"pyvenv.cfg": prefix_in_pyvenv_cfg, "bin/activate": prefix_in_activate}
#: Largest such member read.
NAMER_MAX = 64 << 10
#: Top-level names of an environment itself: an archive whose first member is one of them
#: was made from inside the environment and has no top directory to look for.
ENV_TOP_NAMES = frozenset({"bin", "lib", "lib64", "include", "share", "etc", "conda-meta",
                           "pyvenv.cfg", "Lib", "Scripts", "Include", "man", "ssl",
                           "libexec", "sbin", "var", "doc", "compiler_compat", ".ezpz"})


def _py_find_all(data: Any, needle: bytes, start: int, limit: int) -> list[int]:
    out: list[int] = []
    find = data.find
    i = find(needle, start)
    while i >= 0 and len(out) < limit:
        out.append(i)
        i = find(needle, i + 1)
    return out


class HintCollector:
    """Fed by the extraction: :meth:`block` for every decoded block of the tar stream (in
    order, with its offset in the stream), :meth:`member` for every accepted member with the
    offset of its data. :meth:`result` gives the :class:`PrefixHints`."""

    def __init__(self, fast: Any = None) -> None:
        self._find: Callable[[Any, bytes, int, int], list[int]] = \
            fast.find_all if fast is not None and hasattr(fast, "find_all") else _py_find_all
        self.needle = b""
        self._decided = False
        self._held: list[tuple[int, bytes]] = []
        self._held_bytes = 0
        self._tail = b""
        self._pending: list[int] = []  # stream offsets of occurrences not attributed yet
        self._cur: tuple[int, int, str] | None = None  # the last file's data: start, end, path
        self.files: dict[str, None] = {}  # insertion-ordered set
        self.links: list[str] = []
        self.why = ""
        # no top directory: seeking the prefix in the members that name it
        self._seeking = False
        self._held_all = True  # the held blocks are the whole stream so far
        self._seen: list[tuple[int, int, str]] = []  # files passed meanwhile: data range, path
        self._seen_links: list[tuple[str, str]] = []  # hardlinks passed meanwhile: path, file
        self._last: tuple[int, bytes] = (0, b"")  # the newest block
        self._namer: tuple[int, int, str] | None = None  # a namer's data range, path
        self._namer_data = bytearray()

    # -- the stream ------------------------------------------------------------------------
    def block(self, base: int, data: bytes) -> None:
        if self.why:
            return
        if not self._decided:
            self._held.append((base, data))
            self._held_bytes += len(data)
            if self._held_bytes > MAX_HELD:
                self._stop("no member named a top directory in the first blocks")
            return
        if self._seeking:
            self._last = (base, data)
            if self._held_all:
                self._held.append((base, data))
                self._held_bytes += len(data)
                if self._held_bytes > MAX_SEEK_HELD:  # the files passed are listed instead
                    self._held_all = False
                    self._held.clear()
            if self._namer is not None:
                self._take_namer()
            return
        if self.needle:
            self._scan(base, data)

    def _scan(self, base: int, data: bytes) -> None:
        needle = self.needle
        hits: list[int] = []
        tail = self._tail
        if tail:  # occurrences across the boundary with the previous block
            joint = tail + data[:len(needle) - 1]
            start = base - len(tail)
            hits = [start + j for j in self._find(joint, needle, 0, len(tail))
                    if j < len(tail)]
        found = self._find(data, needle, 0, MAX_HITS_PER_BLOCK + 1)
        if len(found) > MAX_HITS_PER_BLOCK:
            self._stop(f"{needle.decode(errors='replace')!r} occurs more than "
                       f"{MAX_HITS_PER_BLOCK} times in one block")
            return
        hits += [base + j for j in found]
        keep = len(needle) - 1  # the stream's last bytes, for an occurrence cut by the next block
        if keep:
            self._tail = bytes(data[-keep:]) if len(data) >= keep else (tail + data)[-keep:]
        if not hits:
            return
        if len(self._pending) > 4 * MAX_HITS_PER_BLOCK:
            self._stop(f"{needle.decode(errors='replace')!r} occurs too often outside files")
            return
        cur = self._cur
        for o in hits:
            if cur is not None and cur[0] <= o < cur[1]:
                self._add(cur[2])
            elif cur is None or o >= cur[1]:
                self._pending.append(o)

    # -- the members -----------------------------------------------------------------------
    def member(self, a: Accepted, data_at: int) -> None:
        if self.why:
            return
        kind = a.kind
        if not self._decided:
            self._decide(a)
            if self.why:
                return
        if self._seeking:
            self._seek(a, data_at)
            return
        if kind == FILE:
            end = data_at + a.size
            pending = self._pending
            if pending:
                i = bisect_left(pending, data_at)
                if i < len(pending) and pending[i] < end:
                    self._add(a.rel)
                del pending[:bisect_left(pending, end, i)]
            self._cur = (data_at, end, a.rel)
        elif kind == HARDLINK:
            if a.target in self.files:
                self._add(a.rel)
        elif kind == SYMLINK and os.path.isabs(a.target):
            self.links.append(a.rel)
            if len(self.links) + len(self.files) > MAX_PATHS:
                self._stop(f"more than {MAX_PATHS} files and links to look at")

    def _decide(self, a: Accepted) -> None:
        self._decided = True
        held, self._held = self._held, []
        rel = a.rel
        top, sep, _ = rel.partition("/")
        if a.kind == ROOT or not (sep or a.kind == DIR) or top in ENV_TOP_NAMES:
            # made from inside the environment: no top directory, the prefix is sought
            self._seeking = True
            self._held_bytes = sum(len(d) for _, d in held)
            self._held = held
            if held:
                self._last = held[-1]
            if self._held_bytes > MAX_SEEK_HELD:
                self._held_all = False
                self._held = []
            return
        self.needle = b"/" + os.fsencode(top)
        for base, data in held:
            self._scan(base, data)
            if self.why:
                return

    # -- no top directory: the members that name the prefix ----------------------------------
    def _seek(self, a: Accepted, data_at: int) -> None:
        kind = a.kind
        if kind == FILE:
            end = data_at + a.size
            self._seen.append((data_at, end, a.rel))
            if len(self._seen) + len(self._seen_links) > MAX_PATHS:
                self._stop(f"more than {MAX_PATHS} files passed before a member named the "
                           "environment's prefix (pyvenv.cfg, bin/activate)")
                return
            if a.rel in NAMERS and a.size <= NAMER_MAX and self._namer is None:
                self._namer = (data_at, end, a.rel)
                self._namer_data = bytearray()
                self._take_namer()
        elif kind == HARDLINK:
            self._seen_links.append((a.rel, a.target))  # its file's data may hold the prefix
            if len(self._seen) + len(self._seen_links) > MAX_PATHS:
                self._stop(f"more than {MAX_PATHS} files passed before a member named the "
                           "environment's prefix (pyvenv.cfg, bin/activate)")
        elif kind == SYMLINK and os.path.isabs(a.target):
            self.links.append(a.rel)
            if len(self.links) > MAX_PATHS:
                self._stop(f"more than {MAX_PATHS} files and links to look at")

    def _take_namer(self) -> None:
        """Copy what the newest block holds of the namer's data; read the prefix once it is
        whole."""
        assert self._namer is not None
        start, end, rel = self._namer
        base, data = self._last
        have = start + len(self._namer_data)
        lo, hi = max(have, base), min(end, base + len(data))
        if lo < hi and lo == have:
            self._namer_data += data[lo - base:hi - base]
        if start + len(self._namer_data) < end:
            return
        self._namer = None
        prefix = NAMERS[rel](bytes(self._namer_data).decode(errors="replace"))
        if prefix and prefix != "/":
            self._found(os.fsencode(prefix))

    def _found(self, needle: bytes) -> None:
        """The prefix is known: look for it from here on, in the blocks held, and list the
        files that passed unseen."""
        self._seeking = False
        self.needle = needle
        seen, self._seen = self._seen, []
        held, self._held = self._held, []
        if self._held_all:
            blocks = held
        else:
            for _s, _e, rel in seen:
                self._add(rel)
                if self.why:
                    return
            blocks = [self._last] if self._last[1] else []
        self._tail = b""
        self._pending = []
        for base, data in blocks:
            self._scan(base, data)
            if self.why:
                return
        # occurrences in the data of the files already passed; the rest waits for the next
        pending = self._pending
        if self._held_all:
            for start, end, rel in seen:
                i = bisect_left(pending, start)
                if i < len(pending) and pending[i] < end:
                    self._add(rel)
        links, self._seen_links = self._seen_links, []
        for rel, target in links:
            if target in self.files or not self._held_all:
                self._add(rel)
        if seen:
            del pending[:bisect_left(pending, seen[-1][1])]
            self._cur = seen[-1]

    def _add(self, rel: str) -> None:
        if rel not in self.files and not rel.endswith(SKIP_SUFFIXES):
            self.files[rel] = None
            if len(self.files) + len(self.links) > MAX_PATHS:
                self._stop(f"more than {MAX_PATHS} files and links to look at")

    def _stop(self, why: str) -> None:
        self.why = why
        self._seeking = False
        self._seen.clear()
        self._seen_links.clear()
        self._namer = None
        self.needle = b""
        self.files.clear()
        self.links.clear()
        self._pending.clear()
        self._held.clear()
        self._tail = b""

    def result(self) -> PrefixHints:
        if self._seeking and not self.why:
            self._stop("the archive's members have no top directory (made from inside the "
                       "environment) and none named its prefix (pyvenv.cfg's command, "
                       "bin/activate)")
        why = self.why or ("" if self.needle else "the archive has no members")
        if why:
            return PrefixHints(why=why)
        return PrefixHints(self.needle, list(self.files), list(self.links))
