"""Every rule a member must pass before anything is written (see ``ezpz.extract``).

The reader (:mod:`ezpz.formats.tarread`) hands each member over once; :class:`MemberChecker`
either refuses it with one line naming it, or returns an :class:`Accepted` record: the path
below the destination where it lands (parents resolved through the archive's own symlinks,
lexically), what is there already, the mode to apply, and the parent directories nobody
declared. The writers do exactly that and nothing else; the C writer holds no rule at all.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from typing import NamedTuple

from ..errors import ArchiveError
from ..formats.manifest import BUNDLED_PYTHON_RELPATH, MANIFEST_MAX, RESERVED_DIR
from ..formats.prefix import PrefixHints
from ..formats.tarread import (
    AREGTYPE,
    BLKTYPE,
    CHRTYPE,
    CONTTYPE,
    DIRTYPE,
    FIFOTYPE,
    LNKTYPE,
    PATH_MAX,
    REGTYPE,
    SYMTYPE,
    Member,
)

NAME_MAX = 255
DROP_BITS = stat.S_ISUID | stat.S_ISGID
#: Bytes of bookkeeping (paths seen, symlinks, directories) one extraction may hold: an
#: archive with more entries than that is refused, whatever it compresses to. Real
#: environments use a few MB (45,000 members: about 8 MB).
STATE_MAX = 96 << 20
#: Accounted per path kept, on top of its length (a str and a dict slot).
_ENTRY_COST = 120

FILE, DIR, SYMLINK, HARDLINK, ROOT = 0, 1, 2, 3, 4
KIND_NAMES = {FILE: "file", DIR: "directory", SYMLINK: "symlink", HARDLINK: "hardlink"}
_KINDS = {REGTYPE: FILE, AREGTYPE: FILE, CONTTYPE: FILE, DIRTYPE: DIR, SYMTYPE: SYMLINK,
          LNKTYPE: HARDLINK}
_BUNDLED = BUNDLED_PYTHON_RELPATH.split("/")[1]


@dataclass
class ExtractReport:
    members: int = 0
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    hardlinks: int = 0
    #: File bytes written.
    bytes: int = 0
    #: Bytes of the decompressed tar stream.
    tar_bytes: int = 0
    #: The single top-level directory of the archive, or None when there is not exactly one.
    top: str | None = None
    #: Members whose setuid/setgid bits were dropped.
    dropped_bits: int = 0
    seconds: float = 0.0
    engine: str = "python"
    #: Members written by the C writer (``ezpz.extract._fastx``); the rest by Python.
    fast_members: int = 0
    #: What relocation needs of a tree from an archive without a manifest (``hints=True``).
    hints: PrefixHints | None = None


class Accepted(NamedTuple):
    """A member that passed every check, and how to write it."""

    kind: int  # FILE, DIR, SYMLINK, HARDLINK or ROOT (the destination itself)
    rel: str  # where it lands, below the destination ("" for ROOT)
    parent: str  # the directory holding it ("" for the destination)
    leaf: str
    mode: int  # permission bits to apply (setuid/setgid dropped)
    mtime: int
    size: int
    target: str  # symlink: as stored; hardlink: where the linked file landed
    replaces: bool  # this archive wrote something at ``rel`` earlier: remove it first
    implied: tuple[str, ...]  # parent directories no member declared (create them first)
    name: str  # the member's name, for messages


_new = tuple.__new__


def show_name(member: str) -> str:
    """The member's name for an error line; very long names are shortened in the middle."""
    if len(member) <= 300:
        return repr(member)
    return f"{member[:160] + '...' + member[-80:]!r} ({len(member)} characters)"


def unsafe(member: str, why: str) -> ArchiveError:
    return ArchiveError(f"unsafe archive member {show_name(member)}: {why}; refusing to extract "
                        "(only extract archives made by ezpz-tar-env or that you trust)")


class MemberChecker:
    """Validates members in archive order; remembers what each path holds so far.

    ``free`` (bytes, or None when unknown) is the destination's free space: a regular file
    whose declared size brings the archive past it is refused before it is written.
    """

    def __init__(self, dest: str, free: int | None = None, label: str = "archive") -> None:
        self.dest = os.path.abspath(dest)
        self.label = label
        self.free = free
        self.declared = 0
        self.seen: dict[str, int] = {}  # path -> FILE (files and hardlinks), DIR or SYMLINK
        self.symlinks: dict[str, str] = {}
        self._resolved: dict[str, str] = {}  # parent dir -> resolved; reset with symlinks
        self.has_root = False  # a "./" member: the archive holds the contents of one directory
        # the parent of the last clean member, and where it resolved to (siblings that follow
        # share them); forgotten whenever the archive's symlinks change
        self._last_parent: str | None = None
        self._last_resolved: str | None = None  # None: the parent resolves to itself
        self._top: str | None = None
        self._top_prefix = "\0"  # the top and a slash: members below it (none yet)
        self._top_dir = True
        self._many_tops = False
        #: Members accepted, by kind (FILE, DIR, SYMLINK, HARDLINK, ROOT); file bytes; members
        #: whose setuid/setgid bits were dropped.
        self.counts = [0, 0, 0, 0, 0]
        self.file_bytes = 0
        self.dropped_bits = 0
        self._state = 0
        self._dest_len = len(os.fsencode(self.dest))

    # -- names ---------------------------------------------------------------------------
    def _components(self, name: str, root_ok: bool = False) -> list[str]:
        if not name:
            raise unsafe(name, "empty name")
        if "\x00" in name:
            raise unsafe(name, "NUL byte in the name")
        if name.startswith("/") or name.startswith("\\"):
            raise unsafe(name, "absolute path")
        parts = name.split("/")
        if "" in parts or "." in parts:
            parts = [p for p in parts if p not in ("", ".")]
        if ".." in parts:
            raise unsafe(name, "'..' component escapes the destination")
        if not parts:
            if root_ok:  # "./", as `tar -C env -cf env.tar .` stores the top directory
                return parts
            raise unsafe(name, "names the destination itself")
        # the parts' lengths are bounded by the whole name's (in bytes; ASCII: one per char)
        raw_len = len(name) if name.isascii() else len(os.fsencode(name))
        if raw_len > NAME_MAX and any(len(os.fsencode(p)) > NAME_MAX for p in parts):
            raise unsafe(name, f"a path component is longer than {NAME_MAX} bytes")
        if self._dest_len + 1 + raw_len >= PATH_MAX and \
                self._dest_len + 1 + len(os.fsencode("/".join(parts))) >= PATH_MAX:
            raise unsafe(name, f"path longer than PATH_MAX ({PATH_MAX}) under the destination")
        return parts

    def _resolve(self, parent: str, member: str) -> str:
        """Resolve the directory ``parent`` through the archive's symlinks, lexically."""
        hit = self._resolved.get(parent)
        if hit is None:
            if len(self._resolved) > 65536:
                self._resolved.clear()
            hit = self._resolved[parent] = "/".join(
                self._resolve_walk(parent.split("/"), member))
        return hit

    def _resolve_walk(self, parts: list[str], member: str) -> list[str]:
        out: list[str] = []
        todo = list(reversed(parts))
        hops = 0
        via = None
        while todo:
            c = todo.pop()
            if c in ("", "."):
                continue
            if c == "..":
                if not out:
                    raise unsafe(member, f"written through symlink {via!r} which points outside "
                                         "the destination")
                out.pop()
                continue
            key = "/".join(out + [c])
            target = self.symlinks.get(key)
            if target is None:
                out.append(c)
                continue
            hops += 1
            via = key
            if hops > 40:
                raise unsafe(member, "too many levels of symbolic links")
            if target.startswith("/"):
                raise unsafe(member, f"written through symlink {key!r} -> {target!r} which points "
                                     "outside the destination")
            todo.extend(reversed(target.split("/")))
        return out

    @staticmethod
    def _check_type(m: Member) -> None:
        t = m.type
        if t in (CHRTYPE, BLKTYPE):
            raise unsafe(m.name, "device node")
        if t == FIFOTYPE:
            raise unsafe(m.name, "FIFO (named pipe)")
        if m.sparse or t == b"S":
            raise unsafe(m.name, "sparse file (not supported)")
        raise unsafe(m.name, f"unsupported member type {t.decode('latin-1')!r}")

    def _reserved(self, rel: str, kind: int, member: str, size: int) -> None:
        """ezpz's own names inside the tree (``.ezpz/`` at the top or one level down): only
        the manifest (at most MANIFEST_MAX bytes) and a bundled interpreter may come from an
        archive."""
        parts = rel.split("/")
        for i in (0, 1):
            if len(parts) > i and parts[i] == RESERVED_DIR:
                rest = parts[i + 1:]
                if not rest:
                    ok = kind == DIR
                elif rest[0] == _BUNDLED:
                    ok = len(rest) > 1 or kind == DIR
                else:
                    ok = rest == ["manifest.json"] and kind == FILE
                if not ok:
                    raise unsafe(member, f"{rel!r} is a name ezpz reserves for its own files "
                                         f"({RESERVED_DIR}/ may hold only manifest.json and "
                                         f"{_BUNDLED}/)")
                if rest == ["manifest.json"] and size > MANIFEST_MAX:
                    raise unsafe(member, f"a manifest of {size} bytes, more than the "
                                         f"{MANIFEST_MAX >> 20} MiB ezpz reads")

    def _account(self, n: int, member: str) -> None:
        self._state += n
        if self._state > STATE_MAX:
            raise unsafe(member, f"the archive holds more entries than ezpz keeps track of "
                                 f"({len(self.seen)} paths, {STATE_MAX >> 20} MiB of names)")

    def _imply(self, parent: str, member: str) -> tuple[str, ...]:
        """Mark the parent directories of a member; the ones seen for the first time are
        returned (the writers create them)."""
        made = []
        seen = self.seen
        parts = parent.split("/")
        for k in range(1, len(parts) + 1):
            p = "/".join(parts[:k])
            kind = seen.get(p)
            if kind is None:
                seen[p] = DIR
                self._account(len(p) + _ENTRY_COST, member)
                made.append(p)
            elif kind != DIR:
                raise unsafe(member, f"its parent {p!r} is a {KIND_NAMES[kind]} extracted "
                                     "earlier, not a directory")
        return tuple(made)

    # -- the check -----------------------------------------------------------------------
    def check(self, m: Member) -> Accepted:
        """How to write the member, or ArchiveError naming it."""
        name, typ, mode, msize, mtime, _link, _off, _data, sparse = m
        raw_parent, _, leaf = name.rpartition("/")
        if (raw_parent and raw_parent == self._last_parent and leaf and leaf[0] != "."
                and "\x00" not in leaf and leaf.isascii() and len(leaf) <= NAME_MAX
                and self._dest_len + 1 + len(name) < PATH_MAX):
            # a sibling of the previous member: its parent passed every rule already, is a
            # directory, and resolves as before (no symlink of the archive changed since)
            if self._last_resolved is None:  # it resolves to itself
                pstr, rel = raw_parent, name
            else:
                pstr = self._last_resolved
                rel = f"{pstr}/{leaf}" if pstr else leaf
                if self._dest_len + 2 + len(rel) >= PATH_MAX:
                    raise unsafe(name, f"path longer than PATH_MAX ({PATH_MAX}) under the "
                                       "destination once the archive's symlinks are followed")
            sibling = True
        else:
            sibling = False
            parts = name.split("/")
            if ("" in parts or "." in parts or ".." in parts or "\x00" in name
                    or name[0] == "\\" or not name.isascii() or len(name) > NAME_MAX
                    or self._dest_len + 1 + len(name) >= PATH_MAX):
                # anything but a plain short ASCII path: the full rules (and "./")
                parts = self._components(name, root_ok=typ == DIRTYPE)
                if not parts:  # the destination itself: its mode and mtime come from here
                    self.has_root = True  # and the archive's entries are its contents
                    self.counts[ROOT] += 1
                    if mode & DROP_BITS:
                        self.dropped_bits += 1
                    return _new(Accepted, (ROOT, "", "", "", mode & ~DROP_BITS, mtime, 0, "",
                                           False, (), name))
                clean = "/".join(parts)
            else:
                clean = name
            pstr, _, leaf = clean.rpartition("/")
            rel = clean
            if pstr and self.symlinks:
                resolved = self._resolve(pstr, name)
                if resolved != pstr:
                    pstr = resolved
                    rel = f"{pstr}/{leaf}" if pstr else leaf
                    if self._dest_len + 2 + len(os.fsencode(rel)) >= PATH_MAX:
                        raise unsafe(name, f"path longer than PATH_MAX ({PATH_MAX}) under "
                                           "the destination once the archive's symlinks are "
                                           "followed")
        kind = _KINDS.get(typ)
        if kind is None or sparse:
            self._check_type(m)
            raise AssertionError("unreachable")  # pragma: no cover
        if msize and kind != FILE:
            raise unsafe(name, f"a {KIND_NAMES[kind]} that declares {msize} bytes of data")
        if ".ezpz" in rel:
            self._reserved(rel, kind, name, msize)
        seen = self.seen
        prev = seen.get(rel)
        replaces = False
        if prev is not None:
            if prev == DIR:
                if kind != DIR:
                    raise unsafe(name, "replaces a directory extracted earlier")
            elif prev == SYMLINK:
                if kind == DIR:
                    raise unsafe(name, "replaces a symlink extracted earlier with a directory")
                replaces = True
                del self.symlinks[rel]
                self._resolved.clear()
                self._last_parent = None
            else:
                replaces = True
        implied = () if sibling or not pstr or seen.get(pstr) == DIR else \
            self._imply(pstr, name)
        target = ""
        size = 0
        if kind == FILE:
            size = msize
            self.declared += size
            if self.free is not None and self.declared > self.free:
                raise self._no_space(name, size)
        elif kind == HARDLINK:
            target = self._link_target(m, rel)
        elif kind == SYMLINK:
            target = m.linkname
            if not target:
                raise unsafe(name, "symlink with an empty target")
            if "\x00" in target or len(os.fsencode(target)) >= PATH_MAX:
                raise unsafe(name, "symlink target with a NUL byte or longer than PATH_MAX")
            self.symlinks[rel] = target
            self._resolved.clear()
            self._last_parent = None
            self._account(len(target) + _ENTRY_COST, name)
        if prev is None:
            self._state += len(rel) + _ENTRY_COST
            if self._state > STATE_MAX:
                self._account(0, name)
        seen[rel] = FILE if kind == HARDLINK else kind
        # the single top-level directory, if there is one
        if not self._many_tops and not rel.startswith(self._top_prefix):
            top, slash, _ = rel.partition("/")
            if self._top is None:
                self._top, self._top_dir = top, bool(slash) or kind == DIR
                self._top_prefix = top + "/"
            elif top != self._top:
                self._many_tops = True
            elif not slash and kind != DIR:
                self._top_dir = False
        self.counts[kind] += 1
        if mode & DROP_BITS:
            self.dropped_bits += 1
        self.file_bytes += size
        if not sibling and kind != SYMLINK and raw_parent and clean is name:
            self._last_parent = raw_parent
            self._last_resolved = None if pstr == raw_parent else pstr
        return _new(Accepted, (kind, rel, pstr, leaf, mode & ~DROP_BITS, mtime, size,
                               target, replaces, implied, name))

    def _link_target(self, m: Member, rel: str) -> str:
        link = m.linkname
        if not link or link.startswith("/"):
            raise unsafe(m.name, f"hardlink to absolute path {link!r}")
        if "\x00" in link:
            raise unsafe(m.name, "hardlink target with a NUL byte")
        lparts = [p for p in link.split("/") if p not in ("", ".")]
        if ".." in lparts:
            raise unsafe(m.name, f"hardlink target {link!r} escapes the destination")
        if not lparts:
            raise unsafe(m.name, f"hardlink to the destination itself ({link!r})")
        head = "/".join(lparts[:-1])
        if head and self.symlinks:
            head = self._resolve(head, m.name)
        lres = f"{head}/{lparts[-1]}" if head else lparts[-1]
        if self.seen.get(lres) != FILE:
            raise unsafe(m.name, f"hardlink target {link!r} is not a file extracted earlier")
        if lres == rel:
            raise unsafe(m.name, "hardlink to itself")
        return lres

    def _no_space(self, name: str, size: int) -> ArchiveError:
        from ..config import format_size

        assert self.free is not None
        return ArchiveError(
            f"{self.label}: member {name!r} declares {format_size(size)}, which brings "
            f"the archive to {format_size(self.declared)}, more than the "
            f"{format_size(self.free)} free in {self.dest}; refusing to extract (free space "
            "or choose another transfer.dst)")

    def single_top(self) -> str | None:
        if self._top is not None and not self._many_tops and self._top_dir and \
                not self.has_root:
            return self._top
        return None
